"""The causal video VAE: SD3's image VAE inflated to 3-D, with chunked (constant-memory) coding.

Shapes: video `x` is `(B, 3, T, H, W)` in [-1, 1] with `T = 1 + 4k` (T = 1 is an image); the
latent is `(B, 16, 1 + k, H/8, W/8)`. Latent frame 0 covers frame 0, latent frame `i >= 1` covers
frames `4i-3 .. 4i`. See docs/vae.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from isa4d.models.vae.layers import (
    CausalConv3d,
    Downsample,
    FrameCache,
    FrameGroupNorm,
    MidBlock,
    ResnetBlock,
    Upsample,
)


def _run(block: nn.Module, x: torch.Tensor, cache: FrameCache | None, checkpointing: bool) -> torch.Tensor:
    """`block(x, cache)`, with activation checkpointing when asked for, training, and not streaming."""
    if checkpointing and cache is None and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x, cache)


def _widths(base_channels: int, channel_mults: Sequence[int]) -> list[int]:
    return [base_channels * mult for mult in channel_mults]


class DownBlock(nn.Module):
    """`num_res_blocks` residual blocks, then an optional `Downsample` (diffusers' `DownEncoderBlock2D`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_res_blocks: int,
        norm_groups: int,
        kernel_t: int,
        downsample: Downsample | None,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock(in_channels if i == 0 else out_channels, out_channels, norm_groups, kernel_t)
                for i in range(num_res_blocks)
            ]
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """(B, C_in, T, H, W) -> (B, C_out, T', H', W')."""
        for resnet in self.resnets:
            x = resnet(x, cache)
        return x if self.downsample is None else self.downsample(x, cache)


