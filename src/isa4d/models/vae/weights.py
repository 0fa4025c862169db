"""Local weight files: checked loading, and inflating SD3's 2-D VAE into the causal video VAE.

Nothing here downloads anything: every file is a path the user supplies.

SD3 inflation: the model's parameter names are diffusers' `AutoencoderKL` names with three
translations (`SD3_KEY_MAP`), so an SD3 state dict maps by key. A 2-D conv kernel `(out, in, k, k)`
goes into the LAST temporal tap of the causal 3-D kernel `(out, in, kt, k, k)`, the other taps are
zero: on a single frame (T = 1, all padded taps see copies of that frame) and on a static video the
inflated conv computes exactly the 2-D conv. Norms and attention linears are copied unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from isa4d.utils.files import verify_sha256

SD3_WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"

SD3_KEY_MAP: tuple[tuple[str, str], ...] = (
    (".downsamplers.0.", ".downsample."),
    (".upsamplers.0.", ".upsample."),
    (".to_out.0.", ".to_out."),
)
"""(diffusers substring, isa4d substring); every other name is identical."""


def read_state_dict(path: str | Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a tensor dict from a local `.safetensors`, `.pt`, `.pth`, `.bin` or `.ckpt` file.

    Args:
        path: The file.
        sha256: Expected SHA-256 in hex, or a prefix of it (at least 8 digits, as in torch-hub
            file names such as `vgg16-397923af.pth`); checked before the file is parsed.

    Returns:
        The state dict, on CPU. Pickle files are read with `weights_only=True`; a dict with a
        `"state_dict"` entry (Lightning) is unwrapped.

    Raises:
        FileNotFoundError: If `path` does not exist.
        ValueError: On a checksum mismatch or a malformed checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if sha256 is not None:
        verify_sha256(path, sha256)
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    content = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]
    return dict(content)


def sd3_key_to_isa4d(key: str) -> str:
    """Translate a diffusers `AutoencoderKL` parameter name to this package's name."""
    for old, new in SD3_KEY_MAP:
        key = key.replace(old, new)
    return key


@dataclass
class InflationReport:
    """What `inflate_sd3_state_dict` did; key names are the diffusers ones, except `missing`.

    Attributes:
        loaded: Source keys copied (conv kernels inflated).
        missing: Model parameters (isa4d names) that received nothing.
        unexpected: Source keys with no counterpart (e.g. `downsamplers` convs when the model uses
            average pooling, `quant_conv` of non-SD3 VAEs).
        mismatched: `"key: source shape -> model shape"` for keys whose shapes do not fit.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"loaded {len(self.loaded)}, missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
            f"mismatched {len(self.mismatched)}"
        ]
        for name in ("missing", "unexpected", "mismatched"):
            lines += [f"  {name}: {key}" for key in getattr(self, name)]
        return "\n".join(lines)


def inflate_tensor(source: torch.Tensor, target_shape: torch.Size) -> torch.Tensor | None:
    """Fit a 2-D tensor into a 3-D parameter's shape; None when it does not fit.

    A conv kernel `(out, in, k, k)` becomes `(out, in, kt, k, k)` with the kernel in the last
    temporal tap and zeros elsewhere; a tensor of the target's shape is returned unchanged.
    """
    if source.shape == target_shape:
        return source
    if source.ndim == 4 and len(target_shape) == 5 and target_shape[:2] + target_shape[3:] == source.shape:
        inflated = source.new_zeros(target_shape)
        inflated[:, :, -1] = source
        return inflated
    return None


def inflate_sd3_state_dict(state_dict_2d: Mapping[str, torch.Tensor], model: nn.Module) -> InflationReport:
    """Load SD3 2-D VAE weights (diffusers layout) into a `VideoVAE` by inflation.

    Args:
        state_dict_2d: diffusers `AutoencoderKL` state dict (`encoder.*`, `decoder.*`; SD3 has no
            `quant_conv`).
        model: The `VideoVAE` to load into (in place); its `latent_scale` / `latent_shift` are
            left alone.

    Returns:
        What was loaded, missing, unexpected and mismatched.
    """
    target = model.state_dict()
    report = InflationReport()
    inflated: dict[str, torch.Tensor] = {}
    for key, value in state_dict_2d.items():
        name = sd3_key_to_isa4d(key)
        if name not in target:
            report.unexpected.append(key)
            continue
        tensor = inflate_tensor(value, target[name].shape)
        if tensor is None:
            report.mismatched.append(f"{key}: {tuple(value.shape)} -> {tuple(target[name].shape)}")
            continue
        inflated[name] = tensor.to(target[name].dtype)
        report.loaded.append(key)
    report.missing = [
        name for name in target if name.startswith(("encoder.", "decoder.")) and name not in inflated
    ]
    model.load_state_dict(inflated, strict=False)
    return report


def load_sd3_weights(path: str | Path, model: nn.Module, sha256: str | None = None) -> InflationReport:
    """Inflate SD3's VAE from a local file into `model`.

    Args:
        path: `diffusion_pytorch_model.safetensors` from the `vae/` folder of the SD3 diffusers
            repository (or a `.pt`/`.bin` state dict with the same keys), or the folder holding it.
        model: The `VideoVAE`.
        sha256: Expected SHA-256 (or prefix) of the file.

    Returns:
        The `InflationReport`.

    Raises:
        FileNotFoundError: Naming the expected file when it is not there (nothing is downloaded).
    """
    if model.shortcut is not None:
        raise ValueError("SD3 inflation needs a VAE without the block shortcut (shortcut: false)")
    path = Path(path)
    if path.is_dir():
        path = path / SD3_WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"SD3 VAE weights not found at {path}. Download `vae/{SD3_WEIGHTS_FILE}` of "
            "stabilityai/stable-diffusion-3-medium-diffusers (licence acceptance needed) and pass its "
            "path or folder; nothing is downloaded at run time."
        )
    return inflate_sd3_state_dict(read_state_dict(path, sha256), model)
