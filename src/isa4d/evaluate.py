"""`isa4d evaluate`: PSNR / SSIM / LPIPS / FVD of a checkpoint on the held-out splits (SPEC §4,
docs/evaluate.md).

* `mode=vae` (paper Tab. 1): reconstruct held-out clips with a `VAEModule` checkpoint (posterior mean,
  EMA weights when kept, chunked coding) and compare them with the input; next to it the naive baseline
  `bicubic 8x` (`bicubic_resample`: every frame shrunk by the VAE's spatial factor and enlarged back).
* `mode=dit` (paper Tab. 2): generate every test clip from its reference image, ground-truth SMPL and
  cameras (and background) with a `DiTModule` checkpoint and compare it with the ground-truth video;
  pose following (`isa4d.metrics.pose`: foreground IoU, PSNR inside / outside the person) of the model
  and of its two bounds: the ground truth through the frozen VAE (upper) and the model with the body
  dropped (lower).

Writes `<output_dir>/<mode>_eval.json` (every number, the settings, and the weight files used) and
`<output_dir>/<mode>_eval.md` (rows = the model and its reference rows, columns = metrics per dataset),
both atomically, and prints the table. A metric whose weights file is missing is reported as `"missing"`.
Options, the checkpoint(s), every dataset folder and split and the output folder are checked before any
model is loaded (`check_inputs`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from einops import rearrange
from omegaconf import DictConfig, OmegaConf

from isa4d.config import check_output_dir, option, option_subset, require_dir, require_file
from isa4d.data.datamodules import HumanVideoDataModule, ShardDataModule, VideoDataModule
from isa4d.data.shards import MANIFEST, read_manifest
from isa4d.diffusion import CONDITION_NAMES
from isa4d.errors import ConfigError, MissingFileError
from isa4d.metrics import MISSING, ForegroundMetrics, VideoMetrics, load_i3d, load_lpips, weights_record
from isa4d.metrics.stats import one_sample_p
from isa4d.utils.files import write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from isa4d.modules.dit_batch import ConditionBuilder

log = logging.getLogger(__name__)

MODES = ("vae", "dit")
METRICS = (
    ("psnr", "PSNR↑", "{:.2f}"),
    ("ssim", "SSIM↑", "{:.3f}"),
    ("ssim_crop", "SSIM crop↑", "{:.3f}"),
    ("lpips", "LPIPS↓", "{:.3f}"),
    ("fvd", "FVD↓", "{:.1f}"),
    ("fg_iou", "fg IoU↑", "{:.3f}"),
    ("psnr_fg", "PSNR fg↑", "{:.2f}"),
    ("psnr_bg", "PSNR bg↑", "{:.2f}"),
)
"""Table columns `(key, label, format)`; a table shows those its results hold."""
MODEL_ROW = "model"
"""Key of the evaluated checkpoint among the rows of `vae_rows` / `dit_rows` (the others are references)."""
GT_VAE_ROW = "GT through VAE (upper bound)"
NO_BODY_ROW = "body dropped (lower bound)"
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
    batches: Iterator[Mapping[str, Any]],
    rows: Mapping[str, Reconstruct],
    new_metrics: Callable[[], VideoMetrics],
    device: torch.device,
    foreground_threshold: float | None = None,
    background_of: Reconstruct | None = None,
) -> dict[str, dict[str, Any]]:
    """The results of every row on one split: `{row: metrics}`.

    Each batch is produced by every row (`rows[name](batch)`) and compared with `batch["video"]` by the
    row's own `new_metrics()`; with `foreground_threshold`, also by `ForegroundMetrics` against the
    background video (`background_of(batch)`, default `batch["background"]`) and `batch["mask"]` (clips
    with both, `has_background & has_mask`).
    """
    metrics = {name: new_metrics() for name in rows}
    foreground = (
        {}
        if foreground_threshold is None
        else {name: ForegroundMetrics(foreground_threshold) for name in rows}
    )
    for batch in batches:
        batch = _to(batch, device)
        real = batch["video"].float()
        if foreground:
            with torch.no_grad():
                background = (batch["background"] if background_of is None else background_of(batch)).float()
            labels = batch["mask"]
            valid = batch["has_background"].bool() & batch["has_mask"].bool()
        for name, produce in rows.items():
            with torch.no_grad():
                fake = produce(batch)[:, :, : real.shape[2]].float()
            metrics[name].update(fake, real)
            if foreground:
                foreground[name].update(fake, real, background, labels, valid)
        log.info("%d clips", metrics[MODEL_ROW].num_clips)
    return {
        name: {**metrics[name].compute(), **(foreground[name].compute() if foreground else {})}
        for name in rows
    }


def bicubic_resample(video: torch.Tensor, factor: int) -> torch.Tensor:
    """The naive baseline of a VAE that compresses space by `factor`: (B, 3, T, H, W) in [-1, 1] -> same.

    Every frame is shrunk to `(H // factor, W // factor)` with `F.interpolate(mode="bicubic",
    antialias=True, align_corners=False)`, enlarged back to `(H, W)` with `F.interpolate(mode="bicubic",
    align_corners=False)` (no antialias when enlarging) and clamped to [-1, 1].
    """
    frames = rearrange(video.float(), "b c t h w -> (b t) c h w")
    height, width = frames.shape[-2:]
    small = F.interpolate(
        frames, size=(height // factor, width // factor), mode="bicubic", align_corners=False, antialias=True
    )
    large = F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)
    return rearrange(large.clamp(-1.0, 1.0), "(b t) c h w -> b c t h w", b=video.shape[0])


Rows = tuple[dict[str, Reconstruct], dict[str, Any], Reconstruct | None]
"""What a mode evaluates: its rows, the record of its weights, and DiT mode's foreground reference."""


