"""Clip augmentations (SPEC §1): measured motion, strides, identity when off, intrinsics that follow crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isa4d.data.augment import (
    ClipAugment,
    CropJitter,
    SpeedAdjustment,
    StructuredMotion,
    UnusableClipError,
    frame_positions,
    motion_offsets,
    sample_rng,
)
from isa4d.geometry import intrinsics_from_fov, look_at, project_points


def blob(size: tuple[int, int], centers: np.ndarray, sigma: float = 2.0) -> torch.Tensor:
    """`(T, 1, H, W)` float64 Gaussian dots at `centers (T, 2)` (pixel-centre convention)."""
    v, u = np.mgrid[: size[0], : size[1]].astype(np.float64)
    images = [np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / (2 * sigma**2)) for cx, cy in centers]
    return torch.from_numpy(np.stack(images))[:, None]


def centroid(images: torch.Tensor) -> np.ndarray:
    """`(T, 2)` intensity-weighted `(u, v)` of `(T, 1, H, W)` images."""
    weights = images[:, 0].double().clamp(min=0).numpy()
    v, u = np.mgrid[: weights.shape[1], : weights.shape[2]]
    total = weights.sum(axis=(1, 2))
    return np.stack([(weights * u).sum(axis=(1, 2)) / total, (weights * v).sum(axis=(1, 2)) / total], axis=-1)


def motion_only(**motion) -> ClipAugment:
    return ClipAugment(StructuredMotion(**motion), SpeedAdjustment(enabled=False), CropJitter(enabled=False))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_structured_motion_shifts_content_by_velocity_per_frame(seed):
    T, src, out = 9, (96, 96), (64, 64)
    plan = motion_only(max_speed=3.0).plan(
        sample_rng(seed, "clip"), num_available=T, src_size=src, out_size=out, num_frames=T
    )
    assert 0 < np.linalg.norm(plan.velocity) <= 3.0
    frames = blob(src, np.tile([[48.0, 48.0]], (T, 1)), sigma=4.0)  # a static dot
    shift = np.diff(centroid(plan.warp(frames)), axis=0)
    np.testing.assert_allclose(shift, np.tile(-plan.velocity, (T - 1, 1)), atol=0.02)


def test_structured_motion_with_acceleration_and_switches():
    augment = motion_only(max_speed=2.0, max_acceleration=0.5)
    plan = augment.plan(
        sample_rng(3, "clip"), num_available=9, src_size=(64, 64), out_size=(32, 32), num_frames=9
    )
    second = np.diff(plan.crop_xy, n=2, axis=0)
    np.testing.assert_allclose(second, np.tile(plan.acceleration, (7, 1)), atol=1e-9)
    np.testing.assert_allclose(
        motion_offsets(np.array([1.0, -2.0]), np.zeros(2), 3), [[0, 0], [1, -2], [2, -4]]
    )
    for off in (motion_only(enabled=False), motion_only(prob=0.0)):
        still = off.plan(
            sample_rng(3, "clip"), num_available=9, src_size=(64, 64), out_size=(32, 32), num_frames=9
        )
        assert not still.velocity.any() and np.ptp(still.crop_xy, axis=0).max() == 0


@pytest.mark.parametrize(("rate", "interpolation"), [(3, "nearest"), (1.5, "linear"), (1.5, "nearest")])
def test_speed_adjustment_changes_frame_indices_by_the_drawn_stride(rate, interpolation):
    N, T = 40, 9
    augment = ClipAugment(
        StructuredMotion(enabled=False),
        SpeedAdjustment(rates=[rate], interpolation=interpolation),
        CropJitter(enabled=False),
    )
    plan = augment.plan(sample_rng(0, "c"), num_available=N, src_size=(8, 8), out_size=(8, 8), num_frames=T)
    assert plan.stride == rate
    frames = torch.arange(N, dtype=torch.float64)[:, None, None, None].expand(N, 1, 8, 8)  # frame i is all i
    shown = plan.resample(frames[plan.source_indices], blend=True)[:, 0, 0, 0].numpy()
    expected = plan.positions if interpolation == "linear" else np.floor(plan.positions + 0.5)
    np.testing.assert_allclose(shown, expected)
    np.testing.assert_allclose(np.diff(plan.positions), rate)
    assert 0 <= plan.positions[0] and plan.positions[-1] <= N - 1


def test_frame_positions_reduce_strides_that_do_not_fit():
    rng = sample_rng(0, "c")
    assert frame_positions(17, 9, 4, rng)[1] == 2  # integers stay integers
    assert frame_positions(17, 9, 4.5, rng)[1] == 2.0
    np.testing.assert_allclose(frame_positions(13, 9, 2.5, None)[0], 1.5 * np.arange(9))  # (13 - 1) / 8
    np.testing.assert_array_equal(frame_positions(17, 5, 2, None)[0], [4, 6, 8, 10, 12])  # centred
    with pytest.raises(UnusableClipError, match="fewer than the 9"):
        frame_positions(8, 9, 1, rng)
    assert frame_positions(5, 1, 3, rng)[1] == 0.0


def test_everything_off_is_the_identity():
    T, size = 5, (16, 24)
    frames = torch.rand(T, 3, *size)
    K = intrinsics_from_fov(40.0, size).expand(T, 3, 3)
    plan = ClipAugment.off().plan(
        sample_rng(0, "c"), num_available=T, src_size=size, out_size=size, num_frames=T
    )
    np.testing.assert_array_equal(plan.positions, np.arange(T))
    assert plan.stride == 1 and plan.zoom_size == size and not plan.crop_xy.any()
    torch.testing.assert_close(plan.warp(plan.resample(frames, blend=True)), frames, atol=1e-5, rtol=0)
    torch.testing.assert_close(plan.intrinsics(K), K)
    labels = torch.randint(0, 3, (T, 1, *size)).float()
    torch.testing.assert_close(plan.warp(labels, labels=True), labels)


@pytest.mark.parametrize("seed", [0, 5])
def test_crop_and_resize_update_intrinsics_so_points_stay_on_their_content(seed):
    T, src, out = 6, (80, 120), (48, 64)
    K = intrinsics_from_fov(45.0, src, torch.float64).expand(T, 3, 3)
    R, t = look_at(
        torch.tensor([0.5, 1.2, 3.0], dtype=torch.float64), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    )
    point = torch.tensor([[0.2, 1.1, 0.1]], dtype=torch.float64)
    uv, _ = project_points(point, K[0], R, t)
    frames = blob(src, uv.numpy().repeat(T, axis=0), sigma=3.0)
    augment = ClipAugment(
        StructuredMotion(max_speed=2.5, max_acceleration=0.3),
        SpeedAdjustment(enabled=False),
        CropJitter(scale=(0.6, 0.9)),
    )
    plan = augment.plan(sample_rng(seed, "c"), num_available=T, src_size=src, out_size=out, num_frames=T)
    assert plan.scale < 1 and plan.zoom_size != src
    new_K = plan.intrinsics(K)
    expected = torch.stack([project_points(point, new_K[i], R, t)[0][0] for i in range(T)]).numpy()
    np.testing.assert_allclose(centroid(plan.warp(frames)), expected, atol=0.05)


def test_labels_keep_their_values_when_resized():
    labels = torch.zeros(2, 1, 40, 40)
    labels[:, :, 10:20, 5:25] = 1
    labels[:, :, 25:35, 15:30] = 2
    plan = ClipAugment(StructuredMotion(max_speed=1.3), SpeedAdjustment(enabled=False), CropJitter()).plan(
        sample_rng(1, "m"), num_available=2, src_size=(40, 40), out_size=(24, 24), num_frames=2
    )
    warped = plan.warp(labels, labels=True)
    assert set(warped.unique().tolist()) == {0.0, 1.0, 2.0}


def test_sample_rng_is_seeded_per_sample():
    assert sample_rng(1, "a").random() == sample_rng(1, "a").random()
    assert sample_rng(1, "a").random() != sample_rng(1, "b").random() != sample_rng(2, "a").random()


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="rates"):
        SpeedAdjustment(rates=[0])
    with pytest.raises(ValueError, match="interpolation"):
        SpeedAdjustment(interpolation="cubic")
    with pytest.raises(ValueError, match="scale"):
        CropJitter(scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="prob"):
        StructuredMotion(prob=2.0)
