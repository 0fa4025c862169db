"""CPU rendering of triangle meshes by ray casting (Embree via trimesh), for synthetic 4D human data.

`rasterize` casts one ray per pixel centre (`isa4d.geometry.pixel_rays`, OpenCV cameras) into all
meshes at once and returns per-pixel `Fragments` (mesh id, face id, barycentrics, depth) as numpy
arrays; the shading helpers turn them into images, and `render_meshes` does it all for per-vertex
coloured people (RGB, person mask, depth, ControlNet-style normal map); `render_body_video` renders the
control videos of the 2-D baselines. See docs/render.md.
"""

from isa4d.render.raster import RAY_BACKEND, Fragments, MeshScene, rasterize
from isa4d.render.renderer import (
    CONTROL_VIDEOS,
    benchmark_render,
    part_colors,
    render_body_video,
    render_meshes,
)
from isa4d.render.shading import (
    composite,
    interpolate,
    render_normal_map,
    sample_texture,
    shade_lambert,
    vertex_normals,
)

__all__ = [
    "CONTROL_VIDEOS",
    "RAY_BACKEND",
    "Fragments",
    "MeshScene",
    "benchmark_render",
    "composite",
    "interpolate",
    "part_colors",
    "rasterize",
    "render_body_video",
    "render_meshes",
    "render_normal_map",
    "sample_texture",
    "shade_lambert",
    "vertex_normals",
]
