"""Tests of `isa4d.geometry` against independent references (numpy, kornia, roma, torch resampling)."""

from __future__ import annotations

import math

import kornia
import numpy as np
import pytest
import roma
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from isa4d import geometry as g

F64 = torch.float64


def random_camera(batch: int, rng: np.random.Generator, size: tuple[int, int] = (120, 160)):
    """Random (K, R, t) as numpy arrays: (B, 3, 3), (B, 3, 3), (B, 3); K has a small skew."""
    H, W = size
    K = np.zeros((batch, 3, 3))
    K[:, 0, 0], K[:, 1, 1] = rng.uniform(80, 200, batch), rng.uniform(80, 200, batch)
    K[:, 0, 1] = rng.uniform(-2, 2, batch)
    K[:, 0, 2], K[:, 1, 2] = rng.uniform(0.4, 0.6, batch) * W, rng.uniform(0.4, 0.6, batch) * H
    K[:, 2, 2] = 1.0
    R = Rotation.random(batch, random_state=rng).as_matrix()
    return K, R, rng.normal(size=(batch, 3))


def points_in_front(K, R, t, num: int, rng: np.random.Generator, size: tuple[int, int] = (120, 160)):
    """World points (B, N, 3) that project inside the image at depths in [1, 5] (numpy)."""
    H, W = size
    uv1 = np.stack([rng.uniform(5, W - 6, (len(K), num)), rng.uniform(5, H - 6, (len(K), num))], -1)
    uv1 = np.concatenate([uv1, np.ones_like(uv1[..., :1])], -1)
    cam = np.einsum("bij,bnj->bni", np.linalg.inv(K), uv1) * rng.uniform(1, 5, (len(K), num, 1))
    return np.einsum("bji,bnj->bni", R, cam - t[:, None])


def numpy_projection(points, K, R, t):
    """uv (B, N, 2) and depth (B, N) by explicit K [R | t]."""
    cam = np.einsum("bij,bnj->bni", R, points) + t[:, None]
    pix = np.einsum("bij,bnj->bni", K, cam)
    return pix[..., :2] / pix[..., 2:], cam[..., 2]


def as_t(*arrays):
    return [torch.as_tensor(a, dtype=F64) for a in arrays]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_project_points_matches_numpy_and_kornia(rng):
    K, R, t = random_camera(4, rng)
    points = points_in_front(K, R, t, 50, rng)
    uv, depth = g.project_points(*as_t(points, K, R, t))
    uv_np, depth_np = numpy_projection(points, K, R, t)
    np.testing.assert_allclose(uv.numpy(), uv_np, atol=1e-9)
    np.testing.assert_allclose(depth.numpy(), depth_np, atol=1e-12)

    # kornia's project_points ignores skew, so compare on zero-skew intrinsics
    K[:, 0, 1] = 0.0
    Rt = np.concatenate([np.concatenate([R, t[..., None]], -1), np.tile([[[0, 0, 0, 1.0]]], (4, 1, 1))], 1)
    cam = kornia.geometry.linalg.transform_points(*as_t(Rt, points))
    uv_kornia = kornia.geometry.camera.perspective.project_points(cam, torch.as_tensor(K)[:, None])
    torch.testing.assert_close(g.project_points(*as_t(points, K, R, t))[0], uv_kornia, atol=1e-9, rtol=0)
    torch.testing.assert_close(g.extrinsics_matrix(*as_t(R, t)), torch.as_tensor(Rt))


def test_projection_broadcasts_leading_dims_and_keeps_float32(rng):
    K, R, t = random_camera(6, rng)
    points = points_in_front(K, R, t, 7, rng)
    uv_np, _ = numpy_projection(points, K, R, t)
    K32, R32, t32, p32 = (torch.as_tensor(a, dtype=torch.float32) for a in (K, R, t, points))
    uv, depth = g.project_points(
        p32.view(2, 3, 7, 3), K32.view(2, 3, 3, 3), R32.view(2, 3, 3, 3), t32.view(2, 3, 3)
    )
    assert uv.dtype == depth.dtype == torch.float32 and uv.shape == (2, 3, 7, 2)
    np.testing.assert_allclose(uv.reshape(6, 7, 2).numpy(), uv_np, atol=1e-3)
    assert g.plucker_image(K32, R32, t32, (120, 160), (6, 8)).dtype == torch.float32
    assert g.project_to_ndc(p32, g.mvp_matrix(K32, R32, t32, (120, 160))).dtype == torch.float32
    # one camera, many point sets
    uv_one, _ = g.project_points(*as_t(points[:1].repeat(3, 0), K[0], R[0], t[0]))
    np.testing.assert_allclose(uv_one.numpy(), np.repeat(uv_np[:1], 3, 0), atol=1e-9)