def vae_rows(cfg: DictConfig, device: torch.device) -> Rows:
    """Rows of VAE mode: the reconstruction with a `VAEModule` checkpoint's VAE (posterior mean, decoded,
    chunked) and `bicubic <f>x` (`bicubic_resample` by the VAE's spatial factor f); no foreground."""
    from isa4d.modules.vae_module import load_vae

    vae = load_vae(cfg.ckpt_path, use_ema=bool(cfg.use_ema), map_location=device)
    chunk = cfg.chunk_frames

    def reconstruct(batch: Mapping[str, Any]) -> torch.Tensor:
        z = vae.encode(batch["video"], chunk_frames=chunk).mode()
        return vae.decode(z, chunk_latents=None if chunk is None else chunk // vae.temporal_factor)

    def bicubic(batch: Mapping[str, Any]) -> torch.Tensor:
        return bicubic_resample(batch["video"], vae.spatial_factor)

    rows = {MODEL_ROW: reconstruct, f"bicubic {vae.spatial_factor}x": bicubic}
    return rows, {"checkpoint": weights_record(cfg.ckpt_path), "use_ema": bool(cfg.use_ema)}, None


def dit_rows(cfg: DictConfig, device: torch.device) -> Rows:
    """Rows of DiT mode with a `DiTModule` checkpoint (EMA weights when kept and `use_ema`):

    * the model: each clip generated from its reference, GT SMPL, cameras and background, seeded noise
      per clip key, `sample_long` with `cfg.sampling`;
    * `GT_VAE_ROW`: the ground-truth clip encoded (posterior mean) and decoded by the frozen VAE;
    * `NO_BODY_ROW`: the same sampling (same noise) with the SMPL condition dropped from the
      conditional branch (`cond.with_drops(smpl=True)`);

    and the foreground reference `background_through_vae` of the same module's VAE.
    """
    from isa4d.diffusion import sample_long
    from isa4d.modules.dit_module import load_dit_module, seeded_noise

    module = load_dit_module(cfg.ckpt_path, cfg.vae_ckpt_path, map_location=device)
    builder = module.builder
    s = cfg.sampling

    use_ema = bool(cfg.use_ema) and module.ema is not None

    def generate(batch: Mapping[str, Any], drop_smpl: bool) -> torch.Tensor:
        with module.ema_scope() if use_ema else nullcontext():
            cond = builder.conditions(batch)
            if drop_smpl:
                cond = cond.with_drops(smpl=True)
            shape = builder.vae.latent_shape(*batch["video"].shape[2:])
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
                uncond_drops=tuple(s.uncond_drops),
            )
            return builder.decode(latents)

    def autoencode(batch: Mapping[str, Any]) -> torch.Tensor:
        return builder.decode(builder.encode(batch["video"]))

    rows = {
        MODEL_ROW: partial(generate, drop_smpl=False),
        GT_VAE_ROW: autoencode,
        NO_BODY_ROW: partial(generate, drop_smpl=True),
    }
    record = {"checkpoint": weights_record(cfg.ckpt_path), "use_ema": use_ema}
    return rows, record | {"sampling": OmegaConf.to_container(s)}, background_through_vae(builder)


