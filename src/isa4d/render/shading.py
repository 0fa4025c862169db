"""Per-pixel shading on `Fragments`: attribute interpolation, normals, Lambert light, normal maps, textures.

Everything is numpy on the CPU. Normals are world-frame unless stated otherwise; colours are float
RGB in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import trimesh

from isa4d.render._checks import check_mesh, check_rotation, concat_per_mesh, to_numpy
from isa4d.render.raster import Fragments


def _normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit vectors along the last axis; zero vectors stay zero."""
    norm = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norm, out=np.zeros_like(vectors), where=norm > 0)


def _check_vectors(name: str, vectors: Any) -> np.ndarray:
    """Finite float64 vectors of shape (..., 3)."""
    vectors = np.asarray(to_numpy(vectors), dtype=np.float64)
    if vectors.ndim == 0 or vectors.shape[-1] != 3 or not np.isfinite(vectors).all():
        raise ValueError(f"{name} must be finite 3-vectors (..., 3), got shape {vectors.shape}")
    return vectors


def vertex_normals(vertices: Any, faces: Any) -> np.ndarray:
    """Area-weighted unit vertex normals: the normalised sum of the incident faces' area vectors.

    Face normals follow the vertex order (counter-clockwise seen from the side they point to).

    Args:
        vertices: Positions, (V, 3).
        faces: Vertex indices, (F, 3).

    Returns:
        Unit normals, zero for vertices without (non-degenerate) faces, (V, 3) float64.
    """
    vertices, faces = check_mesh("mesh", (vertices, faces))
    area_vectors = trimesh.triangles.cross(vertices[faces])  # 2 · area · unit normal
    return trimesh.geometry.mean_vertex_normals(len(vertices), faces, area_vectors)


def interpolate(fragments: Fragments, attributes: Sequence[Any]) -> np.ndarray:
    """Barycentric interpolation of per-vertex attributes (colours, normals, UVs, ...) at every pixel.

    Args:
        fragments: Output of `rasterize` for M meshes.
        attributes: One array per mesh, (V_i, ...) with the same trailing shape for all meshes.

    Returns:
        Interpolated values, 0 for background, (H, W, ...) float64. Interpolated unit normals are
        not unit; normalise them (`shade_lambert` and `render_normal_map` do).
    """
    values = concat_per_mesh("attributes", attributes, fragments.num_vertices)
    hit = fragments.mask
    out = np.zeros((*hit.shape, *values.shape[1:]))
    corners = values[fragments.vertex_ids[hit]]  # (N, 3, ...)
    out[hit] = np.einsum("nk,nk...->n...", fragments.bary[hit], corners)
    return out


def shade_lambert(normals: Any, albedo: Any, light_dir: Any, ambient: float = 0.3) -> np.ndarray:
    """Lambert shading with one directional light plus ambient light.

    `colour = albedo · (ambient + (1 - ambient) · max(0, n̂ · l̂))`: one-sided, so faces turned
    away from the light get the ambient term only, and a face facing the light gets `albedo`.

    Args:
        normals: Surface normals (normalised here; zero normals get ambient only), (..., 3).
        albedo: Surface colours, (..., C) with the leading shape of `normals`.
        light_dir: Direction from the surface towards the light, in the frame of `normals`,
            (3,) or (..., 3). For a camera headlight use `-R[2]` (world) or `(0, 0, -1)` (camera).
        ambient: Ambient fraction in [0, 1].

    Returns:
        Shaded colours, (..., C) float64.
    """
    normals = _check_vectors("normals", normals)
    light = _normalize(_check_vectors("light_dir", light_dir))
    albedo = np.asarray(to_numpy(albedo), dtype=np.float64)
    if albedo.shape[:-1] != normals.shape[:-1]:
        raise ValueError(f"albedo {albedo.shape} must be (..., C) over normals' {normals.shape[:-1]}")
    if not 0.0 <= ambient <= 1.0:
        raise ValueError(f"ambient must be in [0, 1], got {ambient}")
    cosine = np.clip(np.sum(_normalize(normals) * light, axis=-1), 0.0, None)
    return albedo * (ambient + (1.0 - ambient) * cosine)[..., None]


