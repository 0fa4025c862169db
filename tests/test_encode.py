"""`isa4d encode`: HumanVideo shards -> VAE-latent shards, round trip on a tiny shard set written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import webdataset as wds

from isa4d.config import compose
from isa4d.data import Cameras, Clip, Reference, SMPLParams, decode_sample, shard_paths, write_shards
from isa4d.data.format import CAMERA, MASK, META, REF_CAMERA, REF_IMAGE, REF_SMPL, SMPL
from isa4d.encode import BACKGROUND_LATENT, LATENT, REF_LATENT, encode, main, read_latent_sample
from isa4d.models.vae import vae_tiny
from isa4d.modules import VAEModule, frames_to_tensor, load_vae

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
    options = {"device": "cpu", "chunk_frames": 4, **overrides}
    return compose("encode", [f"{key}={value}" for key, value in options.items()])


def read_split(folder, split) -> dict[str, dict]:
    samples = wds.WebDataset([str(p) for p in shard_paths(folder, split)], shardshuffle=False)
    return {raw["__key__"]: read_latent_sample(raw) for raw in samples}


def assert_arrays_equal(actual: dict, expected: object, frames: int | None = None) -> None:
    for name, array in actual.items():
        want = getattr(expected, name)
        if frames is not None and name in ("global_orient", "body_pose", "transl"):
            want = want[:, :frames]
        elif frames is not None and name in ("K", "R", "t"):
            want = want[:frames]
        assert array.dtype == want.dtype, name
        np.testing.assert_array_equal(array, want, err_msg=name)


def test_encode_round_trip(source, checkpoint, tmp_path, capsys):
    folder, decoded = source
    out = tmp_path / "latents"
    cfg = encode_config(
        ckpt_path=checkpoint, input_dir=folder, output_dir=out, include_masks="true", shard_max_count=1
    )
    main(cfg)
    assert "train: 2 sample(s) in 2 shard(s)" in capsys.readouterr().out
    manifest = encode(encode_config(ckpt_path=checkpoint, input_dir=folder, output_dir=out, overwrite="true"))
    assert manifest["latents"]["normalized"] and manifest["latents"]["latent"] == "mode"
    assert manifest["latents"]["shift"] == pytest.approx([0.1] * 16)
    assert manifest["splits"]["train"]["latent_shapes"] == {"16x3x4x6": 2}
    assert manifest["splits"]["val"]["latent_shapes"] == {"16x2x4x6": 1}

    vae = load_vae(checkpoint)  # the EMA weights: what encode uses by default
    shift, scale = torch.tensor(manifest["latents"]["shift"]), torch.tensor(manifest["latents"]["scale"])
    samples = {**read_split(out, "train"), **read_split(out, "val")}
    assert sorted(samples) == sorted(decoded)
    for key, sample in samples.items():
        raw, source_clip = decoded[key]
        frames = 1 + (source_clip.meta.num_frames - 1) // 4 * 4
        latent = sample[LATENT]
        assert latent.dtype == np.float32 and latent.shape == (16, 1 + (frames - 1) // 4, H // 8, W // 8)
        meta = sample[META]
        assert meta["num_frames"] == frames and meta["source_num_frames"] == source_clip.meta.num_frames
        assert meta["source_meta"] == source_clip.meta.to_dict()
        # the stored latents, denormalised, are the VAE's own encoding of the source frames
        with torch.no_grad():
            expected = vae.encode(frames_to_tensor(source_clip.video[:frames])).mode()[0]
        stored = torch.from_numpy(latent) / scale.view(-1, 1, 1, 1) + shift.view(-1, 1, 1, 1)
        torch.testing.assert_close(stored, expected, rtol=1e-4, atol=1e-4)
        if source_clip.smpl is None:
            assert SMPL not in sample and CAMERA not in sample
            continue
        assert_arrays_equal(sample[SMPL], source_clip.smpl, frames)
        assert_arrays_equal(sample[CAMERA], source_clip.camera, frames)
        if source_clip.reference is not None:
            assert sample[REF_IMAGE] == raw[REF_IMAGE]
            assert_arrays_equal(sample[REF_SMPL], source_clip.reference.smpl)
            assert_arrays_equal(sample[REF_CAMERA], source_clip.reference.camera)
            assert sample[REF_LATENT].shape == (16, 1, REF_SIZE[0] // 8, REF_SIZE[1] // 8)
            assert sample[BACKGROUND_LATENT].shape == latent.shape
            with torch.no_grad():
                background = vae.encode(frames_to_tensor(source_clip.background)).mode()[0]
            torch.testing.assert_close(
                torch.from_numpy(sample[BACKGROUND_LATENT]),
                vae.normalize(background[None])[0],
                rtol=1e-4,
                atol=1e-4,
            )
            assert MASK not in sample  # include_masks was false in the second run
        else:
            assert REF_LATENT not in sample and BACKGROUND_LATENT not in sample
    assert not list(out.glob(".tmp-*"))


def test_sample_latents_float16_and_masks(source, checkpoint, tmp_path):
    folder, decoded = source
    options = {"ckpt_path": checkpoint, "input_dir": folder, "splits": "[train]", "include_masks": "true"}
    encode(encode_config(**options, output_dir=tmp_path / "a"))
    mode = read_split(tmp_path / "a", "train")
    encode(encode_config(**options, output_dir=tmp_path / "b", latent="sample", dtype="float16", seed=3))
    sampled = read_split(tmp_path / "b", "train")
    encode(encode_config(**options, output_dir=tmp_path / "c", latent="sample", dtype="float16", seed=3))
    again = read_split(tmp_path / "c", "train")
    for key in sampled:
        assert sampled[key][LATENT].dtype == np.float16
        np.testing.assert_array_equal(sampled[key][LATENT], again[key][LATENT])  # seeded per clip
        assert not np.allclose(sampled[key][LATENT], mode[key][LATENT], atol=1e-2)
    assert mode["full-0"][MASK] == decoded["full-0"][0][MASK]  # carried as it was


def test_encode_checks_inputs_before_loading_the_model(source, checkpoint, tmp_path, monkeypatch):
    folder, _ = source

    def refuse(*args, **kwargs):
        raise AssertionError("the model must not be loaded before the inputs are checked")

    monkeypatch.setattr("isa4d.encode.load_vae", refuse)
    good = {"ckpt_path": checkpoint, "input_dir": folder, "output_dir": tmp_path / "out"}
    cases = [
        ({"ckpt_path": tmp_path / "absent.ckpt"}, FileNotFoundError, "no such file"),
        ({"input_dir": tmp_path}, FileNotFoundError, "manifest.json"),
        ({"splits": "[test]"}, KeyError, "test"),
        ({"output_dir": folder}, ValueError, "differ"),
        ({"chunk_frames": 6}, ValueError, "multiple of 4"),
        ({"latent": "mean"}, ValueError, "latent"),
    ]
    for change, error, message in cases:
        with pytest.raises(error, match=message):
            encode(encode_config(**{**good, **change}))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train-000000.tar").write_bytes(b"")
    with pytest.raises(FileExistsError, match="overwrite"):
        encode(encode_config(**good))


def test_load_vae_refuses_other_checkpoints(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, path)
    with pytest.raises(ValueError, match="not a VAEModule checkpoint"):
        load_vae(path)
    with pytest.raises(FileNotFoundError):
        load_vae(tmp_path / "absent.ckpt")