def test_unproject_and_camera_center(rng):
    K, R, t = random_camera(3, rng)
    points = points_in_front(K, R, t, 20, rng)
    Kt, Rt, tt, pt = as_t(K, R, t, points)
    uv, depth = g.project_points(pt, Kt, Rt, tt)
    torch.testing.assert_close(g.unproject(uv, depth, Kt, Rt, tt), pt)
    center = g.camera_center(Rt, tt)
    np.testing.assert_allclose(center.numpy(), -np.einsum("bji,bj->bi", R, t), atol=1e-12)
    assert g.world_to_camera(center[:, None], Rt, tt).abs().max() < 1e-12
    torch.testing.assert_close(g.camera_to_world(g.world_to_camera(pt, Rt, tt), Rt, tt), pt)


def test_gradients_flow_through_projection_and_rays(rng):
    K, R, t = as_t(*[a[0] for a in random_camera(1, rng)])
    points = torch.tensor([[0.1, -0.2, 0.0], [0.3, 0.1, 0.5]], dtype=F64) + g.camera_center(R, t) + 3 * R[2]
    intrinsics = torch.stack([K[0, 0], K[1, 1], K[0, 2], K[1, 2]])  # (fx, fy, cx, cy)
    for x in (points, intrinsics, t):
        x.requires_grad_(True)
    to_K = lambda p: g.intrinsics_matrix(*p)
    assert torch.autograd.gradcheck(
        lambda p, k, tr: g.project_points(p, to_K(k), R, tr)[0], (points, intrinsics, t)
    )
    rays = lambda k, tr: g.plucker_image(to_K(k), R, tr, (120, 160), (3, 4))
    assert torch.autograd.gradcheck(rays, (intrinsics, t))
    ndc = lambda k, tr: g.project_to_ndc(points.detach(), g.mvp_matrix(to_K(k), R, tr, (120, 160), 0.5, 10.0))
    assert torch.autograd.gradcheck(ndc, (intrinsics, t))


def test_plucker_ray_through_projected_pixel_contains_point(rng):
    K, R, t = random_camera(4, rng)
    points = points_in_front(K, R, t, 30, rng)
    Kt, Rt, tt, pt = as_t(K, R, t, points)
    uv, _ = g.project_points(pt, Kt, Rt, tt)
    origins, directions = g.pixel_rays(uv, Kt, Rt, tt)
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(4, 30, dtype=F64))
    moment = torch.linalg.cross(origins, directions)
    assert (torch.linalg.cross(pt, directions) - moment).norm(dim=-1).max() < 1e-9
    # the direction points towards the point, not away from it
    assert (((pt - origins) * directions).sum(-1) > 0).all()


def test_plucker_image_pixel_centres_contain_lifted_points(rng):
    (H, W), (h, w) = (120, 160), (30, 40)
    K, R, t = random_camera(2, rng)
    image = g.plucker_image(*as_t(K, R, t), image_size=(H, W), out_size=(h, w))
    assert image.shape == (2, 6, h, w)
    rows, cols = rng.integers(0, h, 25), rng.integers(0, w, 25)
    # numpy: centre of low-res pixel (col, row) is at high-res (col + 0.5) W / w - 0.5
    uv1 = np.stack([(cols + 0.5) * W / w - 0.5, (rows + 0.5) * H / h - 0.5, np.ones(25)], -1)
    for b in range(2):
        cam = (np.linalg.inv(K[b]) @ uv1.T).T * rng.uniform(1, 5, (25, 1))
        world = (cam - t[b]) @ R[b]
        moment, direction = image[b, :3, rows, cols].T.numpy(), image[b, 3:, rows, cols].T.numpy()
        np.testing.assert_allclose(np.cross(world, direction), moment, atol=1e-9)
        np.testing.assert_allclose(np.linalg.norm(direction, axis=-1), 1.0, atol=1e-12)
    full = g.plucker_image(*as_t(K, R, t), image_size=(H, W))
    assert full.shape == (2, 6, H, W)


