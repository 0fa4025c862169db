"""Streaming WebDataset pipelines over ISA4D shards that survive bad data (docs/datamodules.md).

:func:`make_webdataset` builds `shards -> (rank, worker) split -> shuffle -> decode -> batch -> epoch`:

* shards are split explicitly between ranks (`wds.split_by_node`) and DataLoader workers (every
  `workers`-th shard of a rank); training streams resample shards with replacement (every rank and worker
  draws its own), validation streams read each shard of their rank once, in order;
* raw samples (compressed bytes) are shuffled in a buffer, then decoded in the worker by a
  `decode_fn` (PyAV for videos; webdataset's `.decode()` is never used);
* every random choice (shard draws, shuffles, the source of a sample, each sample's augmentation seed)
  derives from `(seed, epoch, rank, worker)`, so a pass is the same in every run (:class:`SeededStream`;
  a resumed run skips the batches it had consumed);
* decoded samples are batched in the worker, grouped by the shape of their `"video"` (so 1-frame
  image samples and full clips form separate batches), and `with_epoch` cuts the stream into epochs.

Nothing bad kills an epoch: an unreadable or truncated tar (`read`), a sample that does not decode or
validate (`invalid`: garbage mp4, NaN, shape mismatch, ...) and a valid sample that the configuration
cannot use (`unusable`: too short, too many persons, ...) are skipped, logged and counted in a
:class:`SkipCounter` whose counts live in shared memory, so the main process sees the sum over all
DataLoader workers. `max_consecutive` skips in a row (e.g. a folder of the wrong kind of data)
raise instead of looping forever, and so does a fraction of bad samples above `max_fraction`
(`data.max_skip_fraction`).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import random
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Any

import av
import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset, default_collate

from isa4d.data.augment import UnusableClipError
from isa4d.data.format import (
    BACKGROUND,
    MASK,
    META,
    VIDEO,
    Cameras,
    Clip,
    ClipMeta,
    InvalidSampleError,
    Reference,
    SMPLParams,
    decode_annotations,
    decode_member,
    read_sample_meta,
    sample_key,
    validate_clip,
)
from isa4d.data.video_io import read_mask_video, read_video
from isa4d.errors import ConfigError, DataError
from isa4d.utils.seeding import derive_seed

log = logging.getLogger(__name__)

SKIP_KINDS = ("read", "invalid", "unusable")
"""What a skip counts: shard read errors, undecodable/invalid samples, valid but unusable samples."""
BAD_KINDS = ("read", "invalid")
"""The skips that mean bad data (`unusable` samples are fine, only not for this configuration)."""
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


FRACTION_MIN_SAMPLES = 100
"""Samples a stream must have seen before :class:`SkipCounter` judges its fraction of bad ones (a finite
pass, such as validation or `isa4d encode`, is also judged at its end, whatever its size)."""


_NUMBER = re.compile(r"(?<![\w.-])\d+(\.\d+)?(?![\w.])")  # 8 frames, (2, 9, 72); not mp4, SHA-256


def skip_reasons(error: BaseException) -> list[str]:
    """The reasons of a skip, with numbers replaced by `#` so that alike problems count together."""
    reasons = error.reasons if isinstance(error, InvalidSampleError) else [f"{type(error).__name__}: {error}"]
    return [_NUMBER.sub("#", reason)[:120] for reason in reasons]


class SkipCounter:
    """Counts skipped samples by kind (:data:`SKIP_KINDS`), summed over DataLoader worker processes, and
    stops a stream whose data is mostly bad.

    The counts (and the delivered samples) are a `multiprocessing.Array` in shared memory: create the
    counter in the main process before the DataLoader starts its workers (forked or spawned), read it
    there at any time. The reasons are counted per process (the error message names those of the
    process that raises).

    Args:
        max_consecutive: skips in a row (in one process) after which :meth:`add` raises `RuntimeError`.
        max_fraction: the largest fraction of bad samples (`read` and `invalid` skips over all samples
            seen, `unusable` ones included) a stream may have: above it, once `min_samples` were seen
            or at the end of a finite pass, a `DataError` names the counts and the commonest reasons.
            1.0: never.
        min_samples: samples seen before the fraction is judged mid-stream.

    Raises:
        ConfigError: `max_fraction` not in [0, 1].
    """

    def __init__(
        self, max_consecutive: int = 100, max_fraction: float = 1.0, min_samples: int = FRACTION_MIN_SAMPLES
    ) -> None:
        if not 0 <= max_fraction <= 1:
            raise ConfigError(f"data.max_skip_fraction: {max_fraction} must be in [0, 1] (1: never stop)")
        self._counts = multiprocessing.Array("q", len(SKIP_KINDS) + 1)  # the kinds, then delivered samples
        self._streak = 0
        self._reasons: Counter[str] = Counter()
        self.max_consecutive, self.max_fraction, self.min_samples = max_consecutive, max_fraction, min_samples

    def add(self, kind: str, key: str, error: BaseException) -> None:
        """Count and log one skip (`kind` in :data:`SKIP_KINDS`) with its reasons.

        Raises:
            RuntimeError: on the `max_consecutive`-th skip in a row in this process.
            DataError: when the fraction of bad samples exceeds `max_fraction` (see :meth:`check`).
        """
        with self._counts.get_lock():
            self._counts[SKIP_KINDS.index(kind)] += 1
        log.warning("skipped %s sample %s: %s", kind, key, error)
        if kind in BAD_KINDS:
            self._reasons.update(skip_reasons(error))
        self._streak += 1
        if self._streak >= self.max_consecutive:
            raise RuntimeError(
                f"{self._streak} consecutive samples skipped (last: {kind} {key}: {error}); the data "
                "folders hold nothing this configuration can use (see the warnings above)"
            ) from error
        self.check()

    def succeeded(self) -> None:
        """A sample was delivered: count it and reset the run of consecutive skips.

        Raises:
            DataError: when the fraction of bad samples exceeds `max_fraction` (see :meth:`check`).
        """
        with self._counts.get_lock():
            self._counts[len(SKIP_KINDS)] += 1
        self._streak = 0
        self.check()

    def check(self, final: bool = False) -> None:
        """Raise if more than `max_fraction` of the samples seen were bad.

        Args:
            final: the end of a finite pass: judge however few samples were seen.

        Raises:
            DataError: naming the counts, the limit and the commonest reasons.
        """
        counts, delivered = self.counts, self.delivered
        seen = delivered + sum(counts.values())
        bad = sum(counts[kind] for kind in BAD_KINDS)
        if not seen or (seen < self.min_samples and not final) or bad <= self.max_fraction * seen:
            return
        common = "; ".join(f"{count}x {reason}" for reason, count in self._reasons.most_common(3))
        raise DataError(
            f"{bad} of {seen} samples were bad ({bad / seen:.0%}, more than data.max_skip_fraction = "
            f"{self.max_fraction:g}; read {counts['read']}, invalid {counts['invalid']}, unusable "
            f"{counts['unusable']}), most often: {common or 'see the warnings above'}; rebuild or remove the "
            "broken shards (the warnings above name every sample) or raise data.max_skip_fraction"
        )

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
            return dict(zip(SKIP_KINDS, self._counts[: len(SKIP_KINDS)], strict=True))

    @property
    def delivered(self) -> int:
        """Samples delivered so far, over all workers."""
        with self._counts.get_lock():
            return self._counts[len(SKIP_KINDS)]

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
    """Decode and validate everything of a raw sample except its videos (cheap: JSON, `.npz`, checksums).

    Validation is :func:`~isa4d.data.format.validate_clip` with a stand-in video of `meta`'s size, so
    annotations are checked over all frames (NaN anywhere, frame counts, rotations, image sizes); the
    members' SHA-256 are checked against `meta.json` (a corrupt video is refused before it is decoded).

    Raises:
        InvalidSampleError: missing, corrupt or undecodable members, or validation problems (nothing
            else, whatever the bytes).
    """
    key = sample_key(sample)
    meta, corrupt = read_sample_meta(sample)
    problems: list[str] = []
    smpl, camera, reference = decode_annotations(sample, problems)
    if problems:
        raise InvalidSampleError(key, corrupt + problems)
    try:
        stand_in = np.broadcast_to(
            np.zeros((1, 1, 1, 3), np.uint8), (meta.num_frames, meta.height, meta.width, 3)
        )
    except (TypeError, ValueError, OverflowError) as err:
        raise InvalidSampleError(key, [*corrupt, f"{META}: bad frame count or size ({err})"]) from err
    problems = corrupt + validate_clip(Clip(key, stand_in, meta, smpl, camera, reference=reference))
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
        InvalidSampleError: undecodable videos (decoder errors, a container frame count unlike
            `meta.json`'s), indices beyond the video, or validation problems.
    """
    problems: list[str] = []

    def frames(name: str, reader: Callable[..., np.ndarray]) -> np.ndarray | None:
        if name not in (VIDEO, *videos):
            return None
        read = partial(reader, frame_indices=frame_indices, num_frames=header.meta.num_frames)
        return decode_member(sample, name, read, problems)

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
    """Pipeline stage: `decode_fn` every raw sample; bad or unusable ones are skipped and counted.

    Raises:
        DataError: too large a fraction of bad samples (:meth:`SkipCounter.check`), mid-stream or at the end.
    """
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
    skips.check(final=True)  # the end of a finite pass (a resampled stream is closed at the yield)


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