class UpBlock(nn.Module):
    """`num_res_blocks` residual blocks, then an optional `Upsample` (diffusers' `UpDecoderBlock2D`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_res_blocks: int,
        norm_groups: int,
        kernel_t: int,
        upsample: Upsample | None,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock(in_channels if i == 0 else out_channels, out_channels, norm_groups, kernel_t)
                for i in range(num_res_blocks)
            ]
        )
        self.upsample = upsample

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """(B, C_in, T, H, W) -> (B, C_out, T', H', W')."""
        for resnet in self.resnets:
            x = resnet(x, cache)
        return x if self.upsample is None else self.upsample(x, cache)


class Encoder(nn.Module):
    """Video -> posterior moments: `conv_in`, down blocks, mid block, `conv_norm_out`, SiLU, `conv_out`.

    Stage `i` has width `base_channels * channel_mults[i]`; every stage but the last ends with a
    2x spatial down-sampling, which also halves time where `temporal_downsample[i]` is true.

    Args:
        in_channels: Image channels.
        z_channels: Latent channels; the output has `2 * z_channels` (mean, log-variance).
        base_channels: Width of the first stage.
        channel_mults: Width multiplier per stage.
        num_res_blocks: Residual blocks per stage.
        temporal_downsample: One flag per down-sampling stage (`len(channel_mults) - 1`).
        downsample: Spatial down-sampling, `"avgpool"` or `"conv"` (see `Downsample`).
        norm_groups: GroupNorm groups.
        kernel_t: Temporal kernel size of the 3x3 convs.
    """

    def __init__(
        self,
        in_channels: int,
        z_channels: int,
        base_channels: int,
        channel_mults: Sequence[int],
        num_res_blocks: int,
        temporal_downsample: Sequence[bool],
        downsample: str,
        norm_groups: int,
        kernel_t: int,
    ) -> None:
        super().__init__()
        widths = _widths(base_channels, channel_mults)
        self.conv_in = CausalConv3d(in_channels, widths[0], (kernel_t, 3, 3))
        self.down_blocks = nn.ModuleList()
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            sampler = None if last else Downsample(width, temporal_downsample[i], downsample)
            previous = widths[max(i - 1, 0)]
            self.down_blocks.append(
                DownBlock(previous, width, num_res_blocks, norm_groups, kernel_t, sampler)
            )
        self.mid_block = MidBlock(widths[-1], norm_groups, kernel_t)
        self.conv_norm_out = FrameGroupNorm(norm_groups, widths[-1])
        self.conv_out = CausalConv3d(widths[-1], 2 * z_channels, (kernel_t, 3, 3))
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """Encode a video, or one temporal chunk of a stream.

        Args:
            x: Frames, (B, C, T, H, W); `T = 1 + 4k` for a whole video or a stream's first chunk,
                `4k` for later chunks (with the default two temporal down-samplings).
            cache: Stream state (see `FrameCache`), or None for a whole video.

        Returns:
            Moments (mean, log-variance concatenated on channels), (B, 2 * z_channels, T', H/8, W/8).
        """
        h = self.conv_in(x, cache)
        for block in self.down_blocks:
            h = _run(block, h, cache, self.gradient_checkpointing)
        h = _run(self.mid_block, h, cache, self.gradient_checkpointing)
        return self.conv_out(F.silu(self.conv_norm_out(h)), cache)


class Decoder(nn.Module):
    """Latent -> video, mirroring `Encoder`: `conv_in`, mid block, up blocks, norm, SiLU, `conv_out`.

    Up block `j` has width `base_channels * channel_mults[-1 - j]` and `num_res_blocks + 1`
    residual blocks; every up block but the last ends with a 2x up-sampling that also doubles time
    where the mirrored encoder stage halved it (`temporal_downsample[-1 - j]`).

    Args:
        out_channels: Image channels.
        z_channels: Latent channels.
        base_channels: Width of the last (full-resolution) stage.
        channel_mults: Width multiplier per stage, in encoder order.
        num_res_blocks: Residual blocks per encoder stage (the decoder has one more per stage).
        temporal_downsample: The encoder's flags, in encoder order.
        norm_groups: GroupNorm groups.
        kernel_t: Temporal kernel size of the 3x3 convs.
    """

    def __init__(
        self,
        out_channels: int,
        z_channels: int,
        base_channels: int,
        channel_mults: Sequence[int],
        num_res_blocks: int,
        temporal_downsample: Sequence[bool],
        norm_groups: int,
        kernel_t: int,
    ) -> None:
        super().__init__()
        widths = _widths(base_channels, channel_mults)[::-1]
        temporal = list(temporal_downsample)[::-1]
        self.conv_in = CausalConv3d(z_channels, widths[0], (kernel_t, 3, 3))
        self.mid_block = MidBlock(widths[0], norm_groups, kernel_t)
        self.up_blocks = nn.ModuleList()
        for j, width in enumerate(widths):
            last = j == len(widths) - 1
            sampler = None if last else Upsample(width, temporal[j], kernel_t)
            previous = widths[max(j - 1, 0)]
            self.up_blocks.append(
                UpBlock(previous, width, num_res_blocks + 1, norm_groups, kernel_t, sampler)
            )
        self.conv_norm_out = FrameGroupNorm(norm_groups, widths[-1])
        self.conv_out = CausalConv3d(widths[-1], out_channels, (kernel_t, 3, 3))
        self.gradient_checkpointing = False

    @property
    def last_layer(self) -> nn.Parameter:
        """Weight of `conv_out`, where the adaptive GAN weight compares gradient norms."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """Decode latents, or one temporal chunk of a stream.

        Args:
            z: Latents, (B, z_channels, T', h, w); any `T' >= 1` (a stream's later chunks too).
            cache: Stream state (see `FrameCache`), or None for a whole latent video.

        Returns:
            Frames, (B, out_channels, 1 + 4(T' - 1), 8h, 8w) for a whole video or first chunk,
            (B, out_channels, 4T', 8h, 8w) for later chunks.
        """
        h = self.conv_in(z, cache)
        h = _run(self.mid_block, h, cache, self.gradient_checkpointing)
        for block in self.up_blocks:
            h = _run(block, h, cache, self.gradient_checkpointing)
        return self.conv_out(F.silu(self.conv_norm_out(h)), cache)


class DiagonalGaussian:
    """Diagonal Gaussian posterior `N(mean, exp(logvar))` over latents.

    Args:
        moments: Mean and log-variance concatenated on channels, (B, 2C, T', h, w). The
            log-variance is clamped to [-30, 20] as in SD.
    """

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample `mean + std * eps`, (B, C, T', h, w)."""
        eps = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The mean, (B, C, T', h, w)."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL divergence to N(0, I), summed over (C, T', h, w): one value per sample, (B,).

        `0.5 * sum(mean^2 + var - 1 - logvar)`; `losses.kl_loss` averages it over the batch.
        """
        return 0.5 * (self.mean.square() + self.std.square() - 1.0 - self.logvar).flatten(1).sum(1)


class BlockShortcut(nn.Module):
    """A linear block codec between frames and latents, added to the VAE's networks (not in the paper:
    DC-AE's "residual autoencoding", with a learnt linear map instead of a fixed space-to-channel one).

    Every latent frame `i >= 1` stands for the block of frames `4i-3 .. 4i`; latent frame 0 for frame 0,
    read as four copies of it (as the causal convs pad the past). `encode` maps each `4 x 8 x 8 x C`
    block (`D = 768` values) linearly to the `z_channels` latent values of its latent pixel, `decode` maps
    them back (latent frame 0: the mean of its four decoded copies). Both maps are fixed (buffers, not
    trained: Adam's per-weight steps would scramble a PCA's small components within a few hundred steps,
    measured -1 dB). Fresh, they are the 8x8 mean of each frame in the first C channels of that frame's
    sub-latent (`z_channels / 4` channels per frame, the image-decoding regularisation's layout) and
    nearest up-sampling back; `init_from_blocks` sets them to the principal components of data blocks
    (the best linear codec of that size: e.g. 26.8 dB on the real footage at 64², where the
    naive 8x bicubic resize gives 19.2 dB), so a short run learns a residual over a good codec. Per latent
    frame, so causal and chunkable.

    Args:
        channels: Image channels C.
        z_channels: Latent channels (a multiple of 4 with at least C per frame).
        spatial_factor: Spatial down-sampling (8).
        temporal_factor: Frames per latent frame (4).
    """

    def __init__(self, channels: int, z_channels: int, spatial_factor: int, temporal_factor: int) -> None:
        super().__init__()
        if z_channels % temporal_factor or z_channels // temporal_factor < channels:
            raise ValueError(
                f"the block shortcut needs z_channels ({z_channels}) = {temporal_factor} sub-latents of at "
                f"least {channels} channels"
            )
        self.channels, self.z_channels = channels, z_channels
        self.spatial_factor, self.temporal_factor = spatial_factor, temporal_factor
        dim = channels * temporal_factor * spatial_factor**2
        self.register_buffer("encode_weight", torch.zeros(z_channels, dim))
        self.register_buffer("encode_bias", torch.zeros(z_channels))
        self.register_buffer("decode_weight", torch.zeros(dim, z_channels))
        self.register_buffer("decode_bias", torch.zeros(dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The per-frame 8x8 means into sub-latent channels `[jG, jG + C)`, nearest up-sampling back."""
        f, t, c, group = (
            self.spatial_factor,
            self.temporal_factor,
            self.channels,
            self.z_channels // self.temporal_factor,
        )
        block = torch.arange(c * t * f * f).view(c, t, f, f)  # the (c j p q) order of `blocks`
        for buffer in (self.encode_weight, self.encode_bias, self.decode_weight, self.decode_bias):
            buffer.zero_()
        for j in range(t):
            for channel in range(c):
                self.encode_weight[group * j + channel, block[channel, j].flatten()] = 1.0 / (f * f)
                self.decode_weight[block[channel, j].flatten(), group * j + channel] = 1.0

    def encode_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        """Blocks `(..., D)` -> latent values `(..., z_channels)`."""
        return F.linear(blocks, self.encode_weight.to(blocks.dtype), self.encode_bias.to(blocks.dtype))

    def decode_blocks(self, z: torch.Tensor) -> torch.Tensor:
        """Latent values `(..., z_channels)` -> blocks `(..., D)`."""
        return F.linear(z, self.decode_weight.to(z.dtype), self.decode_bias.to(z.dtype))

    def blocks(self, x: torch.Tensor, first: bool = True) -> torch.Tensor:
        """Video `(B, C, T, H, W)` -> blocks `(B, T', H/8, W/8, D)`; `first`: x starts at frame 0."""
        if first:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.temporal_factor, -1, -1), x[:, :, 1:]], dim=2)
        f = self.spatial_factor
        return rearrange(x, "b c (n j) (h p) (w q) -> b n h w (c j p q)", j=self.temporal_factor, p=f, q=f)

    def encode(self, x: torch.Tensor, first: bool = True) -> torch.Tensor:
        """Video `(B, C, T, H, W)` -> latent `(B, z_channels, T', H/8, W/8)`; `first`: x starts at frame 0."""
        return rearrange(self.encode_blocks(self.blocks(x, first)), "b n h w z -> b z n h w")

    def decode(self, z: torch.Tensor, first: bool = True) -> torch.Tensor:
        """Latent `(B, z_channels, T', h, w)` -> video `(B, C, T, 8h, 8w)`; `first`: z starts at latent 0."""
        f, t = self.spatial_factor, self.temporal_factor
        blocks = self.decode_blocks(rearrange(z, "b z n h w -> b n h w z"))
        video = rearrange(
            blocks, "b n h w (c j p q) -> b c (n j) (h p) (w q)", c=self.channels, j=t, p=f, q=f
        )
        if not first:
            return video
        return torch.cat([video[:, :, :t].mean(dim=2, keepdim=True), video[:, :, t:]], dim=2)

    @torch.no_grad()
    def init_from_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        """Set the maps to the principal components of data blocks (PCA, float64).

        `encode` then gives `(block - mean) @ V_k` (channel k = component k, variance `s_k² / (N - 1)`:
        the latents keep the data's energy per component, so a DiT's MSE weighs them as pixels would; the
        VAE's latent statistics scale them as a whole) and `decode` `mean + latent @ V_k^T`: the
        rank-`z_channels` least-squares codec of the blocks.

        Args:
            blocks: (N, D) data blocks (`blocks(video).flatten(0, -2)`), N >= z_channels.

        Returns:
            The fraction of the blocks' variance the codec keeps.
        """
        data = blocks.double().reshape(-1, self.encode_weight.shape[1])
        if data.shape[0] < self.z_channels:
            raise ValueError(f"need at least {self.z_channels} blocks for the PCA, got {data.shape[0]}")
        mean = data.mean(0)
        _, singular, vh = torch.linalg.svd(data - mean, full_matrices=False)
        components = vh[: self.z_channels]  # (k, D), orthonormal rows
        self.encode_weight.copy_(components)
        self.encode_bias.copy_(-(components @ mean))
        self.decode_weight.copy_(components.T)
        self.decode_bias.copy_(mean)
        return singular[: self.z_channels].square().sum() / singular.square().sum()


