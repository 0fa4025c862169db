"""`isa4d evaluate`: VAE mode (with the bicubic baseline) and DiT mode (with pose following and its bounds)
end to end on tiny shards, checked against independent computations; table layout; missing weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch
from omegaconf import open_dict
from PIL import Image
from skimage.metrics import structural_similarity

import dit_fixtures
from conftest import compose_for_test
from dit_fixtures import FRAMES, SIZE
from isa4d.data.datamodules import HumanVideoDataModule, VideoDataModule
from isa4d.errors import ConfigError
from isa4d.evaluate import (
    GT_VAE_ROW,
    NO_BODY_ROW,
    bicubic_resample,
    body_gain,
    clip_batches,
    evaluate,
    format_table,
    main,
    model_label,
)
from isa4d.metrics import MISSING, video_psnr
from isa4d.modules import load_vae
from isa4d.modules.dit_module import load_dit_module
from test_metrics import np_foreground, np_iou, np_masked_psnr

human_shards, vae_ckpt, dit_ckpt = dit_fixtures.human_shards, dit_fixtures.vae_ckpt, dit_fixtures.dit_ckpt


def eval_config(tmp_path: Path, folder: Path, ckpt: Path, **overrides):
    options = {
        "ckpt_path": str(ckpt),
        "splits": "[video]",
        "datasets.video.dir": str(folder),
        "num_frames": FRAMES,
        "resolution": SIZE,
        "batch_size": 1,
        "weights.lpips_vgg": str(tmp_path / "absent" / "vgg16-397923af.pth"),
        "weights.i3d": str(tmp_path / "absent" / "i3d_torchscript.pt"),
        **overrides,
    }
    cfg = compose_for_test("evaluate", tmp_path, [f"{k}={v}" for k, v in options.items()])
    with open_dict(cfg):
        cfg.output_dir = cfg.paths.output_dir
    return cfg


def test_vae_mode_writes_json_and_table(tmp_path, human_shards, vae_ckpt, capsys):
    cfg = eval_config(tmp_path, human_shards, vae_ckpt, mode="vae", model_name="tiny-vae")
    main(cfg)
    out = Path(cfg.output_dir)
    report = json.loads((out / "vae_eval.json").read_text())
    result = report["results"]["video"]
    assert result["num_clips"] == 1 and result["lpips"] == MISSING and result["fvd"] == MISSING
    assert (
        report["weights"]["lpips"]["status"] == MISSING
        and "weights.lpips_vgg" in report["weights"]["lpips"]["reason"]
    )
    assert report["checkpoint"]["sha256"] and report["settings"]["datasets"]["video"]["num_frames"] == FRAMES
    assert cfg.num_clips is None  # VAE mode's default: every clip
    table = (out / "vae_eval.md").read_text()
    assert (
        table.splitlines()[0]
        == "| model | video PSNR↑ | video SSIM↑ | video SSIM crop↑ | video LPIPS↓ | video FVD↓ |"
    )
    assert table.splitlines()[2].startswith(
        f"| tiny-vae | {result['psnr']:.2f} | {result['ssim']:.3f} | {result['ssim_crop']:.3f} | missing"
    )
    (bicubic,) = report["references"]
    baseline = bicubic["results"]["video"]
    assert bicubic["model"] == "bicubic 8x" and baseline["num_clips"] == 1
    assert table.splitlines()[3] == (
        f"| bicubic 8x | {baseline['psnr']:.2f} | {baseline['ssim']:.3f} | {baseline['ssim_crop']:.3f} "
        "| missing | missing |"
    )
    assert table in capsys.readouterr().out
    # The PSNR is that of the checkpoint's own reconstruction of the clip.
    vae = load_vae(vae_ckpt)
    batch = next(
        clip_batches(
            VideoDataModule,
            str(human_shards),
            "video",
            num_frames=FRAMES,
            resolution=SIZE,
            batch_size=1,
            num_clips=None,
            image_prob=0.0,
        )
    )
    with torch.no_grad():
        recon = vae.decode(vae.encode(batch["video"]).mode())
    assert result["psnr"] == pytest.approx(float(video_psnr(recon, batch["video"])), rel=1e-5)
    # The bicubic row: PIL's antialiased bicubic 8x down, Keys' cubic (a = -0.75) up, clamped; numpy PSNR
    # per frame and skimage's SSIM (the `ssim_crop` convention).
    real = ((batch["video"][0].permute(1, 2, 3, 0).numpy() + 1) / 2).clip(0, 1)  # (T, H, W, 3)
    fake = np_bicubic_8x(real)
    psnr = [10 * np.log10(1 / np.mean((f - r) ** 2)) for f, r in zip(fake, real, strict=True)]
    ssim = [
        structural_similarity(
            f, r, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1
        )
        for f, r in zip(fake, real, strict=True)
    ]
    assert baseline["psnr"] == pytest.approx(np.mean(psnr), abs=1e-3)
    assert baseline["ssim_crop"] == pytest.approx(np.mean(ssim), abs=1e-4)


def keys_cubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """(n_out, n_in) cubic-convolution interpolation (Keys, `a`), half-pixel centres, edges replicated."""

    def weight(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0

    matrix = np.zeros((n_out, n_in))
    for o in range(n_out):
        source = (o + 0.5) * n_in / n_out - 0.5
        first = int(np.floor(source))
        for k in range(-1, 3):
            matrix[o, min(max(first + k, 0), n_in - 1)] += weight(k - (source - first))
    return matrix


def np_bicubic_8x(frames: np.ndarray) -> np.ndarray:
    """Independent `bicubic_resample(·, 8)` of (T, H, W, 3) frames in [0, 1] (the [-1, 1] map is affine)."""
    t, h, w, c = frames.shape
    up_h, up_w = keys_cubic_matrix(h // 8, h), keys_cubic_matrix(w // 8, w)
    out = np.empty_like(frames)
    for i in range(t):
        for j in range(c):
            plane = Image.fromarray(frames[i, :, :, j].astype(np.float32), mode="F")
            small = np.asarray(plane.resize((w // 8, h // 8), Image.BICUBIC), dtype=np.float64)
            out[i, :, :, j] = (up_h @ small @ up_w.T).clip(0, 1)
    return out


def test_bicubic_resample_matches_pil_and_keys_on_a_photo():
    from test_metrics import as_video, photo_frames

    frames = photo_frames((64, 48))
    ours = (bicubic_resample(as_video(frames), 8)[0].permute(1, 2, 3, 0).numpy() + 1) / 2
    np.testing.assert_allclose(ours, np_bicubic_8x(frames), atol=2e-6)


def test_num_clips_and_unknown_split(tmp_path, human_shards, vae_ckpt):
    batches = list(
        clip_batches(
            VideoDataModule,
            str(human_shards),
            "train",
            num_frames=FRAMES,
            resolution=SIZE,
            batch_size=2,
            num_clips=1,
            image_prob=0.0,
        )
    )
    assert [len(b["key"]) for b in batches] == [1]
    with pytest.raises(ConfigError, match="nowhere"):
        evaluate(eval_config(tmp_path, human_shards, vae_ckpt, splits="[nowhere]"))


def test_dit_mode_generates_and_compares(tmp_path, human_shards, dit_ckpt, monkeypatch):
    import isa4d.diffusion

    sample_long, dropped = isa4d.diffusion.sample_long, []

    def recording(model_fn, noise, cond, **kwargs):
        dropped.append((cond.drop_flags("smpl").tolist(), kwargs["uncond_drops"]))
        return sample_long(model_fn, noise, cond, **kwargs)

    monkeypatch.setattr(isa4d.diffusion, "sample_long", recording)
    cfg = eval_config(
        tmp_path, human_shards, dit_ckpt, mode="dit", foreground_threshold=0.2, **{"sampling.steps": 2}
    )
    report = evaluate(cfg)
    everything = ("ref", "smpl", "camera")  # the default unconditional pass of CFG
    assert dropped == [([False], everything), ([True], everything)]  # the model, then without the body
    result = report["results"]["video"]
    assert report["mode"] == "dit" and result["num_clips"] == 1 and result["fg_clips"] == 1
    assert 0 < result["psnr"] < 60 and -1 <= result["ssim"] <= 1 and 0 <= result["fg_iou"] <= 1
    assert report["settings"]["foreground_threshold"] == 0.2 and report["settings"]["num_clips"] == 4
    rows = {row["model"]: row["results"]["video"] for row in report["references"]}
    assert list(rows) == [GT_VAE_ROW, NO_BODY_ROW]
    table = (Path(cfg.output_dir) / "dit_eval.md").read_text()
    lines = table.splitlines()
    assert lines[0].endswith("| video fg IoU↑ | video PSNR fg↑ | video PSNR bg↑ |")
    assert [line.split(" | ")[0] for line in lines[2:5]] == ["| dit", f"| {GT_VAE_ROW}", f"| {NO_BODY_ROW}"]
    assert "> 0.2" in table
    gain = report["body_gain"]["video"]  # one clip: a mean, no p-value
    assert gain["clips"] == 1 and gain["p"] is None
    assert gain["mean"] == pytest.approx(result["fg_iou"] - rows[NO_BODY_ROW]["fg_iou"], abs=1e-6)
    assert f"Body gain on video: fg IoU {gain['mean']:+.3f}" in table and "p = n/a" in table
    # The upper bound: the GT clip encoded and decoded by the checkpoint's VAE, scored with numpy.
    builder = load_dit_module(dit_ckpt).builder
    batch = next(
        clip_batches(
            HumanVideoDataModule,
            str(human_shards),
            "video",
            num_frames=FRAMES,
            resolution=SIZE,
            batch_size=1,
            num_clips=None,
            max_persons=int(cfg.max_persons),
        )
    )
    recon = builder.decode(builder.encode(batch["video"])).numpy()
    real = batch["video"].numpy()
    background = builder.decode(builder.encode(batch["background"])).numpy()  # the reference: through the VAE
    target = batch["mask"].numpy() != 0
    assert target.any() and (~target).any()
    upper = rows[GT_VAE_ROW]
    iou = np_iou(np_foreground(recon, background, 0.2), target)
    assert upper["fg_iou"] == pytest.approx(float(iou[0]), abs=1e-6)
    assert upper["psnr_fg"] == pytest.approx(float(np_masked_psnr(recon, real, target)[0]), rel=1e-4)
    assert upper["psnr_bg"] == pytest.approx(float(np_masked_psnr(recon, real, ~target)[0]), rel=1e-4)
    # Body guidance (the unconditional pass drops only the body) reaches the sampler; a bad list is refused.
    dropped.clear()
    with open_dict(cfg):
        cfg.sampling.uncond_drops = ["smpl"]
    evaluate(cfg)
    assert dropped == [([False], ("smpl",)), ([True], ("smpl",))]
    with open_dict(cfg):
        cfg.sampling.uncond_drops = ["smpl", "smpl"]
    with pytest.raises(ConfigError, match=r"sampling.uncond_drops=\['smpl', 'smpl'\]: expected a non-empty"):
        evaluate(cfg)


def test_dit_mode_samples_with_the_ema_weights_unless_told_not_to(tmp_path, human_shards, dit_ckpt):
    """`use_ema` picks the weights: the EMA copy of a checkpoint samples exactly as a checkpoint whose live
    weights are that copy; `use_ema=false` exactly as the checkpoint without an EMA."""
    checkpoint = torch.load(dit_ckpt, map_location="cpu", weights_only=True)
    live = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("dit.")}
    average = {k: v * 0.9 if v.is_floating_point() else v for k, v in live.items()}  # a different model

    def save(name: str, state: dict[str, torch.Tensor], ema_decay: float | None) -> Path:
        variant = dict(checkpoint, state_dict=dict(checkpoint["state_dict"]) | state)
        variant["hyper_parameters"] = dict(checkpoint["hyper_parameters"], ema_decay=ema_decay)
        torch.save(variant, tmp_path / name)
        return tmp_path / name

    ema_state = {"ema.module." + k.removeprefix("dit."): v for k, v in average.items()}
    with_ema = save("ema.ckpt", ema_state | {"ema.num_updates": torch.tensor(5)}, ema_decay=0.999)
    averaged = save("averaged.ckpt", average, ema_decay=None)

    def model_row(ckpt: Path, **overrides) -> tuple[dict[str, Any], bool]:
        report = evaluate(
            eval_config(tmp_path, human_shards, ckpt, mode="dit", **{"sampling.steps": 2}, **overrides)
        )
        return report["results"]["video"], report["use_ema"]

    original = model_row(dit_ckpt)[0]
    assert model_row(with_ema, use_ema=False) == (original, False)
    ema_row = model_row(with_ema)
    assert ema_row == (model_row(averaged)[0], True) and ema_row[0]["psnr"] != original["psnr"]


def test_body_gain_is_the_paired_t_test_over_the_clips():
    rng = np.random.default_rng(0)
    model, dropped = rng.uniform(0.1, 0.5, 8), rng.uniform(0.05, 0.3, 8)
    gain = body_gain({"fg_iou_clips": model.tolist()}, {"fg_iou_clips": dropped.tolist()})
    assert gain["clips"] == 8 and gain["mean"] == pytest.approx(float(np.mean(model - dropped)))
    assert gain["p"] == pytest.approx(scipy.stats.ttest_rel(model, dropped).pvalue, rel=1e-9)
    assert body_gain({"fg_iou": 0.2}, {"fg_iou": 0.1}) is None  # a report without per-clip values
    with pytest.raises(ValueError, match="3 clips of the model against 2"):
        body_gain({"fg_iou_clips": [0.1, 0.2, 0.3]}, {"fg_iou_clips": [0.1, 0.2]})


def test_format_table_and_labels():
    runs = [
        {"model": "a", "results": {"video": {"psnr": 30.0, "ssim": 0.9, "lpips": 0.05, "fvd": 100.0}}},
        {"model": "b", "results": {"camera": {"psnr": 20.0, "ssim": 0.5, "lpips": MISSING, "fvd": MISSING}}},
    ]
    lines = format_table(runs).splitlines()
    assert lines[0].count("|") == 10 and "camera FVD↓" in lines[0] and "IoU" not in lines[0]
    assert lines[2] == "| a | 30.00 | 0.900 | 0.050 | 100.0 |  |  |  |  |"
    assert lines[3].endswith("| 20.00 | 0.500 | missing | missing |")
    assert (
        model_label("logs/train_vae/runs/2024-01-01_00-00-00/checkpoints/last.ckpt")
        == "2024-01-01_00-00-00/last"
    )