def composite(fg: Any, mask: Any, background: Any) -> np.ndarray:
    """Alpha-composite a foreground over a background, `mask · fg + (1 - mask) · background`.

    Args:
        fg: Foreground image, (H, W, C).
        mask: Coverage, bool or float in [0, 1], (H, W).
        background: Background colour (C,) or image (H, W, C).

    Returns:
        Composited image, (H, W, C) float64.
    """
    fg = np.asarray(to_numpy(fg), dtype=np.float64)
    alpha = np.asarray(to_numpy(mask), dtype=np.float64)
    if fg.ndim != 3 or alpha.shape != fg.shape[:2]:
        raise ValueError(f"fg must be (H, W, C) and mask (H, W), got {fg.shape} and {alpha.shape}")
    background = np.asarray(to_numpy(background), dtype=np.float64)
    if background.shape not in (fg.shape, fg.shape[2:]):
        raise ValueError(f"background must have shape {fg.shape[2:]} or {fg.shape}, got {background.shape}")
    alpha = alpha[..., None]
    return alpha * fg + (1.0 - alpha) * background


def render_normal_map(fragments: Fragments, normals: Any, R: Any) -> np.ndarray:
    """Camera-space normal map in the colour convention of ControlNet 1.1 "normalbae".

    With the camera-frame normal `n = R n_world` (OpenCV: x right, y down, z forward), the colour
    is `(1 - n) / 2`: red grows towards the image left, green towards the image top and blue
    towards the camera, so a surface facing the camera is (0.5, 0.5, 1). This is the ScanNet /
    Bae et al. convention used to train `control_v11p_sd15_normalbae`, i.e. OpenGL view-space
    normals `(n_gl + 1) / 2` with the red channel flipped.

    Args:
        fragments: Output of `rasterize`.
        normals: World-frame per-pixel normals, e.g. `interpolate(fragments, vertex normals)`
            (normalised here), (H, W, 3).
        R: World-to-camera rotation, (3, 3).

    Returns:
        Colours in [0, 1], 0 for background, (H, W, 3) float64.
    """
    normals = _check_vectors("normals", normals)
    if normals.shape != (*fragments.mask.shape, 3):
        raise ValueError(f"normals must have shape {(*fragments.mask.shape, 3)}, got {normals.shape}")
    hit = fragments.mask
    colors = np.zeros_like(normals)
    colors[hit] = (1.0 - _normalize(normals[hit]) @ check_rotation(R).numpy().T) / 2.0
    return colors


def sample_texture(image: Any, uv: Any) -> np.ndarray:
    """Bilinear texture lookup with wrap-around (a periodic texture).

    UV convention: `u` runs across the columns (left to right) and `v` down the rows (top to
    bottom), one period per unit; texel `(row i, column j)` has its centre at
    `((j + 1/2) / w, (i + 1/2) / h)` (the `align_corners=False` convention of the rest of ISA4D).
    For OpenGL-style UVs with v up, pass `(u, 1 - v)`.

    Args:
        image: Texture, (h, w, C), any real dtype (uint8 photos are fine).
        uv: Texture coordinates, (..., 2).

    Returns:
        Sampled values in the units of `image`, (..., C) float64.
    """
    image = to_numpy(image)
    uv = np.asarray(to_numpy(uv), dtype=np.float64)
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0 or image.dtype.kind not in "fiu":
        raise ValueError(f"image must be a real (h, w, C) array, got {image.shape} {image.dtype}")
    if uv.ndim == 0 or uv.shape[-1] != 2 or not np.isfinite(uv).all():
        raise ValueError(f"uv must be finite (..., 2), got shape {uv.shape}")
    h, w = image.shape[:2]
    x = uv[..., 0] * w - 0.5
    y = uv[..., 1] * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    cols = x0.astype(np.int64) % w, (x0.astype(np.int64) + 1) % w
    rows = y0.astype(np.int64) % h, (y0.astype(np.int64) + 1) % h
    texels = image.astype(np.float64)
    top = texels[rows[0], cols[0]] * (1 - fx) + texels[rows[0], cols[1]] * fx
    bottom = texels[rows[1], cols[0]] * (1 - fx) + texels[rows[1], cols[1]] * fx
    return top * (1 - fy) + bottom * fy
