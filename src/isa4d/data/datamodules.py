"""LightningDataModules of the two training stages, streaming ISA4D shards (docs/datamodules.md).

* :class:`VideoDataModule` (stage 1, the VAE): clips of `T = 1 + 4k` frames (and, with probability
  `image_prob`, 1-frame images) of any video, with the paper's augmentations, as
  `{"video": (B, 3, T, H, W)}` in [-1, 1].
* :class:`HumanVideoDataModule` (stage 2, the DiT): annotated clips with SMPL, cameras, background,
  mask and reference, persons padded to `max_persons`; every crop/resize updates the intrinsics.

Both read shard folders written by `write_shards` (`make data`, `isa4d prepare`) through
:func:`isa4d.data.pipeline.make_webdataset`: training resamples shards forever and cuts epochs of
about `epoch_size` clips; validation reads each shard once, in order, without augmentation, so it is
the same every time. Skipped samples are counted in :attr:`ShardDataModule.skips` and logged by
:class:`SkippedSamplesLogger`. The training stream is a function of `(seed, epoch, rank, worker)`; its
position is saved in checkpoints (`state_dict`), and a resumed run continues it exactly.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from einops import rearrange
from torch.utils.data import DataLoader

from isa4d.data.augment import (
    ClipAugment,
    ClipPlan,
    CropJitter,
    SpeedAdjustment,
    StructuredMotion,
    UnusableClipError,
    sample_rng,
)
from isa4d.data.format import SMPL_PARAM_KEYS, Clip, Reference, SMPLParams
from isa4d.data.pipeline import (
    SAMPLE_SEED,
    SeededStream,
    SkipCounter,
    decode_window,
    make_webdataset,
    read_header,
)
from isa4d.data.shards import MANIFEST, read_manifest, shard_paths, verify_shards
from isa4d.errors import ConfigError, MissingFileError

log = logging.getLogger(__name__)

Size = tuple[int, int]

# The training loaders' `len()` is exact (every worker streams its own `batches_per_stream()` batches of its
# own shards), so Lightning's generic warning about sized IterableDatasets does not apply to them.
warnings.filterwarnings("ignore", "Your `IterableDataset` has `__len__` defined", UserWarning)


# ---------------------------------------------------------------------------------------------- sources


def resolve_sources(
    dirs: Sequence[str | Path], splits: Sequence[str], role: str, verify: bool = False
) -> list[list[str]]:
    """The shard paths of every data folder: those of each of `splits` that its manifest lists.

    Args:
        dirs: dataset folders (each with a `manifest.json`).
        splits: split names to use; a folder may lack some, but not all, of them.
        role: `train` or `val`, for the error messages (they name the `data.<role>_dirs` key).
        verify: check every shard's size and SHA-256 against the manifest (`data.verify_checksums`).

    Returns:
        One list of shard paths per folder.

    Raises:
        MissingFileError: a folder without `manifest.json` (nothing written there), or shards that the
            manifest lists but that are missing.
        ConfigError: a folder with none of `splits`.
        DataError: a manifest `read_manifest` refuses, or (with `verify`) a corrupt shard.
    """
    sources = []
    for folder in map(Path, dirs):
        if not (folder / MANIFEST).is_file():
            raise MissingFileError(
                f"data.{role}_dirs: {folder} has no {MANIFEST}, so no shards. Build the datasets with "
                f"`make data` (or write your own with `isa4d prepare input_dir=... output_dir={folder}`)."
            )
        available = read_manifest(folder)["splits"]
        chosen = [split for split in splits if split in available]
        if not chosen:
            raise ConfigError(
                f"data.{role}_splits: {folder}/{MANIFEST} has none of the splits {list(splits)} "
                f"(it has {sorted(available)})"
            )
        paths = [path for split in chosen for path in shard_paths(folder, split)]
        missing = [path.name for path in paths if not path.is_file()]
        if missing:
            raise MissingFileError(
                f"{folder}: shards listed in {MANIFEST} are missing ({missing[:3]}, ...); "
                "rebuild them with `make data`"
            )
        for split in chosen if verify else ():
            verify_shards(folder, split)
        sources.append([str(path) for path in paths])
    return sources


# ---------------------------------------------------------------------------------------------- decoders


def _channels_first(frames: np.ndarray) -> torch.Tensor:
    """`(N, H, W, C)` uint8 -> `(N, C, H, W)` uint8, a channels-last view (fast uint8 resizing)."""
    return rearrange(torch.from_numpy(np.require(frames, requirements=["C", "W"])), "n h w c -> n c h w")


def rgb_tensor(plan: ClipPlan, frames: np.ndarray) -> torch.Tensor:
    """Decoded `(N, H, W, 3)` uint8 frames at `plan.source_indices` -> `(3, T, H_o, W_o)` in [-1, 1]."""
    video = plan.warp(plan.resample(_channels_first(frames), blend=True))  # float32, [0, 255]
    return rearrange(video.mul_(2 / 255).sub_(1), "t c h w -> c t h w")


class _Decoder:
    """Base of the sample decoders: the augmentation and the per-sample generator.

    Training samples get `sample_rng(seed, key, epoch, rank, worker, index)` from their place in the
    stream (:data:`~isa4d.data.pipeline.SAMPLE_SEED`): the same in every run with the same seed,
    different in every epoch, rank, worker and position. Validation samples get no generator: no
    augmentation, centred windows and crops.
    """

    def __init__(
        self,
        augment: ClipAugment,
        resolution: Size,
        num_frames: int,
        frame_stride: int,
        seed: int,
        train: bool,
    ) -> None:
        self.augment, self.resolution, self.num_frames = augment, resolution, num_frames
        self.frame_stride, self.seed, self.train = frame_stride, seed, train

    def _rng(self, sample: dict[str, Any]) -> np.random.Generator | None:
        if not self.train:
            return None
        return sample_rng(self.seed, str(sample.get("__key__")), *sample[SAMPLE_SEED])

    def _plan(
        self, rng: np.random.Generator | None, clip_frames: int, size: Size, num_frames: int
    ) -> ClipPlan:
        return self.augment.plan(
            rng,
            num_available=clip_frames,
            src_size=size,
            out_size=self.resolution,
            num_frames=num_frames,
            frame_stride=self.frame_stride,
        )


class VideoClipDecoder(_Decoder):
    """Raw sample -> `{"key": str, "video": (3, T, H, W) float32 in [-1, 1], "aug": ClipPlan.summary()}`.

    `T` is `num_frames`, or 1 (a random frame: an image) with probability `image_prob` in training.
    """

    def __init__(self, *args: Any, image_prob: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.image_prob = image_prob

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        header = read_header(sample)
        rng = self._rng(sample)
        image = rng is not None and rng.random() < self.image_prob
        meta = header.meta
        plan = self._plan(rng, meta.num_frames, (meta.height, meta.width), 1 if image else self.num_frames)
        clip = decode_window(sample, header, plan.source_indices, videos=[])
        return {"key": header.key, "video": rgb_tensor(plan, clip.video), "aug": plan.summary()}


def smpl_tensors(smpl: SMPLParams, max_persons: int, plan: ClipPlan | None) -> dict[str, torch.Tensor]:
    """SMPL arrays `(P, T, ...)` (betas `(P, 10)`) at the plan's frames (nearest; all frames if None),
    zero-padded to `max_persons`."""
    out = {}
    for name in SMPL_PARAM_KEYS:
        value = torch.from_numpy(getattr(smpl, name))
        if plan is not None and value.ndim == 3:
            value = rearrange(plan.resample(rearrange(value, "p t d -> t p d")), "t p d -> p t d")
        out[name] = torch.cat([value, value.new_zeros(max_persons - len(value), *value.shape[1:])])
    return out


class HumanClipDecoder(_Decoder):
    """Raw annotated sample -> one DiT training sample (shapes in :class:`HumanVideoDataModule`).

    Samples without SMPL/camera or with more than `max_persons` persons are unusable (skipped, counted).
    """

    def __init__(self, *args: Any, max_persons: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_persons = max_persons

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        return self.decode(sample, self._rng(sample))

    def decode(self, sample: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        """The training sample of a raw sample with the augmentation drawn from `rng` (None: none).

        `isa4d encode` calls this with one seeded generator per cached version, the stream with the
        sample's own generator: both go through the same crop/resize/frame selection.
        """
        header = read_header(sample)
        if header.smpl is None:
            raise UnusableClipError("not annotated (no smpl.npz / camera.npz)")
        persons = header.smpl.num_persons
        if persons > self.max_persons:
            raise UnusableClipError(f"{persons} persons, more than max_persons = {self.max_persons}")
        meta = header.meta
        plan = self._plan(rng, meta.num_frames, (meta.height, meta.width), self.num_frames)
        clip = decode_window(sample, header, plan.source_indices)
        camera = clip.camera
        out: dict[str, Any] = {
            "key": header.key,
            **self._frames(clip, plan),
            "smpl": smpl_tensors(clip.smpl, self.max_persons, plan),
            "person_mask": torch.arange(self.max_persons) < persons,
            "K": plan.intrinsics(plan.resample(torch.from_numpy(camera.K).double())).float(),
            "R": plan.resample(torch.from_numpy(camera.R)),
            "t": plan.resample(torch.from_numpy(camera.t)),
            "aug": plan.summary(),
        }
        return {**out, **self._reference(clip, out)}

    def _frames(self, clip: Clip, plan: ClipPlan) -> dict[str, torch.Tensor]:
        """video, background (zeros if absent) `(3, T, H, W)`, mask `(T, H, W)` uint8 and their flags."""
        out = {"video": rgb_tensor(plan, clip.video)}
        has_background = clip.background is not None
        out["background"] = (
            rgb_tensor(plan, clip.background) if has_background else torch.zeros_like(out["video"])
        )
        out["has_background"] = torch.tensor(has_background)
        if clip.mask is None:
            out["mask"] = torch.zeros(out["video"].shape[1:], dtype=torch.uint8)
        else:
            labels = plan.resample(_channels_first(clip.mask[..., None]))
            out["mask"] = plan.warp(labels, labels=True)[:, 0].round().to(torch.uint8)
        out["has_mask"] = torch.tensor(clip.mask is not None)
        return out

    def _reference(self, clip: Clip, out: dict[str, Any]) -> dict[str, Any]:
        """`ref_image (3, H, W)`, `ref_smpl` `(P, 1, ...)`, `ref_K/ref_R (1, 3, 3)`, `ref_t (1, 3)`.

        The reference image is resized to cover the output resolution and centre-cropped (K follows).
        Without a reference in the sample, the clip's first output frame stands in (`has_reference` False).
        """
        reference = clip.reference
        if reference is None:
            return {
                "ref_image": out["video"][:, 0],
                "ref_smpl": {
                    name: value[:, :1] if value.ndim == 3 else value for name, value in out["smpl"].items()
                },
                "ref_K": out["K"][:1],
                "ref_R": out["R"][:1],
                "ref_t": out["t"][:1],
                "has_reference": torch.tensor(False),
            }
        return reference_tensors(reference, self.resolution, self.max_persons)


def reference_tensors(reference: Reference, resolution: Size, max_persons: int) -> dict[str, torch.Tensor]:
    """A reference frame as one sample's tensors (add a batch dimension to use them as a batch).

    The image is resized to cover `resolution` and centre-cropped; its intrinsics follow.

    Returns:
        `ref_image (3, H, W)` in [-1, 1], `ref_smpl` `(P, 1, ...)` (betas `(P, 10)`) zero-padded to
        `max_persons`, `ref_K/ref_R (1, 3, 3)`, `ref_t (1, 3)`, `has_reference` True.
    """
    plan = ClipAugment.off().plan(
        None, num_available=1, src_size=reference.image.shape[:2], out_size=resolution, num_frames=1
    )
    camera = reference.camera
    return {
        "ref_image": rgb_tensor(plan, reference.image[None])[:, 0],
        "ref_smpl": smpl_tensors(reference.smpl, max_persons, None),
        "ref_K": plan.intrinsics(torch.from_numpy(camera.K).double()).float(),
        "ref_R": torch.from_numpy(camera.R),
        "ref_t": torch.from_numpy(camera.t),
        "has_reference": torch.tensor(True),
    }


class StreamLoader(DataLoader):
    """The training DataLoader: before every pass it asks `next_pass` for its
    :class:`~isa4d.data.pipeline.SeededStream`'s epoch (Lightning tells only samplers) and the batches to
    skip (the first pass after a resume).

    Args:
        dataset: the training stream.
        next_pass: `() -> (epoch, batches to skip)` of the next pass.
        **kwargs: as `DataLoader`.
    """

    def __init__(
        self, dataset: SeededStream, next_pass: Callable[[], tuple[int, int]], **kwargs: Any
    ) -> None:
        super().__init__(dataset, **kwargs)
        self.next_pass = next_pass

    def __iter__(self) -> Any:
        self.dataset.epoch, self.dataset.skip = self.next_pass()
        return super().__iter__()


# ---------------------------------------------------------------------------------------------- modules


def _resolution(resolution: int | Sequence[int]) -> Size:
    size = (resolution, resolution) if isinstance(resolution, int) else tuple(int(s) for s in resolution)
    if len(size) != 2 or any(s <= 0 or s % 8 for s in size):
        raise ValueError(f"resolution must be a positive multiple of 8 (or two: H, W), got {resolution}")
    return size


class ShardDataModule(L.LightningDataModule):
    """What both stages share: shard folders, augmentation, loaders, skip counting.

    Args:
        train_dirs: dataset folders of the training stream.
        val_dirs: dataset folders of the validation stream (empty: no validation).
        train_splits: splits used from each training folder (each folder needs at least one).
        val_splits: splits used from each validation folder.
        train_weights: sampling probability of each training folder (None: in proportion to shard counts).
        num_frames: T of a clip, `1 + 4k`.
        frame_stride: base temporal stride (source frames per output frame), multiplied by the speed rate.
        resolution: output `H = W` or `(H, W)`, multiples of 8.
        motion: random structured motion (None: off).
        speed: dynamic speed adjustment (None: off).
        crop: crop scale/position jitter (None: off, centred largest crop).
        batch_size: clips per training batch.
        val_batch_size: clips per validation batch (None: `batch_size`).
        num_workers: DataLoader worker processes (decoding happens there).
        pin_memory: DataLoader `pin_memory`.
        persistent_workers: keep workers between epochs (with `num_workers > 0`).
        shuffle_buffer: raw samples held for shuffling in each training worker.
        epoch_size: clips per training epoch over all ranks and workers (rounded up to whole batches
            of every rank and worker stream).
        seed: seed of the per-sample augmentation generators.
        max_consecutive_skips: skips in a row (in one worker) that abort instead of looping forever.
        max_skip_fraction: the largest fraction of bad (unreadable, corrupt or invalid) samples a stream
            may have; above it the run stops with the counts and commonest reasons (`SkipCounter`). 1: never.
        verify_checksums: check every shard's size and SHA-256 against its manifest in `setup` (reads all
            the data once; false to start faster).
    """

    def __init__(
        self,
        *,
        train_dirs: Sequence[str],
        val_dirs: Sequence[str] = (),
        train_splits: Sequence[str] = ("train",),
        val_splits: Sequence[str] = ("val",),
        train_weights: Sequence[float] | None = None,
        num_frames: int = 33,
        frame_stride: int = 1,
        resolution: int | Sequence[int] = 256,
        motion: StructuredMotion | None = None,
        speed: SpeedAdjustment | None = None,
        crop: CropJitter | None = None,
        batch_size: int = 4,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        shuffle_buffer: int = 256,
        epoch_size: int = 2000,
        seed: int = 0,
        max_consecutive_skips: int = 100,
        max_skip_fraction: float = 0.1,
        verify_checksums: bool = True,
    ) -> None:
        super().__init__()
        if num_frames < 1 or (num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 1 + 4k (1, 5, ..., 33, ..., 97), got {num_frames}")
        if frame_stride < 1 or batch_size < 1 or epoch_size < 1:
            raise ValueError("frame_stride, batch_size and epoch_size must be >= 1")
        if train_weights is not None and len(train_weights) != len(train_dirs):
            raise ValueError(f"{len(train_weights)} train_weights for {len(train_dirs)} train_dirs")
        self.dirs = {"train": list(train_dirs), "val": list(val_dirs)}
        self.splits = {"train": list(train_splits), "val": list(val_splits)}
        self.train_weights = None if train_weights is None else [float(w) for w in train_weights]
        self.num_frames, self.frame_stride = num_frames, frame_stride
        self.resolution = _resolution(resolution)
        self.augment = ClipAugment(
            motion or StructuredMotion(enabled=False),
            speed or SpeedAdjustment(enabled=False),
            crop or CropJitter(enabled=False),
        )
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.shuffle_buffer, self.epoch_size, self.seed = shuffle_buffer, epoch_size, seed
        self.skips = {
            role: SkipCounter(max_consecutive_skips, max_skip_fraction) for role in ("train", "val")
        }
        """Skipped-sample counters of the training and validation streams (summed over workers)."""
        self.verify_checksums = verify_checksums
        self._sources: dict[str, list[list[str]]] = {}
        self._start_stream()

    def decoder(self, train: bool) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """Raw sample -> decoded sample, for the training (augmented) or the validation stream."""
        raise NotImplementedError

    def _decoder_args(self, train: bool) -> dict[str, Any]:
        return {
            "augment": self.augment,
            "resolution": self.resolution,
            "num_frames": self.num_frames,
            "frame_stride": self.frame_stride,
            "seed": self.seed,
            "train": train,
        }

    def setup(self, stage: str | None = None) -> None:
        """Read the manifests of the folders the stage needs (errors name `make data` if there are none)
        and, with `verify_checksums`, check their shards."""
        roles = ["val"] if stage == "validate" else ["train", "val"] if stage in (None, "fit") else []
        if "train" in roles:  # a new run (load_state_dict then moves it to where a checkpoint left off)
            self._start_stream()
        for role in roles:
            self._sources[role] = resolve_sources(
                self.dirs[role], self.splits[role], role, verify=self.verify_checksums
            )

    def _sources_of(self, role: str) -> list[list[str]]:
        if role not in self._sources:
            raise RuntimeError(f"call setup() before the {role} dataloader")
        return self._sources[role]

    def _loader(
        self, dataset: torch.utils.data.IterableDataset, loader: type[DataLoader] = DataLoader, **kwargs: Any
    ) -> DataLoader:
        return loader(
            dataset,
            batch_size=None,  # batched in the workers (make_webdataset)
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            **kwargs,
        )

    def batches_per_stream(self) -> int:
        """Training batches of each (rank, worker) stream per epoch: `epoch_size` spread over all of them."""
        world = self.trainer.world_size if self.trainer is not None else 1
        return math.ceil(self.epoch_size / (self.batch_size * world * max(1, self.num_workers)))

    def train_dataloader(self) -> DataLoader:
        """Resampled, shuffled, augmented; `batches_per_stream() * max(1, num_workers)` batches per rank."""
        dataset = make_webdataset(
            self._sources_of("train"),
            decode_fn=self.decoder(train=True),
            batch_size=self.batch_size,
            resampled=True,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            epoch_size=self.batches_per_stream(),
            skips=self.skips["train"],
            weights=self.train_weights,
            partial_batches=False,
        )
        # The batches this rank yields per epoch, as `len()`: Lightning's epoch length and progress bar.
        return self._loader(
            dataset.with_length(self.batches_per_epoch()), StreamLoader, next_pass=self._next_pass
        )

    def batches_per_epoch(self) -> int:
        """Training batches of this rank per epoch (`len()` of its loader): those of all its workers."""
        return self.batches_per_stream() * max(1, self.num_workers)

    def _start_stream(self, epoch: int = 0, skip: int = 0) -> None:
        """The next training pass is the stream's `epoch`, leaving out its first `skip` batches."""
        self._epoch, self._skip, self._started = epoch, skip, False

    def _next_pass(self) -> tuple[int, int]:
        """(epoch, batches to skip) of the next training pass. The stream counts its own passes, one epoch
        each, from 0 or from where a checkpoint left it (skipping the batches consumed in that epoch), and
        stays at epoch 0 when overfitting (the same batches every epoch). It does not follow the trainer's
        epoch: a run resumed from a checkpoint written after an epoch's last batch runs that epoch again in
        Lightning, under its number or the next one (tests/test_resume.py)."""
        overfit = self.trainer is not None and self.trainer.overfit_batches
        if self._started and not overfit:
            self._epoch += 1
        self._started = True
        skip, self._skip = self._skip, 0
        return (0 if overfit else self._epoch), skip

    def _stream_settings(self) -> dict[str, int]:
        """What the training streams depend on besides the epoch: they continue exactly only if unchanged."""
        world = self.trainer.world_size if self.trainer is not None else 1
        return {
            "seed": self.seed,
            "batches_per_epoch": self.batches_per_epoch(),
            "num_workers": self.num_workers,
            "world_size": world,
        }

    def state_dict(self) -> dict[str, int]:
        """Where the training stream is, saved in every checkpoint: its epoch, the batches this rank
        consumed in it, and :meth:`_stream_settings`."""
        if self.trainer is None:
            return {}
        consumed = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": self._epoch, "batches": consumed, **self._stream_settings()}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume the training stream where a checkpoint left it: the next training pass starts at that epoch
        and skips the batches already consumed (decoding them again)."""
        changed = [
            f"{name} {state_dict.get(name)} -> {value}"
            for name, value in self._stream_settings().items()
            if state_dict.get(name) != value
        ]
        if changed:
            log.warning(
                "data: the training stream cannot continue exactly where the checkpoint left it (%s); "
                "it skips as many batches as were consumed, of a different stream",
                ", ".join(changed),
            )
        epoch, batches = state_dict["epoch"], state_dict["batches"]
        if batches >= state_dict["batches_per_epoch"]:  # saved at the end of an epoch
            epoch, batches = epoch + 1, 0
        self._start_stream(epoch, batches)
        # Lightning looks for resumable loaders only, and would call this stream not resumable.
        warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before the epoch")

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Every validation shard of this rank once, in order, unaugmented (none without `val_dirs`)."""
        sources = self._sources_of("val")
        if not sources:
            return []
        dataset = make_webdataset(
            sources,
            decode_fn=self.decoder(train=False),
            batch_size=self.val_batch_size,
            resampled=False,
            shuffle_buffer=0,
            seed=self.seed,
            epoch_size=None,
            skips=self.skips["val"],
        )
        return self._loader(dataset)


