"""Latent shards: the DiT's training samples, augmented and pre-encoded by the frozen VAE (docs/train_dit.md).

`isa4d encode` (`isa4d.encode`) draws `num_versions` augmentations of every annotated clip through the
training decoder of :class:`~isa4d.data.datamodules.HumanVideoDataModule` (crop jitter, resize, frame
selection, K updated), each from its own generator :func:`version_rng`, at the DiT's resolution and
frame count, encodes the video, background, reference image (and, for the 2-D baselines, the rendered
control videos) with the frozen VAE, and writes one latent sample per version (:func:`latent_sample`).
:class:`HumanLatentDataModule` streams them: the same batch layout as the pixel DataModule, with the
latents in place of the pixels, so a training step runs neither the VAE encoder nor the renderer.

A latent sample (key `<clip key>-vNNN`) has these members:

* `latent.npy`, `background_latent.npy`: `(C, T', h, w)` normalised VAE posterior means (the background's
  are zeros when the clip has none); `ref_latent.npy`: `(C, 1, h, w)`;
* `control_<kind>_latent.npy`: `(C, T', h, w)`, one per cached control video kind (`normal`, `body`);
* `conditions.npz`: `smpl.*` (real persons only), `K`, `R`, `t` (of the output frames), `ref_image`
  `(3, H, W)` uint8, `ref_smpl.*`, `ref_K`, `ref_R`, `ref_t`, `has_background`, `has_reference`, `aug.*`;
* `meta.json`: `latent_schema_version`, `key` (the source clip), `version`, `num_persons`, `latent_shape`,
  `sha256` (of every other member: a corrupt member is refused).

The folder's `manifest.json` records how the cache was made (:func:`check_latent_cache` refuses a cache
of another VAE checkpoint, resolution or frame count).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from isa4d.data.augment import UnusableClipError, sample_rng
from isa4d.data.datamodules import HumanClipDecoder, HumanVideoDataModule, smpl_tensors
from isa4d.data.format import (
    CHECKSUMS,
    LATENT_SCHEMA_VERSION,
    META,
    InvalidSampleError,
    SMPLParams,
    checksum_problems,
    member_checksums,
    npz_bytes,
    sample_key,
)
from isa4d.data.shards import MANIFEST, read_manifest
from isa4d.errors import DataError
from isa4d.utils.files import file_sha256

log = logging.getLogger(__name__)

LATENT, BACKGROUND_LATENT, REF_LATENT = "latent.npy", "background_latent.npy", "ref_latent.npy"
CONDITIONS = "conditions.npz"
LATENT_DTYPES = {"float32": np.float32, "float16": np.float16}
CAMERA_ARRAYS = ("K", "R", "t", "ref_K", "ref_R", "ref_t")
FLAGS = ("has_background", "has_reference")
VERSION_SALT = 0x1A7E
"""Mixed into :func:`version_rng` so cached versions draw other augmentations than the stream's samples."""


def control_member(kind: str) -> str:
    """The member holding a control video's latent: `control_<kind>_latent.npy`."""
    return f"control_{kind}_latent.npy"


def version_rng(seed: int, key: str, version: int) -> np.random.Generator:
    """The augmentation generator of version `version` of clip `key` (the data config's `seed`)."""
    return sample_rng(seed, key, VERSION_SALT, version)


