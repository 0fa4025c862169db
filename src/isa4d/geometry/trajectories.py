"""Camera trajectories around a target point, as per-frame OpenCV extrinsics `(R, t)`.

Positions use spherical coordinates about the target in the y-up world: a camera at azimuth `a`
and elevation `e` sits at `target + distance (cos e sin a, sin e, cos e cos a)`; azimuth 0 is on
the +z side (in front of a body facing +z), azimuth 90° on the +x side, and positive elevation
looks down. All angles are in degrees and turn counter-clockwise seen from above (right-hand rule
about +y). Every trajectory returns `R: (T, 3, 3)`, `t: (T, 3)`; pair them with one `K`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import roma
import torch

from isa4d.geometry.cameras import WORLD_UP, camera_center, look_at

Extrinsics = tuple[torch.Tensor, torch.Tensor]


def _vector(x: Sequence[float] | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A (3,) tensor from a sequence or tensor."""
    x = torch.as_tensor(x if isinstance(x, torch.Tensor) else [float(v) for v in x], dtype=dtype)
    if x.shape != (3,):
        raise ValueError(f"expected a 3-vector, got shape {tuple(x.shape)}")
    return x


def _frames(num_frames: int) -> None:
    """Require a positive frame count."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


def _spherical_eye(
    target: torch.Tensor,
    distance: float | torch.Tensor,
    azimuth_deg: float | torch.Tensor,
    elevation_deg: float | torch.Tensor,
) -> torch.Tensor:
    """Camera positions `target + distance (cos e sin a, sin e, cos e cos a)`, (3,) or (T, 3).

    Args:
        target: Point looked at, (3,).
        distance: Distance to the target, () or (T,).
        azimuth_deg: Azimuth, () or (T,).
        elevation_deg: Elevation, () or (T,).
    """
    distance, a, e = torch.broadcast_tensors(
        *(torch.as_tensor(v, dtype=target.dtype) for v in (distance, azimuth_deg, elevation_deg))
    )
    if not bool((distance > 0).all()):
        raise ValueError(f"camera distance must be positive, got {distance.tolist()}")
    a, e = torch.deg2rad(a), torch.deg2rad(e)
    offset = torch.stack([e.cos() * a.sin(), e.sin(), e.cos() * a.cos()], dim=-1)
    return target + distance.unsqueeze(-1) * offset


def orbit(
    num_frames: int,
    target: Sequence[float] = (0.0, 0.0, 0.0),
    distance: float = 3.0,
    elevation_deg: float = 0.0,
    start_deg: float = 0.0,
    end_deg: float = 360.0,
    dtype: torch.dtype = torch.float32,
) -> Extrinsics:
    """Camera circling the vertical axis through `target` from azimuth `start_deg` to `end_deg` (inclusive).

    Args:
        num_frames: Number of frames T.
        target: Point looked at, (3,).
        distance: Distance from camera to target.
        elevation_deg: Constant elevation.
        start_deg: Azimuth of the first frame.
        end_deg: Azimuth of the last frame.
        dtype: Output dtype.

    Returns:
        R: (T, 3, 3) and t: (T, 3).
    """
    _frames(num_frames)
    target = _vector(target, dtype)
    azimuth = torch.linspace(start_deg, end_deg, num_frames, dtype=dtype)
    eye = _spherical_eye(target, distance, azimuth, elevation_deg)
    return look_at(eye, target.expand_as(eye))


def static(
    num_frames: int,
    target: Sequence[float] = (0.0, 0.0, 0.0),
    distance: float = 3.0,
    azimuth_deg: float = 0.0,
    elevation_deg: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> Extrinsics:
    """Fixed camera looking at `target`.

    Args:
        num_frames: Number of frames T.
        target: Point looked at, (3,).
        distance: Distance from camera to target.
        azimuth_deg: Camera azimuth.
        elevation_deg: Camera elevation.
        dtype: Output dtype.

    Returns:
        R: (T, 3, 3) and t: (T, 3), identical across frames.
    """
    return orbit(num_frames, target, distance, elevation_deg, azimuth_deg, azimuth_deg, dtype)


def dolly(
    num_frames: int,
    target: Sequence[float] = (0.0, 0.0, 0.0),
    start_distance: float = 3.0,
    end_distance: float = 2.0,
    azimuth_deg: float = 0.0,
    elevation_deg: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> Extrinsics:
    """Camera moving along its view axis towards (or away from) `target`; the rotation is constant.

    Args:
        num_frames: Number of frames T.
        target: Point looked at, (3,).
        start_distance: Distance to the target in the first frame.
        end_distance: Distance to the target in the last frame.
        azimuth_deg: Camera azimuth.
        elevation_deg: Camera elevation.
        dtype: Output dtype.

    Returns:
        R: (T, 3, 3) and t: (T, 3).
    """
    _frames(num_frames)
    target = _vector(target, dtype)
    distance = torch.linspace(start_distance, end_distance, num_frames, dtype=dtype)
    eye = _spherical_eye(target, distance, azimuth_deg, elevation_deg)
    return look_at(eye, target.expand_as(eye))


def pan(
    num_frames: int,
    target: Sequence[float] = (0.0, 0.0, 0.0),
    distance: float = 3.0,
    azimuth_deg: float = 0.0,
    elevation_deg: float = 0.0,
    start_deg: float = 0.0,
    end_deg: float = 30.0,
    dtype: torch.dtype = torch.float32,
) -> Extrinsics:
    """Camera rotating in place about the vertical axis through its centre.

    At pan angle 0 the camera looks at `target`; positive angles turn it left (counter-clockwise
    seen from above).

    Args:
        num_frames: Number of frames T.
        target: Point looked at for pan angle 0, (3,).
        distance: Distance from camera to target.
        azimuth_deg: Camera azimuth about the target.
        elevation_deg: Camera elevation about the target.
        start_deg: Pan angle of the first frame.
        end_deg: Pan angle of the last frame.
        dtype: Output dtype.

    Returns:
        R: (T, 3, 3) and t: (T, 3); the camera centre is constant.
    """
    _frames(num_frames)
    target = _vector(target, dtype)
    angles = torch.deg2rad(torch.linspace(start_deg, end_deg, num_frames, dtype=dtype))
    eye = _spherical_eye(target, distance, azimuth_deg, elevation_deg)
    yaw = roma.rotvec_to_rotmat(angles.unsqueeze(-1) * torch.tensor(WORLD_UP, dtype=dtype))
    targets = eye + yaw @ (target - eye)
    return look_at(eye.expand_as(targets), targets)


def handheld(
    R: torch.Tensor,
    t: torch.Tensor,
    seed: int = 0,
    translation_m: float = 0.01,
    rotation_deg: float = 0.5,
    frequency_hz: float = 0.5,
    fps: float = 25.0,
) -> Extrinsics:
    """Add smooth, seeded hand-held shake to any trajectory.

    Each of the 3 position and 3 rotation offsets is a mean of 3 sinusoids with random phases and
    frequencies in [0.5, 1.5] × `frequency_hz`, so it is smooth and bounded by its amplitude. The
    position offset moves the camera centre in the world; the rotation offset (a rotation vector
    in the camera frame) is applied after `R`. The same seed gives the same shake.

    Args:
        R: World-to-camera rotations, (T, 3, 3).
        t: World-to-camera translations, (T, 3).
        seed: Seed of the `torch.Generator` drawing phases and frequencies.
        translation_m: Largest position offset per axis, in metres.
        rotation_deg: Largest rotation offset per axis, in degrees.
        frequency_hz: Typical shake frequency.
        fps: Frame rate used to convert frames to seconds.

    Returns:
        Jittered R: (T, 3, 3) and t: (T, 3).
    """
    if R.ndim != 3 or R.shape[1:] != (3, 3) or t.shape != (R.shape[0], 3):
        raise ValueError(f"expected R: (T, 3, 3) and t: (T, 3), got {tuple(R.shape)} and {tuple(t.shape)}")
    generator = torch.Generator().manual_seed(seed)
    frequencies = frequency_hz * (0.5 + torch.rand(6, 3, generator=generator, dtype=torch.float64))
    phases = 2 * math.pi * torch.rand(6, 3, generator=generator, dtype=torch.float64)
    seconds = torch.arange(R.shape[0], dtype=torch.float64) / fps
    waves = torch.sin(2 * math.pi * frequencies * seconds[:, None, None] + phases).mean(dim=-1)
    amplitude = torch.tensor([translation_m] * 3 + [math.radians(rotation_deg)] * 3, dtype=torch.float64)
    offsets = (waves * amplitude).to(R)
    R_new = roma.rotvec_to_rotmat(offsets[:, 3:]) @ R
    center = camera_center(R, t) + offsets[:, :3]
    return R_new, -(R_new @ center.unsqueeze(-1)).squeeze(-1)


def handheld_static(num_frames: int, seed: int = 0, **kwargs) -> Extrinsics:
    """A `static` camera held by hand: `static(num_frames, **kwargs)` with `handheld` shake (`seed`)."""
    return handheld(*static(num_frames, **kwargs), seed=seed)


TRAJECTORIES: dict[str, Callable[..., Extrinsics]] = {
    "static": static,
    "orbit": orbit,
    "dolly": dolly,
    "pan": pan,
    "handheld": handheld_static,
}
"""Trajectory builders by name, for `make_trajectory`."""


def make_trajectory(name: str, num_frames: int, handheld_shake: dict | None = None, **kwargs) -> Extrinsics:
    """Build a named trajectory, optionally with hand-held shake.

    Args:
        name: One of `TRAJECTORIES` ("static", "orbit", "dolly", "pan", "handheld").
        num_frames: Number of frames T.
        handheld_shake: Keyword arguments of `handheld` (e.g. `{"seed": 3}`) to add shake; None for none.
        **kwargs: Keyword arguments of the named trajectory function.

    Returns:
        R: (T, 3, 3) and t: (T, 3).
    """
    if name not in TRAJECTORIES:
        raise ValueError(f"unknown trajectory {name!r}; valid names: {sorted(TRAJECTORIES)}")
    R, t = TRAJECTORIES[name](num_frames, **kwargs)
    return (R, t) if handheld_shake is None else handheld(R, t, **handheld_shake)