def background_through_vae(builder: ConditionBuilder) -> Reconstruct:
    """DiT mode's foreground reference: the background video encoded and decoded by the checkpoint's VAE
    (`builder`: the DiT module's), what the model's background latent looks like decoded (the raw
    background would count the VAE's own error as person pixels: the GT-through-VAE bound reached only 0.28
    IoU that way)."""
    return lambda batch: builder.decode(builder.encode(batch["background"]))


def body_gain(model: Mapping[str, Any], no_body: Mapping[str, Any]) -> dict[str, Any] | None:
    """How much the body moves the generated person on one split: the foreground IoU of the model minus
    that of the same sampling with the body dropped (`NO_BODY_ROW`: same clips, same noise), its mean over
    the clips and the p-value of the paired t-test over them (`one_sample_p` of the per-clip
    differences). None without per-clip IoUs.
    """
    a, b = model.get("fg_iou_clips"), no_body.get("fg_iou_clips")
    if not a or not b:
        return None
    if len(a) != len(b):
        raise ValueError(f"body gain: {len(a)} clips of the model against {len(b)} with the body dropped")
    differences = [x - y for x, y in zip(a, b, strict=True)]
    return {
        "clips": len(differences),
        "mean": sum(differences) / len(differences),
        "p": one_sample_p(differences),
    }


