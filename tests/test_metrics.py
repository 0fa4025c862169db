"""Metrics: PSNR/SSIM wrappers, LPIPS 'missing', Fréchet distance, I3D loaders (TorchScript + state dict)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from isa4d.metrics import (
    FVD_FRAMES,
    FVD_SIZE,
    MISSING,
    InceptionI3d,
    VideoMetrics,
    feature_statistics,
    frechet_distance,
    fvd_preprocess,
    is_torchscript,
    load_i3d,
    load_lpips,
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