SAMPLE_SEED = "__seed__"
"""Field a stream adds to every raw sample: `(epoch, rank, worker, index)`, the sample's place in its pass,
from which a training decoder seeds the sample's augmentation."""

_SHARDS, _SAMPLES, _SOURCES = 1, 2, 3
"""What a stream generator draws (mixed into its seed): shards, the sample shuffle, the source of a sample."""


@dataclass(frozen=True)
class StreamSeed:
    """What every random choice of one pass over one (rank, worker) stream derives from.

    Attributes:
        seed: the data seed (`data.seed`).
        epoch: the pass.
        rank: the distributed rank the pass runs in.
        worker: the rank's stream among `workers`, that of the DataLoader worker the pass runs in (0 in
            the main process), or another after a resume.
        workers: the streams of the rank (its DataLoader workers, at least 1).
        world: the distributed ranks; a resampled pass draws the same sequence on every rank and each rank
            keeps every `world`-th sample of it from its `rank` on, so ranks never see the same draw.
    """

    seed: int
    epoch: int
    rank: int
    worker: int
    workers: int
    world: int = 1

    def random(self, purpose: int, source: int = 0) -> random.Random:
        """The generator of one `purpose` (`_SHARDS`, `_SAMPLES`, `_SOURCES`) of one source of the pass
        (the same on every rank: ranks differ by the samples they keep)."""
        return random.Random(derive_seed(self.seed, self.epoch, self.worker, purpose, source))