def _causal_chunks(x: torch.Tensor, chunk: int) -> list[torch.Tensor]:
    """Split (B, C, T, ...) along time into `1 + chunk` frames, then `chunk` frames at a time."""
    return [x[:, :, : 1 + chunk]] + [x[:, :, t : t + chunk] for t in range(1 + chunk, x.shape[2], chunk)]


class VideoVAE(nn.Module):
    """Causal video VAE with chunked encoding/decoding and latent normalisation for the DiT.

    Args:
        in_channels: Image channels (also the output channels).
        z_channels: Latent channels.
        base_channels: Width of the first encoder stage.
        channel_mults: Width multiplier per stage; `len - 1` spatial 2x down-samplings.
        num_res_blocks: Residual blocks per encoder stage.
        temporal_downsample: Which down-sampling stages also halve time (one flag per stage but
            the last); the default halves time in stages 1 and 2 (the 1/2 and 1/4 resolution ones),
            so the decoder doubles time in its first two (lowest-resolution) up blocks.
        downsample: Spatial down-sampling in the encoder, `"avgpool"` (SPEC / paper) or `"conv"`
            (SD3's strided conv; use it to reuse every SD3 weight after inflation).
        norm_groups: GroupNorm groups.
        kernel_t: Temporal kernel size of the causal 3x3 convs.
        shortcut: Add the `BlockShortcut` (a linear block codec) to the encoder's mean and the decoder's
            output, so the networks learn residuals (not in the paper; off for SD3 inflation).
    """

    def __init__(
        self,
        in_channels: int = 3,
        z_channels: int = 16,
        base_channels: int = 128,
        channel_mults: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        temporal_downsample: Sequence[bool] = (False, True, True),
        downsample: str = "avgpool",
        norm_groups: int = 32,
        kernel_t: int = 3,
        shortcut: bool = False,
    ) -> None:
        super().__init__()
        if len(temporal_downsample) != len(channel_mults) - 1:
            raise ValueError(
                f"temporal_downsample needs one flag per down-sampling stage ({len(channel_mults) - 1}), "
                f"got {list(temporal_downsample)}"
            )
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "z_channels": z_channels,
            "base_channels": base_channels,
            "channel_mults": [int(m) for m in channel_mults],
            "num_res_blocks": num_res_blocks,
            "temporal_downsample": [bool(flag) for flag in temporal_downsample],
            "downsample": downsample,
            "norm_groups": norm_groups,
            "kernel_t": kernel_t,
            "shortcut": shortcut,
        }
        shared = {
            "z_channels": z_channels,
            "base_channels": base_channels,
            "channel_mults": channel_mults,
            "num_res_blocks": num_res_blocks,
            "temporal_downsample": temporal_downsample,
            "norm_groups": norm_groups,
            "kernel_t": kernel_t,
        }
        self.encoder = Encoder(in_channels=in_channels, downsample=downsample, **shared)
        self.decoder = Decoder(out_channels=in_channels, **shared)
        self.spatial_factor = 2 ** (len(channel_mults) - 1)
        self.temporal_factor = 2 ** sum(bool(flag) for flag in temporal_downsample)
        factors = (self.spatial_factor, self.temporal_factor)
        self.shortcut = BlockShortcut(in_channels, z_channels, *factors) if shortcut else None
        if self.shortcut is not None:
            self._zero_init_residuals()
        self.register_buffer("latent_scale", torch.ones(z_channels))
        self.register_buffer("latent_shift", torch.zeros(z_channels))

    @torch.no_grad()
    def _zero_init_residuals(self, logvar: float = -6.0) -> None:
        """With the shortcut: zero both networks' last convs, so a fresh model is exactly the shortcut's codec
        (posterior std `exp(logvar / 2)` = 0.05), and the networks learn residuals from there. Their
        gradients reach every layer from the second step on (as with adaLN-Zero)."""
        for conv in (self.encoder.conv_out, self.decoder.conv_out):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.encoder.conv_out.bias[self.config["z_channels"] :] = logvar

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> VideoVAE:
        """Rebuild a model from `vae.config` (e.g. stored in a checkpoint's hyper-parameters)."""
        return cls(**config)

    @property
    def last_layer(self) -> nn.Parameter:
        """The decoder's last conv weight, for `losses.adaptive_weight`."""
        return self.decoder.last_layer

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each encoder/decoder block's activations in backward (training memory)."""
        self.encoder.gradient_checkpointing = enabled
        self.decoder.gradient_checkpointing = enabled

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames `T' = 1 + (T - 1) / 4` for `T` video frames."""
        if num_frames < 1 or (num_frames - 1) % self.temporal_factor:
            raise ValueError(f"videos need 1 + {self.temporal_factor}k frames, got {num_frames}")
        return 1 + (num_frames - 1) // self.temporal_factor

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """`(C, T', H/8, W/8)`: the latent of one `(3, T, H, W)` video (e.g. for sampling noise)."""
        f = self.spatial_factor
        return (self.config["z_channels"], self.latent_frames(num_frames), height // f, width // f)

    def encode(self, x: torch.Tensor, chunk_frames: int | None = None) -> DiagonalGaussian:
        """Encode a video, optionally in temporal chunks at constant memory.

        Args:
            x: Video, (B, C, T, H, W) in [-1, 1], `T = 1 + 4k`, H and W multiples of 8.
            chunk_frames: If given (a multiple of 4), encode frames `[0, 1 + chunk_frames)` first,
                then `chunk_frames` frames at a time, carrying every causal layer's cache. The
                result equals one-shot encoding up to float rounding.

        Returns:
            Posterior over latents of shape (B, z_channels, 1 + k, H/8, W/8).
        """
        self.latent_frames(x.shape[2])
        if x.shape[-1] % self.spatial_factor or x.shape[-2] % self.spatial_factor:
            raise ValueError(f"H and W must be multiples of {self.spatial_factor}, got {tuple(x.shape[-2:])}")
        if chunk_frames is None:
            return DiagonalGaussian(self._encode(x))
        if chunk_frames <= 0 or chunk_frames % self.temporal_factor:
            raise ValueError(f"chunk_frames must be a positive multiple of {self.temporal_factor}")
        cache: FrameCache = {}
        chunks = _causal_chunks(x, chunk_frames)
        moments = [self._encode(chunk, cache, first=i == 0) for i, chunk in enumerate(chunks)]
        return DiagonalGaussian(torch.cat(moments, dim=2))

    def _encode(self, x: torch.Tensor, cache: FrameCache | None = None, first: bool = True) -> torch.Tensor:
        """Posterior moments `(B, 2 z_channels, T', h, w)` of a clip or chunk (`first`: it holds frame 0)."""
        moments = self.encoder(x, cache)
        if self.shortcut is None:
            return moments
        mean, logvar = moments.chunk(2, dim=1)
        return torch.cat([mean + self.shortcut.encode(x, first), logvar], dim=1)

    def _decode(self, z: torch.Tensor, cache: FrameCache | None = None, first: bool = True) -> torch.Tensor:
        """Frames of a latent clip or chunk (`first`: it holds latent frame 0)."""
        x = self.decoder(z, cache)
        return x if self.shortcut is None else x + self.shortcut.decode(z, first)

    def decode(self, z: torch.Tensor, chunk_latents: int | None = None) -> torch.Tensor:
        """Decode latents, optionally in temporal chunks at constant memory.

        Args:
            z: Latents, (B, z_channels, T', h, w) (not normalised; see `denormalize`).
            chunk_latents: If given, decode latent frames `[0, 1 + chunk_latents)` first, then
                `chunk_latents` at a time, carrying every causal layer's cache.

        Returns:
            Video, (B, C, 1 + 4(T' - 1), 8h, 8w).
        """
        if chunk_latents is None:
            return self._decode(z)
        if chunk_latents <= 0:
            raise ValueError(f"chunk_latents must be positive, got {chunk_latents}")
        cache: FrameCache = {}
        chunks = _causal_chunks(z, chunk_latents)
        return torch.cat([self._decode(chunk, cache, first=i == 0) for i, chunk in enumerate(chunks)], dim=2)

    def forward(
        self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruct a video: (B, C, T, H, W) -> (reconstruction (B, C, T, H, W), posterior)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def set_latent_stats(self, shift: float | torch.Tensor, scale: float | torch.Tensor) -> None:
        """Set the latent normalisation from data statistics: `shift` = mean, `scale` = 1 / std.

        Scalars (SD3 style, e.g. shift 0.0609, scale 1.5305) or per-channel tensors (z_channels,).
        """
        self.latent_shift.copy_(torch.as_tensor(shift).expand_as(self.latent_shift))
        self.latent_scale.copy_(torch.as_tensor(scale).expand_as(self.latent_scale))

    def _stat(self, stat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return stat.to(z.dtype).view(1, -1, *([1] * (z.ndim - 2)))

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latent -> DiT latent: `(z - shift) * scale`, (B, C, T', h, w)."""
        return (z - self._stat(self.latent_shift, z)) * self._stat(self.latent_scale, z)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """DiT latent -> VAE latent: `z / scale + shift`, (B, C, T', h, w)."""
        return z / self._stat(self.latent_scale, z) + self._stat(self.latent_shift, z)


def vae_tiny(**overrides: Any) -> VideoVAE:
    """CPU-sized VAE for tests and demos: widths (24, 48, 48, 96), one residual block per stage, with the
    `BlockShortcut` (a short CPU run learns a residual over a linear codec instead of from nothing).

    24 rather than 16 channels at full resolution because CPU PyTorch runs 3-D convs with more than
    16 input channels through oneDNN (about 4x faster here).
    """
    config = {
        "base_channels": 24,
        "channel_mults": (1, 2, 2, 4),
        "num_res_blocks": 1,
        "norm_groups": 8,
        "shortcut": True,
    }
    return VideoVAE(**{**config, **overrides})


def vae_sd3(**overrides: Any) -> VideoVAE:
    """SD3's VAE inflated to 3-D: widths (128, 256, 512, 512), two residual blocks per stage."""
    return VideoVAE(**overrides)


VAE_MODELS = {"tiny": vae_tiny, "sd3": vae_sd3}


def build_vae(name: str, **overrides: Any) -> VideoVAE:
    """Build a registered size (`"tiny"`, `"sd3"`), with constructor arguments overridden."""
    if name not in VAE_MODELS:
        raise KeyError(f"unknown VAE size {name!r}; choose from {sorted(VAE_MODELS)}")
    return VAE_MODELS[name](**overrides)
