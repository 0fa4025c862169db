"""Streaming WebDataset pipelines over ISA4D shards that survive bad data (docs/datamodules.md).

:func:`make_webdataset` builds `shards -> (rank, worker) split -> shuffle -> decode -> batch -> epoch`:

* shards are split explicitly between ranks (`wds.split_by_node`) and DataLoader workers
  (`wds.split_by_worker`); training streams resample shards with replacement (every rank and worker
  draws its own), validation streams read each shard of their rank once, in order;
* raw samples (compressed bytes) are shuffled in a buffer, then decoded in the worker by a
  `decode_fn` (PyAV for videos; webdataset's `.decode()` is never used);
* decoded samples are batched in the worker, grouped by the shape of their `"video"` (so 1-frame
  image samples and full clips form separate batches), and `with_epoch` cuts the stream into epochs.

Nothing bad kills an epoch: an unreadable or truncated tar (`read`), a sample that does not decode or
validate (`invalid`: garbage mp4, NaN, shape mismatch, ...) and a valid sample that the configuration
cannot use (`unusable`: too short, too many persons, ...) are skipped, logged and counted in a
:class:`SkipCounter` whose counts live in shared memory, so the main process sees the sum over all
DataLoader workers. `max_consecutive` skips in a row (e.g. a folder of the wrong kind of data)
raise instead of looping forever.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import av
import numpy as np
import webdataset as wds
from torch.utils.data import default_collate

from isa4d.data.augment import UnusableClipError
from isa4d.data.format import (
    BACKGROUND,
    CAMERA,
    MASK,
    META,
    REF_CAMERA,
    REF_IMAGE,
    REF_SMPL,
    REFERENCE_MEMBERS,
    SMPL,
    VIDEO,
    Cameras,
    Clip,
    ClipMeta,
    InvalidSampleError,
    Reference,
    SMPLParams,
    decode_camera,
    decode_png,
    decode_smpl,
    validate_clip,
)
from isa4d.data.video_io import read_mask_video, read_video

log = logging.getLogger(__name__)

SKIP_KINDS = ("read", "invalid", "unusable")
"""What a skip counts: shard read errors, undecodable/invalid samples, valid but unusable samples."""
DATA_ERRORS: tuple[type[Exception], ...] = (
    InvalidSampleError,
    av.FFmpegError,
    ValueError,
    IndexError,
    OSError,
    EOFError,
    zipfile.BadZipFile,
)
"""Exceptions that mean "bad data" while decoding a sample (anything else is a bug and propagates)."""


class SkipCounter:
    """Counts skipped samples by kind (:data:`SKIP_KINDS`), summed over DataLoader worker processes.

    The counts are a `multiprocessing.Array` in shared memory: create the counter in the main process
    before the DataLoader starts its workers (forked or spawned), read it there at any time.

    Args:
        max_consecutive: skips in a row (in one process) after which :meth:`add` raises `RuntimeError`.
    """

    def __init__(self, max_consecutive: int = 100) -> None:
        self._counts = multiprocessing.Array("q", len(SKIP_KINDS))
        self._streak = 0
        self.max_consecutive = max_consecutive

    def add(self, kind: str, key: str, error: BaseException) -> None:
        """Count and log one skip (`kind` in :data:`SKIP_KINDS`).

        Raises:
            RuntimeError: on the `max_consecutive`-th skip in a row in this process.
        """
        with self._counts.get_lock():
            self._counts[SKIP_KINDS.index(kind)] += 1
        log.warning("skipped %s sample %s: %s", kind, key, error)
        self._streak += 1
        if self._streak >= self.max_consecutive:
            raise RuntimeError(
                f"{self._streak} consecutive samples skipped (last: {kind} {key}: {error}); the data "
                "folders hold nothing this configuration can use (see the warnings above)"
            ) from error

    def succeeded(self) -> None:
        """A sample was delivered: reset the run of consecutive skips."""
        self._streak = 0

    def read_error(self, error: Exception) -> bool:
        """webdataset `handler` for shard-reading errors: count, log and go on with the next shard.

        A truncated or corrupted tar usually reports one or two errors (the broken member, then the
        broken stream); webdataset adds the file to the error's arguments.
        """
        self.add("read", "(shard)", error)
        return True

    @property
    def counts(self) -> dict[str, int]:
        """Skips so far by kind, over all workers."""
        with self._counts.get_lock():
            return dict(zip(SKIP_KINDS, self._counts[:], strict=True))

    @property
    def total(self) -> int:
        """All skips so far, over all workers."""
        return sum(self.counts.values())


@dataclass(frozen=True, eq=False)
class SampleHeader:
    """A sample's metadata and annotations, decoded and validated, without any video frame.

    Attributes:
        key: the clip key.
        meta: `meta.json`.
        smpl: `(P, T, ...)` SMPL parameters of all T frames, or None.
        camera: `(T, ...)` cameras of all T frames, or None.
        reference: the reference frame, or None.
    """

    key: str
    meta: ClipMeta
    smpl: SMPLParams | None
    camera: Cameras | None
    reference: Reference | None


def read_header(sample: Mapping[str, Any]) -> SampleHeader:
    """Decode and validate everything of a raw sample except its videos (cheap: JSON and `.npz`).

    Validation is :func:`~isa4d.data.format.validate_clip` with a stand-in video of `meta`'s size, so
    annotations are checked over all frames (NaN anywhere, frame counts, rotations, image sizes).

    Raises:
        InvalidSampleError: missing or undecodable members, or validation problems.
    """
    key = str(sample.get("__key__", "<no __key__>"))
    missing = [member for member in (META, VIDEO) if member not in sample]
    if missing:
        raise InvalidSampleError(key, [f"{member}: missing" for member in missing])
    problems: list[str] = []

    def member(name: str, decode: Callable[[bytes], Any]) -> Any:
        if name not in sample:
            return None
        try:
            return decode(sample[name])
        except Exception as err:  # undecodable bytes raise json-, zip- and image-specific errors alike
            problems.append(f"{name}: cannot decode ({type(err).__name__}: {err})")
            return None

    meta = member(META, lambda data: ClipMeta.from_dict(json.loads(data)))
    smpl, camera = member(SMPL, decode_smpl), member(CAMERA, decode_camera)
    present = [name for name in REFERENCE_MEMBERS if name in sample]
    if present and len(present) < len(REFERENCE_MEMBERS):
        problems.append(f"{', '.join(REFERENCE_MEMBERS)}: a reference needs all three, found only {present}")
    parts = (member(REF_IMAGE, decode_png), member(REF_SMPL, decode_smpl), member(REF_CAMERA, decode_camera))
    if problems:
        raise InvalidSampleError(key, problems)
    reference = Reference(*parts) if all(part is not None for part in parts) else None
    try:
        stand_in = np.broadcast_to(
            np.zeros((1, 1, 1, 3), np.uint8), (meta.num_frames, meta.height, meta.width, 3)
        )
    except (TypeError, ValueError) as err:
        raise InvalidSampleError(key, [f"{META}: bad frame count or size ({err})"]) from err
    problems = validate_clip(Clip(key, stand_in, meta, smpl, camera, reference=reference))
    if problems:
        raise InvalidSampleError(key, problems)
    return SampleHeader(key, meta, smpl, camera, reference)


def decode_window(
    sample: Mapping[str, Any],
    header: SampleHeader,
    frame_indices: Sequence[int],
    videos: Sequence[str] = (VIDEO, BACKGROUND, MASK),
) -> Clip:
    """The clip restricted to some frames, decoding only what is needed (up to the last index).

    Args:
        sample: the raw sample (member bytes).
        header: its :func:`read_header`.
        frame_indices: frames to keep, in this order (repeats allowed).
        videos: the video members to decode (`video.mp4` always is); the others come back as None.

    Returns:
        A validated clip of `len(frame_indices)` frames: videos, mask, SMPL and cameras at those frames;
        `meta.num_frames` is the new count; the reference is kept.

    Raises:
        InvalidSampleError: undecodable videos, indices beyond the video, or validation problems.
    """
    problems: list[str] = []

    def frames(name: str, reader: Callable[[bytes, Sequence[int]], np.ndarray]) -> np.ndarray | None:
        if name not in sample or name not in (VIDEO, *videos):
            return None
        try:
            return reader(sample[name], frame_indices)
        except (av.FFmpegError, ValueError, IndexError, OSError) as err:
            problems.append(f"{name}: cannot decode ({type(err).__name__}: {err})")
            return None

    video, background, mask = (
        frames(VIDEO, read_video),
        frames(BACKGROUND, read_video),
        frames(MASK, read_mask_video),
    )
    if problems or video is None:
        raise InvalidSampleError(header.key, problems)
    index = np.asarray(frame_indices, dtype=np.int64)
    smpl, camera = header.smpl, header.camera
    if smpl is not None and camera is not None:
        smpl = SMPLParams(
            smpl.global_orient[:, index], smpl.body_pose[:, index], smpl.betas, smpl.transl[:, index]
        )
        camera = Cameras(camera.K[index], camera.R[index], camera.t[index], camera.image_size)
    meta = dataclasses.replace(header.meta, num_frames=len(index))
    clip = Clip(header.key, video, meta, smpl, camera, background, mask, header.reference)
    problems = validate_clip(clip)
    if problems:
        raise InvalidSampleError(header.key, problems)
    return clip


def decode_samples(
    samples: Iterable[dict[str, Any]],
    decode_fn: Callable[[dict[str, Any]], dict[str, Any]],
    skips: SkipCounter,
) -> Iterator[dict[str, Any]]:
    """Pipeline stage: `decode_fn` every raw sample; bad or unusable ones are skipped and counted."""
    for sample in samples:
        key = str(sample.get("__key__"))
        try:
            item = decode_fn(sample)
        except UnusableClipError as err:
            skips.add("unusable", key, err)
            continue
        except DATA_ERRORS as err:
            skips.add("invalid", key, err)
            continue
        skips.succeeded()
        yield item


def batch_by_shape(
    samples: Iterable[dict[str, Any]], batch_size: int, partial: bool
) -> Iterator[dict[str, Any]]:
    """Pipeline stage: batches of `batch_size` samples whose `"video"` tensors have the same shape
    (samples of latent shards, without `"video"`: their `"latent"` tensors).

    Samples wait in one bucket per shape; a full bucket is collated (:func:`torch.utils.data.default_collate`:
    tensors stacked on a new first axis, strings listed, nested dicts collated key by key).

    Args:
        samples: decoded samples (dicts of tensors and strings with a `"video"` or `"latent"` tensor).
        batch_size: samples per batch.
        partial: at the end of the stream, also yield the incomplete buckets.
    """
    buckets: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    for sample in samples:
        shape = tuple(sample["video" if "video" in sample else "latent"].shape)
        bucket = buckets.setdefault(shape, [])
        bucket.append(sample)
        if len(bucket) == batch_size:
            yield default_collate(buckets.pop(shape))
    if partial:
        yield from (default_collate(bucket) for bucket in buckets.values())


def _shard_stream(
    urls: Sequence[str], *, resampled: bool, shuffle_buffer: int, seed: int, skips: SkipCounter
):
    """One source's raw samples: rank and worker split, shard handling and a sample shuffle buffer."""
    dataset = wds.WebDataset(
        list(urls),
        resampled=resampled,
        shardshuffle=len(urls) if shuffle_buffer > 0 and not resampled else False,
        detshuffle=True,
        seed=seed,
        nodesplitter=wds.split_by_node,
        workersplitter=wds.split_by_worker,
        handler=skips.read_error,
        empty_check=False,  # a rank or worker may get no shard of a small split
    )
    return dataset.shuffle(shuffle_buffer) if shuffle_buffer > 0 else dataset


