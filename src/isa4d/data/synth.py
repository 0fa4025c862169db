"""`isa4d synth`: rendered synthetic clips with exact ground truth (docs/synth.md).

Every clip shows 1-3 procedural bodies (random betas, clothing-like appearance cut from real photos,
:mod:`isa4d.data.appearance`) performing retargeted DeepMimic motion-capture clips (time-warped,
mirrored, turned and placed apart, :mod:`isa4d.data.mocap`), inside a "room": four walls covered with
real photos and a floor textured with a material photo, rendered with the same camera as the people
(:mod:`isa4d.render`), so a moving camera sees true parallax. Cameras are static, orbiting, dollying,
panning or hand-held (:func:`isa4d.geometry.make_trajectory`), looking at the people.

Each clip carries the video, the person label map, the background-only video (the same render without
the people), a reference image of the same people (same shape and appearance) in another pose and view
with its own SMPL parameters and camera, and the ground-truth SMPL parameters and cameras of every
frame, in the shard format of docs/data.md.

Splits: `video` (static camera), `camera` (moving camera), `mask` (no scene: everything but the
people is black, in the video, the background video and the reference) and `train` (a mixture of the
three modes). Clip `index` of `split` is drawn from `SeedSequence([seed, crc32(split), index])`, so any
clip can be regenerated alone, and generation with worker processes gives the same clips as serial.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import sys
import zlib
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image, ImageDraw

from isa4d.body import BodyModel, procedural_body_data
from isa4d.data.appearance import (
    FLOOR_TEXTURES,
    FLOOR_TINTS,
    Appearance,
    available_photos,
    load_photo,
    mirror_tile,
    photo_licences,
    random_appearance,
    resize_image,
    tinted_texture,
)
from isa4d.data.format import Cameras, Clip, Reference, SMPLParams
from isa4d.data.mocap import augment_motion, list_clips, load_deepmimic, retarget_clip
from isa4d.data.shards import check_writable, write_shards
from isa4d.data.video_io import DEFAULT_CRF, DEFAULT_PRESET
from isa4d.geometry import intrinsics_from_fov, look_at, make_trajectory, project_points
from isa4d.render import MeshScene, interpolate, rasterize, render_meshes, sample_texture

SOURCE = "isa4d-synth"
"""`meta.source` of generated clips."""
GENERATOR_VERSION = 1
"""Stored as `meta.extra["generator_version"]`; bumped whenever the same seed would give other clips."""
SPLITS = ("train", "video", "camera", "mask")
MODES = ("video", "camera", "mask")
"""Clip kinds: static camera with scene, moving camera with scene, people on black."""
TRAIN_MODES = {"video": 0.35, "camera": 0.45, "mask": 0.2}
"""Probability of each mode in the `train` split."""
MOVING_TRAJECTORIES = {"orbit": 0.35, "dolly": 0.2, "pan": 0.2, "handheld": 0.25}
"""Trajectories of the `camera` mode and their probabilities."""
DEFAULT_COUNTS = {"train": 96, "video": 16, "camera": 16, "mask": 16}
"""Clips per split of the default dataset (256 x 256 x 33: 5-7 minutes with 2 workers on 2 cores)."""
MIN_SEPARATION = 1.0
"""Wanted distance (m) between the pelvis paths of two persons at every instant (best effort)."""
BETA_STD = 0.8
"""Standard deviation of the betas 0-4 (the procedural body's 5-9 have no effect and stay 0)."""
TIME_WARP = (0.8, 1.25)
"""Range of the time-warp (slow-down) factor drawn per person."""
MAX_TIME_WARP = 1.6
"""Clips that do not loop are used only if they last T frames at this slow-down or less."""
FOV_DEG = (40.0, 60.0)
ELEVATION_DEG = (-3.0, 20.0)
MIN_CAMERA_HEIGHT = 0.3
"""Metres above the floor (y = 0) that every camera keeps."""
REFERENCE_VIEW_TRIES = 6
"""Reference views drawn per clip; the one whose persons overlap least in the image is kept."""


# ------------------------------------------------------------------------------------------------ seeding


def clip_seed_sequence(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The seed sequence of clip `index` of `split`: `SeedSequence([seed, crc32(split), index])`."""
    return np.random.SeedSequence([int(seed), zlib.crc32(split.encode()), int(index)])


def clip_key(seed: int, split: str, index: int) -> str:
    """The key of a clip, `synth<seed>-<split>-<index:06d>`."""
    return f"synth{seed}-{split}-{index:06d}"


def _normalise_size(size: int | Sequence[int]) -> tuple[int, int]:
    height, width = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if height <= 0 or width <= 0 or height % 2 or width % 2:
        raise ValueError(f"size must be positive and even (H.264 yuv420p), got {(height, width)}")
    return height, width


# ------------------------------------------------------------------------------------------------ motion


@functools.cache
def _body_model() -> BodyModel:
    return BodyModel("procedural")


@functools.cache
def _faces() -> np.ndarray:
    return procedural_body_data()["f"].astype(np.int64)


@dataclass
class _Motion:
    """One person's SMPL motion and how it was drawn."""

    global_orient: np.ndarray  # (T, 3)
    body_pose: np.ndarray  # (T, 69)
    transl: np.ndarray  # (T, 3)
    info: dict[str, Any]


def _source_frames(name: str, fps: float) -> tuple[int, bool]:
    """Frames of clip `name` at `fps` that fit strictly inside it, and whether it loops."""
    clip = load_deepmimic(name)
    return int(math.floor(clip.duration * fps + 1e-6)) + 1, clip.loop


def _sample_motion(rng: np.random.Generator, frames: int, fps: float, exclude: Sequence[str] = ()) -> _Motion:
    """A random clip, start, time warp, mirror and yaw: `frames` frames at `fps`, starting at the origin."""

    def long_enough(name: str) -> bool:  # looping clips always are; the others at a warp <= MAX_TIME_WARP
        available, loop = _source_frames(name, fps)
        return loop or available >= math.ceil((frames - 1) / MAX_TIME_WARP) + 2

    names = [name for name in list_clips() if name not in exclude and long_enough(name)]
    name = str(rng.choice(names))
    available, loop = _source_frames(name, fps)
    warp = float(rng.uniform(*TIME_WARP))
    needed = math.ceil((frames - 1) / warp) + 2  # one spare frame against round-off in the warp
    if not loop and needed > available:  # too short at this warp: slow it down just enough
        warp = (frames - 1) / (available - 2)
        needed = available
    if loop and needed > available:
        start_frame = int(rng.integers(0, available))
    else:
        start_frame = int(rng.integers(0, available - needed + 1))
    mirror = bool(rng.uniform() < 0.5)
    yaw = float(rng.uniform(-math.pi, math.pi))
    motion = retarget_clip(name, fps=fps, num_frames=needed, start=start_frame / fps)
    motion = augment_motion(motion, time_warp=warp, mirror=mirror, yaw=yaw)
    info = {
        "motion": name,
        "start_s": round(start_frame / fps, 6),
        "time_warp": round(warp, 6),
        "mirror": mirror,
        "yaw_deg": round(math.degrees(yaw), 4),
    }
    return _Motion(
        np.asarray(motion["global_orient"][:frames]),
        np.asarray(motion["body_pose"][:frames]),
        np.asarray(motion["transl"][:frames]),
        info,
    )


def _sample_reference_pose(rng: np.random.Generator, fps: float, exclude: str) -> _Motion:
    """One frame of another clip (at a random time, mirrored at random, turned at random)."""
    names = [name for name in list_clips() if name != exclude]
    name = str(rng.choice(names))
    available, _ = _source_frames(name, fps)
    start_frame = int(rng.integers(0, available))
    mirror = bool(rng.uniform() < 0.5)
    yaw = float(rng.uniform(-math.pi, math.pi))
    motion = retarget_clip(name, fps=fps, num_frames=1, start=start_frame / fps)
    motion = augment_motion(motion, mirror=mirror, yaw=yaw)
    info = {
        "motion": name,
        "time_s": round(start_frame / fps, 6),
        "mirror": mirror,
        "yaw_deg": round(math.degrees(yaw), 4),
    }
    return _Motion(motion["global_orient"], motion["body_pose"], motion["transl"], info)


def _pairwise_min_distance(paths: np.ndarray) -> float:
    """Smallest distance between two persons' (T, 2) paths at the same instant; inf for one person."""
    if len(paths) < 2:
        return math.inf
    gaps = np.linalg.norm(paths[:, None] - paths[None], axis=-1)  # (P, P, T)
    upper = np.triu_indices(len(paths), k=1)
    return float(gaps[upper].min())


def _place(rng: np.random.Generator, paths: np.ndarray, tries: int = 300) -> tuple[np.ndarray, float]:
    """Horizontal offsets `(P, 2)` that keep the centred `(P, T, 2)` paths >= MIN_SEPARATION apart.

    Rejection sampling in a square that grows with the attempts; if no draw reaches the separation,
    the best one is kept. The group is centred on the origin. Returns the offsets and the separation.
    """
    persons = len(paths)
    centred = paths - paths.mean(axis=1, keepdims=True)
    if persons == 1:
        return np.zeros((1, 2)), math.inf
    best, best_gap = None, -math.inf
    for attempt in range(tries):
        radius = (0.3 + 0.45 * (persons - 1)) * (1.0 + attempt / 60.0)
        offsets = rng.uniform(-radius, radius, size=(persons, 2))
        gap = _pairwise_min_distance(centred + offsets[:, None])
        if gap > best_gap:
            best, best_gap = offsets, gap
        if gap >= MIN_SEPARATION:
            break
    assert best is not None
    return best - best.mean(axis=0), best_gap


def _sole_shift(betas: np.ndarray) -> np.ndarray:
    """Per person, the vertical shift (m) that puts the soles of a reshaped body where the mean body's are."""
    data = procedural_body_data()
    rest = data["v_template"][None].astype(np.float64) + np.einsum(
        "vck,pk->pvc", data["shapedirs"].astype(np.float64), betas
    )
    return float(data["v_template"][:, 1].min()) - rest[..., 1].min(axis=1)


def _pose_bodies(
    global_orient: np.ndarray, body_pose: np.ndarray, betas: np.ndarray, transl: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Vertices `(P, T, V, 3)` and joints `(P, T, 24, 3)` (float64) of `(P, T, ...)` float32 parameters."""
    f32 = lambda array: torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))  # noqa: E731
    with torch.no_grad():
        out = _body_model()(f32(global_orient), f32(body_pose), f32(betas)[:, None], f32(transl))
    return out.vertices.double().numpy(), out.joints.double().numpy()


# ------------------------------------------------------------------------------------------------ camera


def _spherical(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])


def _fit_distance(
    points: np.ndarray, target: np.ndarray, directions: np.ndarray, tan_half: tuple[float, float], fill: float
) -> float:
    """Smallest distance along each `directions (K, 3)` (target -> camera) that frames all `points`.

    Every point must project within `fill` of the half-width / half-height of the image and lie at least
    0.6 m in front of the camera.
    """
    rotations = []
    for direction in directions:
        R, _ = look_at(torch.from_numpy(target + direction), torch.from_numpy(target))
        rotations.append(R.numpy())
    relative = (points - target) @ np.stack(rotations).transpose(0, 2, 1)  # (K, N, 3) camera axes
    x, y, z = relative[..., 0], relative[..., 1], relative[..., 2]
    need = np.maximum(np.abs(x) / (tan_half[1] * fill), np.abs(y) / (tan_half[0] * fill)) - z
    return float(max(need.max(), (0.6 - z).max()))


@dataclass
class _CameraTrack:
    K: np.ndarray  # (3, 3)
    R: np.ndarray  # (T, 3, 3)
    t: np.ndarray  # (T, 3)
    info: dict[str, Any]


def _min_elevation(target_y: float, distances: Sequence[float]) -> float:
    """Smallest elevation (degrees) that keeps a camera at each of `distances` >= MIN_CAMERA_HEIGHT high."""
    needed = [(MIN_CAMERA_HEIGHT - target_y) / distance for distance in distances]
    return math.degrees(math.asin(float(np.clip(max(needed), -1.0, 1.0))))


def _sample_camera(
    rng: np.random.Generator,
    trajectory: str,
    points: np.ndarray,
    frames: int,
    size: tuple[int, int],
    fps: float,
) -> _CameraTrack:
    """A trajectory of kind `trajectory` looking at the bounding-box centre of `points (N, 3)`.

    The distance is the smallest that frames every point within `fill` of the image half-size from every
    view of the trajectory (the nearest one for a dolly); the elevation is raised where needed to keep the
    camera at least MIN_CAMERA_HEIGHT above the floor.
    """
    fov = float(rng.uniform(*FOV_DEG))
    K = intrinsics_from_fov(fov, size, torch.float64)
    tan_half = (float((size[0] / 2) / K[1, 1]), float((size[1] / 2) / K[0, 0]))
    low, high = points.min(axis=0), points.max(axis=0)
    target = (low + high) / 2
    azimuth = float(rng.uniform(-180.0, 180.0))
    elevation = float(rng.uniform(*ELEVATION_DEG))
    fill = float(rng.uniform(0.7, 0.92))
    sweep = float(rng.uniform(30.0, 100.0)) * (1 if rng.uniform() < 0.5 else -1)
    dolly_ratio = float(rng.uniform(1.2, 1.45))
    dolly_in = bool(rng.uniform() < 0.5)
    pan_half = float(rng.uniform(6.0, 14.0))
    pan_sign = 1 if rng.uniform() < 0.5 else -1
    azimuths = azimuth + (np.linspace(0.0, sweep, 12) if trajectory == "orbit" else np.zeros(1))
    for _ in range(3):  # fit, then lift the camera off the floor if needed, and fit again
        directions = np.stack([_spherical(a, elevation) for a in azimuths])
        distance = _fit_distance(points, target, directions, tan_half, fill)
        if trajectory == "pan":  # keep the people in view while the camera turns
            distance /= 1.0 - 0.5 * math.tan(math.radians(pan_half)) / max(tan_half[1], 1e-3)
        distances = (distance, distance * dolly_ratio) if trajectory == "dolly" else (distance,)
        lowest = _min_elevation(float(target[1]), distances)
        if elevation >= lowest:
            break
        elevation = lowest + 1.0
    info: dict[str, Any] = {"trajectory": trajectory, "fov_deg": round(fov, 4)}
    info.update(azimuth_deg=round(azimuth, 4), elevation_deg=round(elevation, 4), distance=round(distance, 4))
    kwargs: dict[str, Any] = {"target": target.tolist(), "elevation_deg": elevation, "dtype": torch.float64}
    if trajectory == "orbit":
        kwargs.update(distance=distance, start_deg=azimuth, end_deg=azimuth + sweep)
        info.update(sweep_deg=round(sweep, 4))
    elif trajectory == "dolly":
        near, far = distance, distance * dolly_ratio
        start, end = (far, near) if dolly_in else (near, far)
        kwargs.update(azimuth_deg=azimuth, start_distance=start, end_distance=end)
        info.update(start_distance=round(start, 4), end_distance=round(end, 4))
    elif trajectory == "pan":
        kwargs.update(azimuth_deg=azimuth, distance=distance, start_deg=-pan_sign * pan_half)
        kwargs.update(end_deg=pan_sign * pan_half)
        info.update(pan_deg=round(2 * pan_sign * pan_half, 4))
    elif trajectory in ("static", "handheld"):
        kwargs.update(azimuth_deg=azimuth, distance=distance)
    else:
        raise ValueError(f"unknown trajectory {trajectory!r}; choose static, orbit, dolly, pan or handheld")
    shake = None
    if trajectory == "handheld":
        shake = {"translation_m": 0.03, "rotation_deg": 1.0, "frequency_hz": 0.8}
    elif trajectory != "static" and rng.uniform() < 0.3:
        shake = {"translation_m": 0.015, "rotation_deg": 0.5, "frequency_hz": 0.6}
    if shake is not None:
        shake.update(seed=int(rng.integers(2**31)), fps=fps)
        info["handheld"] = {key: value for key, value in shake.items() if key != "fps"}
    name = "static" if trajectory == "handheld" else trajectory
    R, t = make_trajectory(name, frames, handheld_shake=shake, **kwargs)
    info["target"] = [round(float(v), 4) for v in target]
    return _CameraTrack(K.numpy(), R.numpy(), t.numpy(), info)


# ------------------------------------------------------------------------------------------------ the room


@dataclass
class _Room:
    """Four photo walls and a textured floor (y = 0), as a static ray-casting scene."""

    scene: MeshScene
    uvs: list[np.ndarray]  # per mesh (4, 2)
    textures: list[np.ndarray]  # per mesh (h, w, 3) float in [0, 1], mirror-tiled
    normals: np.ndarray  # (M, 3) facing into the room
    ambient: float
    info: dict[str, Any]
    photos: list[str]

    def render(
        self, K: np.ndarray, R: np.ndarray, t: np.ndarray, size: tuple[int, int], light: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The room seen by one camera: RGB `(H, W, 3)` float in [0, 1] and depth `(H, W)` (inf = no hit)."""
        fragments = rasterize(self.scene, K, R, t, size)
        uv = interpolate(fragments, self.uvs)
        rgb = np.zeros((*size, 3))
        shade = self.ambient + (1.0 - self.ambient) * np.clip(self.normals @ light, 0.0, None)
        for index, texture in enumerate(self.textures):
            hit = fragments.mesh_id == index
            rgb[hit] = sample_texture(texture, uv[hit]) * shade[index]
        missed = fragments.mesh_id < 0
        rgb[missed] = 0.5  # only at float32 cracks between the walls, if ever
        return rgb, fragments.depth


def _build_room(
    rng: np.random.Generator, half_size: float, view_distance: float, fov_deg: float, height: int
) -> _Room:
    """A box room of half-width `half_size` with four random photo walls and a material floor.

    Photos are resized so that one texel is about one pixel at the distance they are seen from
    (`half_size` for walls, `view_distance` for the floor) to limit aliasing.
    """
    scenes = available_photos("scene") or available_photos()
    textures_available = [name for name in FLOOR_TEXTURES if name in available_photos()]
    wall_height = 2.5 * half_size + 3.0
    footprint_wall = 2 * half_size * math.tan(math.radians(fov_deg) / 2) / height
    meshes, uvs, textures, normals, walls, photos = [], [], [], [], [], []
    L = half_size
    # corners of each wall, walked counter-clockwise seen from inside; normal into the room
    wall_specs = [
        ((-L, -L), (L, -L), (0.0, 0.0, 1.0)),  # back, z = -L
        ((L, -L), (L, L), (-1.0, 0.0, 0.0)),  # x = +L
        ((L, L), (-L, L), (0.0, 0.0, -1.0)),  # z = +L
        ((-L, L), (-L, -L), (1.0, 0.0, 0.0)),  # x = -L
    ]
    brick_wall = "brick" in textures_available
    for (x0, z0), (x1, z1), normal in wall_specs:
        if brick_wall and rng.uniform() < 0.12:
            name = "brick"
            tint = np.asarray(FLOOR_TINTS[name]) * rng.uniform(0.8, 1.15)
            photo_height = float(rng.uniform(1.5, 3.0))
            image = tinted_texture(load_photo(name), np.clip(tint, 0, 1), 0.35) * 255.0
        else:
            name = str(rng.choice(scenes))
            photo_height = float(rng.uniform(0.45, 0.9)) * L
            image = np.asarray(load_photo(name), dtype=np.float64)
        rows = min(image.shape[0], max(16, int(photo_height / footprint_wall)))
        cols = max(16, int(rows * image.shape[1] / image.shape[0]))
        photo = resize_image(np.clip(image, 0, 255).astype(np.uint8), rows, cols)
        photo_width = photo_height * photo.shape[1] / photo.shape[0]
        shift = float(rng.uniform(0.0, 2.0))
        length = math.hypot(x1 - x0, z1 - z0)
        vertices = np.array(
            [[x0, 0.0, z0], [x1, 0.0, z1], [x1, wall_height, z1], [x0, wall_height, z0]], dtype=np.float64
        )
        # the mirror-tiled texture holds the photo in u, v in [0, 0.5): its bottom edge (v = 0.5) on the floor
        u = np.array([0.0, length, length, 0.0]) / (2 * photo_width) + shift
        v = 0.5 - np.array([0.0, 0.0, wall_height, wall_height]) / (2 * photo_height)
        meshes.append((vertices, np.array([[0, 1, 2], [0, 2, 3]])))
        uvs.append(np.stack([u, v], axis=1))
        textures.append(mirror_tile(photo.astype(np.float64) / 255.0))
        normals.append(normal)
        walls.append({"photo": name, "photo_height_m": round(photo_height, 4)})
        photos.append(name)
    # floor
    floor_name = str(rng.choice(textures_available)) if textures_available else str(rng.choice(scenes))
    tile = float(rng.uniform(0.8, 2.5))
    footprint_floor = 2 * view_distance * math.tan(math.radians(fov_deg) / 2) / height
    tint = np.asarray(FLOOR_TINTS.get(floor_name, (0.7, 0.7, 0.7))) * rng.uniform(0.93, 1.07, size=3)
    tint = tint * rng.uniform(0.75, 1.15)
    source = load_photo(floor_name)
    rows = min(source.shape[0], max(16, int(tile / footprint_floor)))
    floor_texture = tinted_texture(
        resize_image(source, rows, rows), np.clip(tint, 0, 1), float(rng.uniform(0.2, 0.4))
    )
    offset = rng.uniform(0.0, 2.0, size=2)
    vertices = np.array([[-L, 0.0, -L], [L, 0.0, -L], [L, 0.0, L], [-L, 0.0, L]], dtype=np.float64)
    meshes.append((vertices, np.array([[0, 2, 1], [0, 3, 2]])))
    uvs.append(vertices[:, [0, 2]] / tile + offset)
    textures.append(mirror_tile(floor_texture))
    normals.append((0.0, 1.0, 0.0))
    photos.append(floor_name)
    ambient = float(rng.uniform(0.6, 0.8))
    info = {
        "half_size_m": round(L, 4),
        "walls": walls,
        "floor": {"photo": floor_name, "tile_m": round(tile, 4), "tint": [round(float(c), 3) for c in tint]},
        "ambient": round(ambient, 4),
    }
    return _Room(
        MeshScene(meshes), uvs, textures, np.asarray(normals, dtype=np.float64), ambient, info, photos
    )


# ------------------------------------------------------------------------------------------------ rendering


def _render_people(
    vertices: Sequence[np.ndarray],
    colors: Sequence[np.ndarray],
    K: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    size: tuple[int, int],
    light: np.ndarray,
    ambient: float,
    room: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, label map (0 background, p + 1 person p) and background of one frame.

    `room` is the background's `(rgb float, depth)` render for this camera, or None (black, no occluder).
    A person pixel is kept where the person is nearer than the room (the floor can hide sunken feet).
    """
    faces = _faces()
    scene = MeshScene([(v, faces) for v in vertices])
    out = render_meshes(scene, colors, K, R, t, size, light=light, ambient=ambient)
    if room is None:
        background = np.zeros((*size, 3), dtype=np.uint8)
        person = out["mask"] >= 0
    else:
        background = (np.clip(room[0], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        person = (out["mask"] >= 0) & (out["depth"] < room[1])
    labels = np.where(person, out["mask"] + 1, 0).astype(np.uint8)
    image = np.where(person[..., None], out["rgb"], background)
    return image, labels, background


# ------------------------------------------------------------------------------------------------ one clip


def _draw_mode(rng: np.random.Generator, split: str) -> str:
    if split in MODES:
        return split
    return str(rng.choice(list(TRAIN_MODES), p=list(TRAIN_MODES.values())))


def _draw_trajectory(rng: np.random.Generator, mode: str) -> str:
    if mode == "video":
        return "static"
    names, weights = list(MOVING_TRAJECTORIES), list(MOVING_TRAJECTORIES.values())
    if mode == "mask" and rng.uniform() < 0.4:
        return "static"
    return str(rng.choice(names, p=weights))


def generate_clip(
    split: str,
    index: int,
    *,
    seed: int = 0,
    size: int | Sequence[int] = 256,
    frames: int = 33,
    persons: int | Sequence[int] = (1, 3),
    fps: float = 30.0,
    mode: str | None = None,
    trajectory: str | None = None,
) -> Clip:
    """Render clip `index` of `split`, fully determined by `(seed, split, index)` and the settings.

    Args:
        split: the split (and meta.split); `video`, `camera` and `mask` fix the mode, any other name
            (e.g. `train`) draws it from :data:`TRAIN_MODES`.
        index: the clip's number within the split.
        seed: the dataset seed.
        size: `(H, W)` or one number for square frames; even.
        frames: T.
        persons: a person count, or an inclusive range `(min, max)` to draw it from.
        fps: frame rate; the motion capture is resampled to it.
        mode: force the mode (`video`, `camera` or `mask`) instead of the split's.
        trajectory: force the camera trajectory (`static`, `orbit`, `dolly`, `pan`, `handheld`).

    Returns:
        A valid :class:`~isa4d.data.format.Clip` with video, mask, background, reference, SMPL and cameras.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # identical results in the main process and in single-threaded workers
    try:
        return _generate_clip(
            split, index, seed, _normalise_size(size), frames, persons, fps, mode, trajectory
        )
    finally:
        torch.set_num_threads(threads)


def _generate_clip(
    split: str,
    index: int,
    seed: int,
    size: tuple[int, int],
    frames: int,
    persons: int | Sequence[int],
    fps: float,
    mode: str | None,
    trajectory: str | None,
) -> Clip:
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    rng = np.random.default_rng(clip_seed_sequence(seed, split, index))
    mode = _draw_mode(rng, split) if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    low, high = (int(persons), int(persons)) if np.isscalar(persons) else (int(persons[0]), int(persons[1]))
    if not 1 <= low <= high <= 255:
        raise ValueError(f"persons must be a count or a range within 1..255, got {persons}")
    count = int(rng.integers(low, high + 1))
    trajectory = _draw_trajectory(rng, mode) if trajectory is None else trajectory

    # people: shape, appearance, motion, placement
    betas = np.zeros((count, 10))
    betas[:, :5] = rng.normal(0.0, BETA_STD, size=(count, 5))
    appearance_seeds = [int(rng.integers(2**31)) for _ in range(count)]
    motions = [_sample_motion(rng, frames, fps) for _ in range(count)]
    paths = np.stack([motion.transl[:, [0, 2]] for motion in motions])
    offsets, separation = _place(rng, paths)
    shift = _sole_shift(betas)
    for motion, offset, lift in zip(motions, offsets, shift, strict=True):
        motion.transl = motion.transl.copy()
        motion.transl[:, [0, 2]] += offset - motion.transl[:, [0, 2]].mean(axis=0)
        motion.transl[:, 1] += lift
        motion.info["offset"] = [round(float(v), 4) for v in offset]
    smpl = SMPLParams(
        np.stack([m.global_orient for m in motions]),
        np.stack([m.body_pose for m in motions]),
        betas,
        np.stack([m.transl for m in motions]),
    )
    vertices, _ = _pose_bodies(smpl.global_orient, smpl.body_pose, smpl.betas, smpl.transl)
    appearances: list[Appearance] = [random_appearance(s) for s in appearance_seeds]

    # reference: every person in a pose from another clip, at its place, seen from another azimuth
    ref_motions = []
    for person, motion in enumerate(motions):
        for _ in range(20):
            ref = _sample_reference_pose(rng, fps, exclude=motion.info["motion"])
            ref.transl = ref.transl.copy()
            ref.transl[:, [0, 2]] += offsets[person] - ref.transl[:, [0, 2]]
            ref.transl[:, 1] += shift[person]
            candidate = ref_motions + [ref]
            ref_vertices, _ = _pose_bodies(
                np.stack([m.global_orient for m in candidate]),
                np.stack([m.body_pose for m in candidate]),
                betas[: len(candidate)],
                np.stack([m.transl for m in candidate]),
            )
            if _bodies_apart(ref_vertices[:, 0]):
                break
        ref_motions.append(ref)
    ref_smpl = SMPLParams(
        np.stack([m.global_orient for m in ref_motions]),
        np.stack([m.body_pose for m in ref_motions]),
        betas,
        np.stack([m.transl for m in ref_motions]),
    )

    # cameras
    points = vertices[:, :, ::7].reshape(-1, 3)
    camera = _sample_camera(rng, trajectory, points, frames, size, fps)
    ref_camera = _reference_camera(rng, ref_vertices[:, 0, ::7], camera.info, size)

    # light and room
    light_azimuth, light_elevation = float(rng.uniform(-180, 180)), float(rng.uniform(25, 70))
    light = _spherical(light_azimuth, light_elevation)
    ambient = float(rng.uniform(0.35, 0.55))
    room = None
    if mode != "mask":
        centres = np.concatenate(
            [-np.einsum("tji,tj->ti", camera.R, camera.t), -(ref_camera.R[0].T @ ref_camera.t[0])[None]]
        )
        extent = max(np.abs(centres[:, [0, 2]]).max() + 1.5, np.abs(points[:, [0, 2]]).max() + 1.0)
        half_size = max(float(rng.uniform(6.0, 10.0)), float(extent))
        view_distance = float(np.linalg.norm(centres[0] - np.asarray(camera.info["target"])))
        room = _build_room(rng, half_size, view_distance, camera.info["fov_deg"], size[0])

    # render
    colors = [appearance.vertex_colors for appearance in appearances]
    video = np.empty((frames, *size, 3), dtype=np.uint8)
    background = np.empty_like(video)
    mask = np.empty((frames, *size), dtype=np.uint8)
    static_camera = bool(np.all(camera.R == camera.R[0]) and np.all(camera.t == camera.t[0]))
    room_view = None
    for frame in range(frames):
        if room is not None and (room_view is None or not static_camera):
            room_view = room.render(camera.K, camera.R[frame], camera.t[frame], size, light)
        video[frame], mask[frame], background[frame] = _render_people(
            vertices[:, frame],
            colors,
            camera.K,
            camera.R[frame],
            camera.t[frame],
            size,
            light,
            ambient,
            room_view,
        )
    ref_room = (
        None if room is None else room.render(ref_camera.K, ref_camera.R[0], ref_camera.t[0], size, light)
    )
    ref_image, _, _ = _render_people(
        ref_vertices[:, 0],
        colors,
        ref_camera.K,
        ref_camera.R[0],
        ref_camera.t[0],
        size,
        light,
        ambient,
        ref_room,
    )

    photos = sorted(
        {name for appearance in appearances for name in appearance.photos} | set(room.photos if room else ())
    )
    extra = {
        "generator": "isa4d.data.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "index": int(index),
        "mode": mode,
        "background_kind": "black" if room is None else "room",
        "persons": [
            {
                **motion.info,
                "appearance_seed": appearance.seed,
                "appearance": appearance.description,
                "reference_pose": ref.info,
            }
            for motion, appearance, ref in zip(motions, appearances, ref_motions, strict=True)
        ],
        "min_separation_m": None if math.isinf(separation) else round(separation, 4),
        "camera": camera.info,
        "ref_camera": ref_camera.info,
        "light": {
            "direction": [round(float(v), 5) for v in light],
            "ambient": round(ambient, 4),
        },
        "room": None if room is None else room.info,
        "photos": photos,
    }
    licence = (
        f"{photo_licences(photos)}; motions: DeepMimic clips shipped with pybullet_data; "
        "body: isa4d procedural body (Apache-2.0)"
    )
    return Clip.create(
        clip_key(seed, split, index),
        video,
        fps,
        smpl=smpl,
        camera=Cameras(np.broadcast_to(camera.K, (frames, 3, 3)), camera.R, camera.t, size),
        background=background,
        mask=mask,
        reference=Reference(
            ref_image, ref_smpl, Cameras(ref_camera.K[None], ref_camera.R, ref_camera.t, size)
        ),
        source=SOURCE,
        licence=licence,
        split=split,
        extra=extra,
    )


def _bodies_apart(vertices: np.ndarray, gap: float = 0.1) -> bool:
    """True if the horizontal footprints (vertex sets) of the `(P, V, 3)` bodies stay `gap` apart."""
    persons = len(vertices)
    if persons < 2:
        return True
    sparse = vertices[:, ::9][..., [0, 2]]
    for a in range(persons):
        for b in range(a + 1, persons):
            distance = np.linalg.norm(sparse[a][:, None] - sparse[b][None], axis=-1).min()
            if distance < gap:
                return False
    return True


def _overlap(points: np.ndarray, camera: _CameraTrack, size: tuple[int, int]) -> float:
    """Summed pairwise overlap of the persons' image bounding boxes, as a fraction of the image."""
    uv, _ = project_points(
        torch.from_numpy(points),
        torch.from_numpy(camera.K),
        torch.from_numpy(camera.R[0]),
        torch.from_numpy(camera.t[0]),
    )
    uv = uv.numpy()
    low, high = uv.min(axis=1), uv.max(axis=1)  # (P, 2)
    total = 0.0
    for a in range(len(uv)):
        for b in range(a + 1, len(uv)):
            sides = np.minimum(high[a], high[b]) - np.maximum(low[a], low[b])
            total += float(np.prod(np.clip(sides, 0.0, None)))
    return total / (size[0] * size[1])


def _reference_camera(
    rng: np.random.Generator, points: np.ndarray, video_camera: dict[str, Any], size: tuple[int, int]
) -> _CameraTrack:
    """The reference view of the persons' `(P, N, 3)` points: 60-180 degrees of azimuth away from the video's
    first view, the best of a few draws at separating the persons in the image."""
    best: tuple[float, _CameraTrack] | None = None
    for _ in range(REFERENCE_VIEW_TRIES):
        turn = float(rng.uniform(60.0, 180.0)) * (1 if rng.uniform() < 0.5 else -1)
        camera = _sample_static_camera(
            rng, points.reshape(-1, 3), video_camera["azimuth_deg"] + turn, size, video_camera["fov_deg"]
        )
        overlap = _overlap(points, camera, size) if len(points) > 1 else 0.0
        if best is None or overlap < best[0]:
            best = (overlap, camera)
        if overlap == 0.0:
            break
    assert best is not None
    return best[1]


def _sample_static_camera(
    rng: np.random.Generator, points: np.ndarray, azimuth: float, size: tuple[int, int], fov: float
) -> _CameraTrack:
    """A single camera at `azimuth` framing `points` (the reference view)."""
    K = intrinsics_from_fov(fov, size, torch.float64)
    tan_half = (float((size[0] / 2) / K[1, 1]), float((size[1] / 2) / K[0, 0]))
    target = (points.min(axis=0) + points.max(axis=0)) / 2
    elevation = float(rng.uniform(0.0, 20.0))
    fill = float(rng.uniform(0.75, 0.92))
    for _ in range(3):
        distance = _fit_distance(points, target, _spherical(azimuth, elevation)[None], tan_half, fill)
        lowest = _min_elevation(float(target[1]), (distance,))
        if elevation >= lowest:
            break
        elevation = lowest + 1.0
    R, t = make_trajectory(
        "static",
        1,
        target=target.tolist(),
        distance=distance,
        azimuth_deg=azimuth,
        elevation_deg=elevation,
        dtype=torch.float64,
    )
    info = {
        "trajectory": "static",
        "fov_deg": round(fov, 4),
        "azimuth_deg": round(azimuth, 4),
        "elevation_deg": round(elevation, 4),
        "distance": round(distance, 4),
        "target": [round(float(v), 4) for v in target],
    }
    return _CameraTrack(K.numpy(), R.numpy(), t.numpy(), info)


# ------------------------------------------------------------------------------------------------ datasets


def _worker_init() -> None:
    torch.set_num_threads(1)


def _clip_job(job: dict[str, Any]) -> Clip:
    return generate_clip(**job)


def iter_clips(
    split: str,
    count: int,
    *,
    seed: int = 0,
    size: int | Sequence[int] = 256,
    frames: int = 33,
    persons: int | Sequence[int] = (1, 3),
    fps: float = 30.0,
    workers: int = 2,
    start: int = 0,
    pool: Any = None,
) -> Iterator[Clip]:
    """Clips `start, ..., start + count - 1` of `split`, in order, rendered by `workers` processes.

    With `workers > 1` (or a given multiprocessing `pool`) the clips are rendered in "spawn" worker
    processes (single-threaded torch), at most `2 * workers` ahead of the consumer, so a split is never
    held in memory; the clips are identical to serial ones.
    """
    jobs = [
        {
            "split": split,
            "index": index,
            "seed": seed,
            "size": size,
            "frames": frames,
            "persons": persons,
            "fps": fps,
        }
        for index in range(start, start + count)
    ]
    if pool is None and workers <= 1:
        for job in jobs:
            yield _clip_job(job)
        return
    if pool is None:
        with _make_pool(workers) as own_pool:
            yield from _ordered(own_pool, jobs, 2 * workers)
    else:
        yield from _ordered(pool, jobs, 2 * max(workers, 1))


def _make_pool(workers: int) -> Any:
    return multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init)


def _ordered(pool: Any, jobs: Sequence[dict[str, Any]], window: int) -> Iterator[Clip]:
    """Results of `_clip_job` over `jobs` in order, with at most `window` jobs submitted ahead."""
    pending: deque[Any] = deque()
    remaining = iter(jobs)
    for job in remaining:
        pending.append(pool.apply_async(_clip_job, (job,)))
        if len(pending) >= window:
            break
    while pending:
        clip = pending.popleft().get()
        job = next(remaining, None)
        if job is not None:
            pending.append(pool.apply_async(_clip_job, (job,)))
        yield clip


def generate_dataset(
    out_dir: str | Path,
    counts: Mapping[str, int] | None = None,
    size: int | Sequence[int] = 256,
    frames: int = 33,
    persons: int | Sequence[int] = (1, 3),
    seed: int = 0,
    workers: int = 2,
    overwrite: bool = False,
    *,
    fps: float = 30.0,
    maxcount: int = 64,
    maxsize: float = 1e9,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    progress: bool = True,
) -> dict[str, Any]:
    """Render and write a synthetic dataset, one `write_shards` call per split (clips are streamed).

    Args:
        out_dir: the dataset folder (shards and manifest.json).
        counts: clips per split (default :data:`DEFAULT_COUNTS`); splits with 0 clips are skipped.
        size: `(H, W)` or one number; even.
        frames: T per clip.
        persons: a person count or an inclusive range.
        seed: the dataset seed; clip i of a split depends only on (seed, split, i) and the settings.
        workers: rendering processes (1 renders in this process).
        overwrite: replace existing shards of the splits written.
        fps: frame rate.
        maxcount, maxsize: shard limits (samples, bytes).
        crf, preset: H.264 settings of the RGB videos.
        progress: show progress bars.

    Returns:
        The manifest after the last split.

    Raises:
        FileExistsError: if a split to write already has shards and `overwrite` is false (checked for
            every split before anything is rendered).
    """
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    _normalise_size(size)
    todo = {split: int(count) for split, count in counts.items() if int(count) > 0}
    if not todo:
        raise ValueError(f"no clips to generate: counts = {counts}")
    for split in todo:
        check_writable(out_dir, split, overwrite)
    settings = {"seed": seed, "size": size, "frames": frames, "persons": persons, "fps": fps}
    manifest: dict[str, Any] = {}
    pool = _make_pool(workers) if workers > 1 else None
    try:
        for split, count in todo.items():
            clips = iter_clips(split, count, workers=workers, pool=pool, **settings)
            manifest = write_shards(
                clips,
                out_dir,
                split,
                maxcount,
                maxsize,
                overwrite=overwrite,
                crf=crf,
                preset=preset,
                progress=progress,
            )
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return manifest


# ------------------------------------------------------------------------------------------------ previews

_LABEL_COLORS = np.array(
    [
        (0, 0, 0),
        (230, 80, 60),
        (70, 150, 240),
        (250, 200, 40),
        (90, 200, 110),
        (200, 90, 220),
        (40, 210, 210),
    ],
    dtype=np.uint8,
)


def colorize_labels(labels: np.ndarray) -> np.ndarray:
    """A label map `(H, W)` as RGB: 0 black, person p in a distinct colour (cycling after 6)."""
    index = np.where(labels == 0, 0, (labels.astype(np.int64) - 1) % (len(_LABEL_COLORS) - 1) + 1)
    return _LABEL_COLORS[index]


def save_frame_strip(
    clip: Clip,
    path: str | Path,
    frames: Sequence[int] = (0, 8, 16, 24, 32),
    tile: int | None = None,
    palette: bool = False,
) -> Path:
    """Save a PNG contact sheet: rows video / mask / background, columns `frames`, plus the reference.

    Frames beyond the clip are skipped. `tile` resizes every picture to that height (None: the video's);
    `palette` stores a 256-colour PNG (about a third of the size, for documentation images).
    """
    T, H, W = clip.video.shape[:3]
    chosen = [f for f in frames if 0 <= f < T] or [0]
    height = H if tile is None else int(tile)
    width = max(1, round(W * height / H))
    gap, label_height = 2, 12
    rows = [("video", clip.video)]
    if clip.mask is not None:
        rows.append(("mask", np.stack([colorize_labels(m) for m in clip.mask])))
    if clip.background is not None:
        rows.append(("background", clip.background))
    columns = len(chosen) + (1 if clip.reference is not None else 0)
    sheet = np.full(
        (len(rows) * (height + label_height + gap), columns * (width + gap) - gap, 3), 255, dtype=np.uint8
    )
    canvas = Image.fromarray(sheet)
    draw = ImageDraw.Draw(canvas)

    def paste(image: np.ndarray, row: int, column: int, label: str) -> None:
        top = row * (height + label_height + gap)
        left = column * (width + gap)
        draw.text((left + 2, top), label, fill=(0, 0, 0))
        canvas.paste(Image.fromarray(resize_image(image, height, width)), (left, top + label_height))

    for row, (name, images) in enumerate(rows):
        for column, frame in enumerate(chosen):
            paste(images[frame], row, column, f"{name} t={frame}")
    if clip.reference is not None:
        ref = clip.reference.image
        paste(ref, 0, len(chosen), "reference")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        canvas = canvas.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    canvas.save(path, optimize=True)
    return path


# ------------------------------------------------------------------------------------------------ Hydra task


def main(cfg: DictConfig) -> None:
    """The Hydra task of `isa4d synth` (conf/synth.yaml); exits with status 1 on existing shards."""
    size = cfg.size if np.isscalar(cfg.size) else [int(v) for v in cfg.size]
    persons = cfg.persons if np.isscalar(cfg.persons) else [int(v) for v in cfg.persons]
    counts = {str(split): int(count) for split, count in cfg.counts.items()}
    try:
        manifest = generate_dataset(
            cfg.output_dir,
            counts=counts,
            size=size,
            frames=int(cfg.frames),
            persons=persons,
            seed=int(cfg.seed),
            workers=int(cfg.workers),
            overwrite=bool(cfg.overwrite),
            fps=float(cfg.fps),
            maxcount=int(cfg.shard_max_count),
            maxsize=float(cfg.shard_max_size),
            crf=int(cfg.video_crf),
            preset=str(cfg.video_preset),
        )
    except FileExistsError as err:
        sys.exit(f"isa4d synth: {err}")
    for split in counts:
        entry = manifest["splits"].get(split)
        if entry:
            print(
                f"isa4d synth: wrote {entry['num_samples']} {split!r} clip(s) "
                f"in {len(entry['shards'])} shard(s) to {cfg.output_dir}"
            )
