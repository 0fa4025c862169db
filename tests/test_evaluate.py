"""`isa4d evaluate`: VAE mode and DiT mode end to end on tiny shards; table layout; missing weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

import dit_fixtures
from conftest import compose_for_test
from dit_fixtures import FRAMES, SIZE
from isa4d.data.datamodules import VideoDataModule
from isa4d.evaluate import clip_batches, evaluate, format_table, main, model_label
from isa4d.metrics import MISSING, video_psnr
from isa4d.modules import load_vae

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
    table = (out / "vae_eval.md").read_text()
    assert table.splitlines()[0] == "| model | video PSNR↑ | video SSIM↑ | video LPIPS↓ | video FVD↓ |"
    assert table.splitlines()[2].startswith(
        f"| tiny-vae | {result['psnr']:.2f} | {result['ssim']:.3f} | missing"
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
    with pytest.raises(KeyError, match="nowhere"):
        evaluate(eval_config(tmp_path, human_shards, vae_ckpt, splits="[nowhere]"))


def test_dit_mode_generates_and_compares(tmp_path, human_shards, dit_ckpt):
    cfg = eval_config(tmp_path, human_shards, dit_ckpt, mode="dit", **{"sampling.steps": 2})
    report = evaluate(cfg)
    result = report["results"]["video"]
    assert report["mode"] == "dit" and result["num_clips"] == 1
    assert 0 < result["psnr"] < 60 and -1 <= result["ssim"] <= 1
    assert (Path(cfg.output_dir) / "dit_eval.md").is_file()


def test_format_table_and_labels():
    runs = [
        {"model": "a", "results": {"video": {"psnr": 30.0, "ssim": 0.9, "lpips": 0.05, "fvd": 100.0}}},
        {"model": "b", "results": {"camera": {"psnr": 20.0, "ssim": 0.5, "lpips": MISSING, "fvd": MISSING}}},
    ]
    lines = format_table(runs).splitlines()
    assert lines[0].count("|") == 10 and "camera FVD↓" in lines[0]
    assert lines[2] == "| a | 30.00 | 0.900 | 0.050 | 100.0 |  |  |  |  |"
    assert lines[3].endswith("| 20.00 | 0.500 | missing | missing |")
    assert (
        model_label("logs/train_vae/runs/2024-01-01_00-00-00/checkpoints/last.ckpt")
        == "2024-01-01_00-00-00/last"
    )
