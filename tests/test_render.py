"""Tests of `isa4d.render` against analytic sphere projections, `isa4d.geometry` and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from isa4d import geometry as g
from isa4d import render as r

F64 = torch.float64


def camera(eye, target, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(K, R, t) of a `look_at` camera, float64."""
    R, t = g.look_at(torch.tensor(eye, dtype=F64), torch.tensor(target, dtype=F64))
    return K, R, t


def sphere(center=(0.0, 0.0, 0.0), radius: float = 1.0, subdivisions: int = 4):
    """Icosphere `(vertices, faces)` with outward (counter-clockwise) faces."""
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return mesh.vertices + np.asarray(center), mesh.faces


def quad(normal_angle_deg: float = 0.0):
    """2×2 m square through the origin, normal (sin a, 0, cos a): +z rotated about y by `a`."""
    a = math.radians(normal_angle_deg)
    right = np.array([math.cos(a), 0.0, -math.sin(a)])
    up = np.array([0.0, 1.0, 0.0])
    vertices = np.stack([-right - up, right - up, right + up, -right + up])
    return vertices, np.array([[0, 1, 2], [0, 2, 3]])


def pixel_centers(mask: np.ndarray) -> np.ndarray:
    """(u, v) of the True pixels, (N, 2) float64."""
    v, u = np.nonzero(mask)
    return np.stack([u, v], axis=-1).astype(np.float64)


def test_embree_is_used_when_available():
    pytest.importorskip("embreex")
    assert r.RAY_BACKEND == "embree"


def test_sphere_on_axis_area_depth_and_centroid():
    """A sphere on the optical axis projects to a disk of radius f r / sqrt(d² - r²)."""
    f, d, radius, (cx, cy) = 60.0, 4.0, 1.0, (30.0, 20.0)
    K = g.intrinsics_matrix(*torch.tensor([f, f, cx, cy], dtype=F64))
    center = np.array([0.3, -0.2, 0.5])
    eye = center + d * np.array([0.48, 0.6, 0.64])  # unit direction, d away
    K, R, t = camera(eye, center, K)
    fragments = r.rasterize([sphere(center, radius)], K, R, t, (48, 64))

    disk_radius = f * radius / math.sqrt(d**2 - radius**2)
    assert fragments.mask.sum() == pytest.approx(math.pi * disk_radius**2, rel=0.02)
    assert set(np.unique(fragments.mesh_id)) == {-1, 0}
    assert fragments.depth[int(cy), int(cx)] == pytest.approx(d - radius, abs=2e-3)  # faces are inscribed
    assert np.isinf(fragments.depth[~fragments.mask]).all()
    projected, _ = g.project_points(torch.tensor(center[None], dtype=F64), K, R, t)
    np.testing.assert_allclose(pixel_centers(fragments.mask).mean(0), projected[0].numpy(), atol=0.05)


def test_sphere_off_axis_is_the_analytic_ellipse():
    """Off axis, the silhouette is the section of the tangent cone: an ellipse with known area and centre."""
    size, f, radius = (64, 64), 70.0, 1.0
    K = g.intrinsics_from_fov(2 * math.degrees(math.atan(32 / f)), size, F64)
    K, R, t = camera((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), K)
    center = np.array([1.2, -0.8, 5.0])
    fragments = r.rasterize([sphere(center, radius)], K, R, t, size)

    c_cam = g.world_to_camera(torch.tensor(center[None], dtype=F64), R, t)[0].numpy()
    theta = math.acos(c_cam[2] / np.linalg.norm(c_cam))
    alpha = math.asin(radius / np.linalg.norm(c_cam))
    k = math.cos(theta) ** 2 - math.sin(alpha) ** 2
    semi_major = f * math.sin(alpha) * math.cos(alpha) / k
    semi_minor = f * math.sin(alpha) / math.sqrt(k)
    offset = f * math.sin(theta) * math.cos(theta) / k  # principal point to ellipse centre
    direction = c_cam[:2] / np.linalg.norm(c_cam[:2])
    expected_center = K[:2, 2].numpy() + offset * direction

    assert fragments.mask.sum() == pytest.approx(math.pi * semi_major * semi_minor, rel=0.02)
    np.testing.assert_allclose(pixel_centers(fragments.mask).mean(0), expected_center, atol=0.1)


