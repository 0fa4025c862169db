"""Stage 1 of ISA4D as a LightningModule: the causal video VAE trained with its GAN objective.

`VAEModule` is assembled from objects built elsewhere (the `VideoVAE`, the `VAELoss` with its
discriminators, LPIPS and auxiliary decoder, optimiser and scheduler factories) and only owns the
training procedure (docs/train_vae.md):

* manual optimisation: per batch a generator step (VAE + auxiliary decoder) and a discriminator step,
  each under `toggled_optimizer`, with gradient-norm clipping;
* `disc_start` counted by the module's own batch counter `batch_step` (saved in checkpoints);
* an optional EMA copy of the VAE weights used for validation and export (`ema_scope()`);
* every loss term logged (`train/...`, `val/...`), validation PSNR / SSIM / MAE on [0, 1] frames.

`load_vae(ckpt)` rebuilds the trained `VideoVAE` (EMA weights if any) from a checkpoint without the
training-only networks; `VAEModule.load_from_checkpoint(ckpt)` rebuilds the module for inference.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from einops import rearrange
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from isa4d.errors import ConfigError
from isa4d.losses import LPIPS, VAELoss
from isa4d.models.vae import AuxImageDecoder, DiagonalGaussian, VideoVAE, load_sd3_weights
from isa4d.modules.checkpoints import read_checkpoint
from isa4d.modules.ema import EMA

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]

CHECKPOINT_KEY = "isa4d_vae_module"
"""Checkpoint entry holding the module's own counters (`batch_step`)."""
LATENT_STATS_KEY = "isa4d_latent_stats"
"""Checkpoint entry recording the latent statistics stored in it (`callbacks.LatentStatistics`)."""


# ---------------------------------------------------------------------------------------------- helpers


def video_of(batch: Any) -> torch.Tensor:
    """The video of a batch: `batch["video"]` (the DataModules' layout) or the tensor itself.

    Returns:
        (B, 3, T, H, W) float in [-1, 1].
    """
    video = batch["video"] if isinstance(batch, Mapping) else batch
    if not isinstance(video, torch.Tensor) or video.ndim != 5:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"expected a video batch (B, 3, T, H, W) under 'video', got {shape}")
    return video


