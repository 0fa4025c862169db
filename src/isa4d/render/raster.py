"""Ray-casting rasteriser: one ray per pixel centre, first hit with trimesh's ray intersector.

Rays come from `isa4d.geometry.pixel_rays` at the pixel centres of `pixel_grid` (OpenCV camera,
world-to-camera `X_cam = R X + t`, top-left pixel centre at (0, 0)), so rendered pixels line up
exactly with `project_points`. The ray cast uses Embree (`trimesh.ray.ray_pyembree`, float32
BVH) when `embreex` imports, else trimesh's pure numpy `ray_triangle` (which needs `rtree` and is
orders of magnitude slower); `RAY_BACKEND` says which. The intersector only picks the first face
hit by each ray; the hit point is then computed in float64 as the intersection of the pixel ray with
that face's plane, so depths and barycentrics are exact up to float64 round-off (the face choice
itself has Embree's float32 precision at triangle edges).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import trimesh

from isa4d.geometry import pixel_grid, pixel_rays, world_to_camera
from isa4d.geometry._validation import check_image_size
from isa4d.render._checks import Mesh, camera_tensors, check_mesh

try:
    from trimesh.ray.ray_pyembree import RayMeshIntersector
except ImportError:  # embreex missing: trimesh's numpy/rtree ray tracer
    from trimesh.ray.ray_triangle import RayMeshIntersector

RAY_BACKEND: str = "embree" if RayMeshIntersector.__module__.endswith("ray_pyembree") else "triangle"
"""The intersector in use: "embree" (`trimesh.ray.ray_pyembree`) or "triangle" (`ray_triangle`)."""


@dataclass(frozen=True, eq=False)
class Fragments:
    """What each pixel of an (H, W) image sees; numpy arrays, background where nothing is hit.

    Attributes:
        mesh_id: Index of the mesh (person) hit, -1 for background, (H, W) int64.
        face_id: Index of the hit face within its mesh, -1 for background, (H, W) int64.
        bary: Barycentric coordinates of the hit in the face's vertex order (they sum to 1; entries
            can be negative by ~1e-6 at edges), 0 for background, (H, W, 3) float64.
        depth: Camera-frame z of the hit (not the distance along the ray), inf for background,
            (H, W) float64.
        vertex_ids: Vertices of the hit face as indices into the concatenation of all meshes'
            vertices in mesh order, -1 for background, (H, W, 3) int64.
        num_vertices: Vertex count of each mesh, (M,).
    """

    mesh_id: np.ndarray
    face_id: np.ndarray
    bary: np.ndarray
    depth: np.ndarray
    vertex_ids: np.ndarray
    num_vertices: tuple[int, ...]

    @property
    def mask(self) -> np.ndarray:
        """Pixels that hit a mesh, (H, W) bool."""
        return self.mesh_id >= 0


class MeshScene:
    """Meshes concatenated into one ray-casting scene, with its acceleration structure built.

    The Embree BVH depends on the vertex positions, so build one scene per frame (moving vertices
    need a rebuild; trimesh would rebuild anyway when a mesh's vertices change) and pass it to
    `rasterize` / `render_meshes` for every camera of that frame.

    Attributes:
        meshes: The validated meshes, `(vertices (V_i, 3) float64, faces (F_i, 3) int64)`.
        num_vertices: V_i per mesh.
        vertices: All vertices in mesh order, (sum V_i, 3).
        faces: All faces, indexing `vertices`, (sum F_i, 3).
        face_offsets: Index of each mesh's first face in `faces`, plus the total, (M + 1,).
        intersector: The trimesh ray intersector of the concatenated mesh.
    """

    def __init__(self, meshes: Sequence[Mesh]) -> None:
        """Validate and concatenate the meshes and build the BVH.

        Args:
            meshes: One `(vertices (V_i, 3), faces (F_i, 3))` pair per mesh (numpy or torch).
        """
        if len(meshes) == 0:
            raise ValueError("meshes must hold at least one (vertices, faces) pair")
        self.meshes = tuple(check_mesh(f"meshes[{i}]", mesh) for i, mesh in enumerate(meshes))
        self.num_vertices = tuple(len(vertices) for vertices, _ in self.meshes)
        vertex_offsets = np.cumsum((0, *self.num_vertices))
        self.face_offsets = np.cumsum([0] + [len(faces) for _, faces in self.meshes])
        if self.face_offsets[-1] == 0:
            raise ValueError("meshes have no faces")
        self.vertices = np.concatenate([vertices for vertices, _ in self.meshes])
        self.faces = np.concatenate(
            [faces + offset for (_, faces), offset in zip(self.meshes, vertex_offsets[:-1], strict=True)]
        )
        mesh = trimesh.Trimesh(self.vertices, self.faces, process=False, validate=False)
        self.intersector = RayMeshIntersector(mesh)
        # Both backends build their acceleration structure lazily; one query builds it now.
        self.intersector.intersects_first(np.zeros((1, 3)), np.array([[0.0, 0.0, 1.0]]))


def _image(size: tuple[int, int], fill: float, index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Scatter per-hit `values (N, ...)` to the flat pixel `index (N,)` of an image filled with `fill`."""
    image = np.full((size[0] * size[1], *values.shape[1:]), fill, dtype=values.dtype)
    image[index] = values
    return image.reshape(*size, *values.shape[1:])


def rasterize(
    meshes: Sequence[Mesh] | MeshScene, K: Any, R: Any, t: Any, image_size: Sequence[int]
) -> Fragments:
    """Rasterise meshes seen by one camera by casting one ray per pixel centre (first hit).

    All meshes form one scene, so occlusion between them is resolved per pixel.

    Args:
        meshes: One `(vertices (V_i, 3), faces (F_i, 3))` pair per mesh, or a prebuilt `MeshScene`.
        K: Intrinsics in pixels, (3, 3) (numpy or torch).
        R: World-to-camera rotation, (3, 3).
        t: World-to-camera translation, (3,).
        image_size: (H, W).

    Returns:
        The per-pixel `Fragments`.
    """
    scene = meshes if isinstance(meshes, MeshScene) else MeshScene(meshes)
    size = check_image_size("image_size", image_size)
    K, R, t = camera_tensors(K, R, t)
    origins, directions = (x.numpy() for x in pixel_rays(pixel_grid(*size, dtype=torch.float64), K, R, t))
    face_ids, ray_ids = scene.intersector.intersects_id(origins, directions, multiple_hits=False)
    # Exact float64 hit points: the pixel ray meets the plane of the face found by the (float32) cast.
    corners = scene.faces[face_ids]
    triangles = scene.vertices[corners]
    normals = trimesh.util.unitize(trimesh.triangles.cross(triangles))
    points, valid = trimesh.intersections.planes_lines(
        triangles[:, 0], normals, origins[ray_ids], directions[ray_ids]
    )  # drops rays within 0.0006° of grazing, like trimesh's intersects_location
    face_ids, ray_ids, corners, triangles = face_ids[valid], ray_ids[valid], corners[valid], triangles[valid]
    mesh_ids = np.searchsorted(scene.face_offsets, face_ids, side="right") - 1
    depth = world_to_camera(torch.from_numpy(points), R, t)[:, 2].numpy()
    return Fragments(
        mesh_id=_image(size, -1, ray_ids, mesh_ids),
        face_id=_image(size, -1, ray_ids, face_ids - scene.face_offsets[mesh_ids]),
        bary=_image(size, 0.0, ray_ids, trimesh.triangles.points_to_barycentric(triangles, points)),
        depth=_image(size, np.inf, ray_ids, depth),
        vertex_ids=_image(size, -1, ray_ids, corners),
        num_vertices=scene.num_vertices,
    )