def test_mvp_ndc_matches_projection(rng):
    size = (120, 160)
    K, R, t = random_camera(3, rng)
    points = points_in_front(K, R, t, 40, rng)
    Kt, Rt, tt, pt = as_t(K, R, t, points)
    ndc = g.project_to_ndc(pt, g.mvp_matrix(Kt, Rt, tt, size, near=0.5, far=8.0))
    uv_np, depth_np = numpy_projection(points, K, R, t)
    torch.testing.assert_close(g.ndc_to_pixel(ndc[..., :2], size), torch.as_tensor(uv_np))
    expected_xy = 2 * (uv_np + 0.5) / np.array([160, 120]) - 1  # ISA NDC, y down
    np.testing.assert_allclose(ndc[..., :2].numpy(), expected_xy, atol=1e-9)
    order = np.argsort(depth_np, axis=-1)
    assert (np.diff(np.take_along_axis(ndc[..., 2].numpy(), order, -1), axis=-1) > 0).all()


def test_mvp_depth_range():
    K = g.intrinsics_from_fov(50.0, (64, 64), dtype=F64)
    R, t = g.look_at(torch.tensor([1.0, 2.0, 3.0], dtype=F64), torch.zeros(3, dtype=F64))
    mvp = g.mvp_matrix(K, R, t, (64, 64), near=0.25, far=20.0)
    depths = torch.tensor([0.25, 0.5, 1.0, 5.0, 19.0, 20.0], dtype=F64)
    points = g.camera_to_world(F.pad(depths[:, None], (2, 0)), R, t)  # along the optical axis
    z = g.project_to_ndc(points, mvp)[:, 2]
    assert math.isclose(z[0], -1.0, abs_tol=1e-12) and math.isclose(z[-1], 1.0, abs_tol=1e-12)
    assert (z.diff() > 0).all()


def test_grid_and_pixel_ndc_match_torch_sampling():
    h, w = 5, 7
    grid = g.grid_ndc(h, w, dtype=F64)
    theta = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]], dtype=F64)
    reference = F.affine_grid(theta, [1, 1, h, w], align_corners=False).reshape(h * w, 2)
    torch.testing.assert_close(grid[:, :2], reference)
    assert (grid[:, 2] == 0).all()
    uv = g.pixel_grid(h, w, dtype=F64)
    assert uv[3 * w + 2].tolist() == [2.0, 3.0]
    # sampling an image at the NDC of pixel (u, v) returns that pixel (align_corners=False)
    image = torch.arange(h * w, dtype=F64).view(1, 1, h, w)
    sampled = F.grid_sample(image, g.pixel_to_ndc(uv, (h, w)).view(1, h, w, 2), align_corners=False)
    torch.testing.assert_close(sampled, image)
    torch.testing.assert_close(g.ndc_to_pixel(g.pixel_to_ndc(uv, (h, w)), (h, w)), uv)
    torch.testing.assert_close(
        g.pixel_from_ndc_matrix((h, w), F64) @ g.ndc_from_pixel_matrix((h, w), F64), torch.eye(3, dtype=F64)
    )


def test_opengl_conversion(rng):
    K, R, t = random_camera(5, rng)
    points = points_in_front(K, R, t, 10, rng)
    R_gl, t_gl = g.opencv_to_opengl(*as_t(R, t))
    flip = np.diag([1.0, -1.0, -1.0])
    np.testing.assert_allclose(R_gl.numpy(), flip @ R)
    np.testing.assert_allclose(t_gl.numpy(), t @ flip)
    cam_gl = g.world_to_camera(torch.as_tensor(points), R_gl, t_gl)
    assert (cam_gl[..., 2] < 0).all()  # OpenGL cameras look along -z
    R_back, t_back = g.opengl_to_opencv(R_gl, t_gl)
    torch.testing.assert_close(R_back, torch.as_tensor(R))
    torch.testing.assert_close(t_back, torch.as_tensor(t))


def pytorch3d_reference(R, tvec, camera_matrix, image_size):
    """numpy port of pytorch3d.renderer.camera_conversions._cameras_from_opencv_projection."""
    focal_length = np.stack([camera_matrix[:, 0, 0], camera_matrix[:, 1, 1]], axis=-1)
    principal_point = camera_matrix[:, :2, 2]
    image_size_wh = image_size[:, ::-1].astype(float)
    scale = image_size_wh.min(axis=1, keepdims=True) / 2.0
    c0 = image_size_wh / 2.0
    R_pytorch3d = R.transpose(0, 2, 1).copy()
    T_pytorch3d = tvec.copy()
    R_pytorch3d[:, :, :2] *= -1
    T_pytorch3d[:, :2] *= -1
    return R_pytorch3d, T_pytorch3d, focal_length / scale, -(principal_point - c0) / scale


