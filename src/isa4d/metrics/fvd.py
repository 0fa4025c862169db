"""Fréchet Video Distance (Unterthiner et al. 2018): Fréchet distance between Gaussians fitted to I3D
features of real and generated 16-frame clips (SPEC §4).

Two I3D files are accepted, both given by the user (`weights.i3d`), nothing is downloaded:

* StyleGAN-V's TorchScript `i3d_torchscript.pt` (universome/fvd-comparison), called as
  `model(videos, rescale=False, resize=False, return_features=True)` on (B, 3, 16, 224, 224) float in
  [-1, 1] -> (B, 400) features (the logits before the softmax);
* VideoGPT's `i3d_pretrained_400.pt` state dict, loaded strictly into :class:`InceptionI3d` -> the same
  400-d pre-softmax logits (averaged over the two remaining time steps, as VideoGPT does).

Preprocessing (both): the first 16 frames; the shorter side resized bilinearly to 224 and centre-cropped
(a plain resize for square frames); values clamped to [-1, 1].
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from isa4d.metrics.i3d import InceptionI3d
from isa4d.metrics.weights import require_file, weights_record
from isa4d.utils.files import verify_sha256

FVD_FRAMES = 16
FVD_SIZE = 224
I3D_KINDS = ("auto", "torchscript", "state_dict")
I3D_FILES = "i3d_torchscript.pt (StyleGAN-V) or i3d_pretrained_400.pt (VideoGPT)"


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """`|μ1 - μ2|² + tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^½)` in float64, with `scipy.linalg.sqrtm`.

    A near-singular product (fewer samples than feature dimensions) gets `1e-6·I` added to both
    covariances, as in the reference FID code; the imaginary part of the root (numerical noise) is dropped.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"statistics shapes differ: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}"
        )
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), N ≥ 2."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features (N >= 2, D), got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def fvd_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FVD of two feature sets (N, D) (e.g. from :class:`I3DFeatures`)."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


def fvd_preprocess(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T ≥ 16, H, W) in [-1, 1] -> (B, 3, 16, 224, 224): first 16 frames, bilinear resize of the
    shorter side to 224 + centre crop, clamped to [-1, 1]."""
    B, _, T, H, W = video.shape
    if T < FVD_FRAMES:
        raise ValueError(f"FVD needs clips of at least {FVD_FRAMES} frames, got {T}")
    frames = rearrange(video[:, :, :FVD_FRAMES].float(), "b c t h w -> (b t) c h w")
    scale = FVD_SIZE / min(H, W)
    size = (max(FVD_SIZE, round(H * scale)), max(FVD_SIZE, round(W * scale)))
    frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False)
    top, left = (size[0] - FVD_SIZE) // 2, (size[1] - FVD_SIZE) // 2
    frames = frames[:, :, top : top + FVD_SIZE, left : left + FVD_SIZE].clamp(-1.0, 1.0)
    return rearrange(frames, "(b t) c h w -> b c t h w", b=B)


def is_torchscript(path: str | Path) -> bool:
    """Whether a file is a TorchScript archive (a zip with `constants.pkl` and `code/`), not a state dict."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


class I3DFeatures(nn.Module):
    """I3D features for FVD: `forward(video (B, 3, T ≥ 16, H, W) in [-1, 1]) -> (B, 400)`.

    Build it with :func:`load_i3d`. `weights` records the file used (path + SHA-256 prefix).
    """

    def __init__(self, network: nn.Module, torchscript: bool, weights: dict[str, Any]) -> None:
        super().__init__()
        self.network, self.torchscript, self.weights = network.eval(), torchscript, weights

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = fvd_preprocess(video)
        if self.torchscript:
            features = self.network(x, rescale=False, resize=False, return_features=True)
        else:
            features = self.network(x)
        return features.float()


def load_i3d(
    path: str | Path | None,
    kind: str = "auto",
    sha256: str | None = None,
    device: torch.device | str = "cpu",
    config_key: str = "weights.i3d",
) -> I3DFeatures:
    """The FVD feature extractor from a local file.

    Args:
        path: `i3d_torchscript.pt` (TorchScript) or `i3d_pretrained_400.pt` (VideoGPT state dict).
        kind: `"auto"` (TorchScript recognised by the file content), `"torchscript"` or `"state_dict"`.
        sha256: Expected SHA-256 (or a prefix of ≥ 8 hex digits), checked before loading.
        device: Where the network runs.
        config_key: The config entry named in the error when the file is missing.

    Raises:
        FileNotFoundError: `path` missing (naming the expected files and `config_key`).
        ValueError: unknown `kind` or checksum mismatch.
        RuntimeError: a state dict that does not match the VideoGPT I3D layout (strict loading).
    """
    if kind not in I3D_KINDS:
        raise ValueError(f"unknown I3D file kind {kind!r}; choose from {I3D_KINDS}")
    path = require_file(path, "FVD (I3D features)", config_key, I3D_FILES)
    if sha256 is not None:
        verify_sha256(path, sha256)
    torchscript = is_torchscript(path) if kind == "auto" else kind == "torchscript"
    if torchscript:
        network = torch.jit.load(str(path), map_location="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        network = InceptionI3d()
        network.load_state_dict(state, strict=True)
    record = {**weights_record(path), "kind": "torchscript" if torchscript else "state_dict"}
    return I3DFeatures(network, torchscript, record).to(device)
