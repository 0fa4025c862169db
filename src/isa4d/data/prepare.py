"""`isa4d prepare`: turn a folder of clip folders into WebDataset shards (docs/data.md, "isa4d prepare").

Every clip folder is read and validated first; rejected clips are reported with their reasons and
skipped. The valid ones are then read again and written, split by split, with
:func:`~isa4d.data.shards.write_shards` (so only one clip is held in memory at a time).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm

from isa4d.data.format import (
    CAMERA,
    REF_CAMERA,
    REF_IMAGE,
    REF_SMPL,
    REFERENCE_MEMBERS,
    SMPL,
    SMPL_PARAM_KEYS,
    Cameras,
    Clip,
    InvalidSampleError,
    Reference,
    SMPLParams,
    decode_png,
    fps_problem,
    load_npz,
    validate_clip,
)
from isa4d.data.shards import check_writable, write_shards
from isa4d.data.video_io import DEFAULT_CRF, DEFAULT_PRESET, read_mask_video, read_video, video_info
from isa4d.errors import ConfigError

log = logging.getLogger(__name__)

MIN_CLIP_FRAMES = 2
"""Frames a clip folder's video needs: a clip is motion (a single image is not one; the training streams
read single frames of clips themselves, and resample clips of any length >= 2 by speed adjustment)."""
INPUT_META_KEYS = ("fps", "source", "licence", "split", "num_persons")
"""The `meta.json` keys of a clip folder that set the sample's metadata; other keys are kept as extras."""
_COMPUTED_META_KEYS = ("schema_version", "num_frames", "height", "width")

_T = TypeVar("_T")


class NoValidClipsError(RuntimeError):
    """Every clip folder of the input was rejected (or there were none)."""


@dataclass
class ClipDefaults:
    """Metadata for clip folders whose `meta.json` does not set it.

    Attributes:
        split: split of the clip.
        fps: frame rate used when neither `meta.json` nor the video's header gives one (None: reject).
        source: `meta.source`.
        licence: `meta.licence`.
    """

    split: str = "train"
    fps: float | None = None
    source: str = "custom"
    licence: str = "unknown"


@dataclass
class PrepareResult:
    """What :func:`prepare_folder` did.

    Attributes:
        manifest: the output folder's manifest after the run.
        written: clip keys written, by split.
        rejected: reasons by rejected clip folder name.
    """

    manifest: dict[str, Any]
    written: dict[str, list[str]] = field(default_factory=dict)
    rejected: dict[str, list[str]] = field(default_factory=dict)


