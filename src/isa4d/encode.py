"""`isa4d encode`: pre-encode HumanVideo shards into VAE-latent shards for the DiT (docs/train_vae.md).

Every sample of the chosen splits is decoded (`isa4d.data.format.decode_sample`), its video (and
background and reference image, when present) is encoded by the frozen stage-1 VAE of a checkpoint
in temporal chunks, and a latent sample is written with the latents and all the conditioning (SMPL,
camera, reference SMPL/camera/image, meta; masks optionally). Latent shards follow the layout of the
source folder (`{split}-NNNNNN.tar` + `manifest.json`, so `isa4d.data.shard_paths` lists them) and
are written under temporary names, renamed only when a split is complete.

    isa4d encode ckpt_path=logs/train_vae/runs/<run>/checkpoints/last.ckpt \
        input_dir=data/shards/synth output_dir=data/latents/synth
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from isa4d.data.format import (
    CAMERA,
    MASK,
    META,
    REF_CAMERA,
    REF_IMAGE,
    REF_SMPL,
    SMPL,
    Cameras,
    Clip,
    SMPLParams,
    decode_sample,
    npz_bytes,
)
from isa4d.data.shards import MANIFEST, check_writable, read_manifest, shard_paths, write_samples
from isa4d.data.video_io import encode_mask_video
from isa4d.models.vae import VideoVAE
from isa4d.modules.vae_module import frames_to_tensor, load_vae
from isa4d.utils.files import write_json_atomic

log = logging.getLogger(__name__)

LATENT_SCHEMA_VERSION = 1
"""Version of the latent-shard format written here (`latent_schema_version` in meta and manifest)."""
LATENT, BACKGROUND_LATENT, REF_LATENT = "latent.npy", "background_latent.npy", "ref_latent.npy"
LATENT_DTYPES = {"float32": np.float32, "float16": np.float16}


# ---------------------------------------------------------------------------------------------- checks


def check_inputs(cfg: DictConfig) -> tuple[Path, Path, Path, list[str]]:
    """Validate the task's paths and options before any model is loaded.

    Returns:
        ckpt_path, input_dir, output_dir, the splits to encode.

    Raises:
        FileNotFoundError: missing checkpoint or source manifest.
        KeyError: a requested split the source does not have.
        ValueError: bad options, or output_dir == input_dir.
        FileExistsError: existing latent shards of a split without `overwrite`.
    """
    ckpt = Path(cfg.ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt}: no such file (a VAEModule checkpoint, e.g. last.ckpt)")
    source = Path(cfg.input_dir)
    if not (source / MANIFEST).is_file():
        raise FileNotFoundError(
            f"input_dir={source} has no {MANIFEST}: give a shard folder from `isa4d prepare` or `make data`"
        )
    available = sorted(read_manifest(source)["splits"])
    splits = list(cfg.splits) if cfg.get("splits") else available
    unknown = [split for split in splits if split not in available]
    if unknown:
        raise KeyError(f"{source}/{MANIFEST} has no split(s) {unknown} (it has {available})")
    output = Path(cfg.output_dir)
    if output.resolve() == source.resolve():
        raise ValueError("output_dir must differ from input_dir")
    if cfg.latent not in ("mode", "sample"):
        raise ValueError(f"latent must be 'mode' or 'sample', got {cfg.latent!r}")
    if cfg.dtype not in LATENT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(LATENT_DTYPES)}, got {cfg.dtype!r}")
    if str(cfg.precision) not in ("32", "bf16"):
        raise ValueError(f"precision must be '32' or 'bf16', got {cfg.precision!r}")
    chunk = cfg.get("chunk_frames")
    if chunk is not None and (chunk <= 0 or chunk % 4):
        raise ValueError(f"chunk_frames must be a positive multiple of 4 (or null), got {chunk}")
    for split in splits:
        check_writable(output, split, cfg.overwrite)
    return ckpt, source, output, splits


def usable_frames(num_frames: int, temporal_factor: int = 4) -> int:
    """Frames that are encoded: the largest `1 + 4k <= num_frames` (trailing frames are dropped)."""
    return 1 + (num_frames - 1) // temporal_factor * temporal_factor


# ---------------------------------------------------------------------------------------------- encoding


class LatentEncoder:
    """Encode uint8 frames with a frozen VAE into (normalised) latents.

    Args:
        vae: The frozen VAE (eval mode), on `device`.
        device: Where to run.
        chunk_frames: Temporal chunk in frames (multiple of 4) or None for one shot.
        latent: `"mode"` (posterior mean) or `"sample"` (a sample, seeded per clip key).
        normalize: Store `vae.normalize(z)` (the DiT's latents) instead of raw `z`.
        dtype: numpy dtype of the stored latents.
        precision: `"32"` or `"bf16"` (autocast on the device).
        seed: Base seed of the posterior samples.
    """

    def __init__(
        self,
        vae: VideoVAE,
        device: torch.device,
        chunk_frames: int | None = None,
        latent: str = "mode",
        normalize: bool = True,
        dtype: type[np.floating] = np.float32,
        precision: str = "32",
        seed: int = 0,
    ) -> None:
        self.vae, self.device, self.chunk_frames = vae, device, chunk_frames
        self.latent, self.normalize, self.dtype = latent, normalize, dtype
        self.autocast = precision == "bf16"
        self.seed = seed

    @torch.no_grad()
    def __call__(self, frames: np.ndarray, key: str, member: str) -> np.ndarray:
        """Latents (C, T', h, w) of `(T, H, W, 3)` uint8 frames (or one `(H, W, 3)` image, T' = 1).

        Raises:
            ValueError: if H or W is not a multiple of the VAE's spatial factor.
        """
        factor = self.vae.spatial_factor
        height, width = frames.shape[-3:-1]
        if height % factor or width % factor:
            raise ValueError(
                f"{key}: {member} is {height}x{width}; the VAE needs multiples of {factor} "
                "(crop or pad it, with K adjusted, before `isa4d prepare`)"
            )
        x = frames_to_tensor(frames, self.device)
        chunk = self.chunk_frames if self.chunk_frames is not None and x.shape[2] > 1 else None
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            posterior = self.vae.encode(x, chunk_frames=chunk)
        if self.latent == "sample":
            seed = (self.seed + zlib.crc32(f"{key}/{member}".encode())) % 2**63
            generator = torch.Generator(self.device).manual_seed(seed)
            z = posterior.sample(generator)
        else:
            z = posterior.mode()
        z = z.float()
        if self.normalize:
            z = self.vae.normalize(z)
        return z[0].cpu().numpy().astype(self.dtype)


def npy_bytes(array: np.ndarray) -> bytes:
    """Serialise one array as `.npy` (read back with `np.load(io.BytesIO(data), allow_pickle=False)`)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _truncate_smpl(smpl: SMPLParams, frames: int) -> SMPLParams:
    return SMPLParams(
        smpl.global_orient[:, :frames], smpl.body_pose[:, :frames], smpl.betas, smpl.transl[:, :frames]
    )


def _truncate_camera(camera: Cameras, frames: int) -> Cameras:
    return Cameras(camera.K[:frames], camera.R[:frames], camera.t[:frames], camera.image_size)


def _npz(instance: SMPLParams | Cameras) -> bytes:
    return npz_bytes({field.name: getattr(instance, field.name) for field in dataclasses.fields(instance)})


def latent_sample(
    raw: Mapping[str, Any], clip: Clip, encode: LatentEncoder, include_masks: bool
) -> dict[str, Any]:
    """The latent sample of one source sample (members as bytes, ready for `ShardWriter.write`).

    Args:
        raw: The undecoded source sample (member bytes by name).
        clip: `decode_sample(raw)`.
        encode: The encoder.
        include_masks: Also carry `mask.mp4` (truncated like the video).
    """
    frames = usable_frames(clip.meta.num_frames, encode.vae.temporal_factor)
    truncated = frames != clip.meta.num_frames
    latent = encode(clip.video[:frames], clip.key, "video.mp4")
    sample: dict[str, Any] = {"__key__": clip.key, LATENT: npy_bytes(latent)}
    if clip.background is not None:
        sample[BACKGROUND_LATENT] = npy_bytes(encode(clip.background[:frames], clip.key, "background.mp4"))
    if clip.smpl is not None and clip.camera is not None:
        sample[SMPL] = _npz(_truncate_smpl(clip.smpl, frames))
        sample[CAMERA] = _npz(_truncate_camera(clip.camera, frames))
    if clip.reference is not None:
        sample[REF_LATENT] = npy_bytes(encode(clip.reference.image, clip.key, REF_IMAGE))
        sample[REF_IMAGE] = raw[REF_IMAGE]
        sample[REF_SMPL] = raw[REF_SMPL]
        sample[REF_CAMERA] = raw[REF_CAMERA]
    if include_masks and clip.mask is not None:
        sample[MASK] = encode_mask_video(clip.mask[:frames], clip.meta.fps) if truncated else raw[MASK]
    meta = {
        "latent_schema_version": LATENT_SCHEMA_VERSION,
        "num_frames": frames,
        "source_num_frames": clip.meta.num_frames,
        "latent_shape": list(latent.shape),
        "has_background": BACKGROUND_LATENT in sample,
        "has_reference": REF_LATENT in sample,
        "has_mask": MASK in sample,
        "source_meta": clip.meta.to_dict(),
    }
    sample[META] = json.dumps(meta, indent=1, sort_keys=True).encode()
    return sample


def read_latent_sample(sample: Mapping[str, Any]) -> dict[str, Any]:
    """Decode a raw latent sample: arrays for `.npy`, dicts of arrays for `.npz`, dict for `meta.json`."""
    decoded: dict[str, Any] = {"__key__": sample.get("__key__")}
    for name, data in sample.items():
        if name.endswith(".npy"):
            decoded[name] = np.load(io.BytesIO(data), allow_pickle=False)
        elif name.endswith(".npz"):
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                decoded[name] = {key: archive[key] for key in archive.files}
        elif name == META:
            decoded[name] = json.loads(data)
        elif not name.startswith("__"):
            decoded[name] = data
    return decoded


# ---------------------------------------------------------------------------------------------- writing


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
    frames, shapes, members = 0, Counter(), Counter()

    def counted() -> Iterator[dict[str, Any]]:
        nonlocal frames
        for sample in samples:
            meta = json.loads(sample[META])
            frames += meta["num_frames"]
            shapes["x".join(map(str, meta["latent_shape"]))] += 1
            members.update(name for name in sample if not name.startswith("__"))
            yield sample

    shards = write_samples(counted(), out_dir, split, maxcount, maxsize, overwrite=overwrite)
    return {
        "num_samples": sum(shard["num_samples"] for shard in shards),
        "num_frames": frames,
        "latent_shapes": dict(sorted(shapes.items())),
        "members": dict(sorted(members.items())),
        "shards": shards,
    }


def _source_samples(paths: list[Path]) -> Iterator[dict[str, Any]]:
    dataset = wds.WebDataset([str(path) for path in paths], shardshuffle=False, empty_check=False)
    yield from dataset


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def latents_info(cfg: DictConfig, ckpt: Path, source: Path, vae: VideoVAE) -> dict[str, Any]:
    """The manifest's `latents` block: how the latents were made (readers denormalise with it)."""
    return {
        "latent_schema_version": LATENT_SCHEMA_VERSION,
        "vae_ckpt": str(ckpt),
        "vae_config": vae.config,
        "use_ema": bool(cfg.use_ema),
        "latent": cfg.latent,
        "normalized": bool(cfg.normalize),
        "shift": vae.latent_shift.float().cpu().tolist(),
        "scale": vae.latent_scale.float().cpu().tolist(),
        "dtype": cfg.dtype,
        "chunk_frames": cfg.chunk_frames,
        "source": str(source),
    }


def encode(cfg: DictConfig) -> dict[str, Any]:
    """Encode the configured splits; returns the written manifest."""
    ckpt, source, output, splits = check_inputs(cfg)
    manifest_path = output / MANIFEST
    manifest = read_manifest(output) if manifest_path.is_file() else {"splits": {}}
    device = _device(cfg.device)
    vae = load_vae(ckpt, use_ema=cfg.use_ema, map_location=device)
    info = latents_info(cfg, ckpt, source, vae)
    previous = manifest.get("latents")
    comparable = ("vae_config", "latent", "normalized", "shift", "scale", "dtype")
    if previous is not None and any(previous.get(k) != info[k] for k in comparable) and not cfg.overwrite:
        raise ValueError(
            f"{manifest_path} holds latents made differently ({', '.join(comparable)}); "
            "write to another output_dir or pass overwrite=true"
        )
    if cfg.normalize and torch.all(vae.latent_scale == 1) and torch.all(vae.latent_shift == 0):
        log.warning("the VAE's latent statistics are the defaults (shift 0, scale 1): run LatentStatistics")
    encoder = LatentEncoder(
        vae,
        device,
        chunk_frames=cfg.chunk_frames,
        latent=cfg.latent,
        normalize=cfg.normalize,
        dtype=LATENT_DTYPES[cfg.dtype],
        precision=str(cfg.precision),
        seed=cfg.seed,
    )
    total_samples = read_manifest(source)["splits"]
    for split in splits:
        raws = _source_samples(shard_paths(source, split))
        bar = tqdm(raws, desc=f"encoding {split}", unit="clip", total=total_samples[split]["num_samples"])
        samples = (latent_sample(raw, decode_sample(raw), encoder, cfg.include_masks) for raw in bar)
        manifest["splits"][split] = write_split(
            samples, output, split, cfg.shard_max_count, cfg.shard_max_size, cfg.overwrite
        )
        manifest["latents"] = info
        manifest["latent_schema_version"] = LATENT_SCHEMA_VERSION
        write_json_atomic(manifest_path, manifest)
        log.info(
            "wrote %d %r latent sample(s) to %s", manifest["splits"][split]["num_samples"], split, output
        )
    return manifest


def main(cfg: DictConfig) -> None:
    """Hydra task of `isa4d encode` (conf/encode.yaml)."""
    log.debug("encode config:\n%s", OmegaConf.to_yaml(cfg))
    manifest = encode(cfg)
    for split, entry in manifest["splits"].items():
        print(f"isa4d encode: {split}: {entry['num_samples']} sample(s) in {len(entry['shards'])} shard(s)")
    print(f"Latent shards: {cfg.output_dir}")
