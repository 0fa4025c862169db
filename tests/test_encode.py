"""`isa4d encode`: HumanVideo shards -> the DiT's latent cache, on a tiny shard set written here
(tests/test_latents.py: the cache against on-the-fly training)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import webdataset as wds

from isa4d.config import compose
from isa4d.data import Cameras, Clip, Reference, SMPLParams, decode_sample, shard_paths, write_shards
from isa4d.data.latents import LATENT, LatentClipDecoder
from isa4d.data.shards import read_manifest
from isa4d.encode import encode, main
from isa4d.errors import ConfigError
from isa4d.models.vae import vae_tiny
from isa4d.modules import VAEModule, load_vae
from isa4d.utils.files import file_sha256

H, W = 32, 48  # multiples of 8
REF_SIZE = (24, 32)


def smooth_video(frames: int, phase: float = 0.0) -> np.ndarray:
    t, y, x = np.meshgrid(np.arange(frames), np.arange(H), np.arange(W), indexing="ij")
    channels = [
        128 + 100 * np.sin(0.2 * x + 0.4 * t + phase),
        128 + 100 * np.cos(0.15 * y - 0.3 * t + phase),
        128 + 60 * np.sin(0.1 * (x + y) + 0.2 * t),
    ]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def smpl(rng: np.random.Generator, persons: int, frames: int) -> SMPLParams:
    return SMPLParams(
        rng.normal(0, 0.3, (persons, frames, 3)),
        rng.normal(0, 0.2, (persons, frames, 69)),
        rng.normal(0, 1, (persons, 10)),
        rng.normal(0, 1, (persons, frames, 3)),
    )


def cameras(frames: int, height: int = H, width: int = W) -> Cameras:
    K = np.array([[50.0, 0, (width - 1) / 2], [0, 50.0, (height - 1) / 2], [0, 0, 1]])
    angles = 0.05 * np.arange(frames)
    R = np.stack([[[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]] for a in angles])
    return Cameras(np.repeat(K[None], frames, 0), R, np.tile([0.0, -1.0, 3.0], (frames, 1)), (height, width))


def clip(key: str, frames: int, split: str = "train", full: bool = False, annotated: bool = True) -> Clip:
    rng = np.random.default_rng(len(key) + frames)
    persons = 2 if full else 1
    extra = {}
    if full:
        extra = {
            "background": smooth_video(frames, phase=1.0),
            "mask": rng.integers(0, persons + 1, (frames, H, W)).astype(np.uint8),
            "reference": Reference(
                rng.integers(0, 256, (*REF_SIZE, 3)).astype(np.uint8),
                smpl(rng, persons, 1),
                cameras(1, *REF_SIZE),
            ),
        }
    annotation = {"smpl": smpl(rng, persons, frames), "camera": cameras(frames)} if annotated else {}
    return Clip.create(key, smooth_video(frames), 25.0, split=split, **annotation, **extra)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Shards: train = a full clip (background, mask, reference) + an 11-frame clip (encoded: 9),
    in two shards; val = a video-only clip."""
    folder = tmp_path_factory.mktemp("shards")
    train = [clip("full-0", 9, full=True), clip("long-1", 11)]
    write_shards(train, folder, "train", maxcount=1, maxsize=1e9, progress=False, preset="ultrafast")
    write_shards([clip("plain-2", 5, "val", annotated=False)], folder, "val", 1, 1e9, progress=False)
    decoded = {}
    for split in ("train", "val"):
        for raw in wds.WebDataset([str(p) for p in shard_paths(folder, split)], shardshuffle=False):
            decoded[raw["__key__"]] = (raw, decode_sample(raw))
    return folder, decoded


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A VAEModule checkpoint: tiny VAE, non-trivial latent statistics, EMA weights unlike the raw ones."""
    torch.manual_seed(0)
    module = VAEModule(vae_tiny(), ema_decay=0.9)
    module.vae.set_latent_stats(0.1, 2.0)
    with torch.no_grad():
        for parameter in module.ema.module.parameters():
            parameter.mul_(0.9)
    path = tmp_path_factory.mktemp("ckpt") / "vae.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def encode_config(**overrides):
    options = {"device": "cpu", "data.num_frames": 5, "data.resolution": 16, "num_versions": 2, **overrides}
    return compose("encode", [f"{key}={value}" for key, value in options.items()])


def read_split(folder, split) -> dict[str, dict]:
    samples = wds.WebDataset([str(p) for p in shard_paths(folder, split)], shardshuffle=False)
    return {raw["__key__"]: LatentClipDecoder(max_persons=2)(raw) for raw in samples}


def test_encode_writes_augmented_versions_and_how_they_were_made(source, checkpoint, tmp_path, capsys):
    folder, decoded = source
    out = tmp_path / "latents"
    main(encode_config(ckpt_path=checkpoint, input_dir=folder, output_dir=out, shard_max_count=3))
    assert "train: 4 sample(s) of 2 clip(s) in 2 shard(s)" in capsys.readouterr().out
    manifest = read_manifest(out)
    info = manifest["latents"]
    assert info["vae_sha256"] == file_sha256(checkpoint) and info["vae_ckpt"] == str(checkpoint)
    assert info["resolution"] == [16, 16] and info["num_frames"] == 5 and info["num_versions"] == 2
    assert info["shift"] == pytest.approx([0.1] * 16) and info["control_videos"] == []
    assert info["augment"]["crop"] == {"enabled": True, "scale": [0.9, 1.0]}  # conf/data/human.yaml
    assert manifest["splits"]["train"]["latent_shapes"] == {"16x2x2x2": 4}

    vae = load_vae(checkpoint)  # the EMA weights, as DiTModule loads them
    samples = read_split(out, "train")
    assert sorted(samples) == ["full-0-v000", "full-0-v001", "long-1-v000", "long-1-v001"]
    for sample in samples.values():
        clip = decoded[sample["key"]][1]
        assert sample["latent"].shape == (16, 2, 2, 2) and sample["ref_latent"].shape == (16, 1, 2, 2)
        persons = clip.smpl.num_persons
        assert sample["person_mask"].tolist() == [p < persons for p in range(2)]
        torch.testing.assert_close(sample["smpl"]["betas"][:persons], torch.from_numpy(clip.smpl.betas))
        assert bool(sample["has_reference"]) == bool(sample["has_background"]) == (clip.reference is not None)
        if clip.background is None:
            assert not sample["background_latent"].any()
        # The reference image at the training resolution is what the stored reference latent encodes.
        with torch.no_grad():
            ref = vae.normalize(vae.encode(sample["ref_image"][None, :, None]).mode())[0]
        torch.testing.assert_close(sample["ref_latent"], ref, rtol=1e-4, atol=1e-4)
    assert not torch.equal(samples["full-0-v000"]["K"], samples["full-0-v001"]["K"])
    assert not list(out.glob(".tmp-*"))

    # float16 storage of the same versions
    encode(
        encode_config(ckpt_path=checkpoint, input_dir=folder, output_dir=tmp_path / "half", dtype="float16")
    )
    half = wds.WebDataset([str(p) for p in shard_paths(tmp_path / "half", "train")], shardshuffle=False)
    for raw in half:
        stored = np.load(io.BytesIO(raw[LATENT]))
        assert stored.dtype == np.float16
        torch.testing.assert_close(
            torch.from_numpy(stored).float(), samples[raw["__key__"]]["latent"], atol=2e-3, rtol=2e-3
        )


def test_unusable_clips_are_skipped_and_other_settings_refused(source, checkpoint, tmp_path):
    folder, _ = source
    out = tmp_path / "latents"
    with pytest.raises(ValueError, match="no samples"):  # val holds one unannotated clip only
        encode(encode_config(ckpt_path=checkpoint, input_dir=folder, output_dir=out, splits="[val]"))
    manifest = encode(encode_config(ckpt_path=checkpoint, input_dir=folder, output_dir=out, splits="[train]"))
    assert manifest["splits"]["train"]["skipped"] == {"read": 0, "invalid": 0, "unusable": 0}
    with pytest.raises(ValueError, match="made differently"):
        encode(
            encode_config(
                ckpt_path=checkpoint, input_dir=folder, output_dir=out, splits="[val]", num_versions=1
            )
        )


def test_encode_checks_inputs_before_loading_the_model(source, checkpoint, tmp_path, monkeypatch):
    folder, _ = source

    def refuse(*args, **kwargs):
        raise AssertionError("the model must not be loaded before the inputs are checked")

    monkeypatch.setattr("isa4d.encode.load_vae", refuse)
    good = {"ckpt_path": checkpoint, "input_dir": folder, "output_dir": tmp_path / "out"}
    cases = [
        ({"ckpt_path": tmp_path / "absent.ckpt"}, FileNotFoundError, "no such file"),
        ({"input_dir": tmp_path}, FileNotFoundError, "manifest.json"),
        ({"splits": "[test]"}, ConfigError, "test"),
        ({"output_dir": folder}, ValueError, "differ"),
        ({"num_versions": 0}, ValueError, "num_versions"),
        ({"control_videos": "[depth]"}, ValueError, "control_videos"),
        ({"dtype": "int8"}, ValueError, "dtype"),
    ]
    for change, error, message in cases:
        with pytest.raises(error, match=message):
            encode(encode_config(**{**good, **change}))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train-000000.tar").write_bytes(b"")
    with pytest.raises(ConfigError, match="overwrite"):
        encode(encode_config(**good))


def test_load_vae_refuses_other_checkpoints(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, path)
    with pytest.raises(ValueError, match="not a VAEModule checkpoint"):
        load_vae(path)
    with pytest.raises(FileNotFoundError):
        load_vae(tmp_path / "absent.ckpt")