def report_rows(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The table rows of one `<mode>_eval.json` report: the model, then its reference rows."""
    return [report, *report.get("references", [])]


def format_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table: one row per run (`{"model", "results": {dataset: metrics}}`), columns = metric per
    dataset (the layout of the paper's Tab. 1/2) for the `METRICS` that some result holds; `missing`
    where a metric was not computed."""
    datasets = list(dict.fromkeys(name for run in runs for name in run["results"]))
    held = {key for run in runs for result in run["results"].values() for key in result}
    columns = [column for column in METRICS if column[0] in held]
    header = ["model"] + [f"{d} {label}" for d in datasets for _, label, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        cells = [str(run["model"])]
        for dataset in datasets:
            result = run["results"].get(dataset, {})
            for key, _, fmt in columns:
                value = result.get(key, "")
                cells.append(fmt.format(value) if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_report(report: Mapping[str, Any]) -> str:
    """`<mode>_eval.md`: the table of `report_rows(report)`, and in DiT mode the foreground definition."""
    text = format_table(report_rows(report))
    threshold = report["settings"].get("foreground_threshold")
    if threshold is not None:
        text += (
            f"\nfg IoU: generated person = pixels where max over RGB of |video - background through the VAE| "
            f"(in [0, 1]) > "
            f"{threshold}, vs. the ground-truth person mask (IoU per clip over all frames, mean over clips); "
            "PSNR fg / bg: over the ground-truth person / background pixels of each clip.\n"
        )
    for split, gain in report.get("body_gain", {}).items():
        p = "n/a" if gain["p"] is None else f"{gain['p']:.3g}"
        text += (
            f"Body gain on {split}: fg IoU {gain['mean']:+.3f} against the body dropped (same clips and "
            f"noise; paired t-test over {gain['clips']} clips: p = {p}).\n"
        )
    return text


def model_label(ckpt_path: str | Path) -> str:
    """`<run folder>/<checkpoint stem>` for `.../<run>/checkpoints/<name>.ckpt`, else the file stem."""
    path = Path(ckpt_path)
    return f"{path.parent.parent.name}/{path.stem}" if path.parent.name == "checkpoints" else path.stem


def check_inputs(cfg: DictConfig) -> tuple[str, torch.device, list[str]]:
    """Validate the options, the checkpoint(s), the folder and split of every evaluated dataset and the
    output folder (writable or creatable; nothing is created) before any model is loaded.

    Returns:
        The mode, the device and the names of the evaluated `datasets` entries.

    Raises:
        ConfigError: a wrong option, unknown dataset name or split, or unusable output_dir (key named).
        MissingFileError: a missing checkpoint, dataset folder or manifest.
    """
    mode = str(cfg.mode)
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    try:
        device = torch.device(str(cfg.device))
    except RuntimeError as error:
        raise ConfigError(f"device={cfg.device!r} is not a device: give cpu, cuda or cuda:<index>") from error
    for key in ("resolution", "batch_size") + (("max_persons",) if mode == "dit" else ()):
        if option(cfg, key, int) < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[key]}")
    option(cfg, "seed", int)
    for key in ("num_frames", "num_clips", "chunk_frames"):
        option(cfg, key, int | None)
    if mode == "dit":
        for key in ("foreground_threshold", "sampling.shift", "sampling.cfg_scale"):
            option(cfg, key, float)
        for key in ("sampling.steps", "sampling.window_frames", "sampling.overlap_frames"):
            option(cfg, key, int)
        option_subset(cfg, "sampling.uncond_drops", CONDITION_NAMES)
    names = list(option(cfg, "splits", list | None) or cfg.default_splits[mode])
    unknown = [name for name in names if name not in cfg.datasets]
    if unknown:
        raise ConfigError(f"splits={names}: {unknown} not in `datasets` (it has {sorted(cfg.datasets)})")
    require_file(cfg.ckpt_path, "ckpt_path")
    if mode == "dit" and cfg.vae_ckpt_path:
        require_file(cfg.vae_ckpt_path, "vae_ckpt_path")
    for name in names:
        folder = require_dir(cfg.datasets[name].dir, f"datasets.{name}.dir")
        if not (folder / MANIFEST).is_file():
            raise MissingFileError(f"datasets.{name}.dir={folder} has no {MANIFEST}: run `make data` first")
        splits = read_manifest(folder)["splits"]
        split = cfg.datasets[name].split
        if split not in splits:
            raise ConfigError(f"datasets.{name}.split={split!r} is not in {folder} (it has {sorted(splits)})")
    check_output_dir(cfg.output_dir, "output_dir")
    return mode, device, names


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation `cfg` describes (conf/evaluate.yaml); returns what `<mode>_eval.json` holds."""
    mode, device, names = check_inputs(cfg)
    rows, info, background_of = (vae_rows if mode == "vae" else dit_rows)(cfg, device)
    networks, weights = metric_networks(cfg, device)
    datamodule = VideoDataModule if mode == "vae" else HumanVideoDataModule
    extra = {"image_prob": 0.0} if mode == "vae" else {"max_persons": int(cfg.max_persons)}
    threshold = None if mode == "vae" else float(cfg.foreground_threshold)
    results: dict[str, dict[str, Any]] = {name: {} for name in rows}
    settings = {}
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
        split_results = evaluate_split(
            batches,
            rows,
            lambda: VideoMetrics(networks["lpips"], networks["fvd"]),
            device,
            threshold,
            background_of,
        )
        for row, result in split_results.items():
            results[row][name] = result
    report = {
        "mode": mode,
        "model": cfg.model_name or model_label(cfg.ckpt_path),
        **info,
        "weights": weights,
        "settings": {
            "resolution": int(cfg.resolution),
            "num_clips": cfg.num_clips,
            "datasets": settings,
            **({} if threshold is None else {"foreground_threshold": threshold}),
        },
        "results": results[MODEL_ROW],
        "references": [{"model": row, "results": results[row]} for row in rows if row != MODEL_ROW],
    }
    if NO_BODY_ROW in results:
        gains = {name: body_gain(results[MODEL_ROW][name], results[NO_BODY_ROW][name]) for name in names}
        report["body_gain"] = {name: gain for name, gain in gains.items() if gain is not None}
    output = Path(str(cfg.output_dir))
    write_json_atomic(output / f"{mode}_eval.json", report)
    write_text_atomic(output / f"{mode}_eval.md", format_report(report))
    return report


def main(cfg: DictConfig) -> None:
    """Hydra task of `isa4d evaluate` (conf/evaluate.yaml)."""
    report = evaluate(cfg)
    print(format_report(report), end="")
    print(f"isa4d evaluate: wrote {Path(str(cfg.output_dir)) / (report['mode'] + '_eval.json')}")
