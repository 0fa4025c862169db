"""Clip augmentations of the streaming datasets (SPEC §1 "Augmentations", paper §4.2); docs/datamodules.md.

Three switchable parts, each drawn per clip from a per-sample generator (:func:`sample_rng`):

* :class:`StructuredMotion` — random structured motion: a direction and a speed (and optionally an
  acceleration) per clip; frame `t` is cropped from a larger frame at offset `o_t = v·t + ½·a·t²`
  (output pixels), so the picture content moves by `-v` pixels per frame, like a panning camera.
* :class:`SpeedAdjustment` — dynamic speed adjustment: a temporal rate per clip, drawn from a set;
  output frame `i` shows source frame position `start + stride·i`, `stride = frame_stride · rate`.
  Integer strides pick frames; fractional ones resample (nearest frame, or a linear blend of the two
  neighbours for RGB videos).
* :class:`CropJitter` — the random part of the resize/crop to the training resolution: crop scale and
  position (off: the largest centred crop).

:meth:`ClipAugment.plan` draws all three and returns a :class:`ClipPlan`, which applies them to frames,
label maps and intrinsics and says what was applied (:meth:`ClipPlan.summary`). The spatial transform
is always "resize by a zoom factor, then crop one output-sized window per frame" (the windows move
when there is motion), and intrinsics follow with `resize_intrinsics` then `crop_intrinsics`, so a
3-D point projected with the new `K` lands on the same image content (docs/conventions.md).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from isa4d.geometry import crop_intrinsics, resize_intrinsics

Interpolation = Literal["nearest", "linear"]
Size = tuple[int, int]


class UnusableClipError(ValueError):
    """A valid sample that this configuration cannot use (too few frames, too many persons, ...)."""


def sample_rng(seed: int, key: str, *salt: int) -> np.random.Generator:
    """A generator for one sample, from the run's seed, the clip key and optional extra integers."""
    return np.random.default_rng([seed, zlib.crc32(key.encode()), *salt])


@dataclass
class StructuredMotion:
    """Random structured motion: the crop window moves by `velocity` output pixels per frame.

    Attributes:
        enabled: off: static windows (velocity and acceleration 0).
        prob: probability that a clip moves at all.
        max_speed: speeds are uniform in `[0, max_speed]` output pixels per frame, direction uniform.
        max_acceleration: acceleration magnitude uniform in `[0, max_acceleration]` px/frame², direction
            uniform; 0 for constant velocity.
    """

    enabled: bool = True
    prob: float = 1.0
    max_speed: float = 2.0
    max_acceleration: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.prob <= 1 or self.max_speed < 0 or self.max_acceleration < 0:
            raise ValueError(f"StructuredMotion: need 0 <= prob <= 1 and speeds >= 0, got {self}")

    def draw(self, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """`(velocity, acceleration)`, each `(2,)` float64 `(x, y)`; zeros if off, not drawn or `rng` None."""
        zero = np.zeros(2)
        if not self.enabled or rng is None or rng.random() >= self.prob:
            return zero, zero
        velocity, acceleration = (
            rng.uniform(0, top) * _unit(rng.uniform(0, 2 * math.pi))
            for top in (self.max_speed, self.max_acceleration)
        )
        return velocity, acceleration


def _unit(angle: float) -> np.ndarray:
    return np.array([math.cos(angle), math.sin(angle)])


def motion_offsets(velocity: np.ndarray, acceleration: np.ndarray, num_frames: int) -> np.ndarray:
    """Window offsets `o_t = v·t + ½·a·t²` of frames `t = 0 .. T-1`, `(T, 2)` `(x, y)` output pixels."""
    t = np.arange(num_frames, dtype=np.float64)[:, None]
    return velocity * t + 0.5 * acceleration * t**2


@dataclass
class SpeedAdjustment:
    """Dynamic speed adjustment: a temporal rate per clip, drawn uniformly from `rates`.

    Attributes:
        enabled: off: rate 1 (the configured frame stride).
        rates: the rates to draw from; integers pick frames, fractions resample.
        interpolation: for fractional positions, `nearest` frame or `linear` blend of the two
            neighbours (RGB videos only; annotations and masks always take the nearest frame).
    """

    enabled: bool = True
    rates: Sequence[float] = (1, 2, 3, 4)
    interpolation: Interpolation = "nearest"

    def __post_init__(self) -> None:
        self.rates = tuple(float(rate) for rate in self.rates)
        if not self.rates or min(self.rates) <= 0:
            raise ValueError(f"SpeedAdjustment.rates must be positive numbers, got {self.rates}")
        if self.interpolation not in ("nearest", "linear"):
            raise ValueError(
                f"SpeedAdjustment.interpolation must be nearest or linear, got {self.interpolation}"
            )

    def draw(self, rng: np.random.Generator | None) -> float:
        """The rate of a clip (1.0 if off or `rng` is None)."""
        if not self.enabled or rng is None:
            return 1.0
        return float(rng.choice(self.rates))


@dataclass
class CropJitter:
    """Random scale and position of the crop to the output resolution.

    Attributes:
        enabled: off: the largest crop of the output's aspect ratio, centred.
        scale: crop side as a fraction of the largest crop, uniform in `[scale[0], scale[1]]` (≤ 1).
    """

    enabled: bool = True
    scale: Sequence[float] = (0.8, 1.0)

    def __post_init__(self) -> None:
        self.scale = (float(self.scale[0]), float(self.scale[1]))
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"CropJitter.scale must satisfy 0 < low <= high <= 1, got {self.scale}")

    def draw(self, rng: np.random.Generator | None) -> tuple[float, np.ndarray]:
        """`(scale, position)`: the crop scale and where the crop sits in its free range, `(2,)` in [0, 1]."""
        if not self.enabled or rng is None:
            return 1.0, np.full(2, 0.5)
        return float(rng.uniform(*self.scale)), rng.uniform(0, 1, 2)