def test_barycentrics_reconstruct_the_point_on_the_pixel_ray():
    """Σ bary_i v_i of the hit face is the pixel ray's point at the rendered depth (`unproject`)."""
    size = (40, 56)
    K = g.intrinsics_matrix(*torch.tensor([65.0, 58.0, 29.3, 18.7], dtype=F64))
    K[0, 1] = 1.5  # skew
    K, R, t = camera((1.5, 0.8, 3.0), (0.1, 0.0, 0.2), K)
    rotation = trimesh.transformations.rotation_matrix(0.7, (1.0, 2.0, 0.5))[:3, :3]
    blob_vertices, blob_faces = sphere(subdivisions=3)
    blob = (blob_vertices * (0.9, 0.5, 0.7) @ rotation.T + (0.2, 0.1, 0.3), blob_faces)
    meshes = [sphere((-0.4, 0.3, -0.6), 0.5, 3), blob]
    fragments = r.rasterize(meshes, K, R, t, size)
    hit = fragments.mask
    assert 0.2 < hit.mean() < 0.9 and set(np.unique(fragments.mesh_id)) == {-1, 0, 1}

    on_ray = g.unproject(
        torch.from_numpy(pixel_centers(hit)), torch.from_numpy(fragments.depth[hit]), K, R, t
    ).numpy()
    from_faces = np.stack(
        [
            fragments.bary[v, u] @ meshes[m][0][meshes[m][1][fragments.face_id[v, u]]]
            for v, u, m in zip(*np.nonzero(hit), fragments.mesh_id[hit], strict=True)
        ]
    )
    np.testing.assert_allclose(from_faces, on_ray, atol=1e-5)
    np.testing.assert_allclose(r.interpolate(fragments, [m[0] for m in meshes])[hit], on_ray, atol=1e-5)
    np.testing.assert_allclose(fragments.bary[hit].sum(-1), 1.0, atol=1e-12)
    assert fragments.bary[hit].min() > -1e-4


def test_visible_vertices_project_onto_incident_or_neighbouring_faces():
    vertices, faces = sphere(subdivisions=3)
    eye = np.array([0.0, 0.5, 4.0])
    K, R, t = camera(eye, (0.0, 0.0, 0.0), g.intrinsics_from_fov(40.0, (64, 64), F64))
    fragments = r.rasterize([(vertices, faces)], K, R, t, (64, 64))

    to_camera = (eye - vertices) / np.linalg.norm(eye - vertices, axis=1, keepdims=True)
    front = np.flatnonzero(np.sum(vertices * to_camera, axis=1) > 0.5)  # unit sphere: normal = position
    uv, _ = g.project_points(torch.from_numpy(vertices[front]), K, R, t)
    pixels = np.round(uv.numpy()).astype(int)
    seen = fragments.face_id[pixels[:, 1], pixels[:, 0]]

    incident = trimesh.Trimesh(vertices, faces, process=False).vertex_faces  # (V, max valence), -1 padded
    on_incident = [seen[i] in incident[v] for i, v in enumerate(front)]
    near = [np.isin(faces[seen[i]], faces[incident[v][incident[v] >= 0]]).any() for i, v in enumerate(front)]
    assert len(front) > 50 and all(near)
    assert np.mean(on_incident) > 0.9