def _resampled_shards(urls: Sequence[str], rng: random.Random) -> Iterator[dict[str, str]]:
    """Shards drawn with replacement, forever."""
    while True:
        yield {"url": urls[rng.randrange(len(urls))]}


def _shard_stream(
    urls: Sequence[str],
    *,
    resampled: bool,
    shuffle_buffer: int,
    stream: StreamSeed,
    source: int,
    skips: SkipCounter,
) -> Iterator[dict[str, Any]]:
    """One source's raw samples in one pass: shards (drawn for this worker, or its share of them), read with
    skip handling, then a sample shuffle buffer; resampled, this rank's share of the draws."""
    if resampled:
        shards = _resampled_shards(urls, stream.random(_SHARDS, source))
    else:
        shards = wds.split_by_node({"url": url} for url in urls)
        shards = islice(shards, stream.worker, None, stream.workers)
        if shuffle_buffer > 0:
            shards = wds.shuffle(len(urls), rng=stream.random(_SHARDS, source))(shards)
    samples = wds.tarfile_samples(shards, handler=skips.read_error)
    if shuffle_buffer > 0:
        samples = wds.shuffle(shuffle_buffer, rng=stream.random(_SAMPLES, source))(samples)
    return islice(samples, stream.rank, None, stream.world) if resampled else samples


def _mix(
    streams: Sequence[Iterator[dict[str, Any]]], weights: Sequence[float], rng: random.Random
) -> Iterator[dict[str, Any]]:
    """Samples of `streams`, each from one drawn with probabilities `weights`; ends when a drawn one does."""
    choices = range(len(streams))
    while (sample := next(streams[rng.choices(choices, weights)[0]], None)) is not None:
        yield sample


def _raw_samples(
    stream: StreamSeed,
    sources: Sequence[Sequence[str]],
    weights: Sequence[float] | None,
    **shard_args: Any,
) -> Iterator[dict[str, Any]]:
    """The raw samples of one pass, each numbered with its :data:`SAMPLE_SEED`: one stream of all shards,
    or (`weights`) a seeded draw of the source of every sample among one stream per source."""
    shards = partial(_shard_stream, stream=stream, **shard_args)
    if weights is None:
        samples = shards([url for urls in sources for url in urls], source=0)
    else:
        streams = [shards(urls, source=i) for i, urls in enumerate(sources)]
        samples = _mix(streams, weights, stream.random(_SOURCES))
    for index, sample in enumerate(samples):
        sample[SAMPLE_SEED] = (stream.epoch, stream.rank, stream.worker, index)
        yield sample