def frame_positions(
    num_available: int, num_frames: int, stride: float, rng: np.random.Generator | None
) -> tuple[np.ndarray, float]:
    """Source positions of a clip of `num_frames` frames taken every `stride` frames.

    A stride that does not fit is reduced: an integer stride to the largest integer that fits, a
    fractional one to `(N - 1) / (T - 1)`. One frame (`T = 1`) is any frame (the middle one without `rng`).

    Args:
        num_available: N, the source clip's frame count.
        num_frames: T.
        stride: source frames per output frame (> 0).
        rng: draws the start (uniform over the positions that fit); None: the centred window.

    Returns:
        `(positions (T,) float64, stride used)`; the stride is 0 for `T = 1`.

    Raises:
        UnusableClipError: if the clip is too short (`N < T` for an integer stride, `N = 1` otherwise).
    """
    if num_frames == 1:
        start = rng.integers(num_available) if rng is not None else (num_available - 1) // 2
        return np.array([float(start)]), 0.0
    fits = (num_available - 1) / (num_frames - 1)
    step = min(stride, math.floor(fits)) if float(stride).is_integer() else min(stride, fits)
    if step <= 0 or (step < 1 and float(stride).is_integer()):
        raise UnusableClipError(f"{num_available} frames, fewer than the {num_frames} needed at stride 1")
    room = num_available - 1 - step * (num_frames - 1)
    if float(step).is_integer():
        start = float(rng.integers(math.floor(room + 1e-9) + 1) if rng is not None else math.floor(room / 2))
    else:
        start = rng.uniform(0, room) if rng is not None else room / 2
    return start + step * np.arange(num_frames), float(step)


