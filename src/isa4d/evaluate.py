"""`isa4d evaluate`: PSNR / SSIM / LPIPS / FVD of a checkpoint on the held-out splits (SPEC §4,
docs/evaluate.md).

* `mode=vae` (paper Tab. 1): reconstruct held-out clips with a `VAEModule` checkpoint (posterior mean,
  EMA weights when kept, chunked coding) and compare them with the input.
* `mode=dit` (paper Tab. 2): generate every test clip from its reference image, ground-truth SMPL and
  cameras (and background) with a `DiTModule` checkpoint and compare it with the ground-truth video.

Writes `<output_dir>/<mode>_eval.json` (every number, the settings, and the weight files used) and
`<output_dir>/<mode>_eval.md` (rows = model, columns = metrics per dataset), both atomically, and prints
the table. A metric whose weights file is missing is reported as `"missing"`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from isa4d.data.datamodules import HumanVideoDataModule, ShardDataModule, VideoDataModule
from isa4d.data.shards import read_manifest
from isa4d.metrics import MISSING, VideoMetrics, load_i3d, load_lpips, weights_record
from isa4d.utils.files import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

MODES = ("vae", "dit")
METRICS = (
    ("psnr", "PSNR↑", "{:.2f}"),
    ("ssim", "SSIM↑", "{:.3f}"),
    ("lpips", "LPIPS↓", "{:.3f}"),
    ("fvd", "FVD↓", "{:.1f}"),
)
Reconstruct = Callable[[Mapping[str, Any]], torch.Tensor]


def clip_length(folder: str | Path, split: str, num_frames: int | None) -> int:
    """`num_frames`, or (None) the split's shortest clip rounded down to `1 + 4k`."""
    if num_frames is not None:
        return int(num_frames)
    shortest = int(read_manifest(folder)["splits"][split]["frames_per_sample"]["min"])
    return 1 + 4 * ((shortest - 1) // 4)


def clip_batches(
    datamodule: type[ShardDataModule],
    folder: str,
    split: str,
    *,
    num_frames: int,
    resolution: int,
    batch_size: int,
    num_clips: int | None,
    **kwargs: Any,
) -> Iterator[dict[str, Any]]:
    """The first `num_clips` (None: all) clips of one split, unaugmented, in shard order, in batches.

    `datamodule` is `VideoDataModule` (only `video`) or `HumanVideoDataModule` (everything the DiT needs).
    """
    data = datamodule(
        train_dirs=[],
        val_dirs=[folder],
        val_splits=[split],
        num_frames=num_frames,
        resolution=resolution,
        batch_size=batch_size,
        num_workers=0,
        **kwargs,
    )
    data.setup("validate")
    remaining = num_clips
    for batch in data.val_dataloader():
        if remaining is not None:
            if remaining <= 0:
                return
            batch = _head(batch, remaining)
            remaining -= len(batch["key"])
        yield batch


def _head(batch: Any, n: int) -> Any:
    """The first `n` samples of a (nested) batch."""
    if isinstance(batch, Mapping):
        return {key: _head(value, n) for key, value in batch.items()}
    return batch[:n] if isinstance(batch, torch.Tensor | list | tuple) else batch


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Mapping):
        return {key: _to(value, device) for key, value in batch.items()}
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