def test_nearer_mesh_wins_where_meshes_overlap():
    """Rendering two meshes together equals the per-pixel nearest of the two rendered alone."""
    K, R, t = camera((0.0, 0.0, 5.0), (0.0, 0.0, 0.0), g.intrinsics_from_fov(45.0, (48, 48), F64))
    far, near = sphere((0.0, 0.0, 0.0), 1.0, 3), sphere((0.8, 0.3, 1.5), 0.6, 3)
    meshes = [(torch.from_numpy(v), torch.from_numpy(f)) for v, f in (far, near)]  # torch input works too
    both = r.rasterize(meshes, K, R, t, (48, 48))
    alone = [r.rasterize([mesh], K, R, t, (48, 48)) for mesh in (far, near)]

    depths = np.stack([a.depth for a in alone])
    overlap = alone[0].mask & alone[1].mask
    assert overlap.sum() > 30 and (alone[0].depth[overlap] > alone[1].depth[overlap]).all()
    expected_id = np.where(np.isinf(depths).all(0), -1, np.argmin(depths, axis=0))
    np.testing.assert_array_equal(both.mesh_id, expected_id)
    np.testing.assert_array_equal(both.depth, depths.min(0))
    for m in (0, 1):
        np.testing.assert_array_equal(both.face_id[expected_id == m], alone[m].face_id[expected_id == m])
    assert (both.mesh_id[overlap] == 1).all()


def test_scene_reuse_across_cameras_and_empty_views():
    meshes = [sphere(subdivisions=2)]
    scene = r.MeshScene(meshes)
    K = g.intrinsics_from_fov(50.0, (24, 32), F64)
    for eye in [(0.0, 0.0, 4.0), (3.0, 1.0, 2.0)]:
        from_scene = r.rasterize(scene, *camera(eye, (0.0, 0.0, 0.0), K), (24, 32))
        fresh = r.rasterize(meshes, *camera(eye, (0.0, 0.0, 0.0), K), (24, 32))
        np.testing.assert_array_equal(from_scene.face_id, fresh.face_id)
        np.testing.assert_array_equal(from_scene.depth, fresh.depth)
    away = r.rasterize(scene, *camera((0.0, 0.0, 4.0), (0.0, 0.0, 8.0), K), (24, 32))
    assert not away.mask.any() and (away.face_id == -1).all() and np.isinf(away.depth).all()


def test_vertex_normals_are_area_weighted():
    # Vertex 0 is shared by a triangle of area 2 in the plane z = 0 and one of area 0.5 in x = 0.
    vertices = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    faces = np.array([[0, 1, 2], [0, 3, 4]])
    expected = np.array([0.5, 0.0, 2.0]) / math.hypot(0.5, 2.0)
    normals = r.vertex_normals(vertices, faces)
    np.testing.assert_allclose(normals[0], expected, atol=1e-12)
    np.testing.assert_allclose(normals[1], (0, 0, 1), atol=1e-12)
    np.testing.assert_allclose(normals[4], (1, 0, 0), atol=1e-12)

    sphere_vertices, sphere_faces = sphere(subdivisions=3)
    radial = np.sum(r.vertex_normals(sphere_vertices, sphere_faces) * sphere_vertices, axis=1)
    assert radial.min() > 0.999


def test_shade_lambert_formula():
    normals = np.array([[0.0, 0.0, 2.0], [0.0, 0.6, 0.8], [0.0, 0.0, -1.0]])
    albedo = np.array([[0.2, 0.5, 0.9]] * 3)
    shaded = r.shade_lambert(normals, albedo, light_dir=(0.0, 0.0, 3.0), ambient=0.25)
    cosines = np.array([1.0, 0.8, 0.0])  # the back-facing normal gets the ambient term only
    np.testing.assert_allclose(shaded, albedo * (0.25 + 0.75 * cosines)[:, None], atol=1e-12)


