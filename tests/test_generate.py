"""`isa4d generate`: end to end on a tiny DiT (windows, both strategies, file inputs) and input checks."""

from __future__ import annotations

import pytest
import torch
import webdataset as wds
from omegaconf import open_dict

import isa4d.generate as generate_module
from conftest import compose_for_test
from dit_fixtures import SIZE, dit_ckpt, human_shards, vae_ckpt
from isa4d.data import decode_sample, encode_video, shard_paths
from isa4d.data.format import npz_bytes
from isa4d.data.video_io import read_video
from isa4d.errors import ConfigError
from isa4d.generate import build_batch, clip_frames, generate

__all__ = ["dit_ckpt", "human_shards", "vae_ckpt"]  # fixtures


def config(tmp_path, shards, ckpt, **options):
    cfg = compose_for_test("generate", tmp_path)
    with open_dict(cfg):
        cfg.ckpt_path = str(ckpt)
        cfg.reference.shards = str(shards)
        cfg.resolution = SIZE
        cfg.steps = 2
        cfg.window_frames = 8  # 2 latent frames per window
        cfg.overlap_frames = 4
        cfg.output = str(tmp_path / "out" / "video.mp4")
        for key, value in options.items():
            cfg[key] = value
    return cfg


def test_clip_frames():
    assert [clip_frames(n) for n in (1, 2, 5, 6, 14, 17)] == [1, 5, 5, 9, 17, 17]


def test_generate_from_a_shard_reference_over_several_windows(tmp_path, human_shards, dit_ckpt, capsys):
    cfg = config(tmp_path, human_shards, dit_ckpt, num_frames=14, motion="walk", camera="orbit")
    summary = generate(cfg)  # 17 frames = 5 latent frames: windows [0, 2), [1, 3), [2, 4), [3, 5)
    video = read_video(summary["output"])
    assert video.shape == (14, SIZE, SIZE, 3) and video.std() > 0
    assert read_video(summary["overlay"]).shape == (14, SIZE, 2 * SIZE, 3)
    assert not list((tmp_path / "out").glob(".*.tmp"))  # written through a temporary name
    assert "windows" in capsys.readouterr().err  # progress bar


def test_generate_from_files_with_background_and_blending(tmp_path, human_shards, dit_ckpt):
    raw = next(iter(wds.WebDataset([str(p) for p in shard_paths(human_shards, "video")], shardshuffle=False)))
    clip = decode_sample(raw)
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "person.png").write_bytes(raw["ref.png"])
    (folder / "ref_smpl.npz").write_bytes(raw["ref_smpl.npz"])
    (folder / "ref_camera.npz").write_bytes(raw["ref_camera.npz"])
    (folder / "motion.npz").write_bytes(raw["smpl.npz"])
    camera = clip.camera
    arrays = {"K": camera.K, "R": camera.R, "t": camera.t, "image_size": camera.image_size}
    (folder / "camera.npz").write_bytes(npz_bytes(arrays))
    (folder / "background.mp4").write_bytes(encode_video(clip.background, 30.0))
    cfg = config(
        tmp_path,
        human_shards,
        dit_ckpt,
        num_frames=6,
        motion=str(folder / "motion.npz"),
        camera=str(folder / "camera.npz"),
        background=str(folder / "background.mp4"),
        strategy="blend",
        overlay=False,
    )
    with open_dict(cfg):
        cfg.reference.image = str(folder / "person.png")
    summary = generate(cfg)
    assert read_video(summary["output"]).shape == (6, SIZE, SIZE, 3) and "overlay" not in summary


def test_clip_scene_equals_the_sample_files(tmp_path, human_shards):
    """`camera=clip background=clip` gives the batch that the reference sample's own `camera.npz` and
    `background.mp4`, written to files, give (cameras sliced to the frames, intrinsics scaled, background
    decoded, resized and cropped alike), and differs from the default orbit without background."""
    raw = next(iter(wds.WebDataset([str(p) for p in shard_paths(human_shards, "video")], shardshuffle=False)))
    (tmp_path / "camera.npz").write_bytes(raw["camera.npz"])
    (tmp_path / "background.mp4").write_bytes(raw["background.mp4"])
    files = {"camera": str(tmp_path / "camera.npz"), "background": str(tmp_path / "background.mp4")}
    batches = {}
    for name, options in {"clip": {"camera": "clip", "background": "clip"}, "files": files}.items():
        cfg = config(tmp_path, human_shards, tmp_path / "unused.ckpt", num_frames=6, motion="walk", **options)
        batches[name], _ = build_batch(cfg, (SIZE, SIZE))
    clip, from_files = batches["clip"], batches["files"]
    camera = decode_sample(raw).camera
    assert clip["R"].shape == (1, 9, 3, 3) and torch.equal(clip["R"][0], torch.from_numpy(camera.R[:9]))
    for key in ("K", "R", "t", "background"):
        assert torch.equal(clip[key], from_files[key]), key
    assert clip["background"].shape == (1, 3, 9, SIZE, SIZE) and bool(clip["has_background"])
    default = config(tmp_path, human_shards, tmp_path / "unused.ckpt", num_frames=6)
    orbit, _ = build_batch(default, (SIZE, SIZE))
    assert "background" not in orbit and not torch.allclose(orbit["R"], clip["R"])


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"ckpt_path": "missing.ckpt"}, FileNotFoundError, "ckpt_path=missing.ckpt"),
        ({"ckpt_path": ""}, ValueError, "make train-dit"),
        ({"num_frames": 0}, ValueError, "num_frames must be >= 1"),
        ({"motion": "moonwalk"}, ValueError, "mocap clip; clips: .*walk"),
        ({"motion": "nowhere.npz"}, FileNotFoundError, "motion=nowhere.npz"),
        ({"camera": "crane"}, ValueError, "preset .*orbit"),
        ({"background": "nowhere.mp4"}, FileNotFoundError, "background=nowhere.mp4"),
        ({"camera": "clip", "reference": {"image": "x.png"}}, ConfigError, "reference.image is given"),
        ({"window_frames": 10}, ValueError, "multiples of 4"),
        ({"uncond_drops": ["body"]}, ConfigError, r"uncond_drops=\['body'\]: expected a non-empty list"),
        ({"reference": {"image": "nowhere.png"}}, FileNotFoundError, "reference.image=nowhere.png"),
        ({"reference": {"key": "nobody"}}, ConfigError, "reference.key='nobody'"),
    ],
)
def test_bad_inputs_fail_before_the_model_loads(
    tmp_path, human_shards, dit_ckpt, monkeypatch, options, error, match
):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(generate_module, "load_dit_module", no_model)
    reference = options.pop("reference", {})
    cfg = config(tmp_path, human_shards, dit_ckpt, **options)
    with open_dict(cfg):
        cfg.reference.update(reference)
    with pytest.raises(error, match=match):
        generate(cfg)
    assert not (tmp_path / "out").exists()


def test_generate_is_a_registered_command():
    from isa4d.cli import HYDRA_COMMANDS

    assert HYDRA_COMMANDS["generate"][1] == "isa4d.generate:main"
