"""Writing a split's clips as WebDataset shards, all or nothing, with a `manifest.json` (docs/data.md).

Shards are written under hidden temporary names (`.tmp-<token>-<split>-NNNNNN.tar`) and renamed to
`<split>-NNNNNN.tar` only once every clip has been written; on any error the temporary files are removed.
The manifest is replaced atomically last, so a split listed in it is complete.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import webdataset as wds
from tqdm.auto import tqdm

from isa4d.data.format import NAME_PATTERN, SCHEMA_VERSION, Clip, encode_sample
from isa4d.data.video_io import DEFAULT_CRF, DEFAULT_PRESET
from isa4d.utils.files import write_json_atomic

MANIFEST = "manifest.json"


def shard_name(split: str, index: int) -> str:
    """The final file name of a split's shard `index`: `{split}-{index:06d}.tar`."""
    return f"{split}-{index:06d}.tar"


def existing_shards(out_dir: str | Path, split: str) -> list[Path]:
    """The final-named shards of `split` in `out_dir`, sorted."""
    pattern = re.compile(rf"{re.escape(split)}-\d{{6}}\.tar")
    folder = Path(out_dir)
    return sorted(path for path in folder.glob(f"{split}-*.tar") if pattern.fullmatch(path.name))


def check_writable(out_dir: str | Path, split: str, overwrite: bool) -> None:
    """Refuse a split name that is not a valid key, or existing shards of `split` unless `overwrite`.

    Raises:
        ValueError: on a bad split name.
        FileExistsError: if `out_dir` holds shards of `split` and `overwrite` is false.
    """
    if not NAME_PATTERN.fullmatch(split):
        raise ValueError(f"split {split!r} must be letters, digits, '_' or '-'")
    found = existing_shards(out_dir, split)
    if found and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds {len(found)} {split!r} shard(s) ({found[0].name}, ...); "
            "pass overwrite=true to replace them"
        )


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """Read `data_dir/manifest.json`.

    Raises:
        FileNotFoundError: if there is none.
    """
    return json.loads((Path(data_dir) / MANIFEST).read_text())


def shard_paths(data_dir: str | Path, split: str) -> list[Path]:
    """The shard files of `split`, as listed in `data_dir`'s manifest.

    Raises:
        KeyError: if the manifest has no such split (the available ones are named).
    """
    splits = read_manifest(data_dir)["splits"]
    if split not in splits:
        raise KeyError(f"{data_dir}/{MANIFEST} has no split {split!r} (it has {sorted(splits)})")
    return [Path(data_dir) / shard["name"] for shard in splits[split]["shards"]]


class _SplitStats:
    """Per-split counts for the manifest."""

    def __init__(self) -> None:
        self.frames: list[int] = []
        self.resolutions: Counter[str] = Counter()
        self.persons: Counter[str] = Counter()
        self.fps: Counter[str] = Counter()
        self.members: Counter[str] = Counter()

    def add(self, clip: Clip, members: Iterable[str]) -> None:
        meta = clip.meta
        self.frames.append(meta.num_frames)
        self.resolutions[f"{meta.height}x{meta.width}"] += 1
        self.persons[str(meta.num_persons)] += 1
        self.fps[f"{meta.fps:g}"] += 1
        self.members.update(name for name in members if not name.startswith("__"))

    def entry(self, shards: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "num_samples": len(self.frames),
            "num_frames": sum(self.frames),
            "frames_per_sample": {"min": min(self.frames), "max": max(self.frames)},
            "resolutions": dict(sorted(self.resolutions.items())),
            "persons": dict(sorted(self.persons.items(), key=lambda item: int(item[0]))),
            "fps": dict(sorted(self.fps.items())),
            "members": dict(sorted(self.members.items())),
            "shards": shards,
        }