@dataclass(frozen=True, eq=False)
class ClipPlan:
    """The augmentation drawn for one clip, and how to apply it.

    Attributes:
        positions: `(T,)` source frame position of every output frame (fractional when resampling).
        interpolation: how fractional positions are read from RGB frames.
        stride: source frames per output frame (0 for a single frame).
        velocity: `(2,)` window motion `(x, y)`, output pixels per frame (content moves by `-velocity`).
        acceleration: `(2,)` window acceleration, output pixels per frame².
        scale: crop side as a fraction of the largest crop.
        src_size: `(H, W)` of the source frames.
        zoom_size: `(H_z, W_z)` the source frames are resized to before cropping.
        out_size: `(H_o, W_o)` of the output.
        crop_xy: `(T, 2)` top-left pixel `(x0, y0)` of every frame's window in the resized frame.
    """

    positions: np.ndarray
    interpolation: Interpolation
    stride: float
    velocity: np.ndarray
    acceleration: np.ndarray
    scale: float
    src_size: Size
    zoom_size: Size
    out_size: Size
    crop_xy: np.ndarray

    @property
    def source_indices(self) -> list[int]:
        """The source frames to decode, sorted: the neighbours of every position (their nearest only
        if nothing is blended)."""
        if self.interpolation == "linear":
            needed = np.concatenate([np.floor(self.positions), np.ceil(self.positions)])
        else:
            needed = _nearest(self.positions)
        return sorted({int(index) for index in needed})

    def resample(self, frames: torch.Tensor, blend: bool = False) -> torch.Tensor:
        """Output frames from frames at :attr:`source_indices`.

        Args:
            frames: `(N, ...)` the frames (or per-frame values) at `source_indices`, in that order.
            blend: linearly blend fractional positions (only with `interpolation == "linear"`; the
                result is then float32 for integer input); otherwise the nearest frame is taken.

        Returns:
            `(T, ...)`.
        """
        lookup = {index: row for row, index in enumerate(self.source_indices)}
        if not (blend and self.interpolation == "linear"):
            return frames[[lookup[int(index)] for index in _nearest(self.positions)]]
        frames = frames if frames.is_floating_point() else frames.float()
        lower, upper = np.floor(self.positions), np.ceil(self.positions)
        weight = torch.as_tensor(self.positions - lower, dtype=frames.dtype)
        first = frames[[lookup[int(index)] for index in lower]]
        second = frames[[lookup[int(index)] for index in upper]]
        return torch.lerp(first, second, weight.reshape(-1, *[1] * (frames.ndim - 1)))

    def warp(self, frames: torch.Tensor, labels: bool = False) -> torch.Tensor:
        """Resize to `zoom_size`, then crop every frame's window (sub-pixel windows are resampled).

        The resize is antialiased bilinear (`align_corners=False`); give uint8 frames in channels-last
        memory (e.g. a `permute` of `(T, H, W, C)` decoded frames) for PyTorch's fast uint8 kernel.
        Whole-pixel windows are sliced, sub-pixel ones bilinearly sampled (`grid_sample`).

        Args:
            frames: `(T, C, H, W)` uint8 or float, `(H, W) == src_size`.
            labels: label maps: nearest-neighbour sampling throughout (values are kept exactly).

        Returns:
            `(T, C, H_o, W_o)` float32, in the value range of `frames`.
        """
        if tuple(frames.shape[-2:]) != self.src_size:
            raise ValueError(f"frames are {tuple(frames.shape[-2:])}, the plan expects {self.src_size}")
        if self.zoom_size != self.src_size:
            if labels:
                frames = F.interpolate(frames, size=self.zoom_size, mode="nearest-exact")
            else:
                frames = F.interpolate(
                    frames, size=self.zoom_size, mode="bilinear", align_corners=False, antialias=True
                )
        (zoom_h, zoom_w), (out_h, out_w) = self.zoom_size, self.out_size
        x0, y0 = np.round(self.crop_xy).astype(np.int64).T
        inside = x0.min() >= 0 and y0.min() >= 0 and x0.max() + out_w <= zoom_w and y0.max() + out_h <= zoom_h
        if inside and (self.crop_xy == np.round(self.crop_xy)).all():
            return torch.stack(
                [frame[:, y : y + out_h, x : x + out_w] for frame, x, y in zip(frames, x0, y0, strict=True)]
            ).float()
        crop = torch.as_tensor(self.crop_xy, dtype=torch.float32)
        u = crop[:, None, 0] + torch.arange(out_w)  # (T, W_o) pixel columns
        v = crop[:, None, 1] + torch.arange(out_h)  # (T, H_o) pixel rows
        grid = torch.stack(
            torch.broadcast_tensors(
                ((2 * u + 1) / zoom_w - 1)[:, None, :], ((2 * v + 1) / zoom_h - 1)[:, :, None]
            ),
            dim=-1,
        )  # (T, H_o, W_o, 2) normalised (x, y), align_corners=False
        mode = "nearest" if labels else "bilinear"
        return F.grid_sample(frames.float(), grid, mode=mode, padding_mode="border", align_corners=False)

    def intrinsics(self, K: torch.Tensor) -> torch.Tensor:
        """Intrinsics of the output frames: `resize_intrinsics` to `zoom_size`, then `crop_intrinsics`.

        Args:
            K: `(T, 3, 3)` intrinsics of the source frames at :attr:`positions` (or `(3, 3)`).

        Returns:
            `(T, 3, 3)`.
        """
        K = resize_intrinsics(K, self.src_size, self.zoom_size)
        crop = torch.as_tensor(self.crop_xy, dtype=K.dtype, device=K.device)
        return crop_intrinsics(K, crop[:, 0], crop[:, 1])

    def summary(self) -> dict[str, torch.Tensor]:
        """What was applied, for logging: `velocity (2,)`, `acceleration (2,)`, `stride ()`, `scale ()`."""
        return {
            "velocity": torch.as_tensor(self.velocity, dtype=torch.float32),
            "acceleration": torch.as_tensor(self.acceleration, dtype=torch.float32),
            "stride": torch.tensor(self.stride, dtype=torch.float32),
            "scale": torch.tensor(self.scale, dtype=torch.float32),
        }


