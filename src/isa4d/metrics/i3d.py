"""Inception-v1 I3D (Carreira & Zisserman 2017) in the `piergiaj/pytorch-i3d` layout that VideoGPT's
`i3d_pretrained_400.pt` state dict uses, so that file loads with `strict=True`.

Module names are the state-dict keys: `Conv3d_1a_7x7.conv3d.weight` (64, 3, 7, 7, 7), `Mixed_5c.b3b.bn.*`,
`logits.conv3d.weight` (400, 1024, 1, 1, 1) + bias. Every conv pads "same" (TensorFlow style, more at the
end) at run time; batch norm uses eps 1e-5 like VideoGPT's copy. `forward` returns VideoGPT's FVD
features: the 400 Kinetics logits before the softmax, averaged over the remaining time steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Triple = tuple[int, int, int]

# (name, in channels, branch widths b0, b1a, b1b, b2a, b2b, b3b) of the inception blocks.
INCEPTION_BLOCKS: tuple[tuple[str, int, tuple[int, ...]], ...] = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)
FEATURE_CHANNELS = 1024  # Mixed_5c output
NUM_CLASSES = 400


def same_padding(size: Sequence[int], kernel: Triple, stride: Triple) -> list[int]:
    """`F.pad` widths (last dim first) for TensorFlow "same" padding of a (T, H, W) input."""
    pad: list[int] = []
    for s, k, st in zip(reversed(size), reversed(kernel), reversed(stride), strict=True):
        total = max(k - (st if s % st == 0 else s % st), 0)
        pad += [total // 2, total - total // 2]
    return pad


class Unit3D(nn.Module):
    """Same-padded Conv3d (+ BatchNorm3d) (+ ReLU): keys `conv3d.weight` (`conv3d.bias`), `bn.*`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
        batch_norm: bool = True,
        activation: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.activation = kernel, stride, activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-5, momentum=0.001) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T, H, W) -> (B, C_out, ⌈T/s⌉, ⌈H/s⌉, ⌈W/s⌉)."""
        x = self.conv3d(F.pad(x, same_padding(x.shape[2:], self.kernel, self.stride)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max pooling with TensorFlow "same" padding (zeros, as in pytorch-i3d)."""

    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C, ⌈T/s⌉, ⌈H/s⌉, ⌈W/s⌉)."""
        x = F.pad(x, same_padding(x.shape[2:], self.kernel, self.stride))
        return F.max_pool3d(x, self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches concatenated on channels: 1×1; 1×1→3³; 1×1→3³; 3³ max-pool→1×1."""

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1a)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a = Unit3D(in_channels, w2a)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x)))
        return torch.cat(branches, dim=1)


class InceptionI3d(nn.Module):
    """RGB I3D up to the Kinetics-400 logits.

    Input: (B, 3, T, 224, 224) in [-1, 1] with T = 16 for FVD (the final 2×7×7 average pool needs at least
    9 frames and 224 px: 16 frames leave two time steps, which are averaged).
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        for name, in_channels, widths in INCEPTION_BLOCKS:
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
            self.add_module(name, InceptionModule(in_channels, widths))
        self.logits = Unit3D(FEATURE_CHANNELS, num_classes, batch_norm=False, activation=False, bias=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c activations average-pooled over 2×7×7 windows: (B, 1024, T/8 - 1, 1, 1) at 224 px."""
        for name, module in self.named_children():
            if name != "logits":
                x = module(x)
        return F.avg_pool3d(x, (2, 7, 7), stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, 224, 224) in [-1, 1] -> (B, 400) logits (before softmax), averaged over time."""
        return self.logits(self.features(x)).flatten(2).mean(dim=2)
