"""Auxiliary image decoder of the image-decoding regularisation `L_reg` (ISA4D §4.2, SPEC §1).

Each 16-channel latent frame is split into four 4-channel sub-latents (channels `4j .. 4j+3` form
sub-latent `j`), and one small 2-D decoder (weights shared by all sub-latents) decodes every
sub-latent on its own into one full-resolution frame. Sub-latent `j` of latent frame `i >= 1`
must reconstruct video frame `4(i-1) + 1 + j`; every sub-latent of latent frame 0 reconstructs
frame 0. This keeps each latent from compressing mostly the last frame of its window ("last-frame
bias"). The decoder is used only in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from isa4d.models.vae.autoencoder import Decoder


def aux_frame_indices(
    num_latent_frames: int, sub_latents: int = 4, device: torch.device | str | None = None
) -> torch.Tensor:
    """Video frame that each auxiliary prediction reconstructs.

    Args:
        num_latent_frames: Latent frames `T'`.
        sub_latents: Sub-latents per latent frame (= the VAE's temporal factor, 4).
        device: Device of the result.

    Returns:
        Frame indices, (sub_latents * T',): entry `sub_latents * i + j` is `0` for `i = 0` and
        `sub_latents * (i - 1) + 1 + j` otherwise.
    """
    i = torch.arange(num_latent_frames, device=device).repeat_interleave(sub_latents)
    j = torch.arange(sub_latents, device=device).repeat(num_latent_frames)
    return torch.where(i == 0, 0, sub_latents * (i - 1) + 1 + j)


class AuxImageDecoder(nn.Module):
    """Per-frame 2-D decoder of 4-channel sub-latents (a `Decoder` with temporal kernel 1).

    Args:
        z_channels: Channels of the VAE latent (16).
        out_channels: Image channels.
        sub_latents: Sub-latents per latent frame; each has `z_channels / sub_latents` channels.
        base_channels: Width of the full-resolution stage.
        channel_mults: Width multipliers (encoder order); `len - 1` must equal the VAE's number of
            spatial down-samplings (3 for 8x).
        num_res_blocks: Residual blocks per stage (the decoder uses one more, like `Decoder`).
        norm_groups: GroupNorm groups.
    """

    def __init__(
        self,
        z_channels: int = 16,
        out_channels: int = 3,
        sub_latents: int = 4,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2, 4),
        num_res_blocks: int = 1,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        if z_channels % sub_latents:
            raise ValueError(f"z_channels={z_channels} is not divisible by sub_latents={sub_latents}")
        self.sub_latents = sub_latents
        self.decoder = Decoder(
            out_channels=out_channels,
            z_channels=z_channels // sub_latents,
            base_channels=base_channels,
            channel_mults=channel_mults,
            num_res_blocks=num_res_blocks,
            temporal_downsample=(False,) * (len(channel_mults) - 1),
            norm_groups=norm_groups,
            kernel_t=1,
        )

    def decode_sublatents(self, z: torch.Tensor) -> torch.Tensor:
        """Decode every sub-latent on its own.

        Args:
            z: Latents, (B, z_channels, T', h, w).

        Returns:
            Frames, (B, out_channels, sub_latents * T', H, W); prediction `sub_latents * i + j`
            comes from sub-latent `j` of latent frame `i`.
        """
        return self.decoder(rearrange(z, "b (j c) t h w -> b c (t j) h w", j=self.sub_latents))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Auxiliary predictions and the video frames they must match.

        Args:
            z: Latents of `x`, (B, z_channels, T', h, w).
            x: Video, (B, out_channels, T, H, W) with `T = 1 + sub_latents * (T' - 1)`.

        Returns:
            predictions, targets: both (B, out_channels, sub_latents * T', H, W).
        """
        if x.shape[2] != 1 + self.sub_latents * (z.shape[2] - 1):
            raise ValueError(f"{z.shape[2]} latent frames do not cover a {x.shape[2]}-frame video")
        predictions = self.decode_sublatents(z)
        targets = x.index_select(2, aux_frame_indices(z.shape[2], self.sub_latents, x.device))
        if predictions.shape != targets.shape:
            raise ValueError(
                f"aux decoder output {tuple(predictions.shape)} does not match its targets "
                f"{tuple(targets.shape)}; check channel_mults against the VAE's spatial factor"
            )
        return predictions, targets