def test_pytorch3d_conversion(rng):
    H, W = 120, 160
    K, R, t = random_camera(5, rng)
    K[:, 0, 1] = 0.0
    points = points_in_front(K, R, t, 10, rng)
    ours = g.opencv_to_pytorch3d(*as_t(K, R, t), image_size=(H, W))
    reference = pytorch3d_reference(R, t, K, np.array([[H, W]] * 5))
    for a, b in zip(ours, reference, strict=True):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-12)
    # PyTorch3D projection: X_view = X @ R + T, ndc = f X/Z + p (+X left, +Y up), screen = c0 - ndc * scale
    R3, T3, focal, principal = ours
    view = torch.as_tensor(points) @ R3 + T3[:, None]
    ndc = focal[:, None] * view[..., :2] / view[..., 2:] + principal[:, None]
    screen = torch.tensor([W / 2, H / 2], dtype=F64) - ndc * min(H, W) / 2
    torch.testing.assert_close(screen, torch.as_tensor(numpy_projection(points, K, R, t)[0]))
    K_back, R_back, t_back = g.pytorch3d_to_opencv(*ours, image_size=(H, W))
    for a, b in zip((K_back, R_back, t_back), (K, R, t), strict=True):
        torch.testing.assert_close(a, torch.as_tensor(b))


def test_look_at(rng):
    eye = torch.as_tensor(rng.normal(size=(8, 3)) * 3)
    target = torch.as_tensor(rng.normal(size=(8, 3)))
    R, t = g.look_at(eye, target)
    assert roma.is_rotation_matrix(R, epsilon=1e-9)
    np.testing.assert_allclose(R.numpy() @ R.mT.numpy(), np.tile(np.eye(3), (8, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R.numpy()), 1.0, atol=1e-12)
    torch.testing.assert_close(g.camera_center(R, t), eye)
    K = g.intrinsics_from_fov(60.0, (48, 64), dtype=F64)
    uv, depth = g.project_points(target[:, None], K, R, t)
    torch.testing.assert_close(uv[:, 0], K[:2, 2].expand(8, 2))
    assert (depth > 0).all()
    # world up is image up: a point above the target has a smaller row
    above, _ = g.project_points((target + torch.tensor([0.0, 0.1, 0.0], dtype=F64))[:, None], K, R, t)
    assert (above[:, 0, 1] < K[1, 2]).all()


def test_look_at_front_view_is_axis_flip():
    R, t = g.look_at(torch.tensor([0.0, 0.0, 3.0], dtype=F64), torch.zeros(3, dtype=F64))
    torch.testing.assert_close(R, torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=F64)))
    torch.testing.assert_close(t, torch.tensor([0.0, 0.0, 3.0], dtype=F64))


def test_intrinsics_from_fov_spans_image_edges():
    H, W = 48, 64
    K = g.intrinsics_from_fov(torch.tensor([30.0, 90.0], dtype=F64), (H, W), dtype=F64)
    assert K.shape == (2, 3, 3)
    # the top image edge (v = -0.5) is at half the vertical field of view
    half_fov = np.degrees(np.arctan(((K[:, 1, 2] + 0.5) / K[:, 1, 1]).numpy()))
    np.testing.assert_allclose(half_fov, [15.0, 45.0])
    np.testing.assert_allclose(K[:, :2, 2].numpy(), [[31.5, 23.5]] * 2)


