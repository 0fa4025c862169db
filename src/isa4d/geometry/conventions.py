"""Conversions between the ISA4D (OpenCV) camera convention and OpenGL / PyTorch3D cameras.

* OpenGL: camera x right, y up, z backward (the camera looks along -z); world-to-camera
  `X_gl = R_gl @ X_world + t_gl`. Only the camera axes differ: `R_gl = diag(1, -1, -1) R`.
* PyTorch3D `PerspectiveCameras` (NDC, `in_ndc=True`): row vectors `X_view = X_world @ R + T`,
  camera +X left, +Y up, +Z forward; the projection is `x_ndc = f_x X / Z + p_x` (same for y) in
  PyTorch3D NDC (+X left, +Y up, the shorter image side spanning [-1, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from isa4d.geometry._validation import (
    check_image_size,
    check_intrinsics,
    check_rotation_translation,
    check_shape,
)
from isa4d.geometry.intrinsics import intrinsics_matrix


def _flip_camera_axes(
    R: torch.Tensor, t: torch.Tensor, signs: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Negate camera axes of world-to-camera extrinsics: `R -> diag(signs) R`, `t -> diag(signs) t`."""
    check_rotation_translation(R, t)
    signs = torch.tensor(signs, dtype=R.dtype, device=R.device)
    return R * signs.unsqueeze(-1), t * signs


def opencv_to_opengl(R: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV world-to-camera extrinsics to OpenGL ones (flip the camera y and z axes).

    Args:
        R: OpenCV world-to-camera rotation, (..., 3, 3).
        t: OpenCV world-to-camera translation, (..., 3).

    Returns:
        R_gl: OpenGL world-to-camera (view) rotation, (..., 3, 3).
        t_gl: OpenGL world-to-camera translation, (..., 3).
    """
    return _flip_camera_axes(R, t, (1.0, -1.0, -1.0))


def opengl_to_opencv(R_gl: torch.Tensor, t_gl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenGL world-to-camera (view) extrinsics to OpenCV ones; inverse of `opencv_to_opengl`.

    Args:
        R_gl: OpenGL world-to-camera rotation, (..., 3, 3).
        t_gl: OpenGL world-to-camera translation, (..., 3).

    Returns:
        R: OpenCV world-to-camera rotation, (..., 3, 3).
        t: OpenCV world-to-camera translation, (..., 3).
    """
    return _flip_camera_axes(R_gl, t_gl, (1.0, -1.0, -1.0))


def _pytorch3d_screen_scale(
    image_size: Sequence[int], like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch3D's NDC scale `min(H, W) / 2` and image centre `c0 = (W / 2, H / 2)` in pixels."""
    H, W = check_image_size("image_size", image_size)
    c0 = torch.tensor([W / 2.0, H / 2.0], dtype=like.dtype, device=like.device)
    return torch.full_like(c0, min(H, W) / 2.0), c0


def opencv_to_pytorch3d(
    K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, image_size: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV camera to PyTorch3D `PerspectiveCameras` (NDC) parameters.

    Reproduces `pytorch3d.renderer.camera_conversions._cameras_from_opencv_projection` (behind
    `pytorch3d.utils.cameras_from_opencv_projection`): `scale = min(H, W) / 2`, `c0 = (W, H) / 2`,
    `focal = (fx, fy) / scale`, `principal_point = -((cx, cy) - c0) / scale`, `R_p3d = R^T` with
    columns 0 and 1 negated and `T = t` with entries 0 and 1 negated. Like PyTorch3D, `c0 = W / 2`
    ignores the half-pixel offset of the pixel-centre convention (facebookresearch/pytorch3d#1543);
    pass `crop_intrinsics(K, -0.5, -0.5)` for pixel-exact PyTorch3D rendering.

    Args:
        K: OpenCV intrinsics without skew, (..., 3, 3).
        R: OpenCV world-to-camera rotation, (..., 3, 3).
        t: OpenCV world-to-camera translation, (..., 3).
        image_size: (H, W) of the image `K` refers to.

    Returns:
        R: PyTorch3D rotation (row-vector convention), (..., 3, 3).
        T: PyTorch3D translation, (..., 3).
        focal_length: PyTorch3D NDC focal lengths, (..., 2).
        principal_point: PyTorch3D NDC principal point, (..., 2).
    """
    check_intrinsics(K)
    if not bool((K[..., 0, 1] == 0).all()):
        raise ValueError(f"PyTorch3D cameras have no skew, got K[..., 0, 1] = {K[..., 0, 1].tolist()}")
    scale, c0 = _pytorch3d_screen_scale(image_size, K)
    focal_length = torch.stack([K[..., 0, 0], K[..., 1, 1]], dim=-1) / scale
    principal_point = -(K[..., :2, 2] - c0) / scale
    R_flipped, T = _flip_camera_axes(R, t, (-1.0, -1.0, 1.0))
    return R_flipped.mT, T, focal_length, principal_point


def pytorch3d_to_opencv(
    R: torch.Tensor,
    T: torch.Tensor,
    focal_length: torch.Tensor,
    principal_point: torch.Tensor,
    image_size: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch3D `PerspectiveCameras` (NDC) parameters to an OpenCV camera; inverse of `opencv_to_pytorch3d`.

    Reproduces `pytorch3d.renderer.camera_conversions._opencv_from_cameras_projection`.

    Args:
        R: PyTorch3D rotation (row-vector convention), (..., 3, 3).
        T: PyTorch3D translation, (..., 3).
        focal_length: PyTorch3D NDC focal lengths, (..., 2).
        principal_point: PyTorch3D NDC principal point, (..., 2).
        image_size: (H, W) of the image.

    Returns:
        K: OpenCV intrinsics, (..., 3, 3).
        R: OpenCV world-to-camera rotation, (..., 3, 3).
        t: OpenCV world-to-camera translation, (..., 3).
    """
    check_shape("focal_length", focal_length, (2,))
    check_shape("principal_point", principal_point, (2,))
    check_rotation_translation(R, T)
    scale, c0 = _pytorch3d_screen_scale(image_size, focal_length)
    focal_px = focal_length * scale
    principal_px = -principal_point * scale + c0
    K = intrinsics_matrix(focal_px[..., 0], focal_px[..., 1], principal_px[..., 0], principal_px[..., 1])
    R_cv, t_cv = _flip_camera_axes(R.mT, T, (-1.0, -1.0, 1.0))
    return K, R_cv, t_cv
