"""PatchGAN discriminators of the VAE's adversarial losses: per frame (2-D) and per clip (3-D).

Both follow taming-transformers' `NLayerDiscriminator` (pix2pix PatchGAN): a 4x4 conv with stride 2
and LeakyReLU(0.2), `num_layers - 1` more stride-2 convs and one stride-1 conv, each with a norm and
LeakyReLU, then a 4x4 conv to one logit per patch. GroupNorm replaces BatchNorm (video batches are
tiny and DDP needs no SyncBN then). `PatchGAN3D` uses `(3, 4, 4)` kernels, halving time with every
spatial halving, and accepts any `T >= 1`.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


def _patchgan(
    conv: type[nn.Conv2d] | type[nn.Conv3d],
    kernel: int | tuple[int, ...],
    down_stride: int | tuple[int, ...],
    padding: int | tuple[int, ...],
    in_channels: int,
    base_channels: int,
    num_layers: int,
    norm_groups: int,
) -> nn.Sequential:
    """PatchGAN layer stack with `conv` (2-D or 3-D), initialised like taming (N(0, 0.02))."""
    layers: list[nn.Module] = [
        conv(in_channels, base_channels, kernel, down_stride, padding),
        nn.LeakyReLU(0.2),
    ]
    width = base_channels
    for n in range(1, num_layers + 1):
        previous, width = width, base_channels * min(2**n, 8)
        stride = down_stride if n < num_layers else 1
        layers += [
            conv(previous, width, kernel, stride, padding, bias=False),
            nn.GroupNorm(norm_groups, width),
            nn.LeakyReLU(0.2),
        ]
    layers.append(conv(width, 1, kernel, 1, padding))
    net = nn.Sequential(*layers)
    for module in net.modules():
        if isinstance(module, conv):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.GroupNorm):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)
    return net


class PatchGAN2D(nn.Module):
    """Frame discriminator: a 2-D PatchGAN applied to every frame (time folded into the batch).

    Args:
        in_channels: Image channels.
        base_channels: Width of the first conv.
        num_layers: Stride-2 convs (the first one included).
        norm_groups: GroupNorm groups.
    """

    def __init__(
        self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3, norm_groups: int = 32
    ) -> None:
        super().__init__()
        self.main = _patchgan(nn.Conv2d, 4, 2, 1, in_channels, base_channels, num_layers, norm_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits of every frame.

        Args:
            x: Video, (B, C, T, H, W).

        Returns:
            Logits, (B, 1, T, h, w); `h = H / 2^num_layers - 2` (6 for 64 with 3 layers).
        """
        logits = self.main(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(logits, "(b t) c h w -> b c t h w", b=x.shape[0])


class PatchGAN3D(nn.Module):
    """Clip discriminator: a 3-D PatchGAN with `(3, 4, 4)` kernels, which sees temporal artefacts.

    Args:
        in_channels: Image channels.
        base_channels: Width of the first conv.
        num_layers: Stride-2 convs (the first one included); each also halves time (rounding up).
        norm_groups: GroupNorm groups.
    """

    def __init__(
        self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3, norm_groups: int = 32
    ) -> None:
        super().__init__()
        self.main = _patchgan(nn.Conv3d, (3, 4, 4), 2, 1, in_channels, base_channels, num_layers, norm_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits of the clip.

        Args:
            x: Video, (B, C, T, H, W).

        Returns:
            Logits, (B, 1, T'', h, w) with `T''` = `T` halved (rounding up) `num_layers` times
            (17 -> 3, 1 -> 1) and `h` as in `PatchGAN2D`.
        """
        return self.main(x)