def render_blob(uv: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """Gaussian blob centred at `uv` sampled at pixel centres (integer coordinates), (1, 1, H, W)."""
    v, u = torch.meshgrid(torch.arange(size[0], dtype=F64), torch.arange(size[1], dtype=F64), indexing="ij")
    return torch.exp(-((u - uv[0]) ** 2 + (v - uv[1]) ** 2) / (2 * sigma**2))[None, None]


def centroid(image: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted (u, v) centroid of a (1, 1, H, W) image with pixel centres at integers."""
    v, u = torch.meshgrid(*(torch.arange(n, dtype=F64) for n in image.shape[-2:]), indexing="ij")
    return torch.stack([(u * image).sum(), (v * image).sum()]) / image.sum()


@pytest.mark.parametrize(
    ("new_size", "antialias"), [((45, 70), False), ((45, 70), True), ((210, 250), False)]
)
def test_resize_intrinsics_follows_image_content(new_size, antialias):
    size = (120, 160)
    K = torch.tensor([[150.0, 0, 83.0], [0, 140.0, 57.0], [0, 0, 1]], dtype=F64)
    R, t = g.look_at(torch.tensor([0.5, 0.3, 3.0], dtype=F64), torch.zeros(3, dtype=F64))
    point = torch.tensor([[0.21, -0.13, 0.1]], dtype=F64)
    uv, _ = g.project_points(point, K, R, t)
    image = render_blob(uv[0], size, sigma=5.0)
    torch.testing.assert_close(centroid(image), uv[0], atol=1e-6, rtol=0)
    resized = F.interpolate(image, size=new_size, mode="bilinear", align_corners=False, antialias=antialias)
    uv_resized, _ = g.project_points(point, g.resize_intrinsics(K, size, new_size), R, t)
    torch.testing.assert_close(centroid(resized), uv_resized[0], atol=0.005, rtol=0)


def test_crop_intrinsics_follows_image_content():
    K = torch.tensor([[150.0, 0, 83.0], [0, 140.0, 57.0], [0, 0, 1]], dtype=F64)
    R, t = g.look_at(torch.tensor([0.5, 0.3, 3.0], dtype=F64), torch.zeros(3, dtype=F64))
    point = torch.tensor([[0.21, -0.13, 0.1]], dtype=F64)
    uv, _ = g.project_points(point, K, R, t)
    image = render_blob(uv[0], (120, 160), sigma=4.0)
    x0, y0 = 37, 21
    uv_crop, _ = g.project_points(point, g.crop_intrinsics(K, x0, y0), R, t)
    torch.testing.assert_close(
        centroid(image[..., y0 : y0 + 80, x0 : x0 + 100]), uv_crop[0], atol=1e-6, rtol=0
    )
    batched = g.crop_intrinsics(K.expand(2, 3, 3), torch.tensor([1.0, 2.0], dtype=F64), 3.0)
    torch.testing.assert_close(batched[:, :2, 2], torch.tensor([[82.0, 54.0], [81.0, 54.0]], dtype=F64))


def eyes(R, t):
    return g.camera_center(R, t)


@pytest.mark.parametrize("name", sorted(g.TRAJECTORIES))
def test_trajectories_are_valid_rotations(name):
    R, t = g.make_trajectory(name, 9, dtype=F64)
    assert R.shape == (9, 3, 3) and t.shape == (9, 3) and R.dtype == F64
    assert roma.is_rotation_matrix(R, epsilon=1e-9)
    assert g.make_trajectory(name, 2)[0].dtype == torch.float32


def test_static_orbit_dolly_pan():
    target = (0.0, 1.0, 0.5)
    R, t = g.static(4, target=target, distance=2.5, azimuth_deg=30.0, elevation_deg=10.0, dtype=F64)
    assert (R == R[:1]).all() and (t == t[:1]).all()

    R, t = g.orbit(12, target=target, distance=2.5, elevation_deg=20.0, start_deg=0, end_deg=270, dtype=F64)
    offsets = eyes(R, t) - torch.tensor(target, dtype=F64)
    torch.testing.assert_close(offsets.norm(dim=-1), torch.full((12,), 2.5, dtype=F64))
    torch.testing.assert_close(offsets[:, 1], torch.full((12,), 2.5 * math.sin(math.radians(20)), dtype=F64))
    horizontal = 2.5 * math.cos(math.radians(20))
    torch.testing.assert_close(
        offsets[[0, -1]][:, [0, 2]], torch.tensor([[0, horizontal], [-horizontal, 0]], dtype=F64)
    )
    uv, _ = g.project_points(torch.tensor([[target]], dtype=F64), torch.eye(3, dtype=F64), R, t)
    assert uv.abs().max() < 1e-12  # the target stays on the optical axis

    R, t = g.dolly(5, target=target, start_distance=3.0, end_distance=1.0, azimuth_deg=45.0, dtype=F64)
    assert torch.allclose(R, R[:1].expand_as(R))
    distances = (eyes(R, t) - torch.tensor(target, dtype=F64)).norm(dim=-1)
    torch.testing.assert_close(distances, torch.linspace(3.0, 1.0, 5, dtype=F64))

    R, t = g.pan(5, target=target, distance=2.0, start_deg=0.0, end_deg=40.0, dtype=F64)
    centers = eyes(R, t)
    torch.testing.assert_close(centers, centers[:1].expand_as(centers))
    forward = R[:, 2]  # camera z in the world
    yaw = torch.rad2deg(torch.atan2(-forward[:, 0], -forward[:, 2]))  # counter-clockwise from -z
    torch.testing.assert_close(yaw, torch.linspace(0.0, 40.0, 5, dtype=F64))


def test_handheld_is_seeded_small_and_smooth():
    R, t = g.orbit(50, distance=3.0, end_deg=90.0, dtype=F64)
    a = g.make_trajectory("orbit", 50, handheld_shake={"seed": 7}, distance=3.0, end_deg=90.0, dtype=F64)
    b = g.handheld(R, t, seed=7)
    c = g.handheld(R, t, seed=8)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.allclose(a[1], c[1])
    assert roma.is_rotation_matrix(a[0], epsilon=1e-9)
    shift = (eyes(*a) - eyes(R, t)).abs()
    assert 0 < shift.max() <= 0.01 + 1e-12
    angle = torch.rad2deg(roma.rotmat_geodesic_distance(a[0], R))
    assert 0 < angle.max() <= 0.5 * math.sqrt(3) + 1e-9
    assert (eyes(*a) - eyes(R, t)).diff(dim=0).abs().max() < 0.01 / 5  # smooth frame to frame


def test_make_trajectory_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown trajectory 'zoom'.*dolly.*orbit.*pan.*static"):
        g.make_trajectory("zoom", 4)


K_OK = torch.eye(3) * torch.tensor([100.0, 100.0, 1.0])
R_OK, T_OK = torch.eye(3), torch.tensor([0.0, 0.0, 2.0])
SKEW = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: g.project_points(torch.zeros(5, 2), K_OK, R_OK, T_OK),
            r"points must have shape \(\.\.\., 3\), got \(5, 2\)",
        ),
        (
            lambda: g.project_points(torch.zeros(5, 3), K_OK[:2], R_OK, T_OK),
            r"K must have shape.*got \(2, 3\)",
        ),
        (lambda: g.project_points(torch.zeros(5, 3), K_OK, R_OK, T_OK[:2]), r"t must have shape.*got \(2,\)"),
        (
            lambda: g.project_points(torch.zeros(5, 3), K_OK * -1, R_OK, T_OK),
            r"focal lengths must be positive",
        ),
        (
            lambda: g.unproject(torch.zeros(5, 2), torch.ones(4), K_OK, R_OK, T_OK),
            r"depth must have shape \(5,\)",
        ),
        (lambda: g.mvp_matrix(K_OK, R_OK, T_OK, (8, 8), near=2.0, far=1.0), r"near=2.0, far=1.0"),
        (lambda: g.mvp_matrix(K_OK, R_OK, T_OK, (8, 8), near=0.0, far=1.0), r"0 < near < far"),
        (lambda: g.plucker_image(K_OK, R_OK, T_OK, (8, 0)), r"\(8, 0\)"),
        (lambda: g.resize_intrinsics(K_OK, (8, 8), (4, -4)), r"\(4, -4\)"),
        (lambda: g.intrinsics_from_fov(180.0, (8, 8)), r"fov_deg must be in \(0, 180\)"),
        (lambda: g.look_at(torch.zeros(3), torch.zeros(3)), r"target != eye"),
        (lambda: g.look_at(torch.zeros(3), torch.tensor([0.0, 2.0, 0.0])), r"not parallel to up"),
        (
            lambda: g.opencv_to_pytorch3d(K_OK + SKEW, R_OK, T_OK, (8, 8)),
            r"no skew, got K\[\.\.\., 0, 1\] = 1.0",
        ),
        (lambda: g.orbit(0), r"num_frames must be >= 1, got 0"),
        (lambda: g.orbit(3, distance=-1.0), r"distance must be positive"),
        (lambda: g.handheld(R_OK, T_OK), r"expected R: \(T, 3, 3\)"),
    ],
)
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_handheld_preset_is_a_shaken_static_camera():
    R0, t0 = g.static(20, distance=2.0, dtype=F64)
    R, t = g.make_trajectory("handheld", 20, seed=3, distance=2.0, dtype=F64)
    R_ref, t_ref = g.handheld(R0, t0, seed=3)
    torch.testing.assert_close(R, R_ref)
    torch.testing.assert_close(t, t_ref)
    shift = (eyes(R, t) - eyes(R0, t0)).norm(dim=-1)
    assert 0 < shift.max() < 0.02  # centimetre-scale shake around the static camera
