"""Metrics: PSNR/SSIM wrappers (SSIM crop vs skimage), pose following (foreground mask, IoU, masked PSNR vs
numpy), LPIPS 'missing', Fréchet distance, I3D loaders (TorchScript + state dict)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import skimage.data
import torch
from skimage.metrics import structural_similarity
from skimage.transform import resize
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from isa4d.metrics import (
    FVD_FRAMES,
    FVD_SIZE,
    MISSING,
    ForegroundMetrics,
    InceptionI3d,
    VideoMetrics,
    feature_statistics,
    foreground_iou,
    foreground_mask,
    frechet_distance,
    fvd_preprocess,
    is_torchscript,
    load_i3d,
    load_lpips,
    masked_psnr,
    video_psnr,
    video_ssim,
)
from isa4d.utils.files import file_sha256


def _video(seed: int, shape=(2, 3, 5, 16, 16)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_psnr_matches_closed_form_and_ssim_is_one_on_identity():
    real = _video(0)
    fake = (real + 0.1).clamp(-1, 1)
    mse = (((fake + 1) / 2 - (real + 1) / 2) ** 2).mean(dim=(1, 3, 4))  # (B, T) per-frame
    expected = (10 * torch.log10(1.0 / mse)).mean(dim=1)
    torch.testing.assert_close(video_psnr(fake, real), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(video_ssim(real, real), torch.ones(2), atol=1e-5, rtol=0)
    assert (video_ssim(fake, real) < 1).all()


def test_psnr_is_per_frame_mean_not_pooled():
    real = torch.zeros(1, 3, 2, 8, 8)
    fake = real.clone()
    fake[:, :, 1] += 0.2  # per-frame PSNRs 40 dB and 20 dB: mean 30 dB (a pooled MSE would give ~23 dB)
    fake[:, :, 0] += 0.02
    per_frame = [10 * np.log10(1 / (0.01**2)), 10 * np.log10(1 / (0.1**2))]
    assert float(video_psnr(fake, real)) == pytest.approx(np.mean(per_frame), rel=1e-4)


def photo_frames(size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """Three real photos (skimage's astronaut, chelsea, coffee) resized to `size`: (3, H, W, 3) in [0, 1]."""
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]
    return np.stack([resize(p, size, anti_aliasing=True) for p in photos]).astype(np.float32)


