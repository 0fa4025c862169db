"""The DiT's latent cache: `isa4d encode` versions -> HumanLatentDataModule -> the same training step."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from torch.utils.data import default_collate

from conftest import compose_for_test
from dit_fixtures import DIT_CONFIG, datamodule, human_shards, trainer, vae_ckpt
from isa4d.config import compose, config_dir
from isa4d.data import shard_paths
from isa4d.data.augment import CropJitter, SpeedAdjustment
from isa4d.data.latents import HumanLatentDataModule, LatentClipDecoder, check_latent_cache, version_rng
from isa4d.encode import encode
from isa4d.geometry import project_points
from isa4d.modules import DiTModule
from isa4d.utils.files import file_sha256
from test_dit_modules import randomize

__all__ = ["human_shards", "vae_ckpt"]  # fixtures

RES, FRAMES, VERSIONS = 16, 5, 3  # the DiT's size: smaller than the 32 x 32, 9-frame source shards
CROP, SPEED = (0.6, 0.9), (1, 2)
CONTROL_CONFIG = {**DIT_CONFIG, "branch_3d": False, "control": "controlnet", "control_video": "normal"}


def pixel_datamodule(folder, **overrides):
    """The on-the-fly DataModule at the DiT's size with the augmentation the cache is built with."""
    augment = {"crop": CropJitter(scale=CROP), "speed": SpeedAdjustment(rates=SPEED)}
    return datamodule(folder, num_frames=FRAMES, resolution=RES, **augment, **overrides)


def encode_config(ckpt, source, output, **overrides):
    options = {
        "ckpt_path": ckpt,
        "input_dir": source,
        "output_dir": output,
        "device": "cpu",
        "data.num_frames": FRAMES,
        "data.resolution": RES,
        "data.max_persons": 2,
        "data.crop.scale": list(CROP),
        "data.speed.enabled": "true",
        "data.speed.rates": list(SPEED),
        "num_versions": VERSIONS,
        "control_videos": "[normal]",
        "batch_size": 2,
        **overrides,
    }
    return compose("encode", [f"{key}={value}".replace(" ", "") for key, value in options.items()])


@pytest.fixture(scope="module")
def cache(tmp_path_factory, human_shards, vae_ckpt):
    folder = tmp_path_factory.mktemp("latents")
    encode(encode_config(vae_ckpt, human_shards, folder, overwrite="true"))
    return folder


def latent_module(folder, ckpt, **overrides) -> HumanLatentDataModule:
    args = dict(
        vae_ckpt=str(ckpt),
        train_dirs=[str(folder)],
        val_dirs=[],
        num_frames=FRAMES,
        resolution=RES,
        max_persons=2,
        batch_size=2,
        num_workers=0,
        epoch_size=2,
    )
    return HumanLatentDataModule(**{**args, **overrides})


def raw_samples(folder, split: str = "train") -> dict[str, dict]:
    stream = wds.WebDataset([str(p) for p in shard_paths(folder, split)], shardshuffle=False)
    return {raw["__key__"]: raw for raw in stream}


def pixel_version(source, key: str, version: int) -> dict:
    """The on-the-fly training sample of `key` with the augmentation of cached version `version`."""
    module = pixel_datamodule(source)
    return module.decoder(train=True).decode(raw_samples(source)[key], version_rng(module.seed, key, version))


def control_module(ckpt) -> DiTModule:
    """A ControlNet DiT with its zero-initialised outputs randomised (conditions change the loss)."""
    torch.manual_seed(0)
    module = DiTModule(CONTROL_CONFIG, str(ckpt), num_points=64)
    randomize(module.dit)
    return module


def test_cached_training_step_equals_on_the_fly_encoding(cache, human_shards, vae_ckpt):
    cached = raw_samples(cache)
    assert len(cached) == 2 * VERSIONS
    decoder = LatentClipDecoder(max_persons=2, control_video="normal")
    module = control_module(vae_ckpt)
    for name in ("synth0-train-000000-v001", "synth0-train-000001-v002"):
        item = decoder(cached[name])
        key, version = item["key"], int(item["version"])
        pixels = default_collate([pixel_version(human_shards, key, version)])
        latents = default_collate([item])
        x_pixels, cond_pixels = module.builder(pixels)
        x_cached, cond_cached = module.builder(latents)
        torch.testing.assert_close(x_cached, x_pixels, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            cond_cached.control_latent, cond_pixels.control_latent, rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(cond_cached.ref_image, cond_pixels.ref_image, rtol=0, atol=0)
        losses = []
        for batch in (pixels, latents):
            torch.manual_seed(7)  # the same time, noise, condition and background dropout
            losses.append(module.training_step(batch, 0))
        assert losses[0] > 0
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)


