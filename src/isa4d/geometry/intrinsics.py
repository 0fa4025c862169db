"""Building intrinsics and updating them for crops and resizes (pixel-centre convention)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from isa4d.geometry._validation import check_image_size, check_intrinsics
from isa4d.geometry.ndc import ndc_from_pixel_matrix, pixel_from_ndc_matrix


def intrinsics_matrix(fx: torch.Tensor, fy: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """Assemble `K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]` (zero skew).

    Args:
        fx: Horizontal focal length in pixels, (...,).
        fy: Vertical focal length in pixels, (...,).
        cx: Principal point column, (...,).
        cy: Principal point row, (...,).

    Returns:
        K, (..., 3, 3).
    """
    fx, fy, cx, cy = torch.broadcast_tensors(fx, fy, cx, cy)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    rows = [[fx, zero, cx], [zero, fy, cy], [zero, zero, one]]
    K = torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)
    check_intrinsics(K)
    return K


def intrinsics_from_fov(
    fov_deg: float | torch.Tensor,
    image_size: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Intrinsics with square pixels, a vertical field of view and the image centre as principal point.

    The field of view spans the image edges: `fy = (H / 2) / tan(fov / 2)`, `cx = (W - 1) / 2`.

    Args:
        fov_deg: Vertical field of view in degrees, in (0, 180), () or (...,).
        image_size: (H, W) of the image.
        dtype: Output dtype.
        device: Output device.

    Returns:
        K, (..., 3, 3).
    """
    H, W = check_image_size("image_size", image_size)
    fov = torch.as_tensor(fov_deg, dtype=dtype, device=device)
    if not bool(((fov > 0) & (fov < 180)).all()):
        raise ValueError(f"fov_deg must be in (0, 180), got {fov.tolist()}")
    f = (H / 2) / torch.tan(fov * (math.pi / 360))
    return intrinsics_matrix(f, f, torch.full_like(f, (W - 1) / 2), torch.full_like(f, (H - 1) / 2))


def crop_intrinsics(K: torch.Tensor, x0: float | torch.Tensor, y0: float | torch.Tensor) -> torch.Tensor:
    """Intrinsics of a crop whose top-left pixel is pixel `(x0, y0)` of the original image.

    Args:
        K: Intrinsics, (..., 3, 3).
        x0: Column of the crop's first pixel, () or (...,).
        y0: Row of the crop's first pixel, () or (...,).

    Returns:
        K with `(cx, cy)` shifted by `-(x0, y0)`, (..., 3, 3).
    """
    check_intrinsics(K)
    shift = torch.stack(torch.broadcast_tensors(*(torch.as_tensor(v).to(K) for v in (x0, y0))), dim=-1)
    return K - F.pad(shift.unsqueeze(-1), (2, 0, 0, 1))


def resize_intrinsics(K: torch.Tensor, image_size: Sequence[int], new_size: Sequence[int]) -> torch.Tensor:
    """Intrinsics after resizing the image from `image_size` to `new_size` (image edges stay edges).

    Pixels map as `u' = (u + 1/2) W'/W - 1/2`, `v' = (v + 1/2) H'/H - 1/2`, the sampling of
    `F.interpolate(..., align_corners=False)`. Equivalently, the ISA NDC of every point is unchanged.

    Args:
        K: Intrinsics for `image_size`, (..., 3, 3).
        image_size: (H, W) before resizing.
        new_size: (H', W') after resizing.

    Returns:
        Intrinsics for `new_size`, (..., 3, 3).
    """
    check_intrinsics(K)
    to_ndc = ndc_from_pixel_matrix(image_size, K.dtype, K.device)
    from_ndc = pixel_from_ndc_matrix(new_size, K.dtype, K.device)
    return from_ndc @ to_ndc @ K
