"""Stage-1 callbacks: reconstruction videos, latent statistics, the last-frame-bias diagnostic.

All three work on the validation data with the module's evaluation weights (EMA when kept), in eval
mode, without gradients and in the trainer's precision. They run every `every_n_epochs` validation
runs (the sanity check does not count) and, where asked, once at the end of training
(`on_train_end`, before Lightning moves the model off the GPU). Files go to `dirpath` (default: the
trainer's `default_root_dir`, i.e. the run folder), written atomically by the global-rank-0 process.
Modules other than `VAEModule` are ignored (with one warning), so the callbacks can stay configured
for other tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from isa4d.data.video_io import encode_video
from isa4d.models.vae import VideoVAE
from isa4d.modules.vae_module import LATENT_STATS_KEY, VAEModule, tensor_to_frames, video_of
from isa4d.utils.files import atomic_write, write_figure_atomic, write_json_atomic

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- shared


def _log_metrics(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    """Send metrics to every logger (works in any hook, unlike `LightningModule.log`)."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


def write_video(trainer: L.Trainer, frames: np.ndarray, path: Path, fps: float, crf: int, tag: str) -> None:
    """Write uint8 frames `(T, H, W, 3)` as an mp4 (atomically) and log the middle frame as image `tag`
    to every TensorBoardLogger of the trainer."""
    with atomic_write(path, "wb") as file:
        file.write(encode_video(frames, fps, crf=crf))
    middle = frames[frames.shape[0] // 2]
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, middle, trainer.global_step, dataformats="HWC")


def _val_loader(trainer: L.Trainer) -> Any:
    """The (first) validation dataloader of the fit, or the datamodule's."""
    loader = trainer.val_dataloaders
    if loader is None and trainer.datamodule is not None:
        loader = trainer.datamodule.val_dataloader()
    if isinstance(loader, list | tuple):
        loader = loader[0] if loader else None
    elif isinstance(loader, dict):
        loader = next(iter(loader.values()), None)
    return loader


