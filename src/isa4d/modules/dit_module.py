"""Stage 2 of ISA4D as a LightningModule: the ISA-DiT trained by flow matching on frozen-VAE latents.

`DiTModule` is assembled from objects built elsewhere (the `ISADiT`, the `FlowMatching` objective,
optimiser/scheduler factories) plus a `ConditionBuilder` (frozen stage-1 VAE loaded from `vae_ckpt`,
body model, fixed surface points; the control-video renderer of the 2-D baselines) that turns
`HumanVideoDataModule` batches (pixels, encoded in the step) or `HumanLatentDataModule` batches (the
latent cache of `isa4d encode`: no VAE encoder, no renderer) into `(x0, DiTConditions)` (docs/train_dit.md):

* training: flow-matching loss with condition dropout (reference, SMPL, camera, all three together;
  background too) on windows of the clip laid out as long-video generation lays them out: the clip's
  start, or a window starting mid-clip with a clean prefix (`training_window`);
* validation: `val/flow_loss`, the flow loss at fixed times with per-sample noise seeded by the clip
  key, so numbers are comparable across runs and checkpoints;
* optional EMA of the DiT weights (used for validation, sample videos and generation);
* checkpoints hold the DiT (and EMA) weights, the surface points, and the VAE checkpoint's path and
  config in the hyper-parameters, not the VAE weights;
* DDP, or FSDP2 with `ModelParallelStrategy` (`trainer=fsdp`, `configure_model`): the DiT and its EMA
  sharded layer by layer over all ranks, everything else replicated.

`DiTModule.load_from_checkpoint(ckpt)` (or `load_dit_module(ckpt)`) rebuilds it for inference.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from einops import rearrange
from torch import nn
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from isa4d.body import PROCEDURAL, load_body_model
from isa4d.diffusion import FlowMatching, flow_matching_loss
from isa4d.models.dit import DiTConditions, ISADiT, person_cells, slice_conditions
from isa4d.modules.checkpoints import check_sharded_checkpoint, read_checkpoint
from isa4d.modules.dit_batch import ConditionBuilder
from isa4d.modules.ema import EMA
from isa4d.modules.vae_module import load_vae
from isa4d.utils.files import atomic_write

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]

VAE_PREFIX = "builder.vae."
"""State-dict prefix of the frozen VAE: left out of `DiTModule` state dicts (it comes from `vae_ckpt`)."""
VAL_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


def _default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)


def _drop_vae_state(module: nn.Module, state: dict[str, Any], prefix: str, metadata: Any) -> None:
    """State-dict hook of `DiTModule`: leave the frozen VAE out (checkpoints, sharded or full)."""
    for key in [k for k in state if k.startswith(prefix + VAE_PREFIX)]:
        del state[key]


def _fill_vae_state(module: DiTModule, state: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook of `DiTModule`: the frozen VAE keeps its weights (from `vae_ckpt`)."""
    for name, value in module.builder.vae.state_dict().items():
        state[prefix + VAE_PREFIX + name] = value


def key_seed(key: str, seed: int = 0) -> int:
    """A stable per-sample seed from a clip key (CRC32, the same in every process and run)."""
    return (seed + zlib.crc32(key.encode())) % 2**63


def seeded_noise(
    keys: Sequence[str], shape: Sequence[int], device: torch.device, seed: int = 0
) -> torch.Tensor:
    """Standard normal noise `(B, *shape)`, sample b drawn from a generator seeded by `keys[b]`."""
    return torch.stack(
        [
            torch.randn(*shape, generator=torch.Generator().manual_seed(key_seed(key, seed))).to(device)
            for key in keys
        ]
    )