def write_samples(
    samples: Iterable[dict[str, Any]],
    out_dir: str | Path,
    split: str,
    maxcount: int,
    maxsize: float,
    *,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Write ready WebDataset samples as the shards of one split, all or nothing.

    Samples go to hidden temporary shards (`.tmp-<token>-{split}-NNNNNN.tar`), renamed to
    `{split}-NNNNNN.tar` only once every sample is written; on any error (or interruption) the
    temporary shards are deleted and the exception propagates, leaving `out_dir` as it was. The
    manifest is the caller's (it knows what to count).

    Args:
        samples: dicts of member name -> bytes (plus `__key__`), e.g. from `encode_sample`.
        out_dir: the dataset folder (created if missing).
        split: split name.
        maxcount: most samples per shard.
        maxsize: bytes after which a shard is closed (a shard may exceed it by one sample).
        overwrite: replace existing shards of `split` (removed only after the new ones are complete).

    Returns:
        The split's shard entries `[{"name", "num_samples", "num_bytes"}, ...]`.

    Raises:
        FileExistsError: if shards of `split` exist and `overwrite` is false.
        ValueError: if there are no samples.
    """
    out_dir = Path(out_dir)
    check_writable(out_dir, split, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    counts: dict[str, int] = {}  # temporary shard -> samples
    try:
        with wds.ShardWriter(
            str(out_dir / f".tmp-{token}-{split}-%06d.tar"), maxcount, maxsize, verbose=0
        ) as writer:
            for sample in samples:
                writer.write(sample)
                counts[writer.fname] = counts.get(writer.fname, 0) + 1
        if not counts:
            raise ValueError(f"no samples to write for split {split!r}")
        shards = [
            {"name": shard_name(split, index), "num_samples": count, "num_bytes": os.path.getsize(temporary)}
            for index, (temporary, count) in enumerate(counts.items())
        ]
        for stale in existing_shards(out_dir, split)[len(shards) :]:
            stale.unlink()
        for temporary, shard in zip(counts, shards, strict=True):
            os.replace(temporary, out_dir / shard["name"])
    except BaseException:
        for temporary in out_dir.glob(f".tmp-{token}-*"):
            temporary.unlink(missing_ok=True)
        raise
    return shards


def write_shards(
    clips: Iterable[Clip],
    out_dir: str | Path,
    split: str,
    maxcount: int,
    maxsize: float,
    *,
    overwrite: bool = False,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    progress: bool = True,
) -> dict[str, Any]:
    """Write clips as the shards of one split and record them in `out_dir/manifest.json`.

    Every clip is validated and encoded by :func:`~isa4d.data.format.encode_sample` and written by
    :func:`write_samples` (all or nothing).

    Args:
        clips: the clips, each with `meta.split == split` and a key unique within the call.
        out_dir: the dataset folder (created if missing); other splits' shards and manifest entries are kept.
        split: split name; shards are `{split}-000000.tar`, `{split}-000001.tar`, ...
        maxcount: most samples per shard.
        maxsize: bytes after which a shard is closed (a shard may exceed it by one sample).
        overwrite: replace existing shards of `split` (they are removed only after the new ones are complete).
        crf: libx264 constant rate factor of the RGB videos.
        preset: libx264 preset.
        progress: show a progress bar.

    Returns:
        The whole manifest after the update: `{"schema_version": 1, "splits": {split: {...}, ...}}`.

    Raises:
        FileExistsError: if shards of `split` exist and `overwrite` is false.
        InvalidSampleError: if a clip is invalid.
        ValueError: on a bad split name, a clip of another split, a repeated key or no clips.
    """
    out_dir = Path(out_dir)
    check_writable(out_dir, split, overwrite)
    manifest_path = out_dir / MANIFEST
    manifest = (
        read_manifest(out_dir) if manifest_path.exists() else {"schema_version": SCHEMA_VERSION, "splits": {}}
    )
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{manifest_path} is schema version {manifest.get('schema_version')}, not {SCHEMA_VERSION}"
        )
    keys: set[str] = set()
    stats = _SplitStats()

    def encoded() -> Iterator[dict[str, Any]]:
        for clip in tqdm(clips, desc=f"writing {split}", unit="clip", disable=not progress):
            if clip.meta.split != split:
                raise ValueError(f"clip {clip.key!r} belongs to split {clip.meta.split!r}, not {split!r}")
            if clip.key in keys:
                raise ValueError(f"clip key {clip.key!r} is repeated")
            keys.add(clip.key)
            sample = encode_sample(clip, crf=crf, preset=preset)
            stats.add(clip, sample)
            yield sample

    shards = write_samples(encoded(), out_dir, split, maxcount, maxsize, overwrite=overwrite)
    manifest["splits"][split] = stats.entry(shards)
    write_json_atomic(manifest_path, manifest)
    return manifest