def as_video(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) in [0, 1] -> (1, 3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() * 2 - 1


def test_ssim_crop_is_skimage_and_full_is_torchmetrics_on_photos():
    real = photo_frames()
    rng = np.random.default_rng(0)
    fake = (
        np.stack(
            [
                real[0] + rng.normal(0, 0.08, real[0].shape),  # noise
                0.7 * real[1] + 0.2,  # contrast
                np.roll(real[2], 2, axis=1),  # shift
            ]
        )
        .clip(0, 1)
        .astype(np.float32)
    )
    skimage_ssim = np.mean(
        [
            structural_similarity(
                f,
                r,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1,
                channel_axis=-1,
            )
            for f, r in zip(fake, real, strict=True)
        ]
    )
    full = torch.stack(
        [
            structural_similarity_index_measure(
                torch.from_numpy(f).permute(2, 0, 1)[None],
                torch.from_numpy(r).permute(2, 0, 1)[None],
                data_range=1.0,
            )
            for f, r in zip(fake, real, strict=True)
        ]
    ).mean()
    assert float(video_ssim(as_video(fake), as_video(real), crop=True)) == pytest.approx(
        skimage_ssim, abs=1e-5
    )
    assert float(video_ssim(as_video(fake), as_video(real))) == pytest.approx(float(full), abs=1e-5)
    assert abs(float(full) - skimage_ssim) > 1e-3  # the conventions differ: the border matters
    metrics = VideoMetrics()
    metrics.update(as_video(fake), as_video(real))
    result = metrics.compute()
    assert result["ssim_crop"] == pytest.approx(skimage_ssim, abs=1e-5)
    assert result["ssim"] == pytest.approx(float(full), abs=1e-5)
    with pytest.raises(ValueError, match="larger than 10"):
        video_ssim(_video(0, (1, 3, 2, 10, 32)), _video(1, (1, 3, 2, 10, 32)))


def np_foreground(video: np.ndarray, background: np.ndarray, threshold: float) -> np.ndarray:
    """numpy reference of `foreground_mask`: (B, 3, T, H, W) in [-1, 1] -> (B, T, H, W) bool."""
    unit = lambda x: (np.clip(x, -1, 1) + 1) / 2  # noqa: E731
    return np.abs(unit(video) - unit(background)).max(axis=1) > threshold


def np_iou(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """numpy reference of `foreground_iou` per clip (1 for an empty union)."""
    inter = np.logical_and(pred, target).reshape(len(pred), -1).sum(1)
    union = np.logical_or(pred, target).reshape(len(pred), -1).sum(1)
    return np.array([i / u if u else 1.0 for i, u in zip(inter, union, strict=True)])


def np_masked_psnr(fake: np.ndarray, real: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """numpy reference of `masked_psnr`: 10 log10(1 / MSE) over the masked pixels (all channels) per clip."""
    out = []
    for f, r, m in zip(fake, real, mask, strict=True):
        diff = (np.clip(f, -1, 1) - np.clip(r, -1, 1)) / 2  # (3, T, H, W) in [0, 1] units
        values = diff[:, m]  # (3, number of masked pixels)
        out.append(10 * np.log10(1 / np.mean(values**2)) if values.size else np.nan)
    return np.array(out)


def test_foreground_mask_iou_and_masked_psnr_match_numpy():
    background = _video(10, (3, 3, 4, 12, 16))
    video = background.clone()
    video[:, 0, :, 2:6, 3:9] += 0.3  # a difference of 0.15 in [0, 1] units: foreground at threshold 0.1
    video[:, 2, :, 7:10, 3:9] -= 0.1  # 0.05: background
    video[0] += 0.3 * _video(11, video.shape[1:])  # clip 0 noisy everywhere, clips 1 and 2 exact
    target = torch.zeros(3, 4, 12, 16, dtype=torch.bool)
    target[:, :, 1:6, 2:10] = True
    target[2] = False  # empty target: IoU 1 if the prediction is empty too, else 0; PSNR fg NaN
    for threshold in (0.1, 0.03, 0.3):  # away from the exact differences 0.15 and 0.05 (float rounding)
        pred = foreground_mask(video, background, threshold)
        expected = np_foreground(video.numpy(), background.numpy(), threshold)
        np.testing.assert_array_equal(pred.numpy(), expected)
        np.testing.assert_allclose(
            foreground_iou(pred, target).numpy(), np_iou(expected, target.numpy()), rtol=1e-6
        )
    clean = foreground_mask(video[:1] * 0 + background[:1], background[:1])
    assert not clean.any() and float(foreground_iou(clean, clean)) == 1.0
    assert float(foreground_iou(clean, ~clean)) == 0.0
    real = _video(12, video.shape)
    for mask in (target, ~target):
        np.testing.assert_allclose(
            masked_psnr(video, real, mask).numpy(),
            np_masked_psnr(video.numpy(), real.numpy(), mask.numpy()),
            rtol=1e-5,
        )
    assert masked_psnr(video, real, target)[2].isnan()
    with pytest.raises(ValueError, match="mismatch"):
        foreground_mask(video, background[:, :, :2])
    with pytest.raises(ValueError, match="mask"):
        masked_psnr(video, real, target[:, :2])


def test_foreground_metrics_average_valid_clips():
    background = _video(20, (3, 3, 2, 8, 8))
    labels = torch.zeros(3, 2, 8, 8, dtype=torch.uint8)
    labels[:, :, 2:5, 2:6] = 2  # person 1 (any nonzero label is a person)
    labels[1] = 0  # no person: excluded from the PSNR fg mean, IoU counted
    fake = torch.where(labels[:, None] > 0, -background, background)
    real = _video(21, fake.shape)
    metrics = ForegroundMetrics(threshold=0.1)
    metrics.update(fake, real, background, labels, valid=torch.tensor([True, True, False]))
    result = metrics.compute()
    target = labels.numpy() != 0
    pred = np_foreground(fake.numpy(), background.numpy(), 0.1)
    assert result["fg_clips"] == 2
    assert result["fg_iou"] == pytest.approx(np_iou(pred, target)[:2].mean(), rel=1e-6)
    assert result["fg_iou_clips"] == pytest.approx(np_iou(pred, target)[:2].tolist(), rel=1e-6)
    psnr_fg = np_masked_psnr(fake.numpy(), real.numpy(), target)
    assert np.isnan(psnr_fg[1]) and result["psnr_fg"] == pytest.approx(psnr_fg[0], rel=1e-5)
    psnr_bg = np_masked_psnr(fake.numpy(), real.numpy(), ~target)[:2].mean()
    assert result["psnr_bg"] == pytest.approx(psnr_bg, rel=1e-5)
    empty = ForegroundMetrics()
    empty.update(fake, real, background, labels, valid=torch.zeros(3, dtype=torch.bool))
    assert empty.compute() == {
        "fg_clips": 0,
        "fg_iou_clips": [],
        "fg_iou": MISSING,
        "psnr_fg": MISSING,
        "psnr_bg": MISSING,
    }


def test_lpips_missing_file_names_the_config_key(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"weights\.lpips_vgg.*|vgg16-397923af\.pth"):
        load_lpips(tmp_path / "vgg16-397923af.pth")
    metrics = VideoMetrics()  # no LPIPS, no I3D: reported as missing, never computed
    metrics.update(_video(1), _video(2))
    result = metrics.compute()
    assert result["lpips"] == MISSING and result["fvd"] == MISSING and result["num_clips"] == 2


def test_frechet_distance_diagonal_closed_form_and_scipy():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 2.0, size=6), rng.uniform(0.1, 2.0, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    # Full covariances against an independent evaluation: tr(S1 + S2 - 2 (S1^½ S2 S1^½)^½).
    A, B = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = A @ A.T + 0.1 * np.eye(6), B @ B.T + 0.1 * np.eye(6)
    r1 = scipy.linalg.sqrtm(s1).real
    trace = np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(r1 @ s2 @ r1).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(np.sum((mu1 - mu2) ** 2) + trace, rel=1e-6)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)


def test_fvd_of_sampled_gaussians_converges_to_closed_form():
    rng = np.random.default_rng(1)
    a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 1.0])
    x = rng.normal(size=(200_000, 3)) * np.sqrt(a)
    y = rng.normal(size=(200_000, 3)) * np.sqrt(b) + np.array([1.0, 0.0, -1.0])
    expected = 2.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(*feature_statistics(x), *feature_statistics(y)) == pytest.approx(
        expected, abs=0.03
    )