def _single_person(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add the person axis to single-person SMPL arrays given without it (`betas` of shape `(10,)`)."""
    if arrays["betas"].ndim == 1:
        return {name: array[None] for name, array in arrays.items()}
    return arrays


def _static_camera(
    arrays: dict[str, np.ndarray], frames: int, image_size: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Repeat a single `K (3, 3)`, `R (3, 3)`, `t (3,)` over frames; `image_size` defaults to the video's."""
    out = dict(arrays)
    for name, single_ndim in (("K", 2), ("R", 2), ("t", 1)):
        if out[name].ndim == single_ndim:
            out[name] = np.repeat(out[name][None], frames, axis=0)
    out.setdefault("image_size", np.asarray(image_size))
    return out


def _read_smpl(path: Path) -> SMPLParams:
    return SMPLParams(**_single_person(load_npz(path.read_bytes(), SMPL_PARAM_KEYS)))


def _read_camera(path: Path, frames: int, image_size: tuple[int, int]) -> Cameras:
    arrays = load_npz(path.read_bytes(), ("K", "R", "t"), optional=("image_size",))
    return Cameras(**_static_camera(arrays, frames, image_size))


def _read_mask(path: Path) -> np.ndarray:
    labels = (
        load_npz(path.read_bytes(), ("mask",))["mask"] if path.suffix == ".npz" else read_mask_video(path)
    )
    integral = labels.dtype == bool or np.issubdtype(labels.dtype, np.integer)
    if integral and labels.size and 0 <= labels.min() and labels.max() <= 255:
        return labels.astype(np.uint8)
    return labels  # validation reports the dtype


def load_clip_folder(folder: str | Path, defaults: ClipDefaults | None = None) -> Clip:
    """Read and validate one input clip folder (layout: docs/data.md, "Input folders").

    Args:
        folder: the clip folder; its name is the clip key.
        defaults: metadata for what the folder's `meta.json` does not set.

    Returns:
        The clip.

    Raises:
        InvalidSampleError: with every problem found (unreadable or missing files, fewer than
            `MIN_CLIP_FRAMES` frames, an fps that is not a positive number, format violations); nothing
            else, whatever the files hold.
    """
    folder = Path(folder)
    defaults = defaults or ClipDefaults()
    problems: list[str] = []

    def read(path: Path, load: Callable[[Path], _T]) -> _T | None:
        try:
            return load(path)
        except Exception as err:  # an unreadable input file is a reason to reject, whatever raised
            problems.append(f"{path.name}: cannot read ({type(err).__name__}: {err})")
            return None

    def optional_file(stem: str) -> Path | None:
        found = sorted(path for path in folder.glob(f"{stem}.*") if path.is_file())
        if len(found) > 1:
            problems.append(f"{stem}.*: expected one file, found {[path.name for path in found]}")
        return found[0] if len(found) == 1 else None

    info: dict[str, Any] = {}
    if (folder / "meta.json").is_file():
        info = read(folder / "meta.json", lambda path: json.loads(path.read_text())) or {}
        if not isinstance(info, dict):
            problems.append("meta.json: must hold a JSON object")
            info = {}
    computed = [key for key in _COMPUTED_META_KEYS if key in info]
    if computed:
        problems.append(f"meta.json: {computed} are computed from the arrays; remove them")
    video_path = optional_file("video")
    if video_path is None and not problems:
        problems.append("video.*: missing")
    video = read(video_path, read_video) if video_path else None
    if video is None:
        raise InvalidSampleError(folder.name, problems)
    frames, height, width = video.shape[:3]
    if frames < MIN_CLIP_FRAMES:
        problems.append(
            f"{video_path.name}: {frames} frame(s); a clip needs at least {MIN_CLIP_FRAMES} (a single "
            "image is not a clip)"
        )
    if "fps" in info:  # as given: 0, NaN or a string is refused by the validation, never replaced
        fps = info["fps"]
    else:
        fps = read(video_path, lambda path: video_info(path).fps) or defaults.fps
        if not fps:
            problems.append(
                f"fps: neither meta.json nor {video_path.name} gives a frame rate; set fps_default"
            )

    background_path, mask_path = optional_file("background"), optional_file("mask")
    background = read(background_path, read_video) if background_path else None
    mask = read(mask_path, _read_mask) if mask_path else None
    smpl = read(folder / SMPL, _read_smpl) if (folder / SMPL).is_file() else None
    camera = None
    if (folder / CAMERA).is_file():
        camera = read(folder / CAMERA, lambda path: _read_camera(path, frames, (height, width)))
    reference = None
    present = [name for name in REFERENCE_MEMBERS if (folder / name).is_file()]
    if present and len(present) < len(REFERENCE_MEMBERS):
        problems.append(f"{', '.join(REFERENCE_MEMBERS)}: a reference needs all three, found only {present}")
    elif present:
        image = read(folder / REF_IMAGE, lambda path: decode_png(path.read_bytes()))
        ref_smpl = read(folder / REF_SMPL, _read_smpl)
        if image is not None and ref_smpl is not None:
            ref_camera = read(folder / REF_CAMERA, lambda path: _read_camera(path, 1, image.shape[:2]))
            reference = Reference(image, ref_smpl, ref_camera) if ref_camera is not None else None
    if problems:
        raise InvalidSampleError(folder.name, problems)
    clip = Clip.create(
        folder.name,
        video,
        fps,
        smpl=smpl,
        camera=camera,
        background=background,
        mask=mask,
        reference=reference,
        num_persons=info.get("num_persons"),
        source=info.get("source", defaults.source),
        licence=info.get("licence", defaults.licence),
        split=info.get("split", defaults.split),
        extra={key: value for key, value in info.items() if key not in INPUT_META_KEYS},
    )
    problems = validate_clip(clip)
    if problems:
        raise InvalidSampleError(folder.name, problems)
    return clip


def _report(rejected: dict[str, list[str]], total: int) -> str:
    lines = [f"isa4d prepare: {len(rejected)} of {total} clip folder(s) rejected and skipped:"]
    for name, reasons in rejected.items():
        lines += [f"  {name}:", *(f"    - {reason}" for reason in reasons)]
    return "\n".join(lines)


def prepare_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    defaults: ClipDefaults | None = None,
    maxcount: int = 64,
    maxsize: float = 1e9,
    overwrite: bool = False,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    progress: bool = True,
) -> PrepareResult:
    """Validate every clip folder of `input_dir`, report the rejected ones, and shard the valid ones.

    Args:
        input_dir: folder with one sub-folder per clip (hidden sub-folders are ignored).
        output_dir: the dataset folder (see :func:`~isa4d.data.shards.write_shards`).
        defaults: metadata for clips whose `meta.json` does not set it.
        maxcount: most samples per shard.
        maxsize: bytes after which a shard is closed.
        overwrite: replace existing shards of the splits written.
        crf: libx264 constant rate factor of the RGB videos.
        preset: libx264 preset.
        progress: show progress bars.

    Returns:
        The manifest and the written and rejected clips.

    Raises:
        ConfigError: `defaults.fps` (`fps_default`) not a frame rate.
        NoValidClipsError: if no clip folder is valid.
        FileExistsError: if a split to write already has shards and `overwrite` is false (checked before
            anything is written).
    """
    defaults = defaults or ClipDefaults()
    problem = None if defaults.fps is None else fps_problem(defaults.fps)
    if problem:
        raise ConfigError(f"fps_default: {problem} (or null: clips without a frame rate are rejected)")
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise NoValidClipsError(f"input_dir {input_dir} is not a folder")
    folders = sorted(path for path in input_dir.iterdir() if path.is_dir() and not path.name.startswith("."))
    by_split: dict[str, list[Path]] = {}
    rejected: dict[str, list[str]] = {}
    for folder in tqdm(folders, desc="validating", unit="clip", disable=not progress):
        try:
            clip = load_clip_folder(folder, defaults)
        except InvalidSampleError as err:
            rejected[folder.name] = err.reasons
            continue
        by_split.setdefault(clip.meta.split, []).append(folder)
    if rejected:
        print(_report(rejected, len(folders)))
    if not by_split:
        raise NoValidClipsError(f"no valid clip folder in {input_dir} ({len(folders)} found)")
    for split in by_split:
        check_writable(output_dir, split, overwrite)
    manifest: dict[str, Any] = {}
    for split, split_folders in by_split.items():
        clips = _read_again(split_folders, defaults, rejected)
        manifest = write_shards(
            clips,
            output_dir,
            split,
            maxcount,
            maxsize,
            overwrite=overwrite,
            crf=crf,
            preset=preset,
            progress=progress,
        )
        entry = manifest["splits"][split]
        samples, shards = entry["num_samples"], len(entry["shards"])
        print(f"isa4d prepare: wrote {samples} {split!r} sample(s) in {shards} shard(s) to {output_dir}")
    written = {
        split: [folder.name for folder in split_folders if folder.name not in rejected]
        for split, split_folders in by_split.items()
    }
    return PrepareResult(manifest, written, rejected)


def _read_again(
    folders: list[Path], defaults: ClipDefaults, rejected: dict[str, list[str]]
) -> Iterator[Clip]:
    """The clips of folders validated before; one that changed since and fails now is skipped (and added
    to `rejected`) rather than failing its split."""
    for folder in folders:
        try:
            yield load_clip_folder(folder, defaults)
        except InvalidSampleError as err:
            log.warning("isa4d prepare: %s changed since it was validated and is skipped: %s", folder, err)
            rejected[folder.name] = err.reasons


def main(cfg: DictConfig) -> None:
    """The Hydra task of `isa4d prepare` (conf/prepare.yaml); exits with status 1 if nothing was written."""
    defaults = ClipDefaults(split=cfg.split, fps=cfg.fps_default, source=cfg.source, licence=cfg.licence)
    try:
        prepare_folder(
            cfg.input_dir,
            cfg.output_dir,
            defaults=defaults,
            maxcount=int(cfg.shard_max_count),
            maxsize=float(cfg.shard_max_size),
            overwrite=bool(cfg.overwrite),
            crf=int(cfg.video_crf),
            preset=str(cfg.video_preset),
        )
    except (NoValidClipsError, FileExistsError) as err:
        sys.exit(f"isa4d prepare: {err}")