class SeededStream(IterableDataset):
    """An `IterableDataset` whose every pass is a pure function of (seed, epoch, rank, worker).

    Each `iter()` builds a fresh pipeline for the process it runs in (`build(StreamSeed(...))`) and moves
    on to the next epoch: a persistent DataLoader worker counts its own passes, and the training
    DataLoader sets `epoch` and `skip` in the main process before every pass. DataLoader workers take
    turns, batch by batch, from worker 0: to leave out the first `skip` batches of a pass, worker `w`
    plays the stream that batch `skip + w` came from and starts at that batch.

    Attributes:
        epoch: the epoch of the next pass.
        skip: DataLoader batches the next pass leaves out (a resumed run continues after them).
        length: the DataLoader batches of a pass (`len()`), or None (no length).
    """

    def __init__(self, build: Callable[[StreamSeed], Iterable[Any]], seed: int) -> None:
        self.build, self.seed = build, seed
        self.epoch, self.skip = 0, 0
        self.length: int | None = None

    def with_length(self, length: int) -> SeededStream:
        """Set `len()` (what Lightning counts an epoch in); returns the stream."""
        self.length = length
        return self

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("this stream has no length")
        return self.length

    def __iter__(self) -> Iterator[Any]:
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        skip, stream = divmod(self.skip + worker, workers)
        seed = StreamSeed(self.seed, self.epoch, rank, stream, workers, world)
        self.epoch, self.skip = self.epoch + 1, 0
        return islice(iter(self.build(seed)), skip, None)


def _stream_pass(
    stream: StreamSeed,
    *,
    sources: Sequence[Sequence[str]],
    weights: Sequence[float] | None,
    decode_fn: Callable[[dict[str, Any]], dict[str, Any]],
    batch_size: int,
    epoch_size: int | None,
    partial_batches: bool,
    skips: SkipCounter,
    **shard_args: Any,
) -> wds.DataPipeline:
    """The batches of one pass of :func:`make_webdataset`."""
    pipeline = wds.DataPipeline(
        partial(_raw_samples, stream, sources, weights, skips=skips, **shard_args),
        partial(decode_samples, decode_fn=decode_fn, skips=skips),
        partial(batch_by_shape, batch_size=batch_size, partial=partial_batches),
    )
    return pipeline.with_epoch(epoch_size) if epoch_size else pipeline


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
) -> SeededStream:
    """A batched, skip-tolerant WebDataset stream of one or more shard sources, seeded: every pass is
    the same in every run with the same `seed`, epoch, rank and worker (:class:`SeededStream`).

    Args:
        sources: shard paths/URLs of every source (e.g. one list per dataset folder).
        decode_fn: raw sample (`__key__` and member bytes) -> dict of tensors (with a `"video"` or
            `"latent"` tensor) and strings; raises :data:`DATA_ERRORS` for bad samples and
            `UnusableClipError` for unusable ones. Runs in the DataLoader workers.
        batch_size: samples per batch (batched in the worker, see :func:`batch_by_shape`).
        resampled: draw shards with replacement forever (training); else read every shard once.
        shuffle_buffer: raw samples held for shuffling (0: keep the order; the shard order is then
            kept too). Shard order is shuffled only when not resampled and this is > 0.
        seed: the data seed: with the epoch, rank and worker, it seeds the shard draws, the shuffles,
            the source mix and each sample's :data:`SAMPLE_SEED`.
        epoch_size: batches that each (rank, worker) stream yields per epoch (`with_epoch`); None:
            one pass over the shards (not with `resampled`, which never ends).
        skips: counts skipped samples.
        weights: sampling probability of each source when resampled; None or not resampled: all shards
            form one source (resampled sources are then drawn in proportion to their shard counts).
        partial_batches: yield incomplete batches at the end of a (finite) stream.

    Returns:
        A :class:`SeededStream` of batches, for `DataLoader(dataset, batch_size=None, ...)`.
    """
    if resampled and not epoch_size:
        raise ValueError("a resampled stream never ends: give epoch_size")
    mixed = weights is not None and resampled and len(sources) > 1
    if mixed and len(weights) != len(sources):
        raise ValueError(f"{len(weights)} weights for {len(sources)} sources")
    build = partial(
        _stream_pass,
        sources=[list(urls) for urls in sources],
        weights=[float(w) for w in weights] if mixed else None,
        decode_fn=decode_fn,
        batch_size=batch_size,
        epoch_size=epoch_size,
        partial_batches=partial_batches,
        skips=skips,
        resampled=resampled,
        shuffle_buffer=shuffle_buffer,
    )
    return SeededStream(build, seed)