class DiTModule(L.LightningModule):
    """Trains an `ISADiT` with rectified flow matching on the latents of a frozen stage-1 VAE.

    Args:
        dit: The network, or its `config` dict (how `load_from_checkpoint` rebuilds it).
        vae_ckpt: Stage-1 `VAEModule` checkpoint; its (EMA) VAE encodes videos and decodes samples.
        body_source: Body model source (`"procedural"` or an SMPL-format `.npz`, see `load_body_model`).
        num_points: N, surface points per person (SPEC §2).
        point_seed: Seed of the surface points (saved in checkpoints anyway).
        flow: The objective (logit-normal times, condition dropout), or its fields as a dict.
        p_drop_background: Probability of training a sample without its background (zero latent),
            so that generation without a background is in distribution (not in the paper).
        optimizer: Factory `params -> Optimizer` (a Hydra `_partial_`); default AdamW(lr 1e-4, wd 0).
        scheduler: Optional factory `optimizer -> LRScheduler`, stepped every optimiser step.
        ema_decay: Keep an EMA of the DiT weights (e.g. 0.9999) used for validation and sampling.
        ema_warmup: Warm the EMA decay up as `(1 + n) / (10 + n)`.
        gradient_checkpointing: Recompute every DiT layer in backward (memory).
        sample_posterior: Train on posterior samples of the video latents (else the mean).
        val_times: Flow times of the validation loss (each sample is evaluated at all of them).
        val_seed: Seed of the validation noise (combined with each clip's key).
        window_latents: Latent frames the DiT trains on (`training_window`); None: the whole clip.
        window_prob: Probability that a training window starts mid-clip (with a clean prefix) rather
            than at the clip's start; needs clips longer than the window.
        prefix_latents: Clean prefix of a mid-clip window, in latent frames: generation's overlap
            (`overlap_frames / 4` of `sample_long(strategy="prefix")`).
        vae_config: Filled in from the VAE (a record for the hyper-parameters; ignored as input).
    """

    def __init__(
        self,
        dit: ISADiT | Mapping[str, Any],
        vae_ckpt: str | Path,
        body_source: str | Path = PROCEDURAL,
        num_points: int = 256,
        point_seed: int = 0,
        flow: FlowMatching | Mapping[str, Any] | None = None,
        p_drop_background: float = 0.1,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        ema_decay: float | None = None,
        ema_warmup: bool = True,
        gradient_checkpointing: bool = False,
        sample_posterior: bool = False,
        val_times: Sequence[float] = VAL_TIMES,
        val_seed: int = 0,
        window_latents: int | None = None,
        window_prob: float = 0.0,
        prefix_latents: int = 2,
        person_loss_weight: float = 1.0,
        vae_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if vae_ckpt is None or str(vae_ckpt) in ("", "???"):
            raise ValueError("DiTModule needs vae_ckpt: the stage-1 VAE checkpoint (model.vae_ckpt=PATH)")
        if not Path(vae_ckpt).is_file():
            raise FileNotFoundError(
                f"vae_ckpt={vae_ckpt}: no such file. Train the VAE first (`make train-vae`) and pass its "
                "checkpoint, e.g. model.vae_ckpt=logs/train_vae/runs/<run>/checkpoints/last.ckpt"
            )
        if not 0.0 <= p_drop_background <= 1.0:
            raise ValueError(f"p_drop_background must be in [0, 1], got {p_drop_background}")
        if not val_times or not all(0.0 < float(t) <= 1.0 for t in val_times):
            raise ValueError(f"val_times must be in (0, 1], got {list(val_times)}")
        if not 0.0 <= window_prob <= 1.0:
            raise ValueError(f"window_prob must be in [0, 1], got {window_prob}")
        if not person_loss_weight >= 1.0:
            raise ValueError(f"person_loss_weight must be >= 1 (1: the plain loss), got {person_loss_weight}")
        if window_latents is not None and not 0 <= prefix_latents < window_latents:
            raise ValueError(
                f"need 0 <= prefix_latents < window_latents, got {prefix_latents} and {window_latents}"
            )
        self.dit = dit if isinstance(dit, ISADiT) else ISADiT.from_config(dit)
        self.dit.set_gradient_checkpointing(gradient_checkpointing)
        vae = load_vae(vae_ckpt)
        self.builder = ConditionBuilder(
            vae,
            load_body_model(str(body_source)),
            num_points,
            point_seed,
            sample_posterior,
            control_video=self.dit.config["control_video"],
        )
        if flow is None or isinstance(flow, Mapping):
            flow = FlowMatching(**dict(flow or {}))
        self.flow = flow
        self.optimizer_factory = optimizer or _default_optimizer
        self.scheduler_factory = scheduler
        self.ema = EMA(self.dit, ema_decay, ema_warmup) if ema_decay is not None else None
        # State dicts (checkpoints, full or sharded; `load_state_dict`) leave the frozen VAE out.
        self.register_state_dict_post_hook(_drop_vae_state)
        self.register_load_state_dict_pre_hook(_fill_vae_state)
        self.save_hyperparameters(
            {
                "dit": self.dit.config,
                "vae_ckpt": str(vae_ckpt),
                "body_source": str(body_source),
                "num_points": num_points,
                "point_seed": point_seed,
                "flow": dataclasses.asdict(flow),
                "p_drop_background": p_drop_background,
                "ema_decay": ema_decay,
                "ema_warmup": ema_warmup,
                "gradient_checkpointing": gradient_checkpointing,
                "sample_posterior": sample_posterior,
                "val_times": [float(t) for t in val_times],
                "val_seed": val_seed,
                "window_latents": window_latents,
                "window_prob": window_prob,
                "prefix_latents": prefix_latents,
                "person_loss_weight": person_loss_weight,
                "vae_config": vae.config,
            }
        )

    @property
    def vae(self) -> nn.Module:
        """The frozen stage-1 VAE."""
        return self.builder.vae

    @contextmanager
    def ema_scope(self) -> Iterator[None]:
        """Run the block with the EMA weights in `self.dit` (a no-op without EMA, or when nested)."""
        if self.ema is None:
            yield
            return
        with self.ema.swapped(self.dit):
            yield

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: DiTConditions) -> torch.Tensor:
        """The velocity `(B, C, T', h, w)` of the DiT."""
        return self.dit(x_t, t, cond)

    # ---------------------------------------------------------------------------------- training

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory([p for p in self.dit.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_model(self) -> None:
        """Under `ModelParallelStrategy` (`trainer=fsdp`): FSDP2, the DiT sharded over all ranks.

        Every `ISADiT.shard_units()` layer is a unit of its own and the rest of the DiT the root unit,
        resharded after every forward (so the EMA `swap` and the optimiser always see the shards); the EMA
        is sharded like the DiT (`EMA.shard_like`). Parameters stay float32 (the trainer's `bf16-mixed`
        autocasts the compute); the frozen VAE, body model and point sampler are not sharded and keep
        their float32 weights and buffers. A no-op under other strategies and when already sharded.
        """
        if self.device_mesh is None or isinstance(self.dit, FSDPModule):
            return
        mesh = init_device_mesh(
            self.device_mesh.device_type, (self.device_mesh.size(),), mesh_dim_names=("shard",)
        )
        for unit in self.dit.shard_units():
            fully_shard(unit, mesh=mesh)
        fully_shard(self.dit, mesh=mesh, reshard_after_forward=True)
        if self.ema is not None:
            self.ema.shard_like(self.dit)

    def on_fit_start(self) -> None:
        if self.trainer.precision in ("16-mixed", "16"):
            log.warning("DiTModule is meant for bf16-mixed or 32-true; fp16 may overflow in attention")

    def drop_backgrounds(self, cond: DiTConditions) -> DiTConditions:
        """Zero the background latent of a random `p_drop_background` fraction of the samples."""
        p = self.hparams.p_drop_background
        if cond.background_latent is None or p <= 0:
            return cond
        keep = torch.rand(cond.batch_size, device=cond.background_latent.device) >= p
        return dataclasses.replace(
            cond, background_latent=cond.background_latent * rearrange(keep.float(), "b -> b 1 1 1 1")
        )

    def clip_start(self, x0: torch.Tensor, cond: DiTConditions) -> tuple[torch.Tensor, DiTConditions]:
        """The first `window_latents` latent frames of clips `(B, C, T', h, w)` and their conditions."""
        window = self.hparams.window_latents
        if window is None or window == x0.shape[2]:
            return x0, cond
        if window > x0.shape[2]:
            raise ValueError(f"window_latents={window} exceeds the clips' {x0.shape[2]} latent frames")
        return x0[:, :, :window], slice_conditions(cond, 0, window, x0.shape[2])

    def training_window(
        self, x0: torch.Tensor, cond: DiTConditions
    ) -> tuple[torch.Tensor, DiTConditions, int]:
        """The window the DiT trains on, in one of the two layouts `sample_long(strategy="prefix")` gives it:
        the clip's start (`clip_start`: latent frame 0 is the single first frame), or, with probability
        `window_prob`, `window_latents` frames starting at a random latent frame `a >= 1` (every latent
        covers four frames, no padding slot) whose first `prefix_latents` frames are a clean prefix.

        Returns:
            Latents `(B, C, W, h, w)`, their conditions (`slice_conditions`), the clean prefix length.
        """
        L, window = x0.shape[2], self.hparams.window_latents
        if window is None or window >= L or float(torch.rand(())) >= self.hparams.window_prob:
            return *self.clip_start(x0, cond), 0
        start = int(torch.randint(1, L - window + 1, ()))
        stop = start + window
        return x0[:, :, start:stop], slice_conditions(cond, start, stop, L), self.hparams.prefix_latents

    def person_weights(self, x0: torch.Tensor, cond: DiTConditions) -> torch.Tensor | None:
        """Loss weights `(B, 1, T', h, w)`: `person_loss_weight` on the latent cells that show a person
        (`person_cells`, from the body points and cameras), 1 elsewhere; None for a weight of 1."""
        weight = self.hparams.person_loss_weight
        if weight == 1.0:
            return None
        cells = person_cells(cond, x0.shape[2], (x0.shape[3], x0.shape[4]))
        return 1.0 + (weight - 1.0) * cells[:, None].to(x0.dtype)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        """Flow-matching loss with condition dropout on a `training_window` of the batch's latents (person
        cells weighted by `person_loss_weight`)."""
        x0, cond, prefix = self.training_window(*self.builder(batch))
        weights = self.person_weights(x0, cond)
        loss = self.flow.loss(
            self.dit, x0, self.drop_backgrounds(cond), loss_mask=weights, clean_prefix=prefix
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.dit)

    # ---------------------------------------------------------------------------------- validation

    @torch.no_grad()
    def fixed_time_losses(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Flow loss at each of `val_times`, `(len(val_times),)`, averaged over the batch.

        Latents are posterior means (of the clip's start, `clip_start`), the noise of each sample is seeded
        by its key (and `val_seed`), no condition is dropped: the numbers depend only on the weights and
        the data.
        """
        x0, cond = self.clip_start(self.builder.encode(batch["video"]), self.builder.conditions(batch))
        noise = seeded_noise(batch["key"], x0.shape[1:], x0.device, self.hparams.val_seed).to(x0.dtype)
        losses = []
        for time in self.hparams.val_times:
            t = torch.full((x0.shape[0],), float(time), device=x0.device)
            losses.append(flow_matching_loss(self.dit, x0, cond, t=t, noise=noise))
        return torch.stack(losses).float()

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        with self.ema_scope():
            losses = self.fixed_time_losses(batch)
        size = len(batch["key"])
        self.log("val/flow_loss", losses.mean(), prog_bar=True, sync_dist=True, batch_size=size)
        for time, loss in zip(self.hparams.val_times, losses, strict=True):
            self.log(f"val/flow_loss_t{time:g}", loss, sync_dist=True, batch_size=size)
        return losses

    # ---------------------------------------------------------------------------------- checkpoints

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is None:  # a sharded checkpoint: the strategy has loaded the weights already
            return
        has_ema = any(k.startswith("ema.") for k in state)
        if self.ema is None and has_ema:
            for key in [k for k in state if k.startswith("ema.")]:
                del state[key]
        elif self.ema is not None and not has_ema:
            log.info("checkpoint has no EMA weights; the EMA starts from its DiT weights")
            for name, value in self.ema.state_dict().items():
                source = "dit." + name.removeprefix("module.")
                state["ema." + name] = state[source].clone() if source in state else value.clone()


def consolidate_checkpoint(folder: str | Path, out: str | Path) -> Path:
    """A one-file DiT checkpoint (as DDP writes it; what `load_dit_module` reads) from a sharded one (the
    folder a `trainer=fsdp` run saves): the gathered weights and EMA with the folder's metadata, without
    optimiser states (for inference, not for resuming). Needs the full weights in CPU memory.

    Args:
        folder: A sharded checkpoint folder (`*.distcp` files, `.metadata` and `meta.pt`).
        out: The file to write (atomically).

    Raises:
        MissingFileError: if `folder` does not exist.
        CheckpointError: if `folder` is not a sharded checkpoint folder, or holds other objects than
            tensors and plain containers (`check_sharded_checkpoint`).
    """
    checkpoint = check_sharded_checkpoint(folder)  # no code from the files, before torch reads them
    with warnings.catch_warnings():  # "torch.distributed ... uninitialized": one process reads, as meant
        warnings.simplefilter("ignore", UserWarning)
        checkpoint |= _load_state_dict_from_keys({"state_dict"}, checkpoint_id=folder)
    with atomic_write(out) as file:
        torch.save(checkpoint, file)
    return Path(out)


def load_dit_module(
    ckpt_path: str | Path,
    vae_ckpt: str | Path | None = None,
    map_location: str | torch.device = "cpu",
) -> DiTModule:
    """A trained `DiTModule` in eval mode, frozen.

    Args:
        ckpt_path: A checkpoint written by `DiTModule` training.
        vae_ckpt: The stage-1 checkpoint to use instead of the one recorded in the DiT checkpoint.
        map_location: Device of the returned module.

    Both checkpoints are read with `weights_only=True` (`read_checkpoint`): tensors and plain containers
    only, no code from the files.

    Raises:
        MissingFileError: if a checkpoint does not exist.
        CheckpointError: if a file is not a checkpoint of its stage, or holds other objects.
    """
    read_checkpoint(ckpt_path, stage="dit", mmap=True)  # the clear error, before Lightning reads it
    overrides = {} if vae_ckpt is None else {"vae_ckpt": str(vae_ckpt)}
    module = DiTModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True, **overrides)
    return module.to(map_location).requires_grad_(False).eval()


__all__ = ["VAL_TIMES", "DiTModule", "consolidate_checkpoint", "key_seed", "load_dit_module", "seeded_noise"]
