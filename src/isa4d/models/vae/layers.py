"""Causal 3-D building blocks of the video VAE: SD3's 2-D VAE layers inflated in time.

Every layer maps `(B, C, T, H, W)` to `(B, C', T', H', W')` so that output frame `i` depends only on
input frames `<= i` (after the temporal resampling is accounted for). Nothing normalises or attends
across time: GroupNorm and self-attention work on each frame on its own, so the only temporal
mixing is in the causal convolutions and the causal temporal resamplers.

Streaming: layers that look at the past take an optional `cache` (a `FrameCache`, see below) and
read/write their own entry in it, so a video can be processed chunk by chunk with exactly the
result of one call on the whole video.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import nn

FrameCache = dict[nn.Module, torch.Tensor | None]
"""Streaming state of one video, threaded through the layers of an encoder or decoder.

Start a stream with an empty dict and pass the same dict with every temporal chunk, in order. A layer
with no entry is on its first chunk: a causal conv pads the past by repeating frame 0 and a temporal
resampler treats frame 0 on its own. After a chunk, a causal conv stores its last `(kt - 1) * dilation`
input frames and a temporal resampler stores `None` (meaning "started"). `cache=None` means the
whole video comes in one call (same as the first chunk, nothing stored).
"""

NORM_EPS = 1e-6  # SD3's VAE GroupNorm epsilon


def _first_chunk(layer: nn.Module, cache: FrameCache | None) -> bool:
    """Whether `layer` sees the first chunk of its stream; marks the stream as started in `cache`."""
    if cache is None:
        return True
    first = layer not in cache
    cache[layer] = None
    return first


class CausalConv3d(nn.Conv3d):
    """3-D convolution that is causal in time and 'same'-padded in space.

    The past side is padded with `(kt - 1) * dilation_t` copies of the first frame (or, when
    streaming, the previous chunk's last input frames), the future side not at all, so output frame
    `i` depends on input frames `<= i` and `T_out = T_in`. Spatially it zero-pads `k // 2` (or
    `spatial_padding`) like SD3's 2-D convs. Its `weight` is `(out, in, kt, k, k)`, so a 2-D kernel
    inflates into it directly (see `weights.inflate_sd3_state_dict`).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: `(kt, kh, kw)` or one int for all three.
        stride: Spatial stride (the temporal stride is always 1).
        spatial_padding: Zero padding of H and W; defaults to `(kh // 2, kw // 2)`.
        dilation_t: Temporal dilation.
        bias: Whether to add a bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        stride: int = 1,
        spatial_padding: int | None = None,
        dilation_t: int = 1,
        bias: bool = True,
    ) -> None:
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        ph, pw = (kh // 2, kw // 2) if spatial_padding is None else (spatial_padding, spatial_padding)
        super().__init__(
            in_channels,
            out_channels,
            (kt, kh, kw),
            stride=(1, stride, stride),
            padding=(0, ph, pw),
            dilation=(dilation_t, 1, 1),
            bias=bias,
        )
        self.time_padding = (kt - 1) * dilation_t

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """Convolve one video or one chunk of a stream.

        Args:
            x: Frames, (B, C_in, T, H, W).
            cache: Stream state; this layer's entry is read and replaced.

        Returns:
            (B, C_out, T, H', W').
        """
        if self.time_padding:
            past = cache.get(self) if cache is not None else None
            if past is None:
                past = x[:, :, :1].expand(-1, -1, self.time_padding, -1, -1)
            x = torch.cat([past, x], dim=2)
            if cache is not None:
                cache[self] = x[:, :, -self.time_padding :].clone()
        return super().forward(x)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics over `(C / G, H, W)` of each frame, never across time.

    Normalising over time would let future frames change past outputs (breaking causality and
    chunked processing); per frame it is exactly SD3's 2-D GroupNorm.
    """

    def __init__(self, num_groups: int, num_channels: int) -> None:
        super().__init__(num_groups, num_channels, eps=NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise (B, C, T, H, W) frame by frame."""
        y = super().forward(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b c t h w", b=x.shape[0])


class ResnetBlock(nn.Module):
    """SD3's residual block inflated to 3-D: `x + conv2(silu(norm2(conv1(silu(norm1(x))))))`.

    Args:
        in_channels: Input channels.
        out_channels: Output channels; a 1x1x1 `conv_shortcut` projects the input when they differ.
        norm_groups: GroupNorm groups.
        kernel_t: Temporal kernel size of the 3x3 convs.
    """

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int, kernel_t: int) -> None:
        super().__init__()
        self.norm1 = FrameGroupNorm(norm_groups, in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, (kernel_t, 3, 3))
        self.norm2 = FrameGroupNorm(norm_groups, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, (kernel_t, 3, 3))
        self.conv_shortcut = (
            CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """(B, C_in, T, H, W) -> (B, C_out, T, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return self.conv_shortcut(x) + h


class SpatialAttention(nn.Module):
    """SD3's single-head mid-block self-attention, over the `H * W` positions of each frame.

    Args:
        channels: Channels (= head dimension).
        norm_groups: GroupNorm groups of the input norm.
    """

    def __init__(self, channels: int, norm_groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(norm_groups, channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C, T, H, W), with a residual connection."""
        b, _, _, h, _ = x.shape
        frames = self.group_norm(rearrange(x, "b c t h w -> (b t) c h w"))
        tokens = rearrange(frames, "n c h w -> n (h w) c")
        out = F.scaled_dot_product_attention(self.to_q(tokens), self.to_k(tokens), self.to_v(tokens))
        out = rearrange(self.to_out(out), "(b t) (h w) c -> b c t h w", b=b, h=h)
        return x + out


class MidBlock(nn.Module):
    """Residual block, per-frame self-attention, residual block (diffusers' `UNetMidBlock2D` names)."""

    def __init__(self, channels: int, norm_groups: int, kernel_t: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(channels, channels, norm_groups, kernel_t) for _ in range(2)]
        )
        self.attentions = nn.ModuleList([SpatialAttention(channels, norm_groups)])

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C, T, H, W)."""
        x = self.resnets[0](x, cache)
        x = self.attentions[0](x)
        return self.resnets[1](x, cache)


class Downsample(nn.Module):
    """Halve H and W, and T too if `temporal`, causally.

    Space: 2x2 average pooling (`mode="avgpool"`, the paper's description of SD3) or SD3's actual
    layer (`mode="conv"`: zero-pad right/bottom by 1, 3x3 conv with stride 2, applied per frame).
    Time: frame 0 stays alone and later frames are averaged in pairs, `{0}, {1, 2}, {3, 4}, ...`, so
    `T = 1 + 2k -> 1 + k`; on later chunks of a stream every pair is averaged (`2k -> k`).

    Args:
        channels: Channels (unchanged).
        temporal: Whether to halve time as well.
        mode: `"avgpool"` or `"conv"`.
    """

    def __init__(self, channels: int, temporal: bool, mode: str) -> None:
        super().__init__()
        if mode not in ("avgpool", "conv"):
            raise ValueError(f"downsample mode must be 'avgpool' or 'conv', got {mode!r}")
        self.temporal = temporal
        self.mode = mode
        if mode == "conv":
            self.conv = CausalConv3d(channels, channels, (1, 3, 3), stride=2, spatial_padding=0)

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C, T', H/2, W/2) with `T' = 1 + (T-1)/2` (first chunk) or `T/2`."""
        if self.mode == "conv":
            x = self.conv(F.pad(x, (0, 1, 0, 1)))
        else:
            x = reduce(x, "b c t (h h2) (w w2) -> b c t h w", "mean", h2=2, w2=2)
        if not self.temporal:
            return x
        head, rest = (x[:, :, :1], x[:, :, 1:]) if _first_chunk(self, cache) else (x[:, :, :0], x)
        if rest.shape[2] % 2:
            raise ValueError(
                f"temporal down-sampling needs 1 + 2k frames in the first chunk and 2k in later ones, "
                f"got {x.shape[2]}"
            )
        return torch.cat([head, reduce(rest, "b c (t two) h w -> b c t h w", "mean", two=2)], dim=2)


class Upsample(nn.Module):
    """Nearest-neighbour doubling of H and W (and T if `temporal`), then a causal 3x3 conv.

    In time, frame 0 stays one frame and every later frame becomes two (`T = 1 + k -> 1 + 2k`; on
    later chunks of a stream `k -> 2k`), mirroring `Downsample`.

    Args:
        channels: Channels (unchanged).
        temporal: Whether to double time as well.
        kernel_t: Temporal kernel size of the conv.
    """

    def __init__(self, channels: int, temporal: bool, kernel_t: int) -> None:
        super().__init__()
        self.temporal = temporal
        self.conv = CausalConv3d(channels, channels, (kernel_t, 3, 3))

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C, T', 2H, 2W) with `T' = 1 + 2(T-1)` (first chunk) or `2T`."""
        if self.temporal:
            head, rest = (x[:, :, :1], x[:, :, 1:]) if _first_chunk(self, cache) else (x[:, :, :0], x)
            x = torch.cat([head, repeat(rest, "b c t h w -> b c (t two) h w", two=2)], dim=2)
        x = repeat(x, "b c t h w -> b c t (h h2) (w w2)", h2=2, w2=2)
        return self.conv(x, cache)
