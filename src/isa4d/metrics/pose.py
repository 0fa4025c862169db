"""Pose following of generated human videos (docs/evaluate.md): where does the generated person appear?

On clips whose background-only video is known (the synthetic splits), the person of a generated video
is where it differs from that background: `foreground_mask` (max over RGB of |video - background| in
[0, 1] units > `threshold`). It is compared with the ground-truth person mask by the foreground IoU of the
clip (all frames together), and the generated pixels with the ground truth by the PSNR inside and outside
the ground-truth person mask (`masked_psnr`). Videos are (B, 3, T, H, W) in [-1, 1], clamped to it.
"""

from __future__ import annotations

from typing import Any

import torch

from isa4d.metrics.weights import MISSING

FOREGROUND_THRESHOLD = 0.1
"""Default `foreground_mask` threshold: 0.1 of the [0, 1] range (25.5 of 255 levels)."""


def _check_video(name: str, video: torch.Tensor) -> None:
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"{name}: expected videos (B, 3, T, H, W), got {tuple(video.shape)}")


def _check_mask(mask: torch.Tensor, video: torch.Tensor) -> None:
    expected = (video.shape[0], *video.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask: expected (B, T, H, W) = {expected}, got {tuple(mask.shape)}")


def foreground_mask(
    video: torch.Tensor, background: torch.Tensor, threshold: float = FOREGROUND_THRESHOLD
) -> torch.Tensor:
    """Pixels where `video` differs from `background`: (B, 3, T, H, W) ×2 in [-1, 1] -> (B, T, H, W) bool.

    A pixel is foreground when `max_c |video_c - background_c| / 2 > threshold`, i.e. the largest RGB
    difference in [0, 1] units exceeds `threshold`.
    """
    _check_video("video", video)
    if video.shape != background.shape:
        raise ValueError(f"shape mismatch: {tuple(video.shape)} vs background {tuple(background.shape)}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    difference = (video.float().clamp(-1, 1) - background.float().clamp(-1, 1)).abs() / 2.0
    return difference.amax(dim=1) > threshold


def foreground_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of two masks over all frames and pixels of each clip: (B, T, H, W) bool ×2 -> (B,).

    `|pred ∧ target| / |pred ∨ target|`; 1.0 where the union is empty (both masks empty agree).
    """
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(
            f"expected two (B, T, H, W) masks, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    pred, target = pred.bool().flatten(1), target.bool().flatten(1)
    intersection = (pred & target).sum(dim=1).double()
    union = (pred | target).sum(dim=1).double()
    return torch.where(union > 0, intersection / union.clamp(min=1), 1.0).float()


def masked_psnr(fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR (dB, [0, 1] frames) over the masked pixels of each clip: (B, 3, T, H, W) ×2, (B, T, H, W) -> (B,).

    The MSE is pooled over every masked pixel of every frame and the 3 channels (not a per-frame mean:
    a frame may hold no masked pixel); NaN where the clip has no masked pixel, inf where they are equal.
    """
    _check_video("fake", fake)
    if fake.shape != real.shape:
        raise ValueError(f"shape mismatch: {tuple(fake.shape)} vs {tuple(real.shape)}")
    _check_mask(mask, fake)
    error = ((fake.double().clamp(-1, 1) - real.double().clamp(-1, 1)) / 2.0).pow(2).mean(dim=1)
    weight = mask.bool().double()
    mse = (error * weight).flatten(1).sum(dim=1) / weight.flatten(1).sum(dim=1)
    return (10.0 * torch.log10(1.0 / mse)).float()


class ForegroundMetrics:
    """Accumulates the foreground IoU and the PSNR inside / outside the person over clips.

    Args:
        threshold: `foreground_mask` threshold of the generated person.
    """

    KEYS = ("fg_iou", "psnr_fg", "psnr_bg")

    def __init__(self, threshold: float = FOREGROUND_THRESHOLD) -> None:
        self.threshold = float(threshold)
        self.values: dict[str, list[torch.Tensor]] = {key: [] for key in self.KEYS}

    @torch.no_grad()
    def update(
        self,
        fake: torch.Tensor,
        real: torch.Tensor,
        background: torch.Tensor,
        labels: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> None:
        """Add a batch.

        Args:
            fake: (B, 3, T, H, W) generated video in [-1, 1].
            real: (B, 3, T, H, W) ground-truth video.
            background: (B, 3, T, H, W) the background-only video of the clip.
            labels: (B, T, H, W) ground-truth person labels, nonzero = person.
            valid: (B,) bool, the clips that have a background and a mask (None: all).
        """
        _check_mask(labels, fake)
        target = labels != 0
        keep = slice(None) if valid is None else valid.bool().to(fake.device)
        values = {
            "fg_iou": foreground_iou(foreground_mask(fake, background, self.threshold), target),
            "psnr_fg": masked_psnr(fake, real, target),
            "psnr_bg": masked_psnr(fake, real, ~target),
        }
        for key, value in values.items():
            self.values[key].append(value[keep].cpu())

    @property
    def num_clips(self) -> int:
        return sum(len(v) for v in self.values["fg_iou"])

    def compute(self) -> dict[str, Any]:
        """`{"fg_clips", "fg_iou", "psnr_fg", "psnr_bg"}`: means over the clips (the PSNRs over the clips
        with such pixels); `"missing"` where no clip had any. `"fg_iou_clips"`: the IoU of each clip, in the
        order they came (what pairs two rows' clips, e.g. for a paired test)."""
        result: dict[str, Any] = {"fg_clips": self.num_clips}
        result["fg_iou_clips"] = torch.cat(self.values["fg_iou"]).tolist() if self.values["fg_iou"] else []
        for key in self.KEYS:
            values = torch.cat(self.values[key]) if self.values[key] else torch.zeros(0)
            values = values[~values.isnan()]
            result[key] = float(values.mean()) if len(values) else MISSING
        return result
