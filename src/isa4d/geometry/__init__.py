"""Camera geometry for ISA4D in one convention (OpenCV cameras, y-up world); see docs/conventions.md.

Cameras are world-to-camera `X_cam = R @ X_world + t` with camera x right, y down, z forward and
intrinsics `K` in pixels whose top-left pixel centre is (0, 0). Image sizes are always `(H, W)`.
All functions are batched over leading dimensions, differentiable and dtype-preserving.
"""

from isa4d.geometry.cameras import (
    WORLD_UP,
    camera_center,
    camera_to_world,
    extrinsics_matrix,
    look_at,
    pixel_to_camera,
    project_points,
    unproject,
    world_to_camera,
)
from isa4d.geometry.conventions import (
    opencv_to_opengl,
    opencv_to_pytorch3d,
    opengl_to_opencv,
    pytorch3d_to_opencv,
)
from isa4d.geometry.intrinsics import (
    crop_intrinsics,
    intrinsics_from_fov,
    intrinsics_matrix,
    resize_intrinsics,
)
from isa4d.geometry.ndc import (
    grid_ndc,
    mvp_matrix,
    ndc_from_pixel_matrix,
    ndc_to_pixel,
    pixel_from_ndc_matrix,
    pixel_grid,
    pixel_to_ndc,
    project_to_ndc,
)
from isa4d.geometry.plucker import pixel_rays, plucker_image
from isa4d.geometry.trajectories import TRAJECTORIES, dolly, handheld, make_trajectory, orbit, pan, static

__all__ = [
    "TRAJECTORIES",
    "WORLD_UP",
    "camera_center",
    "camera_to_world",
    "crop_intrinsics",
    "dolly",
    "extrinsics_matrix",
    "grid_ndc",
    "handheld",
    "intrinsics_from_fov",
    "intrinsics_matrix",
    "look_at",
    "make_trajectory",
    "mvp_matrix",
    "ndc_from_pixel_matrix",
    "ndc_to_pixel",
    "opencv_to_opengl",
    "opencv_to_pytorch3d",
    "opengl_to_opencv",
    "orbit",
    "pan",
    "pixel_from_ndc_matrix",
    "pixel_grid",
    "pixel_rays",
    "pixel_to_camera",
    "pixel_to_ndc",
    "plucker_image",
    "project_points",
    "project_to_ndc",
    "pytorch3d_to_opencv",
    "resize_intrinsics",
    "static",
    "unproject",
    "world_to_camera",
]
