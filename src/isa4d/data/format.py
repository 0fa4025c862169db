"""The ISA4D shard format, schema version 1: one WebDataset sample per clip (docs/data.md).

A sample's members (WebDataset extensions) are `video.mp4` and `meta.json`, plus for annotated clips
`smpl.npz` and `camera.npz`, and optionally `background.mp4`, `mask.mp4` and a reference frame
(`ref.png`, `ref_smpl.npz`, `ref_camera.npz`). :class:`Clip` holds them decoded; :func:`encode_sample`
and :func:`decode_sample` convert, and both run :func:`validate_clip`. `meta.json` also lists the SHA-256
of every other member (`sha256`), so a corrupt member is refused even where its decoder sees nothing wrong.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from isa4d.body.skeleton import NUM_JOINTS
from isa4d.data.video_io import (
    DEFAULT_CRF,
    DEFAULT_PRESET,
    encode_mask_video,
    encode_video,
    odd_size_problem,
    read_mask_video,
    read_video,
)
from isa4d.errors import DataError

SCHEMA_VERSION = 1
"""The schema version this code writes."""
SUPPORTED_SCHEMA_VERSIONS: frozenset[int] = frozenset({1})
"""The schema versions this code reads."""
LATENT_SCHEMA_VERSION = 2
"""Version of the latent-shard format of `isa4d encode` (`latent_schema_version` in meta and manifest)."""
MIN_FPS, MAX_FPS = 1e-3, 1000.0
"""The frame rates a sample may have: the mp4 time base is `Fraction(fps).limit_denominator(1001)` (0 below
1e-3), and libx264 videos above 1000 fps lose frames when decoded (measured)."""
NUM_BETAS = 10
BODY_POSE_DIM = 3 * (NUM_JOINTS - 1)
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
"""Clip keys and split names (WebDataset cuts a sample's file names at the first dot)."""

VIDEO, META = "video.mp4", "meta.json"
SMPL, CAMERA = "smpl.npz", "camera.npz"
BACKGROUND, MASK = "background.mp4", "mask.mp4"
REF_IMAGE, REF_SMPL, REF_CAMERA = "ref.png", "ref_smpl.npz", "ref_camera.npz"
REFERENCE_MEMBERS = (REF_IMAGE, REF_SMPL, REF_CAMERA)
CHECKSUMS = "sha256"
"""The `meta.json` key holding `{member: hex SHA-256}` of the sample's other members (written since the
checksums were added; samples without it are read unverified)."""

_ROTATION_TOLERANCE = 1e-3


class InvalidSampleError(DataError):
    """A clip or sample that breaks the format (a `DataError`, so also a `ValueError`).

    Attributes:
        key: the clip's key (or input folder name).
        reasons: one line per problem, each naming the member and field.
    """

    def __init__(self, key: str, reasons: Sequence[str]):
        self.key = key
        self.reasons = list(reasons)
        super().__init__(f"invalid sample {key!r}:\n" + "\n".join(f"  - {reason}" for reason in self.reasons))


def _as_float32(instance: object) -> None:
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: validation says so
        for item in fields(instance):
            setattr(instance, item.name, np.asarray(getattr(instance, item.name), dtype=np.float32))


def _arrays(instance: object) -> dict[str, np.ndarray]:
    return {item.name: getattr(instance, item.name) for item in fields(instance)}


@dataclass(eq=False)  # holds arrays: compare fields with numpy
class SMPLParams:
    """SMPL parameters of P persons over T frames, float32 (T = 1 for a reference frame).

    Attributes:
        global_orient: `(P, T, 3)` root rotation, axis-angle, body to world.
        body_pose: `(P, T, 69)` the 23 other joints' axis-angle rotations relative to their parents.
        betas: `(P, 10)` shape coefficients, constant over the clip.
        transl: `(P, T, 3)` root translation in metres, world frame (y up).
    """

    global_orient: np.ndarray
    body_pose: np.ndarray
    betas: np.ndarray
    transl: np.ndarray

    def __post_init__(self) -> None:
        _as_float32(self)

    @property
    def num_persons(self) -> int:
        """P, read from `betas`."""
        return self.betas.shape[0] if self.betas.ndim else 0


@dataclass(eq=False)  # holds arrays: compare fields with numpy
class Cameras:
    """A pinhole camera per frame, OpenCV convention (`X_cam = R @ X_world + t`, x right, y down, z forward).

    Attributes:
        K: `(T, 3, 3)` intrinsics in pixels, top-left pixel centre at (0, 0), float32.
        R: `(T, 3, 3)` world-to-camera rotation, float32.
        t: `(T, 3)` world-to-camera translation in metres, float32.
        image_size: `(2,)` int64 `(H, W)` of the images the intrinsics refer to.
    """

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    image_size: np.ndarray

    def __post_init__(self) -> None:
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values: validation says so
            self.K, self.R, self.t = (np.asarray(a, dtype=np.float32) for a in (self.K, self.R, self.t))
            self.image_size = np.asarray(self.image_size, dtype=np.int64)


@dataclass(eq=False)  # holds arrays: compare fields with numpy
class Reference:
    """A reference frame of the same persons: an RGB image with its SMPL parameters and camera.

    Attributes:
        image: `(h, w, 3)` uint8 RGB (any size; `camera.image_size == (h, w)`).
        smpl: SMPL parameters with T = 1.
        camera: camera with T = 1.
    """

    image: np.ndarray
    smpl: SMPLParams
    camera: Cameras


@dataclass
class ClipMeta:
    """The `meta.json` of a sample.

    Attributes:
        fps: frame rate.
        num_frames: T.
        height: H of the video frames.
        width: W of the video frames.
        num_persons: P of `smpl.npz`; for a video-only sample, the persons in view if known, else 0.
        source: where the clip comes from (dataset or generator name).
        licence: the licence the clip may be used under.
        split: the split whose shards hold the sample.
        schema_version: the format version.
        extra: further JSON fields, kept as they are.
    """

    fps: float
    num_frames: int
    height: int
    width: int
    num_persons: int = 0
    source: str = "unknown"
    licence: str = "unknown"
    split: str = "train"
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of `meta.json` (`extra` merged in)."""
        return {**self.extra, **{name: getattr(self, name) for name in META_FIELDS}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClipMeta:
        """Build from a `meta.json` object; unknown keys go to `extra`."""
        missing = [name for name in META_FIELDS if name not in data]
        if missing:
            raise ValueError(f"missing keys {missing}")
        extra = {key: value for key, value in data.items() if key not in META_FIELDS}
        return cls(**{name: data[name] for name in META_FIELDS}, extra=extra)


META_FIELDS: tuple[str, ...] = tuple(item.name for item in fields(ClipMeta) if item.name != "extra")
"""The standard keys of `meta.json`."""


@dataclass(eq=False)  # holds arrays: compare fields with numpy
class Clip:
    """One sample of the format, decoded.

    Attributes:
        key: clip id (letters, digits, `_`, `-`), the WebDataset `__key__`.
        video: `(T, H, W, 3)` uint8 RGB frames; H and W even.
        meta: the sample's metadata (`num_frames`, `height`, `width` agree with `video`).
        smpl: SMPL parameters of the P persons, or None for a video-only sample.
        camera: the camera of every frame; present exactly when `smpl` is.
        background: `(T, H, W, 3)` uint8 RGB frames of the scene without the persons, or None.
        mask: `(T, H, W)` uint8 label map: 0 background, `p + 1` for person p (visible pixels), or None.
        reference: a reference frame, or None.
    """

    key: str
    video: np.ndarray
    meta: ClipMeta
    smpl: SMPLParams | None = None
    camera: Cameras | None = None
    background: np.ndarray | None = None
    mask: np.ndarray | None = None
    reference: Reference | None = None

    @classmethod
    def create(
        cls,
        key: str,
        video: np.ndarray,
        fps: float,
        *,
        smpl: SMPLParams | None = None,
        camera: Cameras | None = None,
        background: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        reference: Reference | None = None,
        num_persons: int | None = None,
        source: str = "unknown",
        licence: str = "unknown",
        split: str = "train",
        extra: Mapping[str, Any] | None = None,
    ) -> Clip:
        """A clip whose `meta` counts are read from its arrays.

        `num_persons` defaults to `smpl`'s P (0 without `smpl`); the other arguments are as the fields.
        """
        frames, height, width = video.shape[:3] if video.ndim >= 3 else (0, 0, 0)
        if num_persons is None:
            num_persons = smpl.num_persons if smpl is not None else 0
        meta = ClipMeta(
            fps=fps,
            num_frames=frames,
            height=height,
            width=width,
            num_persons=num_persons,
            source=source,
            licence=licence,
            split=split,
            extra=dict(extra or {}),
        )
        return cls(key, video, meta, smpl, camera, background, mask, reference)


# ---------------------------------------------------------------------------------------------- validation


def fps_problem(fps: object) -> str | None:
    """Why `fps` is not a usable frame rate (a finite number in [MIN_FPS, MAX_FPS]), or None if it is."""
    if isinstance(fps, bool) or not isinstance(fps, int | float):
        return f"{reprlib.repr(fps)} is not a number"
    try:
        if MIN_FPS <= float(fps) <= MAX_FPS:  # NaN compares False
            return None
    except OverflowError:  # an integer beyond any float
        pass
    return f"{reprlib.repr(fps)} must be a positive number, a frame rate in [{MIN_FPS:g}, {MAX_FPS:g}]"


def _schema_problem(version: object) -> str | None:
    if type(version) is int and version in SUPPORTED_SCHEMA_VERSIONS:  # not bool, nor unhashable JSON
        return None
    supported = sorted(SUPPORTED_SCHEMA_VERSIONS)
    return f"meta.schema_version: {version!r} is not supported (this isa4d reads {supported})"


def _check_shape(
    problems: list[str],
    name: str,
    array: np.ndarray,
    expected: tuple[int | None, ...],
    frames_axis: int | None = None,
    frames_source: str = "video.mp4",
) -> bool:
    """Append a problem unless `array.shape` matches `expected` (None: any size); True if it matches."""
    shape = array.shape
    if len(shape) == len(expected):
        differing = [
            axis
            for axis, (want, got) in enumerate(zip(expected, shape, strict=True))
            if want not in (None, got)
        ]
        if not differing:
            return True
        if differing == [frames_axis]:
            problems.append(
                f"{name}: {shape[frames_axis]} frames, but {frames_source} has {expected[frames_axis]}"
            )
            return False
    wanted = "(" + ", ".join("any" if size is None else str(size) for size in expected) + ")"
    problems.append(f"{name}: shape {shape}, expected {wanted}")
    return False


def _check_finite(problems: list[str], name: str, array: np.ndarray) -> bool:
    if np.isfinite(array).all():
        return True
    problems.append(f"{name}: contains NaN or infinite values")
    return False


def _check_image(problems: list[str], name: str, array: np.ndarray, expected: tuple[int | None, ...]) -> bool:
    if array.dtype != np.uint8:
        problems.append(f"{name}: dtype {array.dtype}, expected uint8")
        return False
    return _check_shape(problems, name, array, expected, frames_axis=0)


def _validate_smpl(
    problems: list[str], prefix: str, smpl: SMPLParams, persons: int, frames: int, frames_source: str
) -> None:
    expected = {
        "global_orient": (persons, frames, 3),
        "body_pose": (persons, frames, BODY_POSE_DIM),
        "betas": (persons, NUM_BETAS),
        "transl": (persons, frames, 3),
    }
    for name, shape in expected.items():
        array = getattr(smpl, name)
        axis = 1 if len(shape) == 3 else None
        if _check_shape(problems, f"{prefix}.{name}", array, shape, axis, frames_source):
            _check_finite(problems, f"{prefix}.{name}", array)


def _validate_camera(
    problems: list[str],
    prefix: str,
    camera: Cameras,
    frames: int,
    image_size: tuple[int, int] | None,
    frames_source: str,
) -> None:
    """Append the problems of a camera track; `image_size` None skips the size comparison."""
    K, R, t = camera.K, camera.R, camera.t
    name = f"{prefix}.K"
    if _check_shape(problems, name, K, (frames, 3, 3), 0, frames_source) and _check_finite(problems, name, K):
        focal = K[:, [0, 1], [0, 1]]
        if (focal <= 0).any():
            problems.append(f"{name}: focal lengths fx, fy must be > 0 (smallest: {focal.min():g})")
        if not np.array_equal(K[:, 2], np.broadcast_to(np.float32([0, 0, 1]), K[:, 2].shape)):
            problems.append(f"{name}: last row must be [0, 0, 1]")
    name = f"{prefix}.R"
    if _check_shape(problems, name, R, (frames, 3, 3), 0, frames_source) and _check_finite(problems, name, R):
        error = np.abs(R.astype(np.float64) @ R.swapaxes(-1, -2) - np.eye(3)).max(initial=0.0)
        determinant = np.linalg.det(R.astype(np.float64)) if len(R) else np.ones(1)
        if error > _ROTATION_TOLERANCE or (determinant <= 0).any():
            problems.append(
                f"{name}: not a rotation (max |R R^T - I| = {error:.2g}, "
                f"smallest det = {determinant.min():.3g})"
            )
    name = f"{prefix}.t"
    if _check_shape(problems, name, t, (frames, 3), 0, frames_source):
        _check_finite(problems, name, t)
    name = f"{prefix}.image_size"
    size_ok = _check_shape(problems, name, camera.image_size, (2,))
    if size_ok and image_size is not None and tuple(camera.image_size.tolist()) != image_size:
        problems.append(
            f"{name}: {tuple(camera.image_size.tolist())}, but {frames_source} is (H, W) = {image_size}"
        )


def _validate_meta(problems: list[str], meta: ClipMeta) -> bool:
    """Append the problems of `meta`; False if its fields have wrong types (nothing else can be checked)."""
    schema = _schema_problem(meta.schema_version)
    if schema:
        problems.append(schema)
    kinds: dict[str, type | tuple[type, ...]] = {
        "fps": (int, float),
        "num_frames": int,
        "height": int,
        "width": int,
        "num_persons": int,
        "source": str,
        "licence": str,
        "split": str,
    }
    wrong = [name for name, kind in kinds.items() if not isinstance(getattr(meta, name), kind)]
    wrong += [name for name in kinds if isinstance(getattr(meta, name), bool)]
    if not isinstance(meta.extra, dict):
        wrong.append("extra")
    for name in wrong:
        problems.append(
            f"meta.{name}: {getattr(meta, name)!r} has the wrong type {type(getattr(meta, name)).__name__}"
        )
    if wrong:
        return False
    problem = fps_problem(meta.fps)
    if problem:
        problems.append(f"meta.fps: {problem}")
    for name in ("num_frames", "height", "width"):
        if getattr(meta, name) < 1:
            problems.append(f"meta.{name}: {reprlib.repr(getattr(meta, name))} must be >= 1")
    if meta.num_persons < 0:
        problems.append(f"meta.num_persons: {meta.num_persons} must be >= 0")
    if not NAME_PATTERN.fullmatch(meta.split):
        problems.append(f"meta.split: {meta.split!r} must be letters, digits, '_' or '-'")
    clashes = sorted({*META_FIELDS, CHECKSUMS} & meta.extra.keys())
    if clashes:
        problems.append(f"meta.extra: keys {clashes} are reserved for the standard fields")
    try:
        json.dumps(meta.extra)
    except (TypeError, ValueError, RecursionError) as err:
        problems.append(f"meta.extra: not JSON-serialisable ({err})")
    return True


def validate_clip(clip: Clip) -> list[str]:
    """Check a clip against the v1 format.

    Checks the key, the metadata (schema version, fps, split, person count), array shapes and dtypes,
    that every per-frame member has the video's frame count, finite numbers, positive focal lengths,
    rotations, `image_size == (H, W)` of the video (or of `ref.png`), and mask labels `<= num_persons`.

    Returns:
        One message per problem, each naming the member and field (`"camera.K: ..."`); empty if valid.
    """
    problems: list[str] = []
    meta = clip.meta
    if not (isinstance(clip.key, str) and NAME_PATTERN.fullmatch(clip.key)):
        problems.append(f"key {clip.key!r}: must be non-empty letters, digits, '_' or '-' (no dots)")
    if not _validate_meta(problems, meta):
        return problems
    video = clip.video
    if _check_image(problems, VIDEO, video, (None, None, None, 3)) and len(video):
        frames, height, width = video.shape[:3]
        for name, value in (("num_frames", frames), ("height", height), ("width", width)):
            if getattr(meta, name) != value:
                problems.append(f"meta.{name}: {getattr(meta, name)!r}, but {VIDEO} has {value}")
        odd = odd_size_problem(height, width)
        if odd:
            problems.append(f"{VIDEO}: {odd}")
    else:
        if video.ndim == 4 and not len(video):
            problems.append(f"{VIDEO}: has no frames")
        frames, height, width = meta.num_frames, meta.height, meta.width
    if clip.background is not None:
        _check_image(problems, BACKGROUND, clip.background, (frames, height, width, 3))
    if clip.mask is not None and _check_image(problems, MASK, clip.mask, (frames, height, width)):
        top = int(clip.mask.max(initial=0))
        if top > meta.num_persons:
            problems.append(f"{MASK}: label {top} exceeds meta.num_persons = {meta.num_persons}")
    if (clip.smpl is None) != (clip.camera is None):
        problems.append(f"{SMPL}, {CAMERA}: an annotated sample has both, a video-only sample neither")
    if clip.smpl is not None:
        if clip.smpl.num_persons != meta.num_persons:
            problems.append(
                f"meta.num_persons: {meta.num_persons}, but {SMPL} has {clip.smpl.num_persons} person(s)"
            )
        if clip.smpl.num_persons < 1:
            problems.append(f"{SMPL}: has no persons")
        _validate_smpl(problems, "smpl", clip.smpl, clip.smpl.num_persons, frames, VIDEO)
    if clip.camera is not None:
        _validate_camera(problems, "camera", clip.camera, frames, (height, width), VIDEO)
    if clip.reference is not None:
        ref = clip.reference
        image_size = (
            ref.image.shape[:2] if _check_image(problems, REF_IMAGE, ref.image, (None, None, 3)) else None
        )
        persons = clip.smpl.num_persons if clip.smpl is not None else meta.num_persons
        _validate_smpl(problems, "ref_smpl", ref.smpl, persons, 1, REF_IMAGE)
        _validate_camera(problems, "ref_camera", ref.camera, 1, image_size, REF_IMAGE)
    return problems


# ---------------------------------------------------------------------------------------------- bytes


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Serialise arrays as an (uncompressed) `.npz`."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def load_npz(data: bytes, keys: Sequence[str], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Read the arrays `keys`, and those of `optional` that are present, from an `.npz` (pickles refused).

    Raises:
        ValueError: if some `keys` are missing (all are named), an array is not of real numbers (complex,
            text), or the bytes are not an `.npz`.
    """
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        missing = [key for key in keys if key not in archive.files]
        if missing:
            raise ValueError(f"missing arrays {missing} (it has {archive.files})")
        arrays = {key: archive[key] for key in (*keys, *optional) if key in archive.files}
    wrong = {key: str(array.dtype) for key, array in arrays.items() if array.dtype.kind not in "biuf"}
    if wrong:  # complex or string arrays would be cast to floats (imaginary parts dropped, text parsed)
        raise ValueError(f"arrays {wrong} must hold real numbers")
    return arrays


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an `(H, W, 3)` uint8 RGB image as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Decode an image file's bytes to `(H, W, 3)` uint8 RGB (alpha dropped, grey expanded)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


SMPL_PARAM_KEYS: tuple[str, ...] = tuple(item.name for item in fields(SMPLParams))
"""The arrays of `smpl.npz` / `ref_smpl.npz`."""
CAMERA_KEYS: tuple[str, ...] = tuple(item.name for item in fields(Cameras))
"""The arrays of `camera.npz` / `ref_camera.npz`."""


def decode_smpl(data: bytes) -> SMPLParams:
    """Decode an `smpl.npz` / `ref_smpl.npz` member."""
    return SMPLParams(**load_npz(data, SMPL_PARAM_KEYS))


def decode_camera(data: bytes) -> Cameras:
    """Decode a `camera.npz` / `ref_camera.npz` member."""
    return Cameras(**load_npz(data, CAMERA_KEYS))


def sample_key(sample: Mapping[str, Any]) -> str:
    """A raw sample's `__key__` (for messages)."""
    return str(sample.get("__key__", "<no __key__>"))


def member_checksums(sample: Mapping[str, Any]) -> dict[str, str]:
    """`{member: hex SHA-256}` of a sample's members (bytes), except `meta.json` and the `__` fields."""
    return {
        name: hashlib.sha256(data).hexdigest()
        for name, data in sorted(sample.items())
        if name != META and not name.startswith("__")
    }


def checksum_problems(sample: Mapping[str, Any], checksums: object) -> list[str]:
    """The members of `sample` that differ from (or lack) the digests `meta.json` lists under `sha256`.

    Args:
        sample: the raw sample (member bytes).
        checksums: the value of `meta.json`'s `sha256` key; None (samples written before the checksums)
            checks nothing.

    Returns:
        One problem per corrupt or missing member (a flipped bit anywhere in it is caught).
    """
    if checksums is None:
        return []
    if not (isinstance(checksums, dict) and all(isinstance(v, str) for v in checksums.values())):
        return [f"{META}: {CHECKSUMS} must map member names to hex SHA-256 digests"]
    problems = []
    for name, digest in sorted(checksums.items()):
        data = sample.get(name)
        if data is None:
            problems.append(f"{name}: missing, but listed in {META} {CHECKSUMS}")
        elif not isinstance(data, bytes) or hashlib.sha256(data).hexdigest() != digest.lower():
            problems.append(f"{name}: SHA-256 differs from the one in {META} (the member is corrupt)")
    return problems


def read_sample_meta(sample: Mapping[str, Any]) -> tuple[ClipMeta, list[str]]:
    """The `meta.json` of a raw sample, and the checksum problems of its other members.

    Decoders go on after checksum problems (so every reason is reported) and raise at the end.

    Raises:
        InvalidSampleError: `video.mp4` or `meta.json` missing, `meta.json` not a JSON object with the
            standard keys, or an unsupported schema version.
    """
    key = sample_key(sample)
    missing = [member for member in (META, VIDEO) if member not in sample]
    if missing:
        raise InvalidSampleError(key, [f"{member}: missing" for member in missing])
    try:
        data = json.loads(sample[META])
        if not isinstance(data, dict):
            raise TypeError(f"a JSON object is needed, not {type(data).__name__}")
        checksums = data.pop(CHECKSUMS, None)
        meta = ClipMeta.from_dict(data)
    except (ValueError, TypeError, RecursionError) as err:  # bad UTF-8 or JSON, not an object, missing keys
        raise InvalidSampleError(key, [f"{META}: cannot decode ({type(err).__name__}: {err})"]) from err
    schema = _schema_problem(meta.schema_version)
    if schema:
        raise InvalidSampleError(key, [schema])
    return meta, checksum_problems(sample, checksums)


def encode_sample(clip: Clip, crf: int = DEFAULT_CRF, preset: str = DEFAULT_PRESET) -> dict[str, Any]:
    """Encode a clip as a WebDataset sample, after validating it.

    Args:
        clip: the clip.
        crf: libx264 constant rate factor of `video.mp4` and `background.mp4`.
        preset: libx264 preset.

    Returns:
        `{"__key__": clip.key, "video.mp4": bytes, "meta.json": bytes, ...}`, members as bytes, ready for
        `webdataset.ShardWriter.write`.

    Raises:
        InvalidSampleError: if :func:`validate_clip` finds problems.
    """
    problems = validate_clip(clip)
    if problems:
        raise InvalidSampleError(clip.key, problems)
    fps = clip.meta.fps
    sample: dict[str, Any] = {"__key__": clip.key, VIDEO: encode_video(clip.video, fps, crf, preset)}
    if clip.smpl is not None and clip.camera is not None:
        sample[SMPL] = npz_bytes(_arrays(clip.smpl))
        sample[CAMERA] = npz_bytes(_arrays(clip.camera))
    if clip.background is not None:
        sample[BACKGROUND] = encode_video(clip.background, fps, crf, preset)
    if clip.mask is not None:
        sample[MASK] = encode_mask_video(clip.mask, fps)
    if clip.reference is not None:
        sample[REF_IMAGE] = png_bytes(clip.reference.image)
        sample[REF_SMPL] = npz_bytes(_arrays(clip.reference.smpl))
        sample[REF_CAMERA] = npz_bytes(_arrays(clip.reference.camera))
    meta = {**clip.meta.to_dict(), CHECKSUMS: member_checksums(sample)}
    sample[META] = json.dumps(meta, indent=1, sort_keys=True).encode()
    return sample


_T = TypeVar("_T")


def decode_member(
    sample: Mapping[str, Any], name: str, decode: Callable[[bytes], _T], problems: list[str]
) -> _T | None:
    """`decode(sample[name])`, or None if the member is absent or cannot be decoded (the reason is
    appended to `problems`)."""
    if name not in sample:
        return None
    try:
        return decode(sample[name])
    except Exception as err:  # undecodable bytes raise codec-, zip-, json- and image-specific errors alike
        problems.append(f"{name}: cannot decode ({type(err).__name__}: {err})")
        return None


def decode_annotations(
    sample: Mapping[str, Any], problems: list[str]
) -> tuple[SMPLParams | None, Cameras | None, Reference | None]:
    """`smpl.npz`, `camera.npz` and the reference (all three members, or none) of a raw sample, each None
    when absent or undecodable (the reasons are appended to `problems`)."""
    smpl = decode_member(sample, SMPL, decode_smpl, problems)
    camera = decode_member(sample, CAMERA, decode_camera, problems)
    present = [name for name in REFERENCE_MEMBERS if name in sample]
    if present and len(present) < len(REFERENCE_MEMBERS):
        problems.append(f"{', '.join(REFERENCE_MEMBERS)}: a reference needs all three, found only {present}")
    parts = (
        decode_member(sample, REF_IMAGE, decode_png, problems),
        decode_member(sample, REF_SMPL, decode_smpl, problems),
        decode_member(sample, REF_CAMERA, decode_camera, problems),
    )
    reference = Reference(*parts) if all(part is not None for part in parts) else None
    return smpl, camera, reference


def decode_sample(sample: Mapping[str, Any]) -> Clip:
    """Decode and validate a WebDataset sample (as `webdataset.WebDataset` yields it, undecoded).

    Args:
        sample: `__key__` and member bytes by extension (`"video.mp4"`, ...); other keys are ignored.

    Returns:
        The clip, every frame decoded.

    Raises:
        InvalidSampleError: if a member is missing, corrupt (its SHA-256 in `meta.json`) or cannot be
            decoded (decoder errors, fewer frames than the container says), the schema version is not
            supported, or :func:`validate_clip` finds problems. Nothing else, whatever the bytes.
    """
    key = sample_key(sample)
    meta, corrupt = read_sample_meta(sample)
    problems: list[str] = []
    video = decode_member(sample, VIDEO, read_video, problems)
    background = decode_member(sample, BACKGROUND, read_video, problems)
    mask = decode_member(sample, MASK, read_mask_video, problems)
    smpl, camera, reference = decode_annotations(sample, problems)
    if problems or video is None:
        raise InvalidSampleError(key, corrupt + problems)
    clip = Clip(key, video, meta, smpl, camera, background, mask, reference)
    problems = corrupt + validate_clip(clip)
    if problems:
        raise InvalidSampleError(key, problems)
    return clip
