"""`isa4d encode`: the DiT's latent cache — augmented training samples pre-encoded by the frozen VAE.

Every annotated clip of the chosen splits is decoded `num_versions` times by the training decoder of
the DiT's data config (`HumanClipDecoder.decode`: frame selection, resize, crop jitter, K updated), each
version with its own seeded augmentation (`isa4d.data.latents.version_rng`), at the training resolution
and frame count. The frozen stage-1 VAE (loaded as `DiTModule` loads it) encodes the video, background and
reference image through `ConditionBuilder` (the code of on-the-fly training), and for the 2-D baselines
the bodies are rendered as control videos (`control_videos`) and encoded too. One latent sample per
version is written (format: `isa4d.data.latents`); shards are written under temporary names and renamed
when a split is complete, then `manifest.json` (with how the cache was made) is replaced atomically.

    isa4d encode ckpt_path=logs/train_vae/runs/<run>/checkpoints/last.ckpt \
        output_dir=data/latents/<sha>/dit_tiny_cpu data.num_frames=17 data.resolution=64 num_versions=4

`make train-dit` runs it when the cache of its VAE checkpoint is missing (docs/train_dit.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from isa4d.body import load_body_model
from isa4d.callbacks.dit import to_device
from isa4d.config import check_output_dir, option, require_dir, require_file
from isa4d.data.datamodules import HumanClipDecoder, HumanVideoDataModule
from isa4d.data.format import META
from isa4d.data.latents import LATENT_DTYPES, LATENT_SCHEMA_VERSION, latent_sample, version_rng
from isa4d.data.pipeline import SkipCounter, batch_by_shape, decode_samples
from isa4d.data.shards import (
    MANIFEST,
    check_writable,
    read_manifest,
    shard_paths,
    update_manifest,
    verify_shards,
    write_samples,
)
from isa4d.errors import ConfigError, MissingFileError
from isa4d.models.vae import VideoVAE
from isa4d.modules.dit_batch import ConditionBuilder
from isa4d.modules.vae_module import load_vae
from isa4d.render import CONTROL_VIDEOS
from isa4d.utils.files import file_sha256

log = logging.getLogger(__name__)

VERSION = "__version__"
"""The field that carries a version number along with a raw sample (never a shard member)."""


# ---------------------------------------------------------------------------------------------- checks


def check_inputs(cfg: DictConfig) -> tuple[Path, Path, Path, list[str]]:
    """Validate the task's paths and options before any model is loaded.

    Returns:
        ckpt_path, input_dir, output_dir, the splits to encode.

    Raises:
        MissingFileError: missing checkpoint, input folder or source manifest.
        ConfigError: a split the source does not have, a bad option, output_dir == input_dir, an
            output_dir that cannot be written, or existing latent shards of a split without `overwrite`.
    """
    ckpt = require_file(cfg.ckpt_path, "ckpt_path")
    source = require_dir(cfg.input_dir, "input_dir")
    output = check_output_dir(cfg.output_dir, "output_dir")
    if output.resolve() == source.resolve():
        raise ConfigError("output_dir must differ from input_dir")
    for key in ("num_versions", "batch_size", "shard_max_count"):
        if option(cfg, key, int) < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[key]}")
    option(cfg, "shard_max_size", float)
    option(cfg, "overwrite", bool)
    unknown_controls = [kind for kind in option(cfg, "control_videos", list) if kind not in CONTROL_VIDEOS]
    if unknown_controls:
        raise ConfigError(f"control_videos: unknown {unknown_controls}; choose from {list(CONTROL_VIDEOS)}")
    if cfg.dtype not in LATENT_DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(LATENT_DTYPES)}, got {cfg.dtype!r}")
    if not (source / MANIFEST).is_file():
        raise MissingFileError(
            f"input_dir={source} has no {MANIFEST}: give a shard folder from `isa4d prepare` or `make data`"
        )
    available = sorted(read_manifest(source)["splits"])
    splits = list(option(cfg, "splits", list | None) or available)
    unknown = [split for split in splits if split not in available]
    if unknown:
        raise ConfigError(
            f"splits={splits}: {source}/{MANIFEST} has no split(s) {unknown} (it has {available})"
        )
    for split in splits:
        try:
            check_writable(output, split, cfg.overwrite)
        except (FileExistsError, ValueError) as error:
            raise ConfigError(f"output_dir={output}: {error}") from error
    return ckpt, source, output, splits


# ---------------------------------------------------------------------------------------------- encoding


def encode_versions(
    raws: Iterable[dict[str, Any]],
    decoder: HumanClipDecoder,
    builder: ConditionBuilder,
    device: torch.device,
    *,
    seed: int,
    num_versions: int,
    control_videos: list[str],
    batch_size: int,
    dtype: type[np.floating],
    skips: SkipCounter,
) -> Iterator[dict[str, Any]]:
    """The latent samples of `num_versions` augmented versions of every raw sample (unusable ones skipped).

    Args:
        raws: Raw pixel-shard samples (member bytes).
        decoder: The training decoder of the DiT's data config.
        builder: Its frozen VAE (and body model, for the control videos), on `device`.
        device: Where to encode.
        seed: The data config's seed (`version_rng`).
        num_versions: Versions per clip.
        control_videos: Kinds of control video to render and encode.
        batch_size: Versions encoded together.
        dtype: Storage dtype of the latents.
        skips: Counts the skipped samples (clips without SMPL, too short, too many persons, invalid).
    """

    def versions() -> Iterator[dict[str, Any]]:
        for raw in raws:
            for version in range(num_versions):
                yield {**raw, VERSION: version}

    def decode(raw: dict[str, Any]) -> dict[str, Any]:
        rng = version_rng(seed, str(raw["__key__"]), raw[VERSION])
        return {**decoder.decode(raw, rng), "version": torch.tensor(raw[VERSION])}

    for batch in batch_by_shape(decode_samples(versions(), decode, skips), batch_size, partial=True):
        batch = to_device(batch, device)
        body, _ = builder.posed_body(batch["smpl"])
        latents = {
            "latent": builder.encode(batch["video"]),
            **builder.encode_conditions(batch, body.vertices, control_videos),
        }
        for index in range(len(batch["key"])):
            yield latent_sample(batch, latents, index, dtype)


def write_split(
    samples: Iterable[dict[str, Any]],
    out_dir: Path,
    split: str,
    maxcount: int,
    maxsize: float,
    overwrite: bool,
) -> dict[str, Any]:
    """Write one split's latent samples as shards (`write_samples`: all or nothing); returns its
    manifest entry."""
    clips, shapes, members = set(), Counter(), Counter()

    def counted() -> Iterator[dict[str, Any]]:
        for sample in samples:
            meta = json.loads(sample[META])
            clips.add(meta["key"])
            shapes["x".join(map(str, meta["latent_shape"]))] += 1
            members.update(name for name in sample if not name.startswith("__"))
            yield sample

    shards = write_samples(counted(), out_dir, split, maxcount, maxsize, overwrite=overwrite)
    return {
        "num_samples": sum(shard["num_samples"] for shard in shards),
        "num_clips": len(clips),
        "latent_shapes": dict(sorted(shapes.items())),
        "members": dict(sorted(members.items())),
        "shards": shards,
    }


def _source_samples(paths: list[Path], skips: SkipCounter) -> Iterator[dict[str, Any]]:
    """The raw samples of the shards, in order; a shard that cannot be read is counted and passed over."""
    yield from wds.WebDataset(
        [str(path) for path in paths], shardshuffle=False, empty_check=False, handler=skips.read_error
    )


def _replaces_cache(manifest: dict[str, Any], info: dict[str, Any], path: Path, overwrite: bool) -> bool:
    """Whether the output manifest's splits must go because its cache was made differently (`overwrite`).

    Raises:
        ConfigError: the output folder holds pixel shards, or latents made differently without `overwrite`.
    """
    if "schema_version" in manifest:
        raise ConfigError(f"output_dir: {path} lists pixel shards; write the latents to another folder")
    previous = {key: value for key, value in manifest.get("latents", {}).items() if key != "vae_ckpt"}
    if not previous or previous == {key: value for key, value in info.items() if key != "vae_ckpt"}:
        return False
    if not overwrite:
        raise ConfigError(
            f"{path} holds latents made differently (another VAE, data settings or options); "
            "write to another output_dir or pass overwrite=true"
        )
    return True


def _add_split(
    manifest: dict[str, Any],
    *,
    split: str,
    entry: dict[str, Any],
    info: dict[str, Any],
    path: Path,
    overwrite: bool,
) -> dict[str, Any]:
    """`update_manifest` change: the latent manifest with `split`'s entry (the other splits are dropped
    when their cache was made differently, with `overwrite`)."""
    splits = {} if _replaces_cache(manifest, info, path, overwrite) else manifest.get("splits", {})
    return {
        "latent_schema_version": LATENT_SCHEMA_VERSION,
        "latents": info,
        "splits": {**splits, split: entry},
    }


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def latents_info(
    cfg: DictConfig, ckpt: Path, source: Path, data: HumanVideoDataModule, vae: VideoVAE
) -> dict[str, Any]:
    """The manifest's `latents` block (as JSON types): how the cache was made (`check_latent_cache`)."""
    info = {
        "latent_schema_version": LATENT_SCHEMA_VERSION,
        "vae_ckpt": str(ckpt),
        "vae_sha256": file_sha256(ckpt),
        "vae_config": vae.config,
        "shift": vae.latent_shift.float().cpu().tolist(),
        "scale": vae.latent_scale.float().cpu().tolist(),
        "resolution": list(data.resolution),
        "num_frames": data.num_frames,
        "frame_stride": data.frame_stride,
        "max_persons": data.max_persons,
        "augment": dataclasses.asdict(data.augment),
        "seed": data.seed,
        "num_versions": int(cfg.num_versions),
        "control_videos": list(cfg.control_videos),
        "body_source": str(cfg.body.source),
        "dtype": cfg.dtype,
        "source": str(source),
    }
    return json.loads(json.dumps(info))