@pytest.mark.parametrize(
    ("light", "cosine"), [("headlight", 1.0), ((0.0, 0.6, 0.8), 0.8), ((0.0, 0.0, -1.0), 0.0)]
)
def test_render_meshes_plane_matches_lambert_and_normal_colours(light, cosine):
    K, R, t = camera((0.0, 0.0, 3.0), (0.0, 0.0, 0.0), g.intrinsics_from_fov(50.0, (32, 32), F64))
    plane = quad()
    color, ambient, background = np.array([0.2, 0.5, 0.9]), 0.25, np.array([10, 20, 30], dtype=np.uint8)
    out = r.render_meshes([plane], [np.tile(color, (4, 1))], K, R, t, (32, 32), background, light, ambient)
    hit = out["mask"] == 0
    assert 0.3 < hit.mean() < 1.0 and set(np.unique(out["mask"])) == {-1, 0}
    expected = np.round(255 * color * (ambient + (1 - ambient) * cosine))
    np.testing.assert_allclose(out["rgb"][hit], np.broadcast_to(expected, (hit.sum(), 3)), atol=1)
    assert (out["rgb"][~hit] == background).all() and out["rgb"].dtype == np.uint8
    np.testing.assert_allclose(
        out["normal"][hit], np.broadcast_to((0.5, 0.5, 1.0), (hit.sum(), 3)), atol=1e-6
    )
    assert (out["normal"][~hit] == 0).all()
    np.testing.assert_allclose(out["depth"][hit], 3.0, atol=1e-6)


def test_normal_map_of_a_tilted_plane_follows_the_normalbae_colours():
    """Red = towards the image left: a normal turned to the image right has red < 0.5."""
    K, R, t = camera((0.0, 0.0, 3.0), (0.0, 0.0, 0.0), g.intrinsics_from_fov(50.0, (32, 32), F64))
    vertices, faces = quad(normal_angle_deg=30.0)  # world +x is the image right for this camera
    fragments = r.rasterize([(vertices, faces)], K, R, t, (32, 32))
    normals = r.interpolate(fragments, [r.vertex_normals(vertices, faces)])
    colors = r.render_normal_map(fragments, normals, R)
    expected = ((1 - math.sin(math.radians(30))) / 2, 0.5, (1 + math.cos(math.radians(30))) / 2)
    np.testing.assert_allclose(
        colors[fragments.mask], np.broadcast_to(expected, colors[fragments.mask].shape)
    )
    assert (colors[~fragments.mask] == 0).all()


