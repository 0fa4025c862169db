"""Pinhole cameras in the ISA4D convention (OpenCV); see docs/conventions.md.

* World frame: right-handed, metres, **y up** (like SMPL); a body faces +z.
* Camera frame: OpenCV, x right, y down, z forward (points in front have positive depth).
* Extrinsics are world-to-camera: `X_cam = R @ X_world + t`; the camera centre is `o = -R^T t`.
* Intrinsics `K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]]` in pixels, with the centre of the
  top-left pixel at (0, 0): an image of width W spans u in [-0.5, W - 0.5].

The world is y-up while the camera is y-down, so `R = I` is a camera that sees the world upside
down; build cameras with `look_at` rather than from the identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from isa4d.geometry._validation import check_intrinsics, check_rotation_translation, check_shape

WORLD_UP: tuple[float, float, float] = (0.0, 1.0, 0.0)
"""The world's up direction (y up)."""


def world_to_camera(points: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Map world points into the camera frame, `X_cam = R @ X_world + t`.

    Args:
        points: World points, (..., N, 3).
        R: World-to-camera rotation, (..., 3, 3).
        t: World-to-camera translation, (..., 3).

    Returns:
        Camera-frame points, (..., N, 3).
    """
    check_shape("points", points, (3,))
    check_rotation_translation(R, t)
    return points @ R.mT + t.unsqueeze(-2)


def camera_to_world(points: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Map camera-frame points into the world, `X_world = R^T (X_cam - t)`.

    Args:
        points: Camera-frame points, (..., N, 3).
        R: World-to-camera rotation, (..., 3, 3).
        t: World-to-camera translation, (..., 3).

    Returns:
        World points, (..., N, 3).
    """
    check_shape("points", points, (3,))
    check_rotation_translation(R, t)
    return (points - t.unsqueeze(-2)) @ R


def camera_center(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Camera centre in world coordinates, `o = -R^T t`.

    Args:
        R: World-to-camera rotation, (..., 3, 3).
        t: World-to-camera translation, (..., 3).

    Returns:
        Camera centre, (..., 3).
    """
    check_rotation_translation(R, t)
    return -(R.mT @ t.unsqueeze(-1)).squeeze(-1)


def extrinsics_matrix(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Homogeneous world-to-camera matrix `[[R, t], [0, 1]]`.

    Args:
        R: World-to-camera rotation, (..., 3, 3).
        t: World-to-camera translation, (..., 3).

    Returns:
        Extrinsics, (..., 4, 4).
    """
    check_rotation_translation(R, t)
    batch = torch.broadcast_shapes(R.shape[:-2], t.shape[:-1])
    Rt = torch.cat([R.expand(*batch, 3, 3), t.unsqueeze(-1).expand(*batch, 3, 1)], dim=-1)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=Rt.dtype, device=Rt.device).expand(*batch, 1, 4)
    return torch.cat([Rt, bottom], dim=-2)


def project_points(
    points: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points to pixels with `K [R | t]`.

    Args:
        points: World points, (..., N, 3).
        K: Intrinsics in pixels, (..., 3, 3).
        R: World-to-camera rotation, (..., 3, 3).
        t: World-to-camera translation, (..., 3).

    Returns:
        uv: Pixel coordinates (top-left pixel centre at (0, 0)), (..., N, 2).
        depth: Camera-frame z (positive in front of the camera), (..., N).
    """
    check_intrinsics(K)
    cam = world_to_camera(points, R, t)
    depth = cam[..., 2]
    uv = (cam @ K.mT)[..., :2] / depth.unsqueeze(-1)
    return uv, depth


def pixel_to_camera(uv: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Back-project pixels to camera-frame points at depth 1, `K^-1 [u, v, 1]`.

    Args:
        uv: Pixel coordinates, (..., N, 2).
        K: Intrinsics in pixels, (..., 3, 3).

    Returns:
        Camera-frame points with z = 1, (..., N, 3).
    """
    check_shape("uv", uv, (2,))
    check_intrinsics(K)
    uv1 = F.pad(uv, (0, 1), value=1.0)
    return torch.linalg.solve_triangular(K, uv1.mT, upper=True).mT


def unproject(
    uv: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Lift pixels with known depth (camera-frame z) to world points; inverse of `project_points`.

    Args:
        uv: Pixel coordinates, (..., N, 2).
        depth: Camera-frame z, (..., N).
        K: Intrinsics in pixels, (..., 3, 3).
        R: World-to-camera rotation, (..., 3, 3).
        t: World-to-camera translation, (..., 3).

    Returns:
        World points, (..., N, 3).
    """
    if depth.shape != uv.shape[:-1]:
        raise ValueError(
            f"depth must have shape {tuple(uv.shape[:-1])} to match uv, got {tuple(depth.shape)}"
        )
    return camera_to_world(pixel_to_camera(uv, K) * depth.unsqueeze(-1), R, t)


def look_at(
    eye: torch.Tensor, target: torch.Tensor, up: Sequence[float] | torch.Tensor = WORLD_UP
) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV world-to-camera extrinsics of a camera at `eye` looking at `target`.

    The camera's z axis points at the target, its y axis (image down) points along `-up` as far
    as possible, and x = y × z points to the image right.

    Args:
        eye: Camera centre, (..., 3).
        target: Point the camera looks at (projects to the principal point), (..., 3).
        up: World up direction, (3,) or (..., 3); y up by default.

    Returns:
        R: World-to-camera rotation, (..., 3, 3).
        t: World-to-camera translation, (..., 3).
    """
    check_shape("eye", eye, (3,))
    check_shape("target", target, (3,))
    up = torch.as_tensor(up, dtype=eye.dtype, device=eye.device)
    check_shape("up", up, (3,))
    forward = target - eye
    right = torch.linalg.cross(forward, up.expand_as(forward))
    if not bool((right.norm(dim=-1) > 1e-6 * forward.norm(dim=-1)).all()):
        raise ValueError("look_at needs target != eye and a view direction that is not parallel to up")
    z = F.normalize(forward, dim=-1)
    x = F.normalize(right, dim=-1)
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z], dim=-2)
    return R, -(R @ eye.unsqueeze(-1)).squeeze(-1)