def encode(cfg: DictConfig) -> dict[str, Any]:
    """Build the latent cache of the configured splits; returns the written manifest."""
    ckpt, source, output, splits = check_inputs(cfg)
    data = instantiate(cfg.data)
    if not isinstance(data, HumanVideoDataModule):
        raise ConfigError(f"data: the DiT's pixel data config (data=human), got {type(data).__name__}")
    if data.verify_checksums:
        for split in splits:
            verify_shards(source, split)
    device = _device(cfg.device)
    vae = load_vae(ckpt, map_location=device)  # as DiTModule loads it (EMA weights when present)
    builder = ConditionBuilder(vae, load_body_model(str(cfg.body.source))).to(device)
    info = latents_info(cfg, ckpt, source, data, vae)
    manifest_path = output / MANIFEST
    manifest = read_manifest(output) if manifest_path.is_file() else {}
    _replaces_cache(manifest, info, manifest_path, cfg.overwrite)  # refuse before any split is encoded
    if torch.all(vae.latent_scale == 1) and torch.all(vae.latent_shift == 0):
        log.warning("the VAE's latent statistics are the defaults (shift 0, scale 1): run LatentStatistics")
    totals = read_manifest(source)["splits"]
    for split in splits:
        counter = data.skips["train"]
        skips = SkipCounter(counter.max_consecutive, counter.max_fraction)
        raws = tqdm(
            _source_samples(shard_paths(source, split), skips),
            desc=f"encoding {split}",
            unit="clip",
            total=totals[split].get("num_samples"),
        )
        samples = encode_versions(
            raws,
            data.decoder(train=True),
            builder,
            device,
            seed=data.seed,
            num_versions=cfg.num_versions,
            control_videos=list(cfg.control_videos),
            batch_size=cfg.batch_size,
            dtype=LATENT_DTYPES[cfg.dtype],
            skips=skips,
        )
        entry = write_split(samples, output, split, cfg.shard_max_count, cfg.shard_max_size, cfg.overwrite)
        entry["skipped"] = skips.counts

        add = partial(
            _add_split, split=split, entry=entry, info=info, path=manifest_path, overwrite=cfg.overwrite
        )
        manifest = update_manifest(output, add)
        log.info("wrote %d %r latent sample(s) to %s", entry["num_samples"], split, output)
        if skips.total:
            log.warning("%r: skipped %s (the warnings above name each sample)", split, skips.counts)
    return manifest


def main(cfg: DictConfig) -> None:
    """Hydra task of `isa4d encode` (conf/encode.yaml)."""
    log.debug("encode config:\n%s", OmegaConf.to_yaml(cfg))
    manifest = encode(cfg)
    for split, entry in manifest["splits"].items():
        skipped = entry.get("skipped", {})
        kinds = ", ".join(f"{kind} {count}" for kind, count in skipped.items())
        print(
            f"isa4d encode: {split}: {entry['num_samples']} sample(s) of {entry['num_clips']} clip(s) "
            f"in {len(entry['shards'])} shard(s); {sum(skipped.values())} skipped ({kinds})"
        )
    print(f"Latent shards: {cfg.output_dir}")
