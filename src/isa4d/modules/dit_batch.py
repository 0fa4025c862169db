"""HumanVideoDataModule batches -> ISA-DiT inputs: normalised VAE latents and `DiTConditions`.

`ConditionBuilder` holds the frozen stage-1 VAE, the body model and the fixed surface points
(`SurfaceSampler`); training (`DiTModule`), its sample videos, `isa4d generate`, `isa4d evaluate` and
`isa4d encode` (the latent cache) all go through it, so a model sees the same conditions everywhere. For
the 2-D control baselines it also renders the bodies (normal maps or part-coloured bodies,
`isa4d.render.render_body_video`) and encodes that video as the control latent. Batch layout:
`HumanVideoDataModule`'s docstring (`isa4d generate` builds the same keys, without `video`); batches of
latent shards (`HumanLatentDataModule`) carry the latents instead of the pixels, and then the VAE and
the renderer are not used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
        self.part_colors = part_colors(body.lbs_weights)

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
        kind: str | None = None,
    ) -> torch.Tensor:
        """A control video of the real persons (CPU renderer), as a VAE input.

        Args:
            vertices: (B, P, T, V, 3) posed vertices, world metres.
            person_mask: (B, P) bool, the persons to render.
            K: (B, T, 3, 3) intrinsics for `image_size`.
            R: (B, T, 3, 3) world-to-camera rotations.
            t: (B, T, 3) world-to-camera translations.
            image_size: (H, W).
            kind: One of `CONTROL_VIDEOS`; None: the builder's `control_video`.

        Returns:
            (B, 3, T, H, W) float32 in [-1, 1] (background -1), on the device of `vertices`.
        """
        kind = kind or self.control_video
        if kind not in CONTROL_VIDEOS:
            raise ValueError(f"control video {kind!r}: choose one of {CONTROL_VIDEOS}")
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
                kind,
                self.part_colors,
            )
            for b in range(vertices.shape[0])
        ]
        video = torch.from_numpy(np.stack(clips)).to(device)
        return rearrange(video, "b t h w c -> b c t h w") * 2.0 - 1.0

    # ---------------------------------------------------------------------------------- batches

    @torch.no_grad()
    def encode_conditions(
        self, batch: Mapping[str, Any], vertices: torch.Tensor, control_videos: Sequence[str] = ()
    ) -> dict[str, Any]:
        """The VAE latents of a pixel batch's conditions (posterior means), as the latent cache holds them.

        Args:
            batch: `ref_image (B, 3, H, W)`, `person_mask`, `K`, `R`, `t` and, if present,
                `background (B, 3, T, H, W)` with `has_background (B,)`.
            vertices: (B, P, T, V, 3) the posed bodies (`posed_body`), rendered for the control videos.
            control_videos: The kinds of control video to render and encode (`CONTROL_VIDEOS`).

        Returns:
            `ref_latent (B, C, 1, h, w)`, `background_latent (B, C, T', h, w)` (zero for samples without
            a background; only if the batch has `background`), `control_latent` `{kind: (B, C, T', h, w)}`.
        """
        ref_image = batch["ref_image"]
        latents: dict[str, Any] = {"ref_latent": self.encode(ref_image[:, :, None])}
        if "background" in batch:
            present = batch["has_background"].to(ref_image.device)
            latents["background_latent"] = self.encode(batch["background"]) * rearrange(
                present.float(), "b -> b 1 1 1 1"
            )
        cameras = (batch["K"].float(), batch["R"].float(), batch["t"].float())
        latents["control_latent"] = {
            kind: self.encode(
                self.render_control(vertices, batch["person_mask"], *cameras, ref_image.shape[-2:], kind)
            )
            for kind in control_videos
        }
        return latents

    def cached_latents(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The condition latents of a batch of latent shards, checked against what this builder needs.

        Raises:
            ValueError: the cache has no control video of the builder's `control_video` kind.
        """
        controls = batch.get("control_latent", {})
        if self.control_video is not None and self.control_video not in controls:
            raise ValueError(
                f"the latent batch has no {self.control_video!r} control latent (it has {sorted(controls)}); "
                f"rebuild the cache with `isa4d encode control_videos=[{self.control_video}]`"
            )
        return batch

    def conditions(self, batch: Mapping[str, Any]) -> DiTConditions:
        """The `DiTConditions` of a batch (no dropout).

        Uses `smpl`, `person_mask`, `K`, `R`, `t`, `ref_image` (at the video resolution: it sets
        `image_size`), `ref_smpl`, `ref_K`, `ref_R`, `ref_t` and, if present, `background (B, 3, T, H, W)`
        with `has_background (B,)` (samples without one get a zero latent). With a `control_video`, the
        bodies are rendered with the batch's cameras and encoded as `control_latent`. A batch of latent
        shards (with `latent`) brings `ref_latent`, `background_latent`, `control_latent` instead: then
        nothing is encoded or rendered.
        """
        ref_image = batch["ref_image"]
        body, points = self.posed_body(batch["smpl"])
        ref_points, _ = self.pose(batch["ref_smpl"])
        if "latent" in batch:
            latents = self.cached_latents(batch)
        else:
            controls = [] if self.control_video is None else [self.control_video]
            latents = self.encode_conditions(batch, body.vertices, controls)
        control = latents["control_latent"][self.control_video] if self.control_video is not None else None
        background = latents.get("background_latent")
        return DiTConditions(
            ref_latent=latents["ref_latent"].float(),
            points=points,
            person_mask=batch["person_mask"].bool(),
            K=batch["K"].float(),
            R=batch["R"].float(),
            t=batch["t"].float(),
            image_size=tuple(ref_image.shape[-2:]),
            ref_points=ref_points[:, :, 0],
            ref_K=batch["ref_K"][:, 0].float(),
            ref_R=batch["ref_R"][:, 0].float(),
            ref_t=batch["ref_t"][:, 0].float(),
            ref_image=ref_image.float(),
            canonical_points=self.sampler.canonical_points,
            background_latent=None if background is None else background.float(),
            control_latent=None if control is None else control.float(),
        )

    def forward(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiTConditions]:
        """`x0 (B, C, T', h, w)` (normalised latents of `batch["video"]`, or the cached `batch["latent"]`)
        and the batch's conditions.

        Raises:
            ValueError: cached latents with `sample_posterior` in training (the cache holds posterior means).
        """
        if "latent" not in batch:
            sample = self.sample_posterior and self.training
            return self.encode(batch["video"], sample=sample, generator=generator), self.conditions(batch)
        if self.sample_posterior and self.training:
            raise ValueError(
                "sample_posterior=true needs the VAE posterior, but latent shards hold posterior means: "
                "train with sample_posterior=false or on pixel shards (data=human)"
            )
        return batch["latent"].float(), self.conditions(batch)


__all__ = ["ConditionBuilder"]