def metric_networks(cfg: DictConfig, device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """LPIPS and I3D networks from `cfg.weights` (None where missing) and the record of each: the file(s)
    used (path + SHA-256 prefix) or `{"status": "missing", "reason": ...}`."""
    networks: dict[str, Any] = {}
    records: dict[str, Any] = {}
    loaders = {
        "lpips": lambda: load_lpips(cfg.weights.lpips_vgg, cfg.weights.get("lpips_lin"), device),
        "fvd": lambda: _with_record(
            load_i3d(
                cfg.weights.i3d, cfg.weights.get("i3d_kind", "auto"), cfg.weights.get("i3d_sha256"), device
            )
        ),
    }
    for name, load in loaders.items():
        try:
            networks[name], records[name] = load()
        except FileNotFoundError as error:
            log.warning("%s is reported as missing: %s", name.upper(), error)
            networks[name], records[name] = None, {"status": MISSING, "reason": str(error)}
    return networks, records


def _with_record(i3d: Any) -> tuple[Any, dict[str, Any]]:
    return i3d, i3d.weights


def evaluate_split(
    batches: Iterator[Mapping[str, Any]], produce: Reconstruct, metrics: VideoMetrics, device: torch.device
) -> dict[str, Any]:
    """Feed `(produce(batch), batch["video"])` of every batch to `metrics`; their results."""
    for batch in batches:
        batch = _to(batch, device)
        with torch.no_grad():
            fake = produce(batch)
        real = batch["video"]
        metrics.update(fake[:, :, : real.shape[2]].float(), real.float())
        log.info("%d clips", metrics.num_clips)
    return metrics.compute()


def vae_producer(cfg: DictConfig, device: torch.device) -> tuple[Reconstruct, dict[str, Any]]:
    """Reconstruction with a `VAEModule` checkpoint's VAE: posterior mean, decoded (chunked)."""
    from isa4d.modules.vae_module import load_vae

    vae = load_vae(cfg.ckpt_path, use_ema=bool(cfg.use_ema), map_location=device)
    chunk = cfg.chunk_frames

    def reconstruct(batch: Mapping[str, Any]) -> torch.Tensor:
        z = vae.encode(batch["video"], chunk_frames=chunk).mode()
        return vae.decode(z, chunk_latents=None if chunk is None else chunk // vae.temporal_factor)

    return reconstruct, {"checkpoint": weights_record(cfg.ckpt_path), "use_ema": bool(cfg.use_ema)}


def dit_producer(cfg: DictConfig, device: torch.device) -> tuple[Reconstruct, dict[str, Any]]:
    """Generation with a `DiTModule` checkpoint: each clip from its reference, GT SMPL, cameras and
    background, seeded noise per clip key, `sample_long` with `cfg.sampling` (EMA weights when kept)."""
    from isa4d.diffusion import sample_long
    from isa4d.modules.dit_module import load_dit_module, seeded_noise

    module = load_dit_module(cfg.ckpt_path, cfg.vae_ckpt_path, map_location=device)
    s = cfg.sampling

    def generate(batch: Mapping[str, Any]) -> torch.Tensor:
        with module.ema_scope():
            cond = module.builder.conditions(batch)
            shape = module.builder.vae.latent_shape(*batch["video"].shape[2:])
            noise = seeded_noise(batch["key"], shape, device, int(cfg.seed))
            latents = sample_long(
                module.dit,
                noise,
                cond,
                strategy=s.strategy,
                window_frames=int(s.window_frames),
                overlap_frames=int(s.overlap_frames),
                num_steps=int(s.steps),
                shift=float(s.shift),
                guidance_scale=float(s.cfg_scale),
            )
            return module.builder.decode(latents)

    info = {"checkpoint": weights_record(cfg.ckpt_path), "sampling": OmegaConf.to_container(s)}
    return generate, info


def format_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table: one row per run (`{"model", "results": {dataset: metrics}}`), columns = metric per
    dataset (the layout of the paper's Tab. 1/2); `missing` where a metric was not computed."""
    datasets = list(dict.fromkeys(name for run in runs for name in run["results"]))
    header = ["model"] + [f"{d} {label}" for d in datasets for _, label, _ in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        cells = [str(run["model"])]
        for dataset in datasets:
            result = run["results"].get(dataset, {})
            for key, _, fmt in METRICS:
                value = result.get(key, "")
                cells.append(fmt.format(value) if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def model_label(ckpt_path: str | Path) -> str:
    """`<run folder>/<checkpoint stem>` for `.../<run>/checkpoints/<name>.ckpt`, else the file stem."""
    path = Path(ckpt_path)
    return f"{path.parent.parent.name}/{path.stem}" if path.parent.name == "checkpoints" else path.stem


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation `cfg` describes (conf/evaluate.yaml); returns what `<mode>_eval.json` holds."""
    mode = str(cfg.mode)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    device = torch.device(cfg.device)
    names = list(cfg.splits) if cfg.splits is not None else list(cfg.default_splits[mode])
    unknown = [name for name in names if name not in cfg.datasets]
    if unknown:
        raise KeyError(f"splits {unknown} are not in `datasets` ({sorted(cfg.datasets)})")
    produce, info = (vae_producer if mode == "vae" else dit_producer)(cfg, device)
    networks, weights = metric_networks(cfg, device)
    datamodule = VideoDataModule if mode == "vae" else HumanVideoDataModule
    extra = {"image_prob": 0.0} if mode == "vae" else {"max_persons": int(cfg.max_persons)}
    results, settings = {}, {}
    for name in names:
        spec = cfg.datasets[name]
        frames = clip_length(spec.dir, spec.split, cfg.num_frames)
        settings[name] = {"dir": str(spec.dir), "split": spec.split, "num_frames": frames}
        batches = clip_batches(
            datamodule,
            str(spec.dir),
            str(spec.split),
            num_frames=frames,
            resolution=int(cfg.resolution),
            batch_size=int(cfg.batch_size),
            num_clips=cfg.num_clips,
            **extra,
        )
        log.info("evaluating %s (%s/%s, %d frames)", name, spec.dir, spec.split, frames)
        results[name] = evaluate_split(
            batches, produce, VideoMetrics(networks["lpips"], networks["fvd"]), device
        )
    report = {
        "mode": mode,
        "model": cfg.model_name or model_label(cfg.ckpt_path),
        **info,
        "weights": weights,
        "settings": {"resolution": int(cfg.resolution), "num_clips": cfg.num_clips, "datasets": settings},
        "results": results,
    }
    output = Path(str(cfg.output_dir))
    write_json_atomic(output / f"{mode}_eval.json", report)
    write_text_atomic(output / f"{mode}_eval.md", format_table([report]))
    return report


def main(cfg: DictConfig) -> None:
    """Hydra task of `isa4d evaluate` (conf/evaluate.yaml)."""
    report = evaluate(cfg)
    print(format_table([report]), end="")
    print(f"isa4d evaluate: wrote {Path(str(cfg.output_dir)) / (report['mode'] + '_eval.json')}")