# ---------------------------------------------------------------------------------------------- writing


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for name, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = np.asarray(value)
    return flat


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def latent_sample(
    batch: Mapping[str, Any], latents: Mapping[str, Any], index: int, dtype: type[np.floating]
) -> dict[str, Any]:
    """The latent sample of item `index` of a pixel batch (members as bytes, for `ShardWriter.write`).

    Args:
        batch: A `HumanClipDecoder` batch with `version (B,)`.
        latents: `latent`, `background_latent`, `ref_latent` `(B, C, T', h, w)` and `control_latent`
            `{kind: (B, C, T', h, w)}` (`ConditionBuilder.encode_conditions`).
        index: The item.
        dtype: Storage dtype of the latents.
    """

    def item(value: torch.Tensor) -> np.ndarray:
        return value[index].detach().cpu().numpy()

    persons = int(batch["person_mask"][index].sum())
    key, version = batch["key"][index], int(batch["version"][index])
    ref_image = ((item(batch["ref_image"]) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    conditions = {
        "smpl": {name: item(value)[:persons] for name, value in batch["smpl"].items()},
        "ref_smpl": {name: item(value)[:persons] for name, value in batch["ref_smpl"].items()},
        **{name: item(batch[name]) for name in (*CAMERA_ARRAYS, *FLAGS)},
        "ref_image": ref_image,
        "aug": {name: item(value) for name, value in batch["aug"].items()},
    }
    latent = item(latents["latent"]).astype(dtype)
    sample = {
        "__key__": f"{key}-v{version:03d}",
        LATENT: _npy(latent),
        BACKGROUND_LATENT: _npy(item(latents["background_latent"]).astype(dtype)),
        REF_LATENT: _npy(item(latents["ref_latent"]).astype(dtype)),
        **{
            control_member(kind): _npy(item(value).astype(dtype))
            for kind, value in latents["control_latent"].items()
        },
        CONDITIONS: npz_bytes(_flatten(conditions)),
    }
    meta = {
        "latent_schema_version": LATENT_SCHEMA_VERSION,
        "key": key,
        "version": version,
        "num_persons": persons,
        "latent_shape": list(latent.shape),
        CHECKSUMS: member_checksums(sample),
    }
    sample[META] = json.dumps(meta, indent=1, sort_keys=True).encode()
    return sample


# ---------------------------------------------------------------------------------------------- reading


def _latent_meta(key: str, data: bytes) -> dict[str, Any]:
    """A latent sample's `meta.json`, checked (schema, `key`, `version`, `num_persons`).

    Raises:
        InvalidSampleError: naming what is wrong.
    """
    try:
        meta = json.loads(data)
    except (ValueError, TypeError, RecursionError) as err:  # bad UTF-8 or JSON
        raise InvalidSampleError(key, [f"{META}: cannot decode ({type(err).__name__}: {err})"]) from err
    if not isinstance(meta, dict):
        raise InvalidSampleError(key, [f"{META}: must hold a JSON object, not {type(meta).__name__}"])
    version = meta.get("latent_schema_version")
    if version != LATENT_SCHEMA_VERSION or type(version) is not int:
        raise InvalidSampleError(
            key,
            [
                f"{META}: latent_schema_version {version!r} is not supported (this isa4d reads "
                f"{LATENT_SCHEMA_VERSION}); rebuild the cache with `isa4d encode`"
            ],
        )
    kinds = {"key": str, "version": int, "num_persons": int}
    wrong = [
        name
        for name, kind in kinds.items()
        if not isinstance(meta.get(name), kind) or isinstance(meta.get(name), bool)
    ]
    wrong += [name for name in ("version", "num_persons") if name not in wrong and meta[name] < 0]
    if wrong:
        raise InvalidSampleError(key, [f"{META}: {name} {meta.get(name)!r} is not valid" for name in wrong])
    return meta


class LatentClipDecoder:
    """Raw latent sample -> one DiT training sample (the layout of :class:`HumanLatentDataModule`).

    Args:
        max_persons: P of the batches (persons are zero-padded; samples with more are unusable).
        control_video: The control latent to load (`control_latent: {kind: ...}`), or None.
    """

    def __init__(self, max_persons: int, control_video: str | None = None) -> None:
        self.max_persons, self.control_video = max_persons, control_video

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """Decode a raw latent sample.

        Raises:
            InvalidSampleError: missing, corrupt (SHA-256 in `meta.json`) or undecodable members, or a
                `meta.json` of another latent schema (nothing else, whatever the bytes).
            UnusableClipError: more persons than `max_persons`.
        """
        key = sample_key(sample)
        controls = [] if self.control_video is None else [control_member(self.control_video)]
        arrays = [LATENT, BACKGROUND_LATENT, REF_LATENT, *controls]
        missing = [name for name in (META, CONDITIONS, *arrays) if name not in sample]
        if missing:
            raise InvalidSampleError(key, [f"{name}: missing" for name in missing])
        meta = _latent_meta(key, sample[META])
        problems = checksum_problems(sample, meta.get(CHECKSUMS))
        if problems:
            raise InvalidSampleError(key, problems)
        persons = meta["num_persons"]
        if persons > self.max_persons:
            raise UnusableClipError(f"{persons} persons, more than max_persons = {self.max_persons}")
        try:
            latents = {
                name: torch.from_numpy(np.load(io.BytesIO(sample[name]), allow_pickle=False)).float()
                for name in arrays
            }
            with np.load(io.BytesIO(sample[CONDITIONS]), allow_pickle=False) as archive:
                conditions = _unflatten({name: archive[name] for name in archive.files})
            out = self._conditions(conditions, persons)
            version = torch.tensor(meta["version"])
        except Exception as err:  # undecodable bytes raise npy-, zip- and shape-specific errors alike
            raise InvalidSampleError(key, [f"cannot decode ({type(err).__name__}: {err})"]) from err
        out.update(
            key=meta["key"],
            version=version,
            latent=latents[LATENT],
            background_latent=latents[BACKGROUND_LATENT],
            ref_latent=latents[REF_LATENT],
        )
        if self.control_video is not None:
            out["control_latent"] = {self.control_video: latents[control_member(self.control_video)]}
        return out

    def _conditions(self, arrays: Mapping[str, Any], persons: int) -> dict[str, Any]:
        """`conditions.npz` as the tensors of a batch item, persons padded to `max_persons`."""
        return {
            "smpl": smpl_tensors(SMPLParams(**arrays["smpl"]), self.max_persons, None),
            "ref_smpl": smpl_tensors(SMPLParams(**arrays["ref_smpl"]), self.max_persons, None),
            "person_mask": torch.arange(self.max_persons) < persons,
            **{name: torch.from_numpy(arrays[name]) for name in (*CAMERA_ARRAYS, *FLAGS)},
            "ref_image": torch.from_numpy(arrays["ref_image"]).float().mul_(2 / 255).sub_(1),
            "aug": {name: torch.from_numpy(value) for name, value in arrays["aug"].items()},
        }


LATENTS_FIELDS: dict[str, type] = {
    "vae_sha256": str,
    "vae_ckpt": str,
    "resolution": list,
    "num_frames": int,
    "control_videos": list,
    "body_source": str,
}
"""The fields of a latent manifest's `latents` block that :func:`check_latent_cache` compares."""


def check_latent_cache(
    folder: str | Path,
    *,
    vae_sha256: str,
    resolution: tuple[int, int],
    num_frames: int,
    control_video: str | None = None,
    body_source: str | None = None,
) -> dict[str, Any]:
    """Refuse a latent cache that was not made for this training configuration.

    Args:
        folder: A latent shard folder (its `manifest.json` from `isa4d encode`).
        vae_sha256: SHA-256 of the configured VAE checkpoint (the DiT's `model.vae_ckpt`).
        resolution: `(H, W)` of the training clips.
        num_frames: T of the training clips.
        control_video: The control video the DiT needs (None: none).
        body_source: The DiT's body model (checked when a control video is needed: it is rendered).

    Returns:
        The manifest's `latents` block.

    Raises:
        DataError: not a latent cache of this schema, a malformed `latents` block (named), or a cache
            made with another VAE checkpoint, resolution, frame count, without the control video, or with
            another body model for it.
    """
    manifest = read_manifest(folder)
    info = manifest.get("latents")
    path = Path(folder) / MANIFEST
    if not isinstance(info, dict) or info.get("latent_schema_version") != LATENT_SCHEMA_VERSION:
        found = info.get("latent_schema_version") if isinstance(info, dict) else None
        raise DataError(
            f"{folder} is not a latent cache of schema {LATENT_SCHEMA_VERSION} (found {found}): build it "
            "with `isa4d encode` (or `make train-dit`)"
        )
    wrong = [name for name, kind in LATENTS_FIELDS.items() if not isinstance(info.get(name), kind)]
    if wrong:
        raise DataError(
            f"{path}: latents.{wrong[0]} is missing or malformed ({info.get(wrong[0])!r}); rebuild the cache "
            "with `isa4d encode` (or `make train-dit`)"
        )
    problems = []
    if info["vae_sha256"] != vae_sha256:
        made_with = f"{info['vae_sha256'][:12]} ({info['vae_ckpt']})"
        problems.append(f"VAE checkpoint sha256 {made_with}, configured {vae_sha256[:12]}")
    if tuple(info["resolution"]) != tuple(resolution):
        problems.append(f"resolution {info['resolution']}, configured {list(resolution)}")
    if info["num_frames"] != num_frames:
        problems.append(f"num_frames {info['num_frames']}, configured {num_frames}")
    if control_video is not None:
        if control_video not in info["control_videos"]:
            problems.append(f"control videos {info['control_videos']}, the DiT needs {control_video!r}")
        if body_source is not None and info["body_source"] != str(body_source):
            problems.append(
                f"control videos rendered with body {info['body_source']!r}, configured {body_source!r}"
            )
    if problems:
        raise DataError(
            f"the latent cache {folder} was made differently: {'; '.join(problems)}. Rebuild it with "
            "`isa4d encode` (the DiT's VAE checkpoint, data settings and control_videos) or `make train-dit`"
        )
    return info


# ---------------------------------------------------------------------------------------------- module


class HumanLatentDataModule(HumanVideoDataModule):
    """Stage 2 (ISA-DiT) data from latent shards: training from the cache, validation on the fly.

    `train_dirs` are latent shard folders of `isa4d encode` (checked by :func:`check_latent_cache` in
    `setup`); `val_dirs` are pixel shard folders, read unaugmented by :class:`HumanClipDecoder` as in
    :class:`HumanVideoDataModule` (so `val/flow_loss` is the one of pixel training). The augmentation
    options only apply to how the cache was built (recorded in its manifest).

    Training batches: the layout of :class:`HumanVideoDataModule` without the pixels (`video`,
    `background`, `mask`, `has_mask`), plus `latent`, `background_latent (B, C, T', h, w)`, `ref_latent
    (B, C, 1, h, w)`, `control_latent` `{control_video: (B, C, T', h, w)}` (with a `control_video`) and
    `version (B,)`; `ref_image` is the stored uint8 image at the training resolution.

    Args:
        train_dirs: The latent shard folders (required).
        vae_ckpt: The DiT's stage-1 checkpoint (`model.vae_ckpt`): the cache must be made with it.
        control_video: The DiT's control video (`model.dit.control_video`), loaded from the cache.
        body_source: The DiT's body model (checked for caches with control videos).
        **kwargs: as :class:`HumanVideoDataModule`.
    """

    def __init__(
        self,
        *,
        train_dirs: Sequence[str] | None,
        vae_ckpt: str | Path | None,
        control_video: str | None = None,
        body_source: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not train_dirs:
            raise ValueError(
                "data.train_dirs: give the latent cache folders (`isa4d encode` output_dir; `make train-dit` "
                "builds the cache and passes them), or train on the pixel shards with data=human"
            )
        super().__init__(train_dirs=train_dirs, **kwargs)
        self.vae_ckpt, self.control_video, self.body_source = vae_ckpt, control_video, body_source
        self.latents: list[dict[str, Any]] = []
        """The `latents` manifest block of every training folder (after `setup`)."""

    def setup(self, stage: str | None = None) -> None:
        """Read the manifests; check every training folder against the VAE checkpoint and data settings.

        Raises:
            ValueError: no `vae_ckpt`, or a cache made differently (:func:`check_latent_cache`).
        """
        super().setup(stage)
        if "train" not in self._sources:
            return
        if self.vae_ckpt is None or not Path(self.vae_ckpt).is_file():
            raise ValueError(
                f"data.vae_ckpt={self.vae_ckpt}: the VAE checkpoint the cache is checked against"
            )
        sha = file_sha256(self.vae_ckpt)
        self.latents = [
            check_latent_cache(
                folder,
                vae_sha256=sha,
                resolution=self.resolution,
                num_frames=self.num_frames,
                control_video=self.control_video,
                body_source=self.body_source,
            )
            for folder in self.dirs["train"]
        ]

    def decoder(self, train: bool) -> LatentClipDecoder | HumanClipDecoder:
        if train:
            return LatentClipDecoder(self.max_persons, self.control_video)
        return super().decoder(train)


__all__ = [
    "BACKGROUND_LATENT",
    "CONDITIONS",
    "LATENT",
    "LATENT_DTYPES",
    "LATENT_SCHEMA_VERSION",
    "REF_LATENT",
    "HumanLatentDataModule",
    "LatentClipDecoder",
    "check_latent_cache",
    "control_member",
    "latent_sample",
    "version_rng",
]
