"""Evaluation metrics (SPEC §4, docs/evaluate.md): PSNR, SSIM, LPIPS, FVD and pose following (foreground
IoU, PSNR inside / outside the person) on (B, 3, T, H, W) videos in [-1, 1]. Networks load only from
local files; a metric without its weights is reported as `"missing"`."""

from isa4d.metrics.fvd import (
    FVD_FRAMES,
    FVD_SIZE,
    I3DFeatures,
    feature_statistics,
    frechet_distance,
    fvd_from_features,
    fvd_preprocess,
    is_torchscript,
    load_i3d,
)
from isa4d.metrics.i3d import InceptionI3d
from isa4d.metrics.pose import (
    FOREGROUND_THRESHOLD,
    ForegroundMetrics,
    foreground_iou,
    foreground_mask,
    masked_psnr,
)
from isa4d.metrics.video import SSIM_CROP, VideoMetrics, load_lpips, video_lpips, video_psnr, video_ssim
from isa4d.metrics.weights import MISSING, require_file, weights_record

__all__ = [
    "FOREGROUND_THRESHOLD",
    "FVD_FRAMES",
    "FVD_SIZE",
    "MISSING",
    "SSIM_CROP",
    "ForegroundMetrics",
    "I3DFeatures",
    "InceptionI3d",
    "VideoMetrics",
    "feature_statistics",
    "foreground_iou",
    "foreground_mask",
    "frechet_distance",
    "fvd_from_features",
    "fvd_preprocess",
    "is_torchscript",
    "load_i3d",
    "load_lpips",
    "masked_psnr",
    "require_file",
    "video_lpips",
    "video_psnr",
    "video_ssim",
    "weights_record",
]
