"""Input conversion and checks shared by `isa4d.render`; each check raises `ValueError` with specifics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from isa4d.geometry._validation import check_intrinsics

Mesh = tuple[Any, Any]
"""A triangle mesh `(vertices (V, 3) float, faces (F, 3) int)`, as numpy arrays or torch tensors."""

ROTATION_TOLERANCE = 1e-4
"""Largest entry of `R Rᵀ - I` accepted for a rotation (float32 inputs are fine)."""


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view (or copy) of an array-like or a (CPU or GPU) torch tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_mesh(name: str, mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    """Validate one `(vertices, faces)` pair.

    Args:
        name: Name used in error messages.
        mesh: `(vertices (V, 3), faces (F, 3))`.

    Returns:
        vertices: Finite positions, (V, 3) float64.
        faces: Vertex indices in [0, V), (F, 3) int64.
    """
    if len(mesh) != 2:
        raise ValueError(f"{name} must be a (vertices, faces) pair, got {len(mesh)} items")
    vertices, faces = (to_numpy(x) for x in mesh)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or vertices.dtype.kind not in "fiu":
        raise ValueError(f"{name} vertices must be real (V, 3), got {vertices.shape} {vertices.dtype}")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype.kind not in "iu":
        raise ValueError(f"{name} faces must be integer (F, 3), got {faces.shape} {faces.dtype}")
    bad = np.flatnonzero(~np.isfinite(vertices).all(axis=1))
    if bad.size:
        raise ValueError(f"{name} has {bad.size} non-finite vertices (NaN or inf), the first is {bad[0]}")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(
            f"{name} faces index vertices {faces.min()}..{faces.max()} but there are {len(vertices)} vertices"
        )
    return vertices.astype(np.float64), faces.astype(np.int64)


def check_rotation(R: Any) -> torch.Tensor:
    """Validate one world-to-camera rotation and return it as a float64 CPU tensor, (3, 3)."""
    R = torch.as_tensor(to_numpy(R), dtype=torch.float64)
    if R.shape != (3, 3):
        raise ValueError(f"R must be one rotation of shape (3, 3), got {tuple(R.shape)}")
    error = (R @ R.mT - torch.eye(3, dtype=R.dtype)).abs().max()
    if not bool(error <= ROTATION_TOLERANCE) or not bool(torch.linalg.det(R) > 0):
        raise ValueError(f"R must be a rotation (R Rᵀ = I, det R = 1), got {R.tolist()}")
    return R


def camera_tensors(K: Any, R: Any, t: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate one OpenCV camera and return `K (3, 3)`, `R (3, 3)`, `t (3,)` as float64 CPU tensors."""
    K, t = (torch.as_tensor(to_numpy(x), dtype=torch.float64) for x in (K, t))
    if K.shape != (3, 3):
        raise ValueError(f"K must be one camera of shape (3, 3), got {tuple(K.shape)}")
    if t.shape != (3,):
        raise ValueError(f"t must have shape (3,), got {tuple(t.shape)}")
    if not bool(torch.isfinite(K).all() & torch.isfinite(t).all()):
        raise ValueError(f"K and t must be finite, got K={K.tolist()}, t={t.tolist()}")
    check_intrinsics(K)
    return K, check_rotation(R), t


def concat_per_mesh(name: str, arrays: Sequence[Any], num_vertices: Sequence[int]) -> np.ndarray:
    """Concatenate one per-vertex array per mesh after checking their shapes.

    Args:
        name: Name used in error messages.
        arrays: One array per mesh, (V_i, ...) with the same trailing shape for all meshes.
        num_vertices: Vertex count V_i of each mesh.

    Returns:
        Values of all vertices in mesh order, (sum V_i, ...) float64.
    """
    if isinstance(arrays, np.ndarray | torch.Tensor) or len(arrays) != len(num_vertices):
        got = f"an array of shape {tuple(arrays.shape)}" if hasattr(arrays, "shape") else f"{len(arrays)}"
        raise ValueError(f"{name} must be a sequence of one array per mesh ({len(num_vertices)}), got {got}")
    arrays = [to_numpy(a) for a in arrays]
    for i, (array, count) in enumerate(zip(arrays, num_vertices, strict=True)):
        if array.ndim == 0 or array.shape[0] != count or array.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(
                f"{name}[{i}] must have shape ({count}, *{arrays[0].shape[1:]}) "
                f"(one row per vertex of mesh {i}), got {array.shape}"
            )
    values = np.concatenate(arrays).astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{name} must be finite")
    return values


def unit_colors(name: str, colors: Any) -> np.ndarray:
    """Colours `(..., 3)` as float64 in [0, 1]: integer arrays are divided by 255, floats kept."""
    colors = to_numpy(colors)
    if colors.ndim == 0 or colors.shape[-1] != 3 or colors.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be real RGB colours (..., 3), got {colors.shape} {colors.dtype}")
    if not np.isfinite(colors).all():
        raise ValueError(f"{name} must be finite")
    return colors / 255.0 if colors.dtype.kind in "iu" else colors.astype(np.float64)
