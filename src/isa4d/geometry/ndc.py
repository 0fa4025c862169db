"""Pixel grids, the ISA normalised device coordinates (NDC) and the MVP matrix.

ISA NDC (used by the interspatial positional encoding) keeps the image orientation:
`x_ndc = 2 (u + 1/2) / W - 1` (right) and `y_ndc = 2 (v + 1/2) / H - 1` (**down**, unlike OpenGL's
y up), so the image edges are at ±1 and pixel centres at ±(1 - 1/W); this equals
`torch.nn.functional.grid_sample(..., align_corners=False)`. `z_ndc` grows with depth from -1
at `near` to +1 at `far`. The NDC of a scene point does not change when the image is resized.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from isa4d.geometry._validation import check_image_size, check_intrinsics, check_shape
from isa4d.geometry.cameras import extrinsics_matrix


def ndc_from_pixel_matrix(
    image_size: Sequence[int], dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Affine map from homogeneous pixels `(u, v, 1)` to ISA NDC `(x, y, 1)`.

    Args:
        image_size: (H, W) of the image the pixels live in.
        dtype: Output dtype.
        device: Output device.

    Returns:
        `[[2/W, 0, 1/W - 1], [0, 2/H, 1/H - 1], [0, 0, 1]]`, (3, 3).
    """
    H, W = check_image_size("image_size", image_size)
    matrix = [[2.0 / W, 0.0, 1.0 / W - 1.0], [0.0, 2.0 / H, 1.0 / H - 1.0], [0.0, 0.0, 1.0]]
    return torch.tensor(matrix, dtype=dtype, device=device)


def pixel_from_ndc_matrix(
    image_size: Sequence[int], dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Affine map from ISA NDC `(x, y, 1)` to pixels `(u, v, 1)`; inverse of `ndc_from_pixel_matrix`.

    Args:
        image_size: (H, W) of the image the pixels live in.
        dtype: Output dtype.
        device: Output device.

    Returns:
        `[[W/2, 0, (W - 1)/2], [0, H/2, (H - 1)/2], [0, 0, 1]]`, (3, 3).
    """
    H, W = check_image_size("image_size", image_size)
    matrix = [[W / 2.0, 0.0, (W - 1) / 2.0], [0.0, H / 2.0, (H - 1) / 2.0], [0.0, 0.0, 1.0]]
    return torch.tensor(matrix, dtype=dtype, device=device)


def _apply_affine_2d(matrix: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Apply a homogeneous (3, 3) affine map to points `xy: (..., 2)`."""
    check_shape("points", xy, (2,))
    return xy @ matrix[:2, :2].mT + matrix[:2, 2]


def pixel_to_ndc(uv: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """Pixel coordinates to ISA NDC.

    Args:
        uv: Pixel coordinates, (..., 2).
        image_size: (H, W) of the image.

    Returns:
        NDC `(x, y)` with y down, (..., 2).
    """
    return _apply_affine_2d(ndc_from_pixel_matrix(image_size, uv.dtype, uv.device), uv)


def ndc_to_pixel(ndc: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """ISA NDC to pixel coordinates (inverse of `pixel_to_ndc`).

    Args:
        ndc: NDC `(x, y)`, (..., 2).
        image_size: (H, W) of the image.

    Returns:
        Pixel coordinates, (..., 2).
    """
    return _apply_affine_2d(pixel_from_ndc_matrix(image_size, ndc.dtype, ndc.device), ndc)


def pixel_grid(
    h: int, w: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Pixel centres of an h×w image in row-major order (v outer, u inner).

    Args:
        h: Image height.
        w: Image width.
        dtype: Output dtype.
        device: Output device.

    Returns:
        `(u, v)` with `uv[v * w + u] == (u, v)`, (h * w, 2).
    """
    h, w = check_image_size("(h, w)", (h, w))
    v, u = torch.meshgrid(
        torch.arange(h, dtype=dtype, device=device),
        torch.arange(w, dtype=dtype, device=device),
        indexing="ij",
    )
    return torch.stack([u, v], dim=-1).reshape(h * w, 2)


def grid_ndc(
    h: int, w: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """NDC of the cells of an h×w latent token grid, `(2(u+½)/w - 1, 2(v+½)/h - 1, 0)`.

    Args:
        h: Grid height.
        w: Grid width.
        dtype: Output dtype.
        device: Output device.

    Returns:
        Row-major (v outer, u inner) NDC with z = 0, (h * w, 3).
    """
    return F.pad(pixel_to_ndc(pixel_grid(h, w, dtype, device), (h, w)), (0, 1))


def mvp_matrix(
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    image_size: Sequence[int],
    near: float = 0.1,
    far: float = 100.0,
) -> torch.Tensor:
    """Model-view-projection matrix from homogeneous world points to ISA clip space.

    After division by `w` (the camera depth), `x, y` are the ISA NDC of the projected pixel and
    `z = (a z_cam + b) / z_cam` with `a = (f + n) / (f - n)`, `b = -2 f n / (f - n)`, which is -1
    at `near`, +1 at `far` and increasing in depth.

    Args:
        K: Intrinsics in pixels of an image of size `image_size`, (..., 3, 3).
        R: World-to-camera rotation, (..., 3, 3).
        t: World-to-camera translation, (..., 3).
        image_size: (H, W) of the image.
        near: Depth mapped to z_ndc = -1, > 0.
        far: Depth mapped to z_ndc = +1, > near.

    Returns:
        MVP matrix, (..., 4, 4).
    """
    check_intrinsics(K)
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    xy_rows = (ndc_from_pixel_matrix(image_size, K.dtype, K.device) @ K)[..., :2, :]
    a, b = (far + near) / (far - near), -2.0 * far * near / (far - near)
    zw_rows = torch.tensor([[0.0, 0.0, a, b], [0.0, 0.0, 1.0, 0.0]], dtype=K.dtype, device=K.device)
    projection = torch.cat([F.pad(xy_rows, (0, 1)), zw_rows.expand(*xy_rows.shape[:-2], 2, 4)], dim=-2)
    return projection @ extrinsics_matrix(R, t)


def project_to_ndc(points: torch.Tensor, mvp: torch.Tensor) -> torch.Tensor:
    """Transform world points by an MVP matrix and divide by w.

    Args:
        points: World points, (..., N, 3).
        mvp: MVP matrix from `mvp_matrix`, (..., 4, 4).

    Returns:
        ISA NDC `(x, y, z)`, (..., N, 3).
    """
    check_shape("points", points, (3,))
    check_shape("mvp", mvp, (4, 4))
    clip = F.pad(points, (0, 1), value=1.0) @ mvp.mT
    return clip[..., :3] / clip[..., 3:]
