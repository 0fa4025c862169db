"""Stage-2 callback: sample videos of the ISA-DiT during training (docs/train_dit.md).

`DiTSamples` keeps the first validation clips, and after every `every_n_epochs`-th validation run
generates them from their conditions (reference, SMPL, cameras, background) with the Euler CFG
sampler, writing `<run>/samples/step<global step>.mp4`: ground truth | generated | the body's surface
points projected with the clip's cameras onto the ground truth (checks conventions at a glance).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.distributed.fsdp import FSDPModule

from isa4d.callbacks.vae import _VAEDiagnostic, write_video
from isa4d.diffusion import sample_long
from isa4d.geometry import project_points
from isa4d.models.dit.conditions import FRAMES_PER_LATENT
from isa4d.modules.dit_module import DiTModule, seeded_noise
from isa4d.modules.vae_module import tensor_to_frames

log = logging.getLogger(__name__)

PERSON_COLOURS = np.array([[255, 64, 64], [64, 255, 64], [64, 128, 255], [255, 255, 64]], dtype=np.uint8)
"""RGB colour of person p's points (cycled)."""


def take(batch: Any, index: int) -> Any:
    """Sample `index` of a batch as a batch of one (tensors sliced, lists indexed, dicts recursed), on CPU."""
    if isinstance(batch, torch.Tensor):
        return batch[index : index + 1].detach().cpu()
    if isinstance(batch, Mapping):
        return {key: take(value, index) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        return [batch[index]]
    return batch


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch


def draw_points(
    frames: np.ndarray,
    points: torch.Tensor,
    person_mask: torch.Tensor,
    K: torch.Tensor,
    R: torch.Tensor,
    t: torch.Tensor,
) -> np.ndarray:
    """Frames with body points projected onto them, one colour per person.

    Args:
        frames: `(T, H, W, 3)` uint8.
        points: `(P, T, N, 3)` world points.
        person_mask: `(P,)` bool, which persons to draw.
        K, R, t: `(T, 3, 3)`, `(T, 3, 3)`, `(T, 3)` cameras of the frames (OpenCV, world-to-camera).

    Returns:
        A copy of `frames` with each visible point's nearest pixel coloured.
    """
    out = frames.copy()
    height, width = frames.shape[1:3]
    uv, depth = project_points(points.float(), K[None].float(), R[None].float(), t[None].float())
    pixels = uv.round().long().cpu().numpy()  # (P, T, N, 2)
    visible = (depth > 0).cpu().numpy()
    frame_index = np.broadcast_to(np.arange(frames.shape[0])[:, None], visible.shape[1:])
    for person in np.flatnonzero(person_mask.cpu().numpy()):
        u, v = pixels[person, ..., 0], pixels[person, ..., 1]
        keep = visible[person] & (u >= 0) & (u < width) & (v >= 0) & (v < height)
        out[frame_index[keep], v[keep], u[keep]] = PERSON_COLOURS[person % len(PERSON_COLOURS)]
    return out


class DiTSamples(_VAEDiagnostic):
    """Ground truth | generated | projected SMPL points, for fixed validation clips.

    The first `num_samples` validation clips are kept (on the CPU). Each is generated from seeded noise
    (the clip key and `seed`) with `sample_long` in the module's training windows (`num_steps`, CFG
    `guidance_scale`, time `shift`),
    with the EMA weights when kept, and all are stacked vertically into one mp4
    `<dirpath>/step<global step>.mp4` (default `dirpath`: `<run>/samples`). The middle frame is logged
    as the image `val/samples` to a TensorBoardLogger, if there is one.

    Args:
        every_n_epochs: Validation runs between videos.
        num_samples: Clips per video.
        num_steps: Euler steps.
        guidance_scale: Classifier-free guidance scale (1: no unconditional pass).
        shift: SD3 time shift of the sampler.
        seed: Seed of the noise (with each clip's key).
        fps: Frame rate of the mp4.
        dirpath: Output folder.
        crf: H.264 quality.
        at_train_end: Also write one when training ends.
    """

    module_type = DiTModule
    output_subdir = "samples"

    def __init__(
        self,
        every_n_epochs: int | None = 1,
        num_samples: int = 2,
        num_steps: int = 10,
        guidance_scale: float = 2.0,
        shift: float = 3.0,
        seed: int = 0,
        fps: float = 8.0,
        dirpath: str | Path | None = None,
        crf: int = 18,
        at_train_end: bool = False,
    ) -> None:
        super().__init__(every_n_epochs, at_train_end, dirpath)
        self.num_samples = num_samples
        self.num_steps, self.guidance_scale, self.shift = num_steps, guidance_scale, shift
        self.seed, self.fps, self.crf = seed, fps, crf
        self.samples: list[dict[str, Any]] = []
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
        for index in range(len(batch["key"])):
            if len(self.samples) >= self.num_samples:
                return
            self.samples.append(take(batch, index))

    def generate(self, pl_module: DiTModule, batch: Mapping[str, Any]) -> torch.Tensor:
        """The generated video `(1, 3, T, H, W)` in [-1, 1] of a one-sample batch (on the module's device),
        in windows of the module's training window (`window_latents`, clean prefix `prefix_latents`)."""
        shape = pl_module.vae.latent_shape(*batch["video"].shape[2:])
        noise = seeded_noise(batch["key"], shape, pl_module.device, self.seed)
        window = pl_module.hparams.get("window_latents") or shape[1]
        overlap = pl_module.hparams.get("prefix_latents", 0) if window < shape[1] else 0
        z = sample_long(
            pl_module.dit,
            noise,
            pl_module.builder.conditions(batch),
            "prefix",
            window_frames=FRAMES_PER_LATENT * window,
            overlap_frames=FRAMES_PER_LATENT * overlap,
            num_steps=self.num_steps,
            shift=self.shift,
            guidance_scale=self.guidance_scale,
        )
        return pl_module.builder.decode(z)

    def _maybe_run(self, trainer: L.Trainer, pl_module: DiTModule) -> None:
        """Under FSDP (`trainer=fsdp`) every rank runs the sharded DiT's forwards, all on rank 0's clips
        (rank 0 alone would wait for the others forever); rank 0 writes the video."""
        if not isinstance(pl_module.dit, FSDPModule):
            super()._maybe_run(trainer, pl_module)
            return
        self.samples = trainer.strategy.broadcast(self.samples, src=0)
        with self.evaluating(trainer, pl_module):
            self.run(trainer, pl_module)

    def run(self, trainer: L.Trainer, pl_module: DiTModule) -> None:
        if not self.samples:
            log.warning("DiTSamples: no validation clips seen yet; skipped")
            return
        rows = []
        for sample in self.samples:
            batch = to_device(sample, pl_module.device)
            real = tensor_to_frames(batch["video"][0])
            fake = tensor_to_frames(self.generate(pl_module, batch)[0])
            points, _ = pl_module.builder.pose(batch["smpl"])
            overlay = draw_points(
                real, points[0], batch["person_mask"][0], batch["K"][0], batch["R"][0], batch["t"][0]
            )
            rows.append(np.concatenate([real, fake, overlay], axis=2))  # (T, H, 3W, 3)
        path = self.output_dir(trainer) / f"step{trainer.global_step:07d}.mp4"
        if trainer.is_global_zero:
            write_video(trainer, np.concatenate(rows, axis=1), path, self.fps, self.crf, "val/samples")
        self.last_path = path


__all__ = ["PERSON_COLOURS", "DiTSamples", "draw_points", "take", "to_device"]
