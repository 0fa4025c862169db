"""LPIPS-VGG perceptual distance (Zhang et al. 2018), from local weight files only.

`d(x, y) = sum_l mean_hw( w_l . (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|)^2 )` with `f_l` the VGG16
activations at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 of the ImageNet-normalised input,
`|.|` the norm over channels at each position and `w_l >= 0` the learned 1x1 "lin" weights.

Two files are needed, and nothing is downloaded:
- `vgg16-397923af.pth`: torchvision's ImageNet VGG16 (`features.{i}.weight/bias` are used);
- `vgg.pth`: the LPIPS v0.1 linear layers (`lin{l}.model.1.weight`, (1, C_l, 1, 1)), from the
  `lpips` package / richzhang/PerceptualSimilarity; torchmetrics ships a copy, used by default.

The weights are non-persistent buffers: they never enter an optimiser or a training checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from isa4d.models.vae.weights import read_state_dict

VGG16_FILE = "vgg16-397923af.pth"
LIN_FILE = "vgg.pth"

# Conv layers of torchvision's `vgg16().features` per tapped stage (each stage ends at a relu tap:
# relu1_2, relu2_2, relu3_3, relu4_3, relu5_3); a 2x2 max-pool precedes every stage but the first.
VGG16_STAGES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
TAP_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS' scaling layer: ImageNet mean/std expressed for inputs in [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def bundled_lin_path() -> Path | None:
    """torchmetrics' copy of the LPIPS v0.1 `vgg.pth` linear weights, if torchmetrics is installed."""
    try:
        import torchmetrics
    except ImportError:
        return None
    path = Path(torchmetrics.__file__).parent / "functional" / "image" / "lpips_models" / LIN_FILE
    return path if path.is_file() else None


def _hub_hash_prefix(path: Path) -> str | None:
    """SHA-256 prefix encoded in a torch-hub file name (`vgg16-397923af.pth` -> `397923af`)."""
    match = re.fullmatch(r".+-([0-9a-f]{8,64})\.[a-z]+", path.name)
    return match.group(1) if match else None


def _missing_files_error(vgg_path: Path | None, lin_path: Path | None) -> FileNotFoundError:
    return FileNotFoundError(
        "LPIPS needs two local weight files (nothing is downloaded at run time):\n"
        f"  - VGG16 backbone `{VGG16_FILE}` (https://download.pytorch.org/models/{VGG16_FILE}): "
        f"set `vgg_path` (now {vgg_path});\n"
        f"  - LPIPS linear layers `{LIN_FILE}` (lpips package `lpips/weights/v0.1/{LIN_FILE}`; "
        f"torchmetrics ships a copy in torchmetrics/functional/image/lpips_models/): set `lin_path` "
        f"(now {lin_path}).\n"
        "Or train without the perceptual term (perceptual loss set to null)."
    )


class LPIPS(nn.Module):
    """LPIPS-VGG distance between images in [-1, 1]; frozen, differentiable w.r.t. the inputs.

    Args:
        vgg_path: torchvision `vgg16-397923af.pth` (any file name; a torch-hub name's hash prefix
            is verified).
        lin_path: LPIPS `vgg.pth`; defaults to torchmetrics' bundled copy.
        vgg_sha256: Expected SHA-256 (or prefix) of the VGG file.
        lin_sha256: Expected SHA-256 (or prefix) of the linear-layer file.

    Raises:
        FileNotFoundError: Naming both files and the arguments to set, if either is missing.
        KeyError: If a file lacks a needed tensor.
        ValueError: On a checksum mismatch or negative linear weights.
    """

    def __init__(
        self,
        vgg_path: str | Path | None,
        lin_path: str | Path | None = None,
        vgg_sha256: str | None = None,
        lin_sha256: str | None = None,
    ) -> None:
        super().__init__()
        vgg_path = Path(vgg_path) if vgg_path is not None else None
        lin_path = Path(lin_path) if lin_path is not None else bundled_lin_path()
        if vgg_path is None or lin_path is None or not vgg_path.is_file() or not lin_path.is_file():
            raise _missing_files_error(vgg_path, lin_path)
        vgg = read_state_dict(vgg_path, vgg_sha256 or _hub_hash_prefix(vgg_path))
        lin = read_state_dict(lin_path, lin_sha256)
        for index in (i for stage in VGG16_STAGES for i in stage):
            for kind in ("weight", "bias"):
                key = f"features.{index}.{kind}"
                if key not in vgg:
                    raise KeyError(f"{vgg_path} has no {key}: not a torchvision VGG16 state dict")
                self.register_buffer(f"conv{index}_{kind}", vgg[key].float(), persistent=False)
        for layer, channels in enumerate(TAP_CHANNELS):
            key = f"lin{layer}.model.1.weight"
            if key not in lin or lin[key].shape != (1, channels, 1, 1):
                raise KeyError(f"{lin_path} has no {key} of shape (1, {channels}, 1, 1): not LPIPS vgg.pth")
            if (lin[key] < 0).any():
                raise ValueError(f"{lin_path}: LPIPS linear weights must be non-negative ({key})")
            self.register_buffer(f"lin{layer}", lin[key].float(), persistent=False)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """VGG16 activations at the five relu taps of ImageNet-normalised images (N, 3, H, W)."""
        h = (x - self.shift) / self.scale
        taps = []
        for number, stage in enumerate(VGG16_STAGES):
            if number:
                h = F.max_pool2d(h, 2)
            for index in stage:
                weight, bias = getattr(self, f"conv{index}_weight"), getattr(self, f"conv{index}_bias")
                h = F.relu(F.conv2d(h, weight, bias, padding=1))
            taps.append(h)
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance per image pair.

        Args:
            x: Images, (N, 3, H, W) in [-1, 1].
            y: Images, (N, 3, H, W) in [-1, 1].

        Returns:
            LPIPS, (N,).
        """
        taps = self.features(torch.cat([x, y]))
        distance = x.new_zeros(x.shape[0])
        for layer, tap in enumerate(taps):
            fx, fy = F.normalize(tap, dim=1, eps=1e-10).chunk(2)
            weighted = F.conv2d((fx - fy).square(), getattr(self, f"lin{layer}"))
            distance = distance + weighted.mean(dim=(1, 2, 3))
        return distance
