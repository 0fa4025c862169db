"""Fixed points on the body surface that follow the posed mesh (same body location in every frame)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class SurfaceSampler(nn.Module):
    """N points drawn once, uniformly by area, on a mesh's rest-pose surface.

    Each point is a face and barycentric coordinates chosen at construction (seeded), so point n is
    the same body location in every frame and for every person sharing the mesh topology; posing
    only moves it with its triangle.

    Attributes:
        face_ids: (N,) int64 buffer, the face of each point.
        vertex_ids: (N, 3) int64 buffer, the vertices of that face.
        barycentric: (N, 3) float32 buffer, the point's barycentric coordinates in that face.
        canonical_points: (N, 3) float32 buffer, the points on the rest-pose surface.
    """

    def __init__(
        self,
        faces: torch.Tensor | np.ndarray,
        rest_vertices: torch.Tensor | np.ndarray,
        num_points: int,
        seed: int = 0,
    ) -> None:
        """
        Args:
            faces: (F, 3) vertex indices of the triangles.
            rest_vertices: (V, 3) rest-pose vertices; face areas there set the sampling density.
            num_points: N, the number of points.
            seed: seed of the torch.Generator drawing faces and barycentric coordinates.
        """
        super().__init__()
        faces = torch.as_tensor(faces, dtype=torch.long, device="cpu")
        rest_vertices = torch.as_tensor(rest_vertices, dtype=torch.float64, device="cpu")
        triangles = rest_vertices[faces]
        areas = 0.5 * torch.linalg.cross(
            triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]
        ).norm(dim=-1)
        generator = torch.Generator().manual_seed(seed)
        face_ids = torch.multinomial(areas, num_points, replacement=True, generator=generator)
        self.register_buffer("face_ids", face_ids)
        self.register_buffer("vertex_ids", faces[face_ids])
        self.register_buffer("barycentric", _uniform_barycentric(num_points, generator))
        self.register_buffer("canonical_points", self(rest_vertices.float()))

    @property
    def num_points(self) -> int:
        return self.face_ids.shape[0]

    def forward(self, vertices: torch.Tensor) -> torch.Tensor:
        """Positions of the points on a posed mesh.

        Args:
            vertices: (..., V, 3) posed vertices, any leading dimensions (frames, persons).

        Returns:
            (..., N, 3) point positions.
        """
        corners = vertices[..., self.vertex_ids, :]
        return torch.einsum("...nkc,nk->...nc", corners, self.barycentric.to(vertices.dtype))


def _uniform_barycentric(num_points: int, generator: torch.Generator) -> torch.Tensor:
    """Barycentric coordinates (N, 3) uniform over a triangle (square-root warping of two uniforms)."""
    u, v = torch.rand(2, num_points, generator=generator, dtype=torch.float64)
    root = u.sqrt()
    return torch.stack([1.0 - root, root * (1.0 - v), root * v], dim=-1).float()
