"""Frame metrics of video batches and the per-dataset accumulator used by `isa4d evaluate`.

Videos are (B, 3, T, H, W) in [-1, 1]. PSNR and SSIM are torchmetrics' on frames mapped to [0, 1]
(`data_range = 1`), LPIPS is :class:`isa4d.losses.LPIPS` (VGG, local weights) on the [-1, 1] frames;
each is computed per frame, averaged over the frames of a clip, then over clips.

Two SSIM conventions are reported: `ssim` is torchmetrics' mean over the whole SSIM map, whose border
values see the reflect-padded image; `ssim_crop` drops the `SSIM_CROP` = 5 border pixels on each side of
that same map first, which is skimage's `structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)` (Wang et al.'s reference implementation also crops).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from isa4d.losses.lpips import LIN_FILE, LPIPS, VGG16_FILE, bundled_lin_path
from isa4d.metrics.fvd import FVD_FRAMES, I3DFeatures, fvd_from_features
from isa4d.metrics.weights import MISSING, require_file, weights_record

SSIM_SIGMA = 1.5
SSIM_CROP = int(3.5 * SSIM_SIGMA + 0.5)
"""Border of the SSIM map cut by `ssim_crop`: `(win_size - 1) // 2` = 5 of the 11×11 Gaussian window."""


def _frames(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) -> (B·T, 3, H, W) float32."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"expected videos (B, 3, T, H, W), got {tuple(video.shape)}")
    return rearrange(video.float(), "b c t h w -> (b t) c h w")


def _per_video(values: torch.Tensor, batch: int) -> torch.Tensor:
    """Per-frame values (B·T,) -> per-video means (B,)."""
    return rearrange(values, "(b t) -> b t", b=batch).mean(dim=1)


def _unit(video: torch.Tensor) -> torch.Tensor:
    return ((_frames(video) + 1.0) / 2.0).clamp(0.0, 1.0)


def video_psnr(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per-video mean over frames of the frame PSNR (dB) on [0, 1] frames: (B,)."""
    values = peak_signal_noise_ratio(
        _unit(fake), _unit(real), data_range=1.0, reduction="none", dim=(1, 2, 3)
    )
    return _per_video(values, fake.shape[0])


def _ssim_map(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """torchmetrics' SSIM map (Gaussian 11×11, σ 1.5, reflect-padded) of the [0, 1] frames: (B·T, 3, H, W)."""
    if min(fake.shape[-2:]) <= 2 * SSIM_CROP:
        raise ValueError(
            f"SSIM needs frames larger than {2 * SSIM_CROP} pixels, got {tuple(fake.shape[-2:])}"
        )
    _, ssim_map = structural_similarity_index_measure(
        _unit(fake), _unit(real), sigma=SSIM_SIGMA, data_range=1.0, reduction="none", return_full_image=True
    )
    return ssim_map


def _ssim_per_video(ssim_map: torch.Tensor, batch: int, crop: bool) -> torch.Tensor:
    """(B·T, 3, H, W) SSIM map -> (B,): mean per frame (without the border when `crop`), then per video."""
    if crop:
        ssim_map = ssim_map[..., SSIM_CROP:-SSIM_CROP, SSIM_CROP:-SSIM_CROP]
    return _per_video(ssim_map.mean(dim=(1, 2, 3)), batch)


def video_ssim(fake: torch.Tensor, real: torch.Tensor, crop: bool = False) -> torch.Tensor:
    """Per-video mean over frames of the frame SSIM (Gaussian 11×11, σ 1.5) on [0, 1] frames: (B,).

    `crop=False`: torchmetrics' mean over the whole map; `crop=True`: without the `SSIM_CROP` border
    pixels per side (skimage's convention).
    """
    return _ssim_per_video(_ssim_map(fake, real), fake.shape[0], crop)


@torch.no_grad()
def video_lpips(lpips: LPIPS, fake: torch.Tensor, real: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Per-video mean over frames of LPIPS-VGG on [-1, 1] frames, `chunk` frames at a time: (B,)."""
    x, y = _frames(fake).clamp(-1, 1), _frames(real).clamp(-1, 1)
    values = torch.cat([lpips(a, b) for a, b in zip(x.split(chunk), y.split(chunk), strict=True)])
    return _per_video(values, fake.shape[0])


def load_lpips(
    vgg_path: str | Path | None, lin_path: str | Path | None = None, device: torch.device | str = "cpu"
) -> tuple[LPIPS, dict[str, Any]]:
    """`isa4d.losses.LPIPS` from local files and the record of the files used.

    Raises:
        FileNotFoundError: naming the missing file and its config key (`weights.lpips_vgg` / `lpips_lin`).
    """
    vgg = require_file(vgg_path, "LPIPS", "weights.lpips_vgg", VGG16_FILE)
    lin = require_file(
        lin_path if lin_path is not None else bundled_lin_path(), "LPIPS", "weights.lpips_lin", LIN_FILE
    )
    record = {"vgg": weights_record(vgg), "lin": weights_record(lin)}
    return LPIPS(vgg, lin).to(device).eval(), record


class VideoMetrics:
    """Accumulates PSNR / SSIM (/ LPIPS / FVD when their networks are given) over pairs of video batches.

    Args:
        lpips: LPIPS network, or None (reported as `"missing"`).
        i3d: FVD feature extractor, or None (reported as `"missing"`); clips shorter than 16 frames
            make FVD `"missing"` too.
    """

    def __init__(self, lpips: LPIPS | None = None, i3d: I3DFeatures | None = None) -> None:
        self.lpips, self.i3d = lpips, i3d
        self.values: dict[str, list[torch.Tensor]] = {
            key: [] for key in ("psnr", "ssim", "ssim_crop", "lpips")
        }
        self.features: dict[str, list[np.ndarray]] = {"real": [], "fake": []}

    @torch.no_grad()
    def update(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        """Add a batch: `fake`, `real` (B, 3, T, H, W) in [-1, 1] (same shape)."""
        if fake.shape != real.shape:
            raise ValueError(f"shape mismatch: {tuple(fake.shape)} vs {tuple(real.shape)}")
        self.values["psnr"].append(video_psnr(fake, real).cpu())
        ssim_map = _ssim_map(fake, real)
        self.values["ssim"].append(_ssim_per_video(ssim_map, fake.shape[0], crop=False).cpu())
        self.values["ssim_crop"].append(_ssim_per_video(ssim_map, fake.shape[0], crop=True).cpu())
        if self.lpips is not None:
            self.values["lpips"].append(video_lpips(self.lpips, fake, real).cpu())
        if self.i3d is not None and real.shape[2] >= FVD_FRAMES:
            self.features["real"].append(self.i3d(real).cpu().numpy())
            self.features["fake"].append(self.i3d(fake).cpu().numpy())

    @property
    def num_clips(self) -> int:
        return sum(len(v) for v in self.values["psnr"])

    def compute(self) -> dict[str, Any]:
        """`{"num_clips", "psnr", "ssim", "ssim_crop", "lpips", "fvd"}`: means over clips; `"missing"` where
        the weights were not given; FVD needs at least 2 clips (and is biased for few clips: see docs)."""
        result: dict[str, Any] = {"num_clips": self.num_clips}
        for name in self.values:
            values = self.values[name]
            result[name] = float(torch.cat(values).mean()) if values else MISSING
        real, fake = self.features["real"], self.features["fake"]
        enough = sum(len(f) for f in real) >= 2
        result["fvd"] = fvd_from_features(np.concatenate(real), np.concatenate(fake)) if enough else MISSING
        return result
