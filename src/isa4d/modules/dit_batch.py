"""HumanVideoDataModule batches -> ISA-DiT inputs: normalised VAE latents and `DiTConditions`.

`ConditionBuilder` holds the frozen stage-1 VAE, the body model and the fixed surface points
(`SurfaceSampler`); training (`DiTModule`), its sample videos, `isa4d generate` and `isa4d evaluate` all
go through it, so a model sees the same conditions everywhere. For the 2-D control baselines it also
renders the bodies (normal maps or part-coloured bodies, `isa4d.render.render_body_video`) and encodes
that video as the control latent. Batch layout: `HumanVideoDataModule`'s docstring
(`isa4d generate` builds the same keys, without `video`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from isa4d.body import BodyModel, BodyOutput, SurfaceSampler
from isa4d.models.dit import DiTConditions
from isa4d.models.vae import VideoVAE
from isa4d.render import CONTROL_VIDEOS, part_colors, render_body_video


class ConditionBuilder(nn.Module):
    """Frozen VAE + body model + surface points: batch -> `(x0, DiTConditions)`.

    The VAE and the body model are frozen and kept in eval mode (`train()` does not change that).
    Their weights are not meant for checkpoints (`DiTModule` drops `builder.vae.*`; the body model has
    no persistent state); the sampler's face ids and barycentrics are (the same N points at training
    and inference).

    Args:
        vae: The frozen stage-1 VAE (`load_vae`), its latent shift/scale set.
        body: The SMPL-format body model (`load_body_model`).
        num_points: N, body surface points per person.
        point_seed: Seed of the surface sampler.
        sample_posterior: Encode videos with a posterior sample (else the mean); references and
            backgrounds always use the mean.
        control_video: Render and encode the control video of the 2-D baselines (`ISADiT.control_video`):
            `"normal"` (normal maps), `"body"` (Lambert-shaded bodies coloured by part, `part_colors`), or
            None (nothing rendered: the ISA models).
    """

    def __init__(
        self,
        vae: VideoVAE,
        body: BodyModel,
        num_points: int = 256,
        point_seed: int = 0,
        sample_posterior: bool = False,
        control_video: str | None = None,
    ) -> None:
        super().__init__()
        if control_video is not None and control_video not in CONTROL_VIDEOS:
            raise ValueError(
                f"unknown control_video {control_video!r}; choose None or one of {CONTROL_VIDEOS}"
            )
        self.vae = vae.requires_grad_(False).eval()
        self.body = body.requires_grad_(False).eval()
        self.sampler = SurfaceSampler(body.faces, body.v_template, num_points, seed=point_seed)
        self.sample_posterior = sample_posterior
        self.control_video = control_video
        self.part_colors = part_colors(body.lbs_weights) if control_video == "body" else None

    def train(self, mode: bool = True) -> ConditionBuilder:
        """The frozen parts stay in eval mode."""
        super().train(mode)
        self.vae.eval()
        self.body.eval()
        return self

    # ---------------------------------------------------------------------------------- pieces

    @torch.no_grad()
    def encode(
        self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Normalised latents of videos `(B, 3, T, H, W)` in [-1, 1] -> `(B, C, T', H/8, W/8)` float32."""
        posterior = self.vae.encode(video)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.vae.normalize(z.float())

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents `(B, C, T', h, w)` -> videos `(B, 3, 4T' - 3, 8h, 8w)` in [-1, 1] (float32)."""
        return self.vae.decode(self.vae.denormalize(latents)).float()

    @torch.no_grad()
    def posed_body(self, smpl: Mapping[str, torch.Tensor]) -> tuple[BodyOutput, torch.Tensor]:
        """Posed bodies and their surface points, in float32 outside autocast.

        Args:
            smpl: `global_orient (B, P, T, 3)`, `body_pose (B, P, T, 69)`, `betas (B, P, 10)`,
                `transl (B, P, T, 3)`.

        Returns:
            The body (vertices `(B, P, T, V, 3)`, SMPL joints `(B, P, T, 24, 3)`) and the surface points
            `(B, P, T, N, 3)`, world metres.
        """
        device = smpl["transl"].device
        with torch.autocast(device.type, enabled=False):
            output = self.body(
                smpl["global_orient"].float(),
                smpl["body_pose"].float(),
                smpl["betas"].float()[:, :, None],
                smpl["transl"].float(),
            )
            return output, self.sampler(output.vertices)

    def pose(self, smpl: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Surface points `(B, P, T, N, 3)` and SMPL joints `(B, P, T, 24, 3)` (`posed_body`)."""
        output, points = self.posed_body(smpl)
        return points, output.joints

    @torch.no_grad()
    def render_control(
        self,
        vertices: torch.Tensor,
        person_mask: torch.Tensor,
        K: torch.Tensor,
        R: torch.Tensor,
        t: torch.Tensor,
        image_size: tuple[int, int],
    ) -> torch.Tensor:
        """The `control_video` of the real persons (CPU renderer), as a VAE input.

        Args:
            vertices: (B, P, T, V, 3) posed vertices, world metres.
            person_mask: (B, P) bool, the persons to render.
            K: (B, T, 3, 3) intrinsics for `image_size`.
            R: (B, T, 3, 3) world-to-camera rotations.
            t: (B, T, 3) world-to-camera translations.
            image_size: (H, W).

        Returns:
            (B, 3, T, H, W) float32 in [-1, 1] (background -1), on the device of `vertices`.
        """
        if self.control_video is None:
            raise ValueError("this ConditionBuilder renders no control video (control_video=None)")
        device = vertices.device
        faces, mask = self.body.faces.cpu(), person_mask.bool().cpu()
        vertices, K, R, t = (x.detach().cpu() for x in (vertices, K, R, t))
        clips = [
            render_body_video(
                [vertices[b, p] for p in range(vertices.shape[1]) if mask[b, p]],
                faces,
                K[b],
                R[b],
                t[b],
                image_size,
                self.control_video,
                self.part_colors,
            )
            for b in range(vertices.shape[0])
        ]
        video = torch.from_numpy(np.stack(clips)).to(device)
        return rearrange(video, "b t h w c -> b c t h w") * 2.0 - 1.0

    # ---------------------------------------------------------------------------------- batches

    def conditions(self, batch: Mapping[str, Any]) -> DiTConditions:
        """The `DiTConditions` of a batch (no dropout).

        Uses `smpl`, `person_mask`, `K`, `R`, `t`, `ref_image` (at the video resolution: it sets
        `image_size`), `ref_smpl`, `ref_K`, `ref_R`, `ref_t` and, if present, `background (B, 3, T, H, W)`
        with `has_background (B,)` (samples without one get a zero latent). With a `control_video`, the
        bodies are rendered with the batch's cameras and encoded as `control_latent`.
        """
        ref_image = batch["ref_image"]
        image_size = tuple(ref_image.shape[-2:])
        body, points = self.posed_body(batch["smpl"])
        ref_points, _ = self.pose(batch["ref_smpl"])
        person_mask = batch["person_mask"].bool()
        K, R, t = batch["K"].float(), batch["R"].float(), batch["t"].float()
        background = control = None
        if "background" in batch:
            present = batch["has_background"].to(ref_image.device)
            background = self.encode(batch["background"]) * rearrange(present.float(), "b -> b 1 1 1 1")
        if self.control_video is not None:
            control = self.encode(self.render_control(body.vertices, person_mask, K, R, t, image_size))
        return DiTConditions(
            ref_latent=self.encode(ref_image[:, :, None]),
            points=points,
            person_mask=person_mask,
            K=K,
            R=R,
            t=t,
            image_size=image_size,
            ref_points=ref_points[:, :, 0],
            ref_K=batch["ref_K"][:, 0].float(),
            ref_R=batch["ref_R"][:, 0].float(),
            ref_t=batch["ref_t"][:, 0].float(),
            ref_image=ref_image.float(),
            canonical_points=self.sampler.canonical_points,
            background_latent=background,
            control_latent=control,
        )

    def forward(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiTConditions]:
        """`x0 (B, C, T', h, w)` (normalised latents of `batch["video"]`) and the batch's conditions."""
        x0 = self.encode(batch["video"], sample=self.sample_posterior and self.training, generator=generator)
        return x0, self.conditions(batch)


__all__ = ["ConditionBuilder"]