def make_webdataset(
    sources: Sequence[Sequence[str]],
    *,
    decode_fn: Callable[[dict[str, Any]], dict[str, Any]],
    batch_size: int,
    resampled: bool,
    shuffle_buffer: int,
    seed: int,
    epoch_size: int | None,
    skips: SkipCounter,
    weights: Sequence[float] | None = None,
    partial_batches: bool = True,
) -> wds.DataPipeline:
    """A batched, skip-tolerant WebDataset stream of one or more shard sources.

    Args:
        sources: shard paths/URLs of every source (e.g. one list per dataset folder).
        decode_fn: raw sample (`__key__` and member bytes) -> dict of tensors (with a `"video"` or
            `"latent"` tensor) and strings; raises :data:`DATA_ERRORS` for bad samples and
            `UnusableClipError` for unusable ones. Runs in the DataLoader workers.
        batch_size: samples per batch (batched in the worker, see :func:`batch_by_shape`).
        resampled: draw shards with replacement forever (training); else read every shard once.
        shuffle_buffer: raw samples held for shuffling (0: keep the order; the shard order is then
            kept too). Shard order is shuffled (seeded) only when not resampled and this is > 0.
        seed: seed of the shard shuffle.
        epoch_size: batches that each (rank, worker) stream yields per epoch (`with_epoch`); None:
            one pass over the shards (not with `resampled`, which never ends).
        skips: counts skipped samples.
        weights: sampling probability of each source when resampled (`wds.RandomMix`); None or not
            resampled: all shards form one source (resampled sources are then drawn in proportion to
            their shard counts).
        partial_batches: yield incomplete batches at the end of a (finite) stream.

    Returns:
        An `IterableDataset` of batches, for `DataLoader(dataset, batch_size=None, ...)`.
    """
    if resampled and not epoch_size:
        raise ValueError("a resampled stream never ends: give epoch_size")
    stream = partial(
        _shard_stream, resampled=resampled, shuffle_buffer=shuffle_buffer, seed=seed, skips=skips
    )
    if weights is not None and resampled and len(sources) > 1:
        if len(weights) != len(sources):
            raise ValueError(f"{len(weights)} weights for {len(sources)} sources")
        source = wds.RandomMix([stream(urls) for urls in sources], probs=[float(w) for w in weights])
    else:
        source = stream([url for urls in sources for url in urls])
    pipeline = wds.DataPipeline(
        source,
        partial(decode_samples, decode_fn=decode_fn, skips=skips),
        partial(batch_by_shape, batch_size=batch_size, partial=partial_batches),
    )
    return pipeline.with_epoch(epoch_size) if epoch_size else pipeline