class _VAEDiagnostic(L.Callback):
    """Scheduling and evaluation context shared by the stage-1 callbacks (and, with another
    `module_type`, the stage-2 ones): the module must have `ema_scope()`.

    Args:
        every_n_epochs: Run after every n-th validation run; None or 0: never during training.
        at_train_end: Also run once when training ends.
        dirpath: Output folder; default the trainer's `default_root_dir`.
        max_batches: Validation batches to use.
    """

    rank_zero_only = True  # whether only global rank 0 computes (False: every rank, e.g. to reduce)
    module_type: type[L.LightningModule] = VAEModule  # the modules it applies to
    output_subdir = ""  # default output folder below the trainer's `default_root_dir`

    def __init__(
        self,
        every_n_epochs: int | None = 1,
        at_train_end: bool = False,
        dirpath: str | Path | None = None,
        max_batches: int = 8,
    ) -> None:
        self.every_n_epochs = every_n_epochs
        self.at_train_end = at_train_end
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.max_batches = max_batches
        self.validation_runs = 0
        self._warned = False

    def _applies(self, pl_module: L.LightningModule) -> bool:
        if isinstance(pl_module, self.module_type):
            return True
        if not self._warned:
            log.warning(
                "%s: %s is not a %s; skipped",
                type(self).__name__,
                type(pl_module).__name__,
                self.module_type.__name__,
            )
            self._warned = True
        return False

    def output_dir(self, trainer: L.Trainer) -> Path:
        """`dirpath`, else `<default_root_dir>/<output_subdir>`."""
        return (
            self.dirpath if self.dirpath is not None else Path(trainer.default_root_dir) / self.output_subdir
        )

    @contextmanager
    def evaluating(self, trainer: L.Trainer, pl_module: VAEModule) -> Iterator[None]:
        """Eval mode, no gradients, the trainer's precision, EMA weights; restores the mode after."""
        was_training = pl_module.training
        pl_module.eval()
        try:
            with ExitStack() as stack:
                stack.enter_context(torch.no_grad())
                stack.enter_context(trainer.precision_plugin.forward_context())
                stack.enter_context(pl_module.ema_scope())
                yield
        finally:
            pl_module.train(was_training)

    def val_videos(self, trainer: L.Trainer, pl_module: VAEModule) -> Iterator[torch.Tensor]:
        """Up to `max_batches` validation videos (B, 3, T, H, W), on the module's device."""
        loader = _val_loader(trainer)
        if loader is None:
            log.warning("%s: no validation data; skipped", type(self).__name__)
            return
        for index, batch in enumerate(loader):
            if index >= self.max_batches:
                break
            yield video_of(batch).to(pl_module.device)

    def run(self, trainer: L.Trainer, pl_module: VAEModule) -> None:
        raise NotImplementedError

    def _maybe_run(self, trainer: L.Trainer, pl_module: VAEModule) -> None:
        if self.rank_zero_only and not trainer.is_global_zero:
            return
        with self.evaluating(trainer, pl_module):
            self.run(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._applies(pl_module):
            return
        self.validation_runs += 1
        if self.every_n_epochs and self.validation_runs % self.every_n_epochs == 0:
            self._maybe_run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_train_end and self._applies(pl_module):
            self._maybe_run(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"validation_runs": self.validation_runs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validation_runs = int(state_dict.get("validation_runs", 0))


# ---------------------------------------------------------------------------------------------- videos


class ReconstructionVideos(_VAEDiagnostic):
    """Side-by-side ground truth | reconstruction videos of fixed validation clips.

    The first `num_videos` clips the validation loop sees are kept (on the CPU) and reconstructed after
    every `every_n_epochs`-th validation run into one mp4, clips stacked vertically:
    `<dirpath>/step<global step>.mp4` (default `dirpath`: `<run>/videos`). The middle frame of each pair
    is also logged as an image (`val/reconstruction`) to a TensorBoardLogger, if there is one.

    Args:
        every_n_epochs: Validation runs between videos.
        num_videos: Clips per video.
        fps: Frame rate of the mp4.
        dirpath: Output folder (default `<run>/videos`).
        crf: H.264 quality of the mp4 (low: better).
        at_train_end: Also write one when training ends.
    """

    output_subdir = "videos"

    def __init__(
        self,
        every_n_epochs: int | None = 1,
        num_videos: int = 2,
        fps: float = 8.0,
        dirpath: str | Path | None = None,
        crf: int = 18,
        at_train_end: bool = False,
    ) -> None:
        super().__init__(every_n_epochs, at_train_end, dirpath)
        self.num_videos = num_videos
        self.fps = fps
        self.crf = crf
        self.clips: torch.Tensor | None = None
        self.last_path: Path | None = None

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx or not self._applies(pl_module):
            return
        have = 0 if self.clips is None else len(self.clips)
        if have >= self.num_videos:
            return
        new = video_of(batch)[: self.num_videos - have].detach().cpu()
        if self.clips is not None and new.shape[1:] != self.clips.shape[1:]:
            return  # keep clips of one shape
        self.clips = new if self.clips is None else torch.cat([self.clips, new])

    def run(self, trainer: L.Trainer, pl_module: VAEModule) -> None:
        if self.clips is None:
            log.warning("ReconstructionVideos: no validation clips seen yet; skipped")
            return
        x = self.clips.to(pl_module.device)
        x_hat, _, _ = pl_module.reconstruct(x)
        pairs = [
            np.concatenate([tensor_to_frames(real), tensor_to_frames(fake)], axis=2)  # (T, H, 2W, 3)
            for real, fake in zip(x, x_hat, strict=True)
        ]
        grid = np.concatenate(pairs, axis=1)  # clips stacked vertically: (T, n H, 2W, 3)
        path = self.output_dir(trainer) / f"step{trainer.global_step:07d}.mp4"
        write_video(trainer, grid, path, self.fps, self.crf, "val/reconstruction")
        self.last_path = path


# ---------------------------------------------------------------------------------------------- latents


class LatentStatistics(_VAEDiagnostic):
    """Mean / std of the VAE's latents on validation data -> the DiT's latent `shift` / `scale`.

    Statistics are accumulated in float64 over every latent value (all ranks, reduced), then
    `shift = mean`, `scale = 1 / std` (SD3's convention) are stored in the model with
    `vae.set_latent_stats` and written to `<dirpath>/latent_stats.json`
    with a histogram of the raw latents (`histogram`: `counts` in `HISTOGRAM_BINS` bins between
    `edges`, over `num_values` evenly strided values), plotted raw and normalised in
    `latent_histogram.png` (cf. the paper's Fig. 5).

    With `before_checkpoint` (the default) they are recomputed right before every checkpoint is
    written, from the weights being saved, and put into that checkpoint (`vae.latent_shift` /
    `vae.latent_scale`, and a record under `LATENT_STATS_KEY`): every checkpoint a DiT can load, `last.ckpt`
    included, carries the statistics of its own weights (`load_vae` warns about a checkpoint without them).

    Args:
        every_n_epochs: Validation runs between updates (None: only before checkpoints / at the end).
        at_train_end: Compute once when training ends (after the last checkpoint: a report only).
        before_checkpoint: Compute before every checkpoint and store the values in it.
        max_batches: Validation batches used.
        latent: `"mode"` (posterior mean, what `isa4d encode` stores by default) or `"sample"`.
        per_channel: One shift/scale per latent channel instead of SD3's single pair.
        apply: Store the values into the model (else only report them).
        dirpath: Output folder (default the run folder).
        histogram_values: Most latent values kept (evenly strided) for the histogram.
        seed: Seed of the posterior samples when `latent="sample"`.
    """

    rank_zero_only = False
    HISTOGRAM_BINS = 200

    def __init__(
        self,
        every_n_epochs: int | None = None,
        at_train_end: bool = False,
        before_checkpoint: bool = True,
        max_batches: int = 32,
        latent: str = "mode",
        per_channel: bool = False,
        apply: bool = True,
        dirpath: str | Path | None = None,
        histogram_values: int = 1_000_000,
        seed: int = 0,
    ) -> None:
        super().__init__(every_n_epochs, at_train_end, dirpath, max_batches)
        if latent not in ("mode", "sample"):
            raise ValueError(f"latent must be 'mode' or 'sample', got {latent!r}")
        self.latent = latent
        self.before_checkpoint = before_checkpoint
        self.per_channel = per_channel
        self.apply = apply
        self.histogram_values = histogram_values
        self.seed = seed
        self.last_stats: dict[str, Any] | None = None

    def latents(self, trainer: L.Trainer, pl_module: VAEModule) -> Iterator[torch.Tensor]:
        """Raw (unnormalised) latents (B, C, T', h, w) of the validation videos, in float32."""
        generator = torch.Generator(pl_module.device).manual_seed(self.seed)
        chunk = pl_module.hparams.val_chunk_frames
        for x in self.val_videos(trainer, pl_module):
            posterior = pl_module.vae.encode(x, chunk_frames=chunk)
            z = posterior.mode() if self.latent == "mode" else posterior.sample(generator)
            yield z.float()

    def compute(self, trainer: L.Trainer, pl_module: VAEModule) -> dict[str, Any] | None:
        channels = pl_module.vae.config["z_channels"]
        sums = torch.zeros(3, channels, dtype=torch.float64, device=pl_module.device)  # n, sum, sum^2
        kept: list[np.ndarray] = []
        for z in self.latents(trainer, pl_module):
            values = z.transpose(0, 1).reshape(channels, -1).double()
            sums[0] += values.shape[1]
            sums[1] += values.sum(1)
            sums[2] += values.square().sum(1)
            flat = z.flatten()
            stride = max(1, flat.numel() * self.max_batches // self.histogram_values)
            kept.append(flat[::stride].cpu().numpy())
        if trainer.world_size > 1:
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        if sums[0].sum() == 0:
            return None
        count, total, squares = sums[0], sums[1], sums[2]
        channel_mean = total / count
        channel_std = (squares / count - channel_mean.square()).clamp_min(0).sqrt()
        mean = total.sum() / count.sum()
        std = (squares.sum() / count.sum() - mean.square()).clamp_min(0).sqrt()
        shift = channel_mean if self.per_channel else mean
        scale = 1.0 / (channel_std if self.per_channel else std).clamp_min(1e-8)
        as_list = lambda t: t.tolist()  # noqa: E731
        return {
            "shift": as_list(shift),
            "scale": as_list(scale),
            "mean": float(mean),
            "std": float(std),
            "channel_mean": as_list(channel_mean),
            "channel_std": as_list(channel_std),
            "per_channel": self.per_channel,
            "latent": self.latent,
            "num_values": int(count.sum()),
            "global_step": trainer.global_step,
            "batch_step": pl_module.batch_step,
            "ema": pl_module.ema is not None,
            "_values": np.concatenate(kept) if kept else np.zeros(0, np.float32),
        }

    def run(self, trainer: L.Trainer, pl_module: VAEModule) -> None:
        stats = self.compute(trainer, pl_module)
        if stats is None:
            return
        values = stats.pop("_values")
        counts, edges = np.histogram(values, bins=self.HISTOGRAM_BINS)
        stats["histogram"] = {"counts": counts.tolist(), "edges": edges.tolist(), "num_values": values.size}
        if self.apply:
            device = pl_module.vae.latent_shift.device
            pl_module.vae.set_latent_stats(
                torch.as_tensor(stats["shift"], device=device), torch.as_tensor(stats["scale"], device=device)
            )
        self.last_stats = stats
        _log_metrics(trainer, {"latent/mean": stats["mean"], "latent/std": stats["std"]})
        if not trainer.is_global_zero:
            return
        folder = self.output_dir(trainer)
        write_json_atomic(folder / "latent_stats.json", stats)
        self._plot(stats, folder / "latent_histogram.png")

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Recompute the statistics from the weights being saved and store them in the checkpoint."""
        if not (self.before_checkpoint and self.apply) or not self._applies(pl_module):
            return
        self.last_stats = None
        self._maybe_run(trainer, pl_module)
        if self.last_stats is None:
            log.warning("LatentStatistics: no validation latents; checkpoint keeps its latent stats")
            return
        state = checkpoint["state_dict"]
        for name in ("latent_shift", "latent_scale"):
            state[f"vae.{name}"] = getattr(pl_module.vae, name).detach().clone()
        names = ("shift", "scale", "mean", "std", "num_values", "global_step")
        checkpoint[LATENT_STATS_KEY] = {name: self.last_stats[name] for name in names}

    @staticmethod
    def _plot(stats: dict[str, Any], path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        shift = np.asarray(stats["shift"], np.float64).mean()
        scale = np.asarray(stats["scale"], np.float64).mean()
        counts, edges = stats["histogram"]["counts"], np.asarray(stats["histogram"]["edges"])
        figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        axes[0].stairs(counts, edges, fill=True, color="tab:blue")
        axes[0].axvline(stats["mean"], color="k", linestyle="--", label=f"mean {stats['mean']:.3g}")
        axes[0].set_title(f"raw latents (std {stats['std']:.3g})")
        axes[0].legend()
        axes[1].stairs(counts, (edges - shift) * scale, fill=True, color="tab:orange")
        axes[1].set_title("normalised (z - shift) * scale")
        for axis in axes:
            axis.set_yscale("log")
        write_figure_atomic(path, figure)


# ------------------------------------------------------------------------------------- last-frame bias


class LastFrameBias(_VAEDiagnostic):
    """ "Last-frame bias" (paper Fig. 2, SPEC §1): what each latent frame knows about each of its frames.

    Latent frame `i >= 1` covers the 4 frames `4i-3 .. 4i`; position `j` (0..3) is frame `4(i-1)+1+j`,
    and latent frame 0 covers frame 0 alone. For every validation clip and latent frame `i`, Gaussian
    noise of `noise` times the latents' std is added to latent frame `i` only, and for each frame of
    its window is measured (mean absolute error on [-1, 1] frames, averaged over clips and windows):

    * `recon_l1`: reconstruction error of the frame without perturbation;
    * `perturbed_l1`: its error with latent frame `i` perturbed;
    * `sensitivity`: how much the decoded frame changes, `|x_hat_perturbed - x_hat|`: a latent that
      mostly encodes its window's last frame shows a sensitivity rising with the position;
    * `aux_l1` (when the model has the auxiliary decoder): error of the auxiliary decoder's image
      from sub-latent `j` against its frame.

    The sensitivity of a freshly initialised VAE of the same configuration (`untrained`) is measured
    too and subtracted (`sensitivity_minus_untrained`, [frame 0, p0 .. p3]): an untrained decoder's
    sensitivity already depends on the position, so only the difference measures training.

    Written to `<dirpath>/last_frame_bias.json` with a bar plot `last_frame_bias.png`; logged as
    `last_frame_bias/<metric>_p<j>` and `last_frame_bias/<metric>_frame0`.

    Args:
        every_n_epochs: Validation runs between measurements (None: only at the end of training).
        at_train_end: Measure once when training ends.
        max_batches: Validation batches used.
        noise: Perturbation size, in units of the latents' standard deviation.
        seed: Seed of the perturbations.
        dirpath: Output folder (default the run folder).
    """

    METRICS = ("recon_l1", "perturbed_l1", "sensitivity", "aux_l1")

    def __init__(
        self,
        every_n_epochs: int | None = None,
        at_train_end: bool = True,
        max_batches: int = 4,
        noise: float = 0.5,
        seed: int = 0,
        dirpath: str | Path | None = None,
    ) -> None:
        super().__init__(every_n_epochs, at_train_end, dirpath, max_batches)
        self.noise = noise
        self.seed = seed
        self.last_result: dict[str, Any] | None = None

    def untrained(self, pl_module: VAEModule) -> VideoVAE:
        """A freshly initialised VAE of the same configuration (seeded), the reference `run` subtracts:
        an untrained decoder already shows a position-dependent sensitivity."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            vae = VideoVAE.from_config(pl_module.vae.config)
        return vae.to(pl_module.device).eval()

    def measure(
        self, trainer: L.Trainer, pl_module: VAEModule, vae: VideoVAE | None = None
    ) -> dict[str, Any]:
        """Mean errors per metric: `{metric: [frame 0, position 0, ..., position 3]}` and counts.

        Args:
            vae: The VAE to measure (default: the module's; the auxiliary decoder only goes with that one).
        """
        aux = pl_module.loss.aux_decoder if pl_module.loss is not None and vae is None else None
        vae = pl_module.vae if vae is None else vae
        factor = vae.temporal_factor
        generator = torch.Generator(pl_module.device).manual_seed(self.seed)
        names = [name for name in self.METRICS if name != "aux_l1" or aux is not None]
        sums = {name: torch.zeros(1 + factor, dtype=torch.float64) for name in names}  # slot 0: frame 0
        counts = {name: torch.zeros(1 + factor, dtype=torch.float64) for name in names}
        clips = 0

        def add(name: str, slot: int | slice, value: torch.Tensor | float, count: float = 1.0) -> None:
            sums[name][slot] += value
            counts[name][slot] += count

        for x in self.val_videos(trainer, pl_module):
            x = x.float()
            size = x.shape[0]  # errors are batch means: weigh them by the batch size
            clips += size
            z = vae.encode(x).mode()
            x_hat = vae.decode(z).float()
            sigma = self.noise * z.float().std()
            for i in range(z.shape[2]):
                frames = [0] if i == 0 else list(range(factor * (i - 1) + 1, factor * i + 1))
                slots = [0] if i == 0 else list(range(1, 1 + factor))
                noise = torch.randn(z[:, :, i].shape, generator=generator, device=z.device)
                perturbed = z.clone()
                perturbed[:, :, i] += (sigma * noise).to(z.dtype)
                x_pert = vae.decode(perturbed).float()
                for frame, slot in zip(frames, slots, strict=True):
                    real, clean, moved = x[:, :, frame], x_hat[:, :, frame], x_pert[:, :, frame]
                    add("recon_l1", slot, size * float((clean - real).abs().mean()), size)
                    add("perturbed_l1", slot, size * float((moved - real).abs().mean()), size)
                    add("sensitivity", slot, size * float((moved - clean).abs().mean()), size)
            if aux is not None:
                predictions, targets = aux(z, x)
                errors = (predictions.float() - targets.float()).abs().mean(dim=(0, 1, 3, 4)).double().cpu()
                errors = errors.view(-1, factor)  # (latent frame i, sub-latent j)
                add("aux_l1", 0, size * float(errors[0].mean()), size)
                if len(errors) > 1:
                    add("aux_l1", slice(1, None), size * errors[1:].sum(0), size * (len(errors) - 1))
        means = {
            name: [float(s / c) if c > 0 else None for s, c in zip(sums[name], counts[name], strict=True)]
            for name in names
        }
        return {"means": means, "clips": clips, "windows": int(counts["recon_l1"][1])}

    def run(self, trainer: L.Trainer, pl_module: VAEModule) -> None:
        measured = self.measure(trainer, pl_module)
        means = measured["means"]
        untrained = self.measure(trainer, pl_module, self.untrained(pl_module))["means"]["sensitivity"]
        excess = [
            None if a is None or b is None else a - b
            for a, b in zip(means["sensitivity"], untrained, strict=True)
        ]
        result: dict[str, Any] = {
            "global_step": trainer.global_step,
            "batch_step": pl_module.batch_step,
            "num_clips": measured["clips"],
            "num_windows": measured["windows"],
            "noise": self.noise,
            "frame_0": {name: values[0] for name, values in means.items()},
            "positions": [
                {"position": j, **{name: values[1 + j] for name, values in means.items()}}
                for j in range(pl_module.vae.temporal_factor)
            ],
            # the same VAE configuration untrained, and the trained sensitivity minus it: what training did
            "untrained_sensitivity": untrained,
            "sensitivity_minus_untrained": excess,
        }
        self.last_result = result
        metrics = {
            f"last_frame_bias/{name}_{'frame0' if slot == 0 else f'p{slot - 1}'}": value
            for name, values in means.items()
            for slot, value in enumerate(values)
            if value is not None
        }
        _log_metrics(trainer, metrics)
        folder = self.output_dir(trainer)
        write_json_atomic(folder / "last_frame_bias.json", result)
        self._plot(result, list(means), folder / "last_frame_bias.png")

    @staticmethod
    def _plot(result: dict[str, Any], names: list[str], path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        labels = ["frame 0"] + [f"pos {entry['position']}" for entry in result["positions"]]
        where = np.arange(len(labels))
        errors = [name for name in names if name != "sensitivity"]
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))

        def values(name: str) -> list[float]:
            return [result["frame_0"][name] or 0.0] + [entry[name] or 0.0 for entry in result["positions"]]

        left.bar(where, values("sensitivity"), 0.6, color="tab:green")
        left.set_xticks(where, labels)
        left.set_title(f"sensitivity: mean |change| of x_hat, noise {result['noise']:g} std")
        width = 0.8 / len(errors)
        for k, name in enumerate(errors):
            right.bar(where + k * width, values(name), width, label=name)
        right.set_xticks(where + width * (len(errors) - 1) / 2, labels)
        right.set_title("mean |error| on [-1, 1]")
        right.legend(fontsize=8)
        figure.suptitle(
            f"last-frame bias (step {result['global_step']}, {result['num_clips']} clips)", y=1.03
        )
        write_figure_atomic(path, figure)


__all__ = ["LastFrameBias", "LatentStatistics", "ReconstructionVideos"]
