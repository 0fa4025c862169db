"""Global image encoders for the identity cross-attention (paper eq. 21).

The paper uses a CLIP image embedding. `ImageEncoder` is the interface: an `nn.Module` mapping a
reference image `(B, 3, H, W)` in [-1, 1] to tokens `(B, num_tokens, embed_dim)`. Two implementations:

* `SmallImageEncoder`: a small conv net trained from scratch with the DiT (no weights needed).
* `OpenCLIPImageEncoder`: an open_clip vision tower loaded from a LOCAL weights file (frozen); nothing is
  ever downloaded. Requires `pip install open_clip_torch`.

`build_image_encoder(spec)` builds one from a config value: None, `"small"`, or a dict
`{"name": "small" | "open_clip", **kwargs}`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# OpenAI CLIP's input normalisation (open_clip's OPENAI_DATASET_MEAN / STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageEncoder(nn.Module):
    """Interface: `forward(image (B, 3, H, W) in [-1, 1]) -> (B, num_tokens, embed_dim)`.

    Attributes:
        embed_dim: Width of the tokens.
        num_tokens: Number of tokens per image.
    """

    embed_dim: int
    num_tokens: int

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class SmallImageEncoder(ImageEncoder):
    """A small conv encoder trained from scratch: resize → 4 strided convs → grid average pool → tokens.

    Args:
        embed_dim: Width of the output tokens.
        width: Channels of the first conv (doubled twice).
        grid: The pooled grid is grid×grid, so `num_tokens = grid²` (coarse layout of the reference).
        input_size: Images are resized (antialiased) to input_size×input_size first.
    """

    def __init__(self, embed_dim: int = 256, width: int = 32, grid: int = 2, input_size: int = 128) -> None:
        super().__init__()
        self.embed_dim, self.num_tokens, self.grid, self.input_size = embed_dim, grid * grid, grid, input_size
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=4),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(4 * width, embed_dim, 3, stride=2, padding=1),
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        size = (self.input_size, self.input_size)
        x = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = F.adaptive_avg_pool2d(self.net(x.to(self.net[0].weight.dtype)), self.grid)
        return self.norm(rearrange(x, "b c h w -> b (h w) c"))


class OpenCLIPImageEncoder(ImageEncoder):
    """A frozen open_clip vision tower from a local weights file; one token, the image embedding.

    Args:
        weights_path: Local open_clip checkpoint (`.pt`, `.bin` or `.safetensors`) for `model_name`.
        model_name: open_clip architecture name, e.g. `"ViT-H-14"` (the one of the weights file).

    Raises:
        FileNotFoundError: If `weights_path` does not exist (checked first; nothing is downloaded).
        ImportError: If open_clip is not installed.
    """

    def __init__(self, weights_path: str | Path, model_name: str = "ViT-H-14") -> None:
        super().__init__()
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"open_clip weights file {path} does not exist; download the checkpoint of {model_name!r} "
                f"yourself (this code never downloads) or use the 'small' image encoder"
            )
        try:
            open_clip = importlib.import_module("open_clip")
        except ImportError as error:
            raise ImportError(
                "OpenCLIPImageEncoder needs open_clip: `pip install open_clip_torch`, or use the 'small' "
                "image encoder"
            ) from error
        # An existing file path as `pretrained` makes open_clip load that file (no hub lookup).
        model = open_clip.create_model(model_name, pretrained=str(path), device="cpu")
        self.visual = model.visual.requires_grad_(False).eval()
        self.embed_dim, self.num_tokens = int(self.visual.output_dim), 1
        size = self.visual.image_size
        self.input_size = tuple(size) if isinstance(size, tuple | list) else (size, size)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> OpenCLIPImageEncoder:
        """Stays in eval mode (frozen)."""
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(
            image.float(), size=self.input_size, mode="bicubic", align_corners=False, antialias=True
        )
        x = ((x + 1) / 2 - self.mean) / self.std
        dtype = next(self.visual.parameters()).dtype
        return self.visual(x.to(dtype))[:, None]


IMAGE_ENCODERS = {"small": SmallImageEncoder, "open_clip": OpenCLIPImageEncoder}


def build_image_encoder(spec: str | Mapping[str, Any] | None) -> ImageEncoder | None:
    """Build an image encoder from a config value.

    Args:
        spec: None (no global identity tokens), a name of `IMAGE_ENCODERS`, or a mapping with `"name"`
            and constructor arguments (e.g. `{"name": "open_clip", "weights_path": "...", "model_name":
            "ViT-H-14"}`).
    """
    if spec is None:
        return None
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    if name not in IMAGE_ENCODERS:
        raise KeyError(f"unknown image encoder {name!r}; choose from {sorted(IMAGE_ENCODERS)}")
    return IMAGE_ENCODERS[name](**spec)
