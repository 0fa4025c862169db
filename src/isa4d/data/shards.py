"""Writing a split's clips as WebDataset shards, all or nothing, with a `manifest.json` (docs/data.md).

Shards are written under hidden temporary names (`.tmp-<token>-<split>-NNNNNN.tar`) and renamed to
`<split>-NNNNNN.tar` only once every clip has been written; on any error the temporary files are removed.
The manifest is updated last (:func:`update_manifest`: read, change and atomic replace under a file lock,
so writers of different splits into one folder keep each other's), so a split listed in it is complete.
It records every shard's size and SHA-256 (:func:`verify_shards`).

Every reader goes through :func:`read_manifest`, which refuses a manifest it cannot trust with a
`DataError` naming the file: not JSON, an unknown `schema_version` (pixel shards) or
`latent_schema_version` (latent shards of `isa4d encode`), a malformed split or shard entry, or a shard
name that would lead outside the folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import webdataset as wds
from filelock import FileLock
from tqdm.auto import tqdm

from isa4d.data.format import (
    LATENT_SCHEMA_VERSION,
    NAME_PATTERN,
    SCHEMA_VERSION,
    SUPPORTED_SCHEMA_VERSIONS,
    Clip,
    encode_sample,
)
from isa4d.data.video_io import DEFAULT_CRF, DEFAULT_PRESET
from isa4d.errors import ConfigError, DataError, MissingFileError, OutputExistsError
from isa4d.utils.files import file_sha256, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_LOCK = ".manifest.json.lock"
"""The lock file of :func:`update_manifest` (left in place: removing a lock file races with its waiters)."""
SHARD_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
"""A shard's name in a manifest: a plain file name (no folder, no `..`, not hidden), read from its folder."""
MANIFEST_VERSIONS = {
    "schema_version": SUPPORTED_SCHEMA_VERSIONS,
    "latent_schema_version": frozenset({LATENT_SCHEMA_VERSION}),
}
"""The version key of each kind of manifest (pixel, latent) and the versions this code reads."""
REBUILD = "rebuild the folder (`make data`, `isa4d prepare` or `isa4d encode`)"


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
        ConfigError: on a bad split name.
        OutputExistsError: if `out_dir` holds shards of `split` and `overwrite` is false.
    """
    if not NAME_PATTERN.fullmatch(split):
        raise ConfigError(f"split {split!r} must be letters, digits, '_' or '-'")
    found = existing_shards(out_dir, split)
    if found and not overwrite:
        raise OutputExistsError(
            f"{out_dir} already holds {len(found)} {split!r} shard(s) ({found[0].name}, ...); "
            "pass overwrite=true to replace them"
        )


def _version_problem(manifest: dict[str, Any]) -> str | None:
    keys = [key for key in MANIFEST_VERSIONS if key in manifest]
    if len(keys) != 1:
        return f"needs one of {sorted(MANIFEST_VERSIONS)}, found {keys or 'none'}"
    version = manifest[keys[0]]
    readable = MANIFEST_VERSIONS[keys[0]]
    if type(version) is not int or version not in readable:
        return (
            f"{keys[0]} {version!r} is not one this isa4d reads ({sorted(readable)}); update isa4d or "
            "rebuild the folder"
        )
    return None


def _shard_problem(split: str, index: int, shard: object) -> str | None:
    where = f"splits.{split}.shards[{index}]"
    if not isinstance(shard, dict):
        return f"{where} must be an object"
    name = shard.get("name")
    if not (isinstance(name, str) and SHARD_NAME_PATTERN.fullmatch(name)):
        return f"{where}.name {name!r} must be a file name in the folder (no '/', '..' or leading '.')"
    for field in ("num_samples", "num_bytes"):
        if type(shard.get(field)) is not int or shard[field] < 0:
            return f"{where}.{field} {shard.get(field)!r} must be an integer >= 0"
    digest = shard.get("sha256")
    if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        return f"{where}.sha256 {digest!r} must be 64 lowercase hex digits"
    return None


def manifest_problem(manifest: object) -> str | None:
    """What makes a parsed `manifest.json` unreadable (first problem found), or None if it is sound."""
    if not isinstance(manifest, dict):
        return f"must hold a JSON object, not {type(manifest).__name__}"
    problem = _version_problem(manifest)
    if problem:
        return problem
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        return f"'splits' must be an object of split entries, not {type(splits).__name__}"
    for split, entry in splits.items():
        if not NAME_PATTERN.fullmatch(split):
            return f"split name {split!r} must be letters, digits, '_' or '-'"
        if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list):
            return f"splits.{split} must be an object with a 'shards' list"
        for index, shard in enumerate(entry["shards"]):
            problem = _shard_problem(split, index, shard)
            if problem:
                return problem
    return None


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """Read and check `data_dir/manifest.json` (of pixel or latent shards).

    Raises:
        MissingFileError: if there is none.
        DataError: naming the file, if it is not JSON, has an unknown schema version, a malformed split
            or shard entry, or a shard name with a folder part (see :func:`manifest_problem`).
    """
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file; {REBUILD}")
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as err:  # bad UTF-8 or JSON
        raise DataError(f"{path} is not valid JSON ({err}); {REBUILD}") from err
    problem = manifest_problem(manifest)
    if problem:
        raise DataError(f"{path}: {problem}; {REBUILD}")
    return manifest


def _split_shards(data_dir: str | Path, split: str) -> list[dict[str, Any]]:
    splits = read_manifest(data_dir)["splits"]
    if split not in splits:
        raise KeyError(f"{data_dir}/{MANIFEST} has no split {split!r} (it has {sorted(splits)})")
    return splits[split]["shards"]


def shard_paths(data_dir: str | Path, split: str) -> list[Path]:
    """The shard files of `split`, as listed in `data_dir`'s manifest (all inside `data_dir`).

    Raises:
        KeyError: if the manifest has no such split (the available ones are named).
        DataError: a manifest :func:`read_manifest` refuses.
    """
    return [Path(data_dir) / shard["name"] for shard in _split_shards(data_dir, split)]


VERIFIED_SHARDS_ENV = "ISA4D_VERIFIED_SHARDS"
"""Environment variable naming the file of verified shards (default `~/.cache/isa4d/verified_shards.json`)."""


def verified_shards_file() -> Path:
    """The file where `verify_shards` remembers the shards that passed: `$ISA4D_VERIFIED_SHARDS`, else
    `~/.cache/isa4d/verified_shards.json`."""
    return Path(
        os.environ.get(VERIFIED_SHARDS_ENV) or Path.home() / ".cache" / "isa4d" / "verified_shards.json"
    )


def _read_verified(path: Path) -> dict[str, dict[str, Any]]:
    """`{absolute shard path: {"num_bytes", "mtime_ns", "sha256"}}` of `path`; empty if it is unreadable."""
    try:
        verified = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return verified if isinstance(verified, dict) else {}


def verify_shards(data_dir: str | Path, split: str) -> int:
    """Check the size and SHA-256 of every shard of `split` against the manifest.

    A shard's bytes are read once per machine: one that passed is remembered (`verified_shards_file()`,
    by absolute path, size, modification time and the manifest's SHA-256) and only its size is checked
    again while none of these changed. Rewriting a shard changes its modification time, so it is read
    again. Shards listed without a `sha256` (manifests written before the checksums, or edited by hand)
    are not checked; a warning counts them.

    Returns:
        The number of shards verified.

    Raises:
        KeyError, DataError: as :func:`shard_paths`.
        MissingFileError: a listed shard is missing.
        DataError: a shard whose size or SHA-256 differs from the manifest's (named, with what to do).
    """
    data_dir = Path(data_dir)
    shards = _split_shards(data_dir, split)
    memory = verified_shards_file()
    verified = _read_verified(memory)
    unverified, learned = 0, False
    for shard in shards:
        path = data_dir / shard["name"]
        if not path.is_file():
            raise MissingFileError(f"{path}: listed in {data_dir / MANIFEST} but missing; {REBUILD}")
        if "sha256" not in shard:
            unverified += 1
            continue
        stat = path.stat()
        key = str(path.resolve())
        record = {"num_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": shard["sha256"]}
        if stat.st_size != shard["num_bytes"]:
            found = f"{stat.st_size} bytes, the manifest says {shard['num_bytes']}"
        elif verified.get(key) == record:
            continue
        elif file_sha256(path) != shard["sha256"]:
            found = "its SHA-256 differs from the manifest's"
        else:
            verified[key], learned = record, True
            continue
        raise DataError(
            f"{path} is corrupt or was replaced ({found}); {REBUILD}, or set data.verify_checksums=false "
            "to read it unchecked"
        )
    if learned:
        kept = {name: record for name, record in verified.items() if Path(name).is_file()}
        try:
            write_json_atomic(memory, kept)
        except OSError as error:  # a read-only home: every setup reads the shards again
            log.warning("could not remember the verified shards in %s (%s)", memory, error)
    if unverified:
        log.warning(
            "%s: %d %r shard(s) have no sha256 in %s: not verified", data_dir, unverified, split, MANIFEST
        )
    return len(shards) - unverified


def update_manifest(
    out_dir: str | Path, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """Read, change and atomically replace `out_dir/manifest.json`, holding its file lock throughout.

    Writers in other processes (other splits, other commands) wait for the lock, so none loses what
    another wrote between its read and its write.

    Args:
        out_dir: the dataset folder (created if missing).
        change: the current manifest (`{}` if there is none) -> the manifest to write.

    Returns:
        The manifest written.

    Raises:
        DataError: an existing manifest :func:`read_manifest` refuses.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(out_dir / MANIFEST_LOCK):
        manifest = change(read_manifest(out_dir) if (out_dir / MANIFEST).is_file() else {})
        write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


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
        The split's shard entries `[{"name", "num_samples", "num_bytes", "sha256"}, ...]`.

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
            {
                "name": shard_name(split, index),
                "num_samples": count,
                "num_bytes": os.path.getsize(temporary),
                "sha256": file_sha256(temporary),
            }
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
        out_dir: the dataset folder (created if missing); other splits' shards and manifest entries are kept,
            also those another process writes at the same time (:func:`update_manifest`).
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
        DataError: if `out_dir` holds a manifest of another schema (or of latent shards).
    """
    out_dir = Path(out_dir)
    check_writable(out_dir, split, overwrite)
    if (out_dir / MANIFEST).is_file():
        _check_pixel_manifest(out_dir, read_manifest(out_dir))  # before any shard is written
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

    def add_split(manifest: dict[str, Any]) -> dict[str, Any]:
        manifest = manifest or {"schema_version": SCHEMA_VERSION, "splits": {}}
        _check_pixel_manifest(out_dir, manifest)
        manifest["splits"][split] = stats.entry(shards)
        return manifest

    return update_manifest(out_dir, add_split)


def _check_pixel_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    if manifest.get("schema_version") != SCHEMA_VERSION:
        found = ", ".join(f"{key} {manifest[key]!r}" for key in MANIFEST_VERSIONS if key in manifest)
        raise DataError(
            f"{out_dir / MANIFEST} lists other shards ({found}), not schema_version {SCHEMA_VERSION} ones; "
            "write to another folder"
        )
