"""`render_meshes`: coloured, Lambert-shaded renders with person masks, depth and normal maps;
`render_body_video`: the control videos of the 2-D baselines (normal maps or part-coloured bodies)."""

from __future__ import annotations

import colorsys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import trimesh

from isa4d.geometry import intrinsics_from_fov, look_at
from isa4d.render._checks import Mesh, camera_tensors, to_numpy, unit_colors
from isa4d.render.raster import RAY_BACKEND, MeshScene, rasterize
from isa4d.render.shading import composite, interpolate, render_normal_map, shade_lambert, vertex_normals


def _light_direction(light: str | Any, R: torch.Tensor) -> np.ndarray:
    """World direction towards the light: `-R[2]` (towards the camera) for "headlight", else `light`."""
    if isinstance(light, str):
        if light != "headlight":
            raise ValueError(f'light must be "headlight" or a world direction (3,), got {light!r}')
        return -R[2].numpy()
    return np.asarray(light, dtype=np.float64)


def render_meshes(
    meshes: Sequence[Mesh] | MeshScene,
    vertex_colors: Sequence[Any],
    K: Any,
    R: Any,
    t: Any,
    image_size: Sequence[int],
    background: Any = None,
    light: str | Any = "headlight",
    ambient: float = 0.3,
) -> dict[str, np.ndarray]:
    """Render per-vertex-coloured meshes (people) from one camera, one ray per pixel (no anti-aliasing).

    Shading is smooth (interpolated area-weighted vertex normals) Lambert with one directional
    light, see `shade_lambert`. To render several cameras of one frame, build the `MeshScene`
    once and pass it instead of the meshes.

    Args:
        meshes: One `(vertices (V_i, 3), faces (F_i, 3))` pair per person, or a `MeshScene`.
        vertex_colors: One (V_i, 3) array per mesh, float in [0, 1] or uint8 in [0, 255].
        K: Intrinsics in pixels, (3, 3).
        R: World-to-camera rotation, (3, 3).
        t: World-to-camera translation, (3,).
        image_size: (H, W).
        background: None (black), a colour (3,) or an image (H, W, 3); float in [0, 1] or uint8.
        light: "headlight" (directional light along the camera's viewing axis) or the world
            direction (3,) from the scene towards a directional light.
        ambient: Ambient fraction of the light, in [0, 1].

    Returns:
        A dict with
        `rgb`: the image, (H, W, 3) uint8;
        `mask`: index of the mesh seen at each pixel, -1 for background, (H, W) int64;
        `depth`: camera-frame z, inf for background, (H, W) float32;
        `normal`: camera-space normal map (`render_normal_map` colours), 0 for background,
        (H, W, 3) float32 in [0, 1].
    """
    scene = meshes if isinstance(meshes, MeshScene) else MeshScene(meshes)
    K, R, t = camera_tensors(K, R, t)
    fragments = rasterize(scene, K, R, t, image_size)
    hit = fragments.mask
    colors = [unit_colors(f"vertex_colors[{i}]", c) for i, c in enumerate(vertex_colors)]
    albedo = interpolate(fragments, colors)
    per_vertex_normals = vertex_normals(scene.vertices, scene.faces)  # meshes are disjoint in the scene
    normals = interpolate(fragments, np.split(per_vertex_normals, np.cumsum(scene.num_vertices)[:-1]))
    shaded = np.zeros_like(albedo)
    shaded[hit] = shade_lambert(normals[hit], albedo[hit], _light_direction(light, R), ambient)
    background = np.zeros(3) if background is None else unit_colors("background", background)
    rgb = composite(shaded, hit, background)
    return {
        "rgb": (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8),
        "mask": fragments.mesh_id,
        "depth": fragments.depth.astype(np.float32),
        "normal": render_normal_map(fragments, normals, R).astype(np.float32),
    }


CONTROL_VIDEOS = ("normal", "body")
"""What `render_body_video` renders: camera-space normal maps, or Lambert-shaded coloured bodies."""


def part_colors(skinning_weights: Any) -> np.ndarray:
    """Per-vertex colours of body parts: each vertex takes the colour of the joint that moves it most.

    The J joints get J hues spread around the colour wheel in the order `7j mod J` (so neighbouring
    joints, e.g. a left and a right limb, get distant hues), saturation 0.7, value 0.95.

    Args:
        skinning_weights: (V, J) skinning weights (SMPL: J = 24, `BodyModel.lbs_weights`).

    Returns:
        (V, 3) float64 colours in [0, 1].
    """
    weights = to_numpy(skinning_weights)
    joints = weights.shape[1]
    palette = np.array([colorsys.hsv_to_rgb(7 * j % joints / joints, 0.7, 0.95) for j in range(joints)])
    return palette[weights.argmax(axis=1)]