def test_composite_blends():
    fg = np.ones((2, 2, 3))
    mask = np.array([[1.0, 0.0], [0.25, True]])
    out = r.composite(fg, mask, np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(out[1, 0], 0.25 + 0.75 * np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(out[0, 1], (0.0, 0.5, 1.0))
    np.testing.assert_allclose(out[0, 0], 1.0)


def test_sample_texture_is_bilinear_with_wrap():
    values = np.array([[0.0, 10.0, 20.0], [30.0, 40.0, 50.0]])
    image = np.stack([values, 2 * values, values + 1], axis=-1).astype(np.uint8)  # (2, 3, 3)
    uv = np.array([[0.5, 0.5], [0.1, 0.25], [0.6, 0.9], [1.6, -1.1]])
    # (0.5, 0.5): x = 1.0, y = 0.5 -> column 1, halfway between the rows: (10 + 40) / 2.
    # (0.1, 0.25): x = -0.2 -> 0.8 column 0 + 0.2 column 2 (wrapped), row 0: 0.2 * 20.
    # (0.6, 0.9): x = 1.3, y = 1.3 -> rows 1 and 0 (wrapped): 0.7 (0.7·40 + 0.3·50) + 0.3 (0.7·10 + 0.3·20).
    # (1.6, -1.1) wraps to (0.6, 0.9).
    expected = np.array([25.0, 4.0, 34.0, 34.0])
    sampled = r.sample_texture(image, uv)
    np.testing.assert_allclose(sampled, np.stack([expected, 2 * expected, expected + 1], -1), atol=1e-9)
    assert r.sample_texture(image, uv.reshape(2, 2, 2)).shape == (2, 2, 3)


def test_benchmark_render_reports_timings():
    result = r.benchmark_render(size=16, persons=2, frames=1)
    # Independent timings (other load can reorder them): only their signs and the bookkeeping are fixed.
    assert min(result["ms_per_frame"], result["build_ms"], result["cast_ms"]) > 0
    expected_shade = result["ms_per_frame"] - result["build_ms"] - result["cast_ms"]
    assert result["shade_ms"] == pytest.approx(expected_shade)
    assert 0 < result["hit_fraction"] < 1 and result["frames"] == 1 and result["size"] == 16
    assert result["faces"] == 2 * 20480 and result["backend"] == r.RAY_BACKEND


SPHERE = sphere(subdivisions=1)
K0, R0, T0 = camera((0.0, 0.0, 4.0), (0.0, 0.0, 0.0), g.intrinsics_from_fov(40.0, (8, 8), F64))


def _rasterize(meshes=None, K=K0, R=R0, t=T0, size=(8, 8)):
    return r.rasterize([SPHERE] if meshes is None else meshes, K, R, t, size)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: _rasterize([(SPHERE[0], SPHERE[1] + 1)]), r"faces index vertices 1\.\.42 but there are 42"),
        (lambda: _rasterize([(SPHERE[0], -SPHERE[1])]), "faces index vertices -41"),
        (
            lambda: _rasterize([(np.where(np.arange(42)[:, None] == 5, np.nan, SPHERE[0]), SPHERE[1])]),
            "first is 5",
        ),
        (
            lambda: _rasterize([(SPHERE[0][:, :2], SPHERE[1])]),
            r"vertices must be real \(V, 3\), got \(42, 2\)",
        ),
        (lambda: _rasterize([(SPHERE[0], SPHERE[1].astype(float))]), "faces must be integer"),
        (lambda: _rasterize([SPHERE[0]]), "must be a .vertices, faces. pair"),
        (lambda: _rasterize([]), "at least one"),
        (lambda: _rasterize([(SPHERE[0], np.zeros((0, 3), int))]), "no faces"),
        (lambda: _rasterize(size=(8, 0)), "image_size"),
        (lambda: _rasterize(K=K0.expand(2, 3, 3)), r"K must be one camera of shape \(3, 3\)"),
        (lambda: _rasterize(K=-K0), "focal lengths must be positive"),
        (lambda: _rasterize(R=2 * R0), "R must be a rotation"),
        (lambda: _rasterize(R=-R0), "R must be a rotation"),
        (lambda: _rasterize(t=T0[:2]), r"t must have shape \(3,\)"),
        (lambda: r.interpolate(_rasterize(), [SPHERE[0], SPHERE[0]]), r"one array per mesh \(1\), got 2"),
        (lambda: r.interpolate(_rasterize(), SPHERE[0]), r"got an array of shape \(42, 3\)"),
        (lambda: r.interpolate(_rasterize(), [SPHERE[0][:-1]]), r"attributes\[0\] must have shape \(42"),
        (lambda: r.render_meshes([SPHERE], [np.ones((42, 4))], K0, R0, T0, (8, 8)), "RGB colours"),
        (lambda: r.render_meshes([SPHERE], [np.ones((42, 3))], K0, R0, T0, (8, 8), light="sun"), "headlight"),
        (
            lambda: r.render_meshes([SPHERE], [np.ones((42, 3))], K0, R0, T0, (8, 8), np.ones((4, 4, 3))),
            "background",
        ),
        (
            lambda: r.render_normal_map(_rasterize(), np.ones((4, 4, 3)), R0),
            r"normals must have shape \(8, 8, 3\)",
        ),
        (lambda: r.shade_lambert(np.ones((2, 3)), np.ones((2, 3)), (0, 0, 1), ambient=1.5), "ambient"),
        (
            lambda: r.shade_lambert(np.full((2, 3), np.nan), np.ones((2, 3)), (0, 0, 1)),
            "normals must be finite",
        ),
        (lambda: r.composite(np.ones((2, 2, 3)), np.ones((2, 3)), np.zeros(3)), "mask"),
        (lambda: r.sample_texture(np.ones((4, 4)), np.zeros((1, 2))), r"image must be a real \(h, w, C\)"),
        (lambda: r.sample_texture(np.ones((4, 4, 3)), np.array([[np.nan, 0.0]])), "uv must be finite"),
        (lambda: r.vertex_normals(SPHERE[0], SPHERE[1] + 100), "faces index vertices"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
