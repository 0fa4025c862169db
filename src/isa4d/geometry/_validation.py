"""Input checks shared by the geometry functions; each raises `ValueError` naming the bad value."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_shape(name: str, x: torch.Tensor, trailing: Sequence[int]) -> None:
    """Require `x` to have shape `(..., *trailing)`.

    Args:
        name: Argument name used in the error message.
        x: Tensor to check.
        trailing: Required trailing dimensions.
    """
    trailing = tuple(trailing)
    if x.ndim < len(trailing) or tuple(x.shape[x.ndim - len(trailing) :]) != trailing:
        expected = ", ".join(["..."] + [str(d) for d in trailing])
        raise ValueError(f"{name} must have shape ({expected}), got {tuple(x.shape)}")


def check_intrinsics(K: torch.Tensor) -> None:
    """Require `K: (..., 3, 3)` to be a pinhole matrix `[[fx, s, cx], [0, fy, cy], [0, 0, 1]]`, fx, fy > 0.

    The shape is always checked; the values only in eager mode: reading them is a device sync, and under
    `torch.compile` a graph break. (`ISADiT(compile=True)` compiles its layers only, so its camera
    geometry, and this check, stay eager; a whole-model `torch.compile` skips the value check.)
    """
    check_shape("K", K, (3, 3))
    if torch.compiler.is_compiling():
        return
    focal = torch.stack([K[..., 0, 0], K[..., 1, 1]], dim=-1)
    if not bool((focal > 0).all()):
        raise ValueError(f"focal lengths must be positive, got (fx, fy) = {focal.tolist()}")
    bottom = torch.stack([K[..., 1, 0], K[..., 2, 0], K[..., 2, 1], K[..., 2, 2] - 1], dim=-1)
    if not bool((bottom == 0).all()):
        raise ValueError(f"K must be upper triangular with K[2, 2] = 1, got {K.tolist()}")


def check_rotation_translation(R: torch.Tensor, t: torch.Tensor) -> None:
    """Require `R: (..., 3, 3)` and `t: (..., 3)`."""
    check_shape("R", R, (3, 3))
    check_shape("t", t, (3,))


def check_image_size(name: str, size: Sequence[int]) -> tuple[int, int]:
    """Return `size` as a `(H, W)` tuple of positive ints."""
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise ValueError(f"{name} must be two positive integers (H, W), got {tuple(size)}")
    return int(size[0]), int(size[1])