def _nearest(positions: np.ndarray) -> np.ndarray:
    return np.floor(positions + 0.5).astype(np.int64)


@dataclass
class ClipAugment:
    """The three augmentations together; :meth:`plan` draws them for one clip.

    Attributes:
        motion: random structured motion.
        speed: dynamic speed adjustment.
        crop: crop scale/position jitter.
    """

    motion: StructuredMotion
    speed: SpeedAdjustment
    crop: CropJitter

    @classmethod
    def off(cls) -> ClipAugment:
        """Every augmentation switched off: centred largest crop, rate 1, no motion."""
        return cls(StructuredMotion(enabled=False), SpeedAdjustment(enabled=False), CropJitter(enabled=False))

    def plan(
        self,
        rng: np.random.Generator | None,
        *,
        num_available: int,
        src_size: Size,
        out_size: Size,
        num_frames: int,
        frame_stride: float = 1,
    ) -> ClipPlan:
        """Draw the augmentation of one clip.

        The zoom is the smallest that lets every frame's window (the output size plus the motion's
        extent) fit inside the resized frame, divided by the crop scale; the windows' common start is
        placed in its free range by the crop position. So windows never leave the picture.

        Args:
            rng: the sample's generator; None: no augmentation (centred window and crop, rate 1).
            num_available: frames of the source clip.
            src_size: `(H, W)` of the source frames.
            out_size: `(H_o, W_o)` of the output.
            num_frames: T of the output (1 for an image: no motion, no stride).
            frame_stride: the base stride that the speed rate multiplies.

        Raises:
            UnusableClipError: if the clip has too few frames.
        """
        positions, stride = frame_positions(
            num_available, num_frames, frame_stride * self.speed.draw(rng), rng
        )
        velocity, acceleration = self.motion.draw(rng if num_frames > 1 else None)
        scale, where = self.crop.draw(rng)
        offsets = motion_offsets(velocity, acceleration, num_frames)
        low, high = offsets.min(axis=0), offsets.max(axis=0)  # (x, y)
        (src_h, src_w), (out_h, out_w) = src_size, out_size
        zoom = max((out_w + high[0] - low[0]) / src_w, (out_h + high[1] - low[1]) / src_h) / scale
        zoom_size = (math.ceil(src_h * zoom - 1e-6), math.ceil(src_w * zoom - 1e-6))
        free = np.maximum(np.array([zoom_size[1] - out_w, zoom_size[0] - out_h]) - (high - low), 0.0)
        start = -low + where * free
        first, last = np.ceil(-low), np.floor(-low + free)  # whole-pixel starts: no resampling when static
        start = np.where(first <= last, np.clip(np.round(start), first, last), start)
        return ClipPlan(
            positions=positions,
            interpolation=self.speed.interpolation,
            stride=stride,
            velocity=velocity,
            acceleration=acceleration,
            scale=scale,
            src_size=(int(src_h), int(src_w)),
            zoom_size=zoom_size,
            out_size=(int(out_h), int(out_w)),
            crop_xy=start + offsets,
        )