def test_fvd_preprocess_shapes_and_range():
    video = _video(3, (2, 3, 17, 64, 48)) * 1.5
    x = fvd_preprocess(video)
    assert x.shape == (2, 3, FVD_FRAMES, FVD_SIZE, FVD_SIZE) and x.abs().max() <= 1
    with pytest.raises(ValueError, match="16 frames"):
        fvd_preprocess(_video(4, (1, 3, 9, 8, 8)))


class _StandIn(nn.Module):
    """A TorchScript stand-in with StyleGAN-V's I3D call signature."""

    def forward(
        self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False
    ) -> torch.Tensor:
        assert not rescale and not resize and return_features
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1)


def test_load_torchscript_i3d_and_record(tmp_path: Path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_StandIn()).save(str(path))
    assert is_torchscript(path)
    i3d = load_i3d(path)
    assert i3d.torchscript and i3d.weights["kind"] == "torchscript"
    assert i3d.weights["sha256"] == file_sha256(path)[:16]
    features = i3d(_video(5, (3, 3, 17, 32, 32)))
    assert features.shape == (3, 6)
    metrics = VideoMetrics(i3d=i3d)
    real = _video(6, (4, 3, 17, 16, 16))
    metrics.update(real, real)
    assert metrics.compute()["fvd"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="mismatch"):
        load_i3d(path, sha256="0" * 16)


def test_missing_i3d_names_files_and_key(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"i3d_torchscript\.pt.*i3d_pretrained_400\.pt.*weights\.i3d"):
        load_i3d(tmp_path / "nope.pt")


# Known entries of VideoGPT's `i3d_pretrained_400.pt` (piergiaj/pytorch-i3d layout).
KNOWN_KEYS = {
    "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
    "Conv3d_1a_7x7.bn.running_mean": (64,),
    "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
    "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
    "Mixed_4f.b0.conv3d.weight": (256, 528, 1, 1, 1),
    "Mixed_5c.b3b.conv3d.weight": (128, 832, 1, 1, 1),
    "Mixed_5c.b3b.bn.weight": (128,),
    "logits.conv3d.weight": (400, 1024, 1, 1, 1),
    "logits.conv3d.bias": (400,),
}


def test_i3d_state_dict_layout_loads_strictly(tmp_path: Path):
    shapes = {k: tuple(v.shape) for k, v in InceptionI3d().state_dict().items()}
    for key, shape in KNOWN_KEYS.items():
        assert shapes[key] == shape, key
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=generator) if s else torch.tensor(0) for k, s in shapes.items()}
    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save(state, path)
    assert not is_torchscript(path)
    i3d = load_i3d(path)
    assert not i3d.torchscript and i3d.weights["kind"] == "state_dict"
    torch.testing.assert_close(i3d.network.Mixed_5c.b3b.conv3d.weight, state["Mixed_5c.b3b.conv3d.weight"])
    del state["Mixed_5c.b3b.bn.weight"]
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="Mixed_5c.b3b.bn.weight"):
        load_i3d(path)


@pytest.mark.slow
def test_i3d_forward_gives_400_logits():
    network = InceptionI3d().eval()
    with torch.no_grad():
        out = network(fvd_preprocess(_video(7, (1, 3, 16, 32, 32))))
        pooled = network.features(fvd_preprocess(_video(7, (1, 3, 16, 32, 32))))
    assert out.shape == (1, 400) and pooled.shape == (1, 1024, 1, 1, 1) and torch.isfinite(out).all()
