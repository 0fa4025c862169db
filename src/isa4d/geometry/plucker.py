"""Camera rays and Plücker ray images.

A ray with origin `o` and unit direction `d` is stored as Plücker coordinates `(m, d)` with the
moment `m = o × d`; a point `p` lies on the ray's line iff `p × d = m`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from isa4d.geometry._validation import check_image_size
from isa4d.geometry.cameras import camera_center, pixel_to_camera
from isa4d.geometry.intrinsics import resize_intrinsics
from isa4d.geometry.ndc import pixel_grid


def pixel_rays(
    uv: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """World-frame rays through (sub-)pixel positions.

    Args:
        uv: Pixel coordinates, (..., N, 2).
        K: Intrinsics in pixels, (..., 3, 3).
        R: World-to-camera rotation, (..., 3, 3).
        t: World-to-camera translation, (..., 3).

    Returns:
        origins: Camera centre repeated per ray, (..., N, 3).
        directions: Unit world-frame directions, (..., N, 3).
    """
    directions = F.normalize(pixel_to_camera(uv, K) @ R, dim=-1)
    origins = camera_center(R, t).unsqueeze(-2).expand_as(directions)
    return origins, directions


def plucker_image(
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
    image_size: Sequence[int],
    out_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Plücker ray image `(o × d, d)` through the pixel centres of an `out_size` image.

    Args:
        K: Intrinsics for `image_size`, (..., 3, 3).
        R: World-to-camera rotation, (..., 3, 3).
        t: World-to-camera translation, (..., 3).
        image_size: (H, W) that `K` refers to.
        out_size: (h, w) of the ray image; `K` is rescaled with `resize_intrinsics`. Defaults to
            `image_size`.

    Returns:
        Channels (moment m = o × d, unit direction d), (..., 6, h, w).
    """
    h, w = check_image_size("out_size", image_size if out_size is None else out_size)
    K = resize_intrinsics(K, image_size, (h, w))
    origins, directions = pixel_rays(pixel_grid(h, w, K.dtype, K.device), K, R, t)
    rays = torch.cat([torch.linalg.cross(origins, directions), directions], dim=-1)
    return rearrange(rays, "... (h w) c -> ... c h w", h=h, w=w)