def test_versions_differ_and_intrinsics_follow_their_crops(cache, human_shards, vae_ckpt):
    builder = control_module(vae_ckpt).builder
    decoder = LatentClipDecoder(max_persons=2)
    items = [decoder(raw) for name, raw in sorted(raw_samples(cache).items()) if "train-000000" in name]
    assert [int(item["version"]) for item in items] == list(range(VERSIONS))
    scales = {float(item["aug"]["scale"]) for item in items}
    assert len(scales) == VERSIONS and all(CROP[0] <= scale <= CROP[1] for scale in scales)
    for first, second in zip(items, items[1:], strict=False):
        assert not torch.equal(first["K"], second["K"]) and not torch.equal(first["latent"], second["latent"])
    for item in items:
        pixels = pixel_version(human_shards, item["key"], int(item["version"]))
        torch.testing.assert_close(item["K"], pixels["K"], rtol=0, atol=0)
        # The person's surface points, projected with the cached camera, land on its mask (grown by a
        # pixel: the person is a few pixels wide at 16 x 16) in that version's frames.
        points, _ = builder.pose(default_collate([item])["smpl"])
        uv, depth = project_points(points[0, 0], item["K"], item["R"], item["t"])
        pixel = uv.round().long().clamp(0, RES - 1)
        person = F.max_pool2d((pixels["mask"] == 1).float()[:, None], 3, stride=1, padding=1)[:, 0]
        frames = torch.arange(FRAMES)[:, None].expand_as(pixel[..., 0])
        on_person = person[frames, pixel[..., 1], pixel[..., 0]] > 0
        assert (depth > 0).all() and on_person.float().mean() > 0.95, on_person.float().mean()  # (0.98)
        assert person.mean() < 0.5  # not trivially true


def test_cached_training_never_runs_the_vae_encoder_or_the_renderer(cache, vae_ckpt, tmp_path, monkeypatch):
    module = control_module(vae_ckpt)

    def refuse(*args, **kwargs):
        raise AssertionError("a training step on cached latents must not encode or render")

    monkeypatch.setattr(module.vae, "encode", refuse)
    monkeypatch.setattr("isa4d.modules.dit_batch.render_body_video", refuse)
    data = latent_module(cache, vae_ckpt, control_video="normal")
    before = [p.detach().clone() for p in module.dit.parameters()]
    trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(module, datamodule=data)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.dit.parameters(), strict=True))
    assert data.latents[0]["control_videos"] == ["normal"] and data.skips["train"].total == 0


def test_cache_of_another_vae_or_size_is_refused(cache, human_shards, vae_ckpt, tmp_path):
    other = tmp_path / "other.ckpt"
    shutil.copy(vae_ckpt, other)
    with open(other, "ab") as file:  # the same weights, another file: the cache names its sha256
        file.write(b"\0")
    cases = [
        ({"vae_ckpt": str(other)}, "VAE checkpoint sha256"),
        ({"resolution": 24}, "resolution"),
        ({"num_frames": 9}, "num_frames"),
        ({"control_video": "body"}, "control videos"),
        ({"train_dirs": [str(human_shards)]}, "not a latent cache"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            latent_module(cache, vae_ckpt, **change).setup("fit")
    with pytest.raises(ValueError, match="latent cache folders"):
        latent_module(cache, vae_ckpt, train_dirs=None)
    sha = file_sha256(vae_ckpt)
    info = check_latent_cache(cache, vae_sha256=sha, resolution=(RES, RES), num_frames=FRAMES)
    assert info["num_versions"] == VERSIONS and info["vae_ckpt"] == str(vae_ckpt)


def test_make_train_dit_builds_the_cache_its_experiment_reads(tmp_path):
    """`make train-dit`'s cache arguments give the data settings of its experiment, which reads the cache."""
    makefile = (config_dir().parent / "Makefile").read_text()
    experiment = re.search(r"^DIT_EXPERIMENT \?= (\S+)$", makefile, re.M).group(1)
    args = re.search(r"^DIT_LATENT_ARGS \?= (.+)$", makefile, re.M).group(1).split()
    built = compose("encode", ["ckpt_path=x", "output_dir=y", *args]).data
    trained = compose_for_test("train_dit", tmp_path, [f"experiment={experiment}", "model.vae_ckpt=v"]).data
    assert trained._target_.endswith("HumanLatentDataModule") and trained.vae_ckpt == "v"
    settings = ("num_frames", "resolution", "frame_stride", "max_persons", "seed", "motion", "speed", "crop")
    assert {name: built[name] for name in settings} == {name: trained[name] for name in settings}


def test_cached_batches_the_builder_cannot_use_are_refused(cache, vae_ckpt):
    batch = default_collate([LatentClipDecoder(max_persons=2)(raw) for raw in raw_samples(cache).values()])
    with pytest.raises(ValueError, match="no 'normal' control latent"):  # loaded without it
        control_module(vae_ckpt).builder(batch)
    torch.manual_seed(0)
    builder = DiTModule(DIT_CONFIG, str(vae_ckpt), num_points=64, sample_posterior=True).builder
    with pytest.raises(ValueError, match="posterior means"):
        builder(batch)
    x0, _ = builder.eval()(batch)  # validation and sampling take the means anyway
    torch.testing.assert_close(x0, batch["latent"], rtol=0, atol=0)