def render_body_video(
    vertices: Sequence[Any],
    faces: Any,
    K: Any,
    R: Any,
    t: Any,
    image_size: Sequence[int],
    kind: str = "normal",
    vertex_colors: Any = None,
) -> np.ndarray:
    """Render posed bodies frame by frame, the control video of the 2-D baselines (docs/baselines.md).

    Args:
        vertices: One (T, V, 3) array of world vertices per person, all with the mesh `faces`; an empty
            sequence gives a black video.
        faces: (F, 3) vertex indices.
        K: (T, 3, 3) intrinsics for `image_size`.
        R: (T, 3, 3) world-to-camera rotations.
        t: (T, 3) world-to-camera translations.
        image_size: (H, W).
        kind: `"normal"`: camera-space normal maps (`render_normal_map` colours: (0.5, 0.5, 1) faces the
            camera); `"body"`: the bodies Lambert-shaded by a headlight (`render_meshes`).
        vertex_colors: (V, 3) colours of the `"body"` render in [0, 1] (e.g. `part_colors`); None: grey.

    Returns:
        (T, H, W, 3) float32 in [0, 1], 0 for background.
    """
    if kind not in CONTROL_VIDEOS:
        raise ValueError(f"unknown control video {kind!r}; choose from {CONTROL_VIDEOS}")
    video = np.zeros((len(K), *image_size, 3), dtype=np.float32)
    if not vertices:
        return video
    colors = np.full((vertices[0].shape[1], 3), 0.7) if vertex_colors is None else vertex_colors
    for frame in range(len(video)):
        meshes = [(person[frame], faces) for person in vertices]
        out = render_meshes(meshes, [colors] * len(meshes), K[frame], R[frame], t[frame], image_size)
        video[frame] = out["normal"] if kind == "normal" else out["rgb"] / 255.0
    return video


def _benchmark_people(persons: int, frame: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Person-sized ellipsoids (20480 faces, 1.8 m tall, 0.7 m apart) that sway differently every frame."""
    sphere = trimesh.creation.icosphere(subdivisions=5)
    rest = sphere.vertices * (0.25, 0.9, 0.15) + (0.0, 0.9, 0.0)
    sway = 0.05 * np.sin(0.5 * frame + 2.0 * rest[:, 1])
    meshes = []
    for i in range(persons):
        vertices = rest.copy()
        vertices[:, 0] += sway + 0.7 * (i - (persons - 1) / 2)
        meshes.append((vertices, sphere.faces))
    return meshes


def _timed(function: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """Result and wall-clock seconds of `function(*args)`."""
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def benchmark_render(size: int = 256, persons: int = 1, frames: int = 10) -> dict[str, float | int | str]:
    """Time `render_meshes` on moving person-sized meshes (a new BVH every frame), from a 4.5 m camera.

    Args:
        size: Image height and width.
        persons: Number of meshes (20480 faces each).
        frames: Number of frames timed.

    Returns:
        Medians over the frames (robust to other load on the machine) of `ms_per_frame`
        (end-to-end `render_meshes` from the meshes), `build_ms` (`MeshScene`: checks,
        concatenation, BVH build) and `cast_ms` (`rasterize` of a built scene: rays, cast,
        barycentrics), with `shade_ms` their difference; the mean `hit_fraction` (pixels covered);
        and the setup, with `torch_threads` and `backend` (`RAY_BACKEND`).
    """
    K = intrinsics_from_fov(40.0, (size, size), torch.float64)
    R, t = look_at(torch.tensor([0.0, 1.0, 4.5], dtype=K.dtype), torch.tensor([0.0, 0.9, 0.0], dtype=K.dtype))
    seconds = np.zeros((frames, 3))
    hit_fraction = 0.0
    for frame in range(frames):
        meshes = _benchmark_people(persons, frame)
        colors = [np.full((len(vertices), 3), 0.7) for vertices, _ in meshes]
        _, seconds[frame, 0] = _timed(render_meshes, meshes, colors, K, R, t, (size, size))
        scene, seconds[frame, 1] = _timed(MeshScene, meshes)
        fragments, seconds[frame, 2] = _timed(rasterize, scene, K, R, t, (size, size))
        hit_fraction += float(fragments.mask.mean()) / frames
    total_ms, build_ms, cast_ms = (float(ms) for ms in 1e3 * np.median(seconds, axis=0))
    return {
        "ms_per_frame": total_ms,
        "build_ms": build_ms,
        "cast_ms": cast_ms,
        "shade_ms": total_ms - build_ms - cast_ms,
        "hit_fraction": hit_fraction,
        "size": size,
        "persons": persons,
        "frames": frames,
        "faces": sum(len(faces) for _, faces in meshes),
        "torch_threads": torch.get_num_threads(),
        "backend": RAY_BACKEND,
    }