class VideoDataModule(ShardDataModule):
    """Stage 1 (VAE) data: clips and images of any video.

    Batches: `{"video": (B, 3, T, H, W) float32 in [-1, 1], "key": list[str], "aug": {"velocity": (B, 2),
    "acceleration": (B, 2), "stride": (B,), "scale": (B,)}}` with `T = num_frames`, or `T = 1` for
    batches of images (a batch never mixes the two). Validation: `num_frames` clips only, centred.

    Clips shorter than needed are read with a smaller stride (down to 1); clips with fewer than
    `num_frames` frames are skipped and counted as `unusable` (they still serve as images).

    Args:
        image_prob: probability that a training sample is one random frame (a 1-frame clip).
        **kwargs: as :class:`ShardDataModule`.
    """

    def __init__(self, *, image_prob: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 <= image_prob <= 1:
            raise ValueError(f"image_prob must be in [0, 1], got {image_prob}")
        self.image_prob = image_prob

    def decoder(self, train: bool) -> VideoClipDecoder:
        return VideoClipDecoder(**self._decoder_args(train), image_prob=self.image_prob)


class HumanVideoDataModule(ShardDataModule):
    """Stage 2 (ISA-DiT) data: annotated human clips, persons zero-padded to `max_persons`.

    Batches (`P = max_persons`, `T = num_frames`, `(H, W)` the resolution; cameras OpenCV, world-to-camera,
    `K` for the output frames):

    | key | shape, dtype |
    | --- | --- |
    | `video`, `background` | `(B, 3, T, H, W)` float32 in [-1, 1] (background zeros when absent) |
    | `has_background`, `has_mask`, `has_reference` | `(B,)` bool |
    | `mask` | `(B, T, H, W)` uint8 labels: 0 background, `p + 1` person p (zeros when absent) |
    | `smpl` | dict: `global_orient (B, P, T, 3)`, `body_pose (B, P, T, 69)`, `betas (B, P, 10)`, |
    |        | `transl (B, P, T, 3)` float32 |
    | `person_mask` | `(B, P)` bool, True for real persons (padding is zeros) |
    | `K`, `R`, `t` | `(B, T, 3, 3)`, `(B, T, 3, 3)`, `(B, T, 3)` float32 |
    | `ref_image` | `(B, 3, H, W)` float32 in [-1, 1] |
    | `ref_smpl` | dict as `smpl` with T = 1 |
    | `ref_K`, `ref_R`, `ref_t` | `(B, 1, 3, 3)`, `(B, 1, 3, 3)`, `(B, 1, 3)` |
    | `key`, `aug` | as :class:`VideoDataModule` |

    Without a reference in the sample, the clip's first frame stands in (`has_reference` False).
    Unannotated samples, samples with more than `max_persons` persons and clips with fewer than
    `num_frames` frames are skipped (`unusable`).

    Args:
        max_persons: P of the batches.
        **kwargs: as :class:`ShardDataModule`.
    """

    def __init__(self, *, max_persons: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_persons < 1:
            raise ValueError(f"max_persons must be >= 1, got {max_persons}")
        self.max_persons = max_persons

    def decoder(self, train: bool) -> HumanClipDecoder:
        return HumanClipDecoder(**self._decoder_args(train), max_persons=self.max_persons)


class SkippedSamplesLogger(L.Callback):
    """Logs the datamodule's skipped samples, summed over ranks: `data/skipped` (training stream, total so
    far, every step) and `data/val_skipped` (validation stream, total so far, each validation)."""

    @staticmethod
    def _skips(trainer: L.Trainer) -> dict[str, SkipCounter] | None:
        return getattr(trainer.datamodule, "skips", None)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        skips = self._skips(trainer)
        if skips is not None:
            total = float(skips["train"].total)
            pl_module.log(
                "data/skipped", total, on_step=True, on_epoch=False, sync_dist=True, reduce_fx="sum"
            )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        skips = self._skips(trainer)
        if skips is not None:
            pl_module.log("data/val_skipped", float(skips["val"].total), sync_dist=True, reduce_fx="sum")