def frames_to_tensor(frames: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 RGB frames `(T, H, W, 3)` (or one image `(H, W, 3)`) -> (1, 3, T, H, W) float in [-1, 1]."""
    frames = frames[None] if frames.ndim == 3 else frames
    x = torch.tensor(frames, device=device)  # a copy: decoded frames may be read-only
    return rearrange(x, "t h w c -> 1 c t h w").float() / 127.5 - 1.0


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) float in [-1, 1] -> uint8 RGB frames (T, H, W, 3) (rounded, clamped)."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return rearrange(x, "c t h w -> t h w c").cpu().numpy()


def _state_dict_of(checkpoint: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError("checkpoint has no state dict")
    return state


def _sub_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


# ---------------------------------------------------------------------------------------------- loss


def build_vae_loss(
    lpips: Mapping[str, Any] | None = None,
    disc_2d: nn.Module | None = None,
    disc_3d: nn.Module | None = None,
    aux_decoder: AuxImageDecoder | None = None,
    perceptual_weight: float = 1.0,
    **weights: Any,
) -> VAELoss:
    """Build the `VAELoss` of a model config, creating LPIPS only when it is used.

    Args:
        lpips: `{"vgg_path": ..., "lin_path": ...}` (arguments of `isa4d.losses.LPIPS`), or None for
            no perceptual term.
        disc_2d: Frame discriminator or None.
        disc_3d: Clip discriminator or None.
        aux_decoder: Auxiliary image decoder (image-decoding regularisation) or None.
        perceptual_weight: λ_p; 0 turns LPIPS off (and its weight files are then not needed).
        **weights: The other `VAELoss` arguments (`l1_weight`, `kl_weight`, `gan_2d_weight`,
            `gan_3d_weight`, `reg_weight`, `disc_start`, `max_adaptive_weight`).

    Raises:
        FileNotFoundError: if LPIPS is on and a weight file is missing (saying how to turn it off).
    """
    perceptual = None
    if lpips is not None and perceptual_weight > 0:
        try:
            perceptual = LPIPS(**dict(lpips))
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"{error}\nTo train without LPIPS: model.loss.lpips=null or model.loss.perceptual_weight=0."
            ) from error
    return VAELoss(
        perceptual=perceptual,
        disc_2d=disc_2d,
        disc_3d=disc_3d,
        aux_decoder=aux_decoder,
        perceptual_weight=perceptual_weight,
        **weights,
    )


def _default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.9))


# ---------------------------------------------------------------------------------------------- module


class VAEModule(L.LightningModule):
    """Trains a `VideoVAE` with L1 + LPIPS + KL + 2-D/3-D GAN + image-decoding regularisation.

    Args:
        vae: The model, or its `vae.config` dict (how `load_from_checkpoint` rebuilds it).
        loss: The objective with its training-only networks; None for an inference-only module
            (what `load_from_checkpoint` gives: the discriminators and auxiliary decoder are dropped).
        optimizer: Factory `params -> Optimizer` for the generator (VAE + auxiliary decoder), e.g. a
            Hydra `_partial_`; default Adam(lr 1e-4, betas (0.5, 0.9)).
        disc_optimizer: The same for the discriminators (same default).
        scheduler: Optional factory `optimizer -> LRScheduler` for the generator, stepped every batch.
        disc_scheduler: The same for the discriminators, stepped every batch from `disc_start` on.
        ema_decay: Keep an EMA of the VAE weights with this decay (e.g. 0.999), used for validation,
            the callbacks and export; None for no EMA.
        ema_warmup: Warm the EMA decay up as `(1 + n) / (10 + n)`.
        gradient_clip_val: Clip each optimiser's gradient norm to this (None: no clipping).
        sample_posterior: Decode a posterior sample in training (True) or its mean.
        gradient_checkpointing: Recompute the VAE's block activations in backward (memory).
        val_chunk_frames: Encode/decode validation clips in temporal chunks of this many frames (a
            multiple of 4; `val_chunk_frames / 4` latents when decoding), or None for one shot.
        init_from_sd3: Inflate SD3's 2-D VAE weights from this local file or folder before training.
        init_from_ckpt: Initialise the model weights (VAE, EMA, auxiliary decoder, discriminators)
            from this stage-1 checkpoint; optimiser state and counters are not taken.
        shortcut_init_batches: With the VAE's `BlockShortcut`, set it to the PCA of the blocks of
            this many training batches when a fresh run starts (`init_shortcut_from_data`); 0: keep its
            default (per-frame means). Not for runs initialised from SD3 weights or a checkpoint.
    """

    def __init__(
        self,
        vae: VideoVAE | Mapping[str, Any],
        loss: VAELoss | None = None,
        optimizer: OptimizerFactory | None = None,
        disc_optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        disc_scheduler: SchedulerFactory | None = None,
        ema_decay: float | None = None,
        ema_warmup: bool = True,
        gradient_clip_val: float | None = 1.0,
        sample_posterior: bool = True,
        gradient_checkpointing: bool = False,
        val_chunk_frames: int | None = None,
        init_from_sd3: str | Path | None = None,
        init_from_ckpt: str | Path | None = None,
        shortcut_init_batches: int = 0,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.vae = vae if isinstance(vae, VideoVAE) else VideoVAE.from_config(vae)
        self.vae.set_gradient_checkpointing(gradient_checkpointing)
        self.loss = loss
        self.optimizer_factory = optimizer or _default_optimizer
        self.disc_optimizer_factory = disc_optimizer or _default_optimizer
        self.scheduler_factory = scheduler
        self.disc_scheduler_factory = disc_scheduler
        if val_chunk_frames is not None and val_chunk_frames % self.vae.temporal_factor:
            raise ValueError(f"val_chunk_frames must be a multiple of {self.vae.temporal_factor}")
        # Only what rebuilds the model goes into the hyper-parameters (`load_from_checkpoint` passes
        # them back to __init__); the initialisation sources are recorded under a key __init__ ignores.
        self.save_hyperparameters(
            {
                "vae": self.vae.config,
                "ema_decay": ema_decay,
                "ema_warmup": ema_warmup,
                "gradient_clip_val": gradient_clip_val,
                "sample_posterior": sample_posterior,
                "gradient_checkpointing": gradient_checkpointing,
                "val_chunk_frames": val_chunk_frames,
                "shortcut_init_batches": shortcut_init_batches,
                "initialised_from": {
                    "sd3": None if init_from_sd3 is None else str(init_from_sd3),
                    "ckpt": None if init_from_ckpt is None else str(init_from_ckpt),
                },
            }
        )
        if init_from_sd3 is not None:
            report = load_sd3_weights(init_from_sd3, self.vae)
            log.info("VAE initialised from SD3 weights %s: %s", init_from_sd3, report)
        ema_state = self._init_from_checkpoint(init_from_ckpt) if init_from_ckpt is not None else {}
        self.ema = EMA(self.vae, ema_decay, ema_warmup) if ema_decay is not None else None
        if self.ema is not None and ema_state:
            self.ema.load_state_dict(ema_state)
        self.batch_step = 0
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)

    # ---------------------------------------------------------------------------------- weights

    def _init_from_checkpoint(self, path: str | Path) -> dict[str, torch.Tensor]:
        """Load the model weights of a stage-1 checkpoint; returns its EMA state (empty if none)."""
        state = _state_dict_of(read_checkpoint(path))
        vae_state = _sub_state(state, "vae.")
        if not vae_state:
            raise ValueError(f"{path} holds no `vae.*` weights: not a VAEModule checkpoint")
        self.vae.load_state_dict(vae_state)
        if self.loss is not None:
            loss_state = _sub_state(state, "loss.")
            target = self.loss.state_dict()
            usable = {k: v for k, v in loss_state.items() if k in target and target[k].shape == v.shape}
            skipped = sorted(set(target) - set(usable))
            self.loss.load_state_dict(usable, strict=False)
            log.info(
                "Initialised from %s: VAE, %d loss tensors%s",
                path,
                len(usable),
                f" ({len(skipped)} not in the checkpoint or of another shape, kept fresh)" if skipped else "",
            )
        return _sub_state(state, "ema.")

    @contextmanager
    def ema_scope(self, context: str | None = None) -> Iterator[None]:
        """Run the block with the EMA weights in `self.vae` (a no-op without EMA, or when nested).

        Args:
            context: A name for the debug log.
        """
        if self.ema is None:
            yield
            return
        with self.ema.swapped(self.vae):
            if context:
                log.debug("%s: EMA weights in", context)
            yield

    def export_vae(self, use_ema: bool = True) -> VideoVAE:
        """A frozen eval-mode copy of the VAE (EMA weights if kept and `use_ema`), latent stats included."""
        with self.ema_scope() if use_ema else nullcontext():
            vae = copy.deepcopy(self.vae)
        vae.set_gradient_checkpointing(False)
        return vae.requires_grad_(False).eval()

    # ---------------------------------------------------------------------------------- coding

    def reconstruct(
        self, x: torch.Tensor, chunk_frames: int | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian, torch.Tensor]:
        """Evaluation coding: posterior mean, decoded (chunked if asked); EMA weights when kept.

        Args:
            x: Video, (B, 3, T, H, W) in [-1, 1].
            chunk_frames: Temporal chunk (frames); defaults to `val_chunk_frames`.

        Returns:
            Reconstruction (B, 3, T, H, W), posterior, latent mean (B, 16, T', H/8, W/8).
        """
        chunk = chunk_frames if chunk_frames is not None else self.hparams.val_chunk_frames
        with self.ema_scope():
            posterior = self.vae.encode(x, chunk_frames=chunk)
            z = posterior.mode()
            latents = None if chunk is None else chunk // self.vae.temporal_factor
            return self.vae.decode(z, chunk_latents=latents), posterior, z

    # ---------------------------------------------------------------------------------- training

    def configure_optimizers(self) -> Any:
        if self.loss is None:
            raise RuntimeError("this VAEModule has no loss (rebuilt for inference); it cannot be trained")
        generator = list(self.vae.parameters())
        if self.loss.aux_decoder is not None:
            generator += list(self.loss.aux_decoder.parameters())
        optimizers = [self.optimizer_factory(generator)]
        factories = [self.scheduler_factory]
        discriminator = list(self.loss.discriminator_parameters())
        if discriminator:
            optimizers.append(self.disc_optimizer_factory(discriminator))
            factories.append(self.disc_scheduler_factory)
        schedulers = [f(opt) for f, opt in zip(factories, optimizers, strict=True) if f is not None]
        if schedulers and len(schedulers) != len(optimizers):
            raise ValueError("give a scheduler for both optimisers or for neither")
        return (optimizers, schedulers) if schedulers else optimizers

    def configure_model(self) -> None:
        """Refuse `ModelParallelStrategy` (`trainer=fsdp`, made for the multi-billion DiT): the VAE and its
        discriminators fit one GPU and train with DDP."""
        if self.device_mesh is not None:
            raise ConfigError(
                "VAEModule does not support trainer=fsdp (ModelParallelStrategy): train the VAE with "
                "trainer=ddp trainer.strategy.find_unused_parameters=true"
            )

    def on_fit_start(self) -> None:
        if self.trainer.precision in ("16-mixed", "16"):
            raise ValueError(
                "VAEModule does not support fp16 (precision=16-mixed): its discriminator optimiser steps "
                "without gradients before disc_start, which GradScaler refuses; use bf16-mixed or 32-true"
            )
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get("find_unused_parameters"):
            raise ValueError(
                "VAEModule under DDP needs trainer.strategy.find_unused_parameters=true: the generator and "
                "discriminator backward passes each leave the other's parameters without gradients"
            )
        fresh = self.batch_step == 0 and not any(self.hparams.initialised_from.values())
        if fresh and self.hparams.shortcut_init_batches and self.vae.shortcut is not None:
            if self.trainer.datamodule is None:
                raise ValueError(
                    "shortcut_init_batches needs the training data as a datamodule (trainer.fit(module, "
                    "datamodule=...)); or set model.shortcut_init_batches=0"
                )
            self.init_shortcut_from_data(self.trainer.datamodule.train_dataloader())

    @torch.no_grad()
    def init_shortcut_from_data(self, loader: Iterable[Any]) -> None:
        """Set the `BlockShortcut` to the PCA of the blocks of the first `shortcut_init_batches`
        batches of `loader` (computed on global rank 0, broadcast to the others)."""
        shortcut = self.vae.shortcut
        blocks = [
            shortcut.blocks(video_of(batch).to(self.device).float()).flatten(0, -2)
            for _, batch in zip(range(self.hparams.shortcut_init_batches), loader, strict=False)
        ]
        kept = shortcut.init_from_blocks(torch.cat(blocks))
        for buffer in shortcut.buffers():
            buffer.copy_(self.trainer.strategy.broadcast(buffer, src=0))
        log.info(
            "VAE block shortcut: PCA of %d blocks (%d batches) keeps %.1f %% of their variance",
            sum(len(b) for b in blocks),
            len(blocks),
            100 * float(kept),
        )

    def _optimizers(self) -> tuple[Any, Any | None]:
        optimizers = self.optimizers()
        if not isinstance(optimizers, list):
            return optimizers, None
        return optimizers[0], (optimizers[1] if len(optimizers) > 1 else None)

    def _clip(self, optimizer: Any) -> None:
        if self.hparams.gradient_clip_val:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.hparams.gradient_clip_val, gradient_clip_algorithm="norm"
            )

    def disc_active(self) -> bool:
        """Whether the GAN terms are on at the current `batch_step`."""
        return (
            self.loss is not None
            and bool(self.loss.discriminators())
            and self.batch_step >= self.loss.disc_start
        )

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One generator step, then one discriminator step (a no-op before `disc_start`).

        Both optimisers step on every batch, so `trainer.global_step` (Lightning counts optimiser
        steps) is 2 per batch with discriminators; `batch_step` counts batches.
        """
        if self.loss is None:
            raise RuntimeError("this VAEModule has no loss (rebuilt for inference); it cannot be trained")
        x = video_of(batch)
        step = self.batch_step
        opt_g, opt_d = self._optimizers()
        with self.toggled_optimizer(opt_g):
            posterior = self.vae.encode(x)
            z = posterior.sample() if self.hparams.sample_posterior else posterior.mode()
            x_hat = self.vae.decode(z)
            total, logs = self.loss(x, x_hat, posterior, step, z=z, last_layer=self.vae.last_layer)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(total)
            self._clip(opt_g)
            opt_g.step()
        if self.ema is not None:
            self.ema.update(self.vae)
        active = self.disc_active()
        if opt_d is not None:
            with self.toggled_optimizer(opt_d):
                opt_d.zero_grad(set_to_none=True)
                if active:
                    d_total, d_logs = self.loss.discriminator_loss(x, x_hat, step)
                    self.manual_backward(d_total)
                    self._clip(opt_d)
                    logs.update(d_logs)
                # Without gradients (before disc_start) the step changes nothing, not even Adam's
                # state; it keeps trainer.global_step at two optimiser steps per batch.
                opt_d.step()
        self._step_schedulers(active)
        self.batch_step += 1
        self.log("train/loss", logs["total"], prog_bar=True, batch_size=x.shape[0])
        self.log_dict({f"train/{k}": v.float() for k, v in logs.items()}, batch_size=x.shape[0])

    def _step_schedulers(self, disc_active: bool) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
        schedulers[0].step()
        if len(schedulers) > 1 and disc_active:
            schedulers[1].step()

    # ---------------------------------------------------------------------------------- validation

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Reconstruct with the posterior mean (EMA weights when kept); log loss terms and metrics."""
        x = video_of(batch)
        x_hat, posterior, z = self.reconstruct(x)
        size = x.shape[0]
        if self.loss is not None:
            _, logs = self.loss(x, x_hat, posterior, self.batch_step, z=z)  # adaptive weight 0 here
            self.log("val/loss", logs["total"], prog_bar=True, sync_dist=True, batch_size=size)
            self.log_dict({f"val/{k}": v.float() for k, v in logs.items()}, sync_dist=True, batch_size=size)
        real = rearrange((x.float().clamp(-1, 1) + 1) / 2, "b c t h w -> (b t) c h w")
        fake = rearrange((x_hat.float().clamp(-1, 1) + 1) / 2, "b c t h w -> (b t) c h w")
        mae = (real - fake).abs().mean()
        if self.loss is None:
            self.log("val/loss", mae, sync_dist=True, batch_size=size)
        self.val_psnr.update(fake, real)
        self.val_ssim.update(fake, real)
        self.log("val/mae", mae, sync_dist=True, batch_size=size)
        self.log("val/psnr", self.val_psnr, prog_bar=True, batch_size=size)
        self.log("val/ssim", self.val_ssim, batch_size=size)
        return {"x_hat": x_hat.detach(), "z": z.detach()}

    # ---------------------------------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"batch_step": self.batch_step}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.batch_step = int(checkpoint.get(CHECKPOINT_KEY, {}).get("batch_step", 0))
        state = checkpoint.get("state_dict")
        if state is None:
            return
        if self.loss is None:  # inference-only module: drop the training-only networks
            for key in [k for k in state if k.startswith("loss.")]:
                del state[key]
        has_ema = any(k.startswith("ema.") for k in state)
        if self.ema is None and has_ema:
            for key in [k for k in state if k.startswith("ema.")]:
                del state[key]
        elif self.ema is not None and not has_ema:  # EMA switched on for a run without one: start it here
            log.info("checkpoint has no EMA weights; the EMA starts from its VAE weights")
            for name, _ in self.vae.named_parameters():
                state[f"ema.module.{name}"] = state[f"vae.{name}"].clone()
            for name, buffer in self.ema.named_buffers():
                source = f"vae.{name.removeprefix('module.')}"
                state[f"ema.{name}"] = state[source].clone() if source in state else buffer.clone()


# ---------------------------------------------------------------------------------------------- loading


def load_vae(
    ckpt_path: str | Path, use_ema: bool = True, map_location: str | torch.device = "cpu"
) -> VideoVAE:
    """The trained VAE of a `VAEModule` checkpoint, frozen and in eval mode.

    Args:
        ckpt_path: A Lightning checkpoint written by `VAEModule` training.
        use_ema: Take the EMA weights when the checkpoint has them.
        map_location: Device of the returned model.

    Returns:
        The `VideoVAE` (its latent `shift`/`scale` as trained / set by `LatentStatistics`).

    Raises:
        MissingFileError: if the file does not exist.
        CheckpointError: if it is not a `VAEModule` checkpoint (`read_checkpoint`).
    """
    checkpoint = read_checkpoint(ckpt_path, stage="vae")
    config = checkpoint["hyper_parameters"]["vae"]
    state = _state_dict_of(checkpoint)
    if LATENT_STATS_KEY not in checkpoint:
        log.warning(
            "%s carries no latent statistics (trained without callbacks.LatentStatistics): its latents are "
            "not normalised for a DiT (the stored shift/scale are used as they are)",
            ckpt_path,
        )
    vae = VideoVAE.from_config(config)
    weights = _sub_state(state, "vae.")
    ema = _sub_state(state, "ema.module.")
    if use_ema and ema:
        weights.update({name: ema[name] for name, _ in vae.named_parameters()})
    vae.load_state_dict(weights)
    return vae.requires_grad_(False).eval().to(map_location)


__all__ = [
    "LATENT_STATS_KEY",
    "VAEModule",
    "build_vae_loss",
    "frames_to_tensor",
    "load_vae",
    "tensor_to_frames",
    "video_of",
]
