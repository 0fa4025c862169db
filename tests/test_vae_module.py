"""Tests of stage-1 training: `isa4d.modules.VAEModule`, its callbacks and configs, on CPU.

The data are clips cut from a real photo (skimage's astronaut) by a moving crop window, held in
memory by a small LightningDataModule defined here (independent of the shard DataModules).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import OmegaConf, open_dict
from skimage import data as skdata
from torch.utils.data import DataLoader, Dataset

from conftest import compose_for_test
from isa4d.callbacks import LastFrameBias, LatentStatistics, ReconstructionVideos
from isa4d.config import compose, config_dir
from isa4d.data.video_io import read_video
from isa4d.losses import LPIPS
from isa4d.losses.lpips import TAP_CHANNELS, VGG16_STAGES
from isa4d.modules import VAEModule, build_vae_loss, load_vae
from isa4d.modules.vae_module import CHECKPOINT_KEY, LATENT_STATS_KEY
from toy_lightning import ToyDataModule, ToyModule

FRAMES, SIZE = 9, 32
EXPERIMENTS = ("vae_tiny_cpu", "vae_tiny_cpu_no_reg", "vae_stage1_33f", "vae_stage2_97f", "vae_no_reg")


# ---------------------------------------------------------------------------------------------- fixtures


def photo_clips(count: int, frames: int = FRAMES, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    """Clips (count, 3, T, size, size) in [-1, 1]: a crop window moving over a downscaled real photo."""
    photo = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1).float()[None] / 127.5 - 1.0
    photo = F.interpolate(photo, size=(3 * size, 3 * size), mode="area")[0]
    generator = torch.Generator().manual_seed(seed)
    clips = []
    for _ in range(count):
        y0, x0 = (int(v) for v in torch.randint(size // 2, size + 1, (2,), generator=generator))
        vy, vx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
        window = [
            photo[:, y0 + vy * t : y0 + vy * t + size, x0 + vx * t : x0 + vx * t + size]
            for t in range(frames)
        ]
        clips.append(torch.stack(window, dim=1))
    return torch.stack(clips).contiguous()


class _Videos(Dataset):
    def __init__(self, clips: torch.Tensor) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"video": self.clips[index]}


class ClipDataModule(L.LightningDataModule):
    """In-memory clips; batches `{"video": (B, 3, T, H, W)}` as the VideoDataModule gives them."""

    def __init__(self, train: torch.Tensor, val: torch.Tensor | None = None, batch_size: int = 2) -> None:
        super().__init__()
        self.train, self.val, self.batch_size = train, (train if val is None else val), batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Videos(self.train), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Videos(self.val), batch_size=self.batch_size, shuffle=False)


class MemoryLogger(Logger):
    """Keeps every `log_metrics` call."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def keys(self) -> set[str]:
        return {key for _, row in self.rows for key in row}


@pytest.fixture(scope="module")
def tiny_config():
    """The real `model=vae_tiny` config, composed once."""
    cfg = compose("train_vae", ["model=vae_tiny"])
    return cfg.model


def make_module(tiny_config, seed: int = 0, **overrides) -> VAEModule:
    """`VAEModule` from the tiny config with dotted-key overrides (`"loss.disc_start": 2`)."""
    cfg = OmegaConf.create(OmegaConf.to_container(tiny_config))
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    torch.manual_seed(seed)
    return instantiate(cfg)


def make_trainer(root: Path, batches: int, logger=None, callbacks=(), **kwargs) -> L.Trainer:
    options = {
        "accelerator": "cpu",
        "max_steps": 2 * batches,  # generator + discriminator optimiser steps per batch
        "logger": logger if logger is not None else False,
        "callbacks": list(callbacks),
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 1,
        "default_root_dir": str(root),
    }
    return L.Trainer(**{**options, **kwargs})


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


class Snapshots(L.Callback):
    """VAE and discriminator parameters after every training batch, by `batch_step`."""

    def __init__(self) -> None:
        self.vae: dict[int, torch.Tensor] = {}
        self.disc: dict[int, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.vae[0], self.disc[0] = flat(pl_module.vae), flat(pl_module.loss.disc_2d)
        self.disc3d0 = flat(pl_module.loss.disc_3d)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = pl_module.batch_step
        self.vae[step], self.disc[step] = flat(pl_module.vae), flat(pl_module.loss.disc_2d)
        self.disc3d = flat(pl_module.loss.disc_3d)


def lpips_files(folder: Path) -> tuple[Path, Path]:
    """Random weights in the layout of torchvision's VGG16 `features.*` and LPIPS' `vgg.pth`."""
    generator = torch.Generator().manual_seed(0)
    vgg, channels = {}, 3
    widths = iter((64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512))
    for index in (i for stage in VGG16_STAGES for i in stage):
        width = next(widths)
        scale = math.sqrt(2.0 / (9 * channels))
        vgg[f"features.{index}.weight"] = torch.randn(width, channels, 3, 3, generator=generator) * scale
        vgg[f"features.{index}.bias"] = torch.zeros(width)
        channels = width
    lin = {
        f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator)
        for i, c in enumerate(TAP_CHANNELS)
    }
    torch.save(vgg, folder / "vgg16_random.pth")
    torch.save(lin, folder / "vgg_lin.pth")
    return folder / "vgg16_random.pth", folder / "vgg_lin.pth"


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    mse = ((x.clamp(-1, 1) - y) / 2).square().mean()
    return float(10 * torch.log10(1 / mse))


# ---------------------------------------------------------------------------------------------- training


def test_training_steps_both_optimisers_and_disc_start(tiny_config, tmp_path):
    disc_start = 2
    module = make_module(tiny_config, **{"loss.disc_start": disc_start})
    logger, snapshots = MemoryLogger(), Snapshots()
    trainer = make_trainer(tmp_path, batches=4, logger=logger, callbacks=[snapshots])
    trainer.fit(module, ClipDataModule(photo_clips(8)))

    assert module.batch_step == 4 and trainer.global_step == 8  # two optimiser steps per batch
    # The generator steps every batch; the discriminators only from batch `disc_start` on.
    for step in range(1, 5):
        assert not torch.equal(snapshots.vae[step], snapshots.vae[step - 1]), step
        changed = not torch.equal(snapshots.disc[step], snapshots.disc[step - 1])
        assert changed == (step - 1 >= disc_start), step
    assert not torch.equal(snapshots.disc3d, snapshots.disc3d0)

    before = [row for step, row in logger.rows if "train/l1" in row and step is not None][:disc_start]
    assert all(row["train/disc_factor"] == 0 and "train/g_2d" not in row for row in before)
    generator_terms = {"total", "nll", "l1", "kl", "reg", "reg_l1", "disc_factor", "g_2d", "g_3d"}
    generator_terms |= {"d_weight_2d", "d_weight_3d"}
    disc_terms = {"disc_total", "d_2d", "d_3d", "logits_real_2d", "logits_fake_2d", "logits_real_3d"}
    disc_terms |= {"logits_fake_3d"}
    last = next(row for _, row in reversed(logger.rows) if "train/g_2d" in row)
    expected = {f"train/{name}" for name in generator_terms | disc_terms} | {"train/loss"}
    assert expected <= set(last), expected - set(last)
    assert all(math.isfinite(value) for value in last.values())
    assert last["train/disc_factor"] == 1 and last["train/d_weight_2d"] > 0
    validation = {"val/loss", "val/psnr", "val/ssim", "val/mae", "val/l1", "val/kl", "val/reg", "val/g_2d"}
    assert validation <= logger.keys(), validation - logger.keys()
    assert all(math.isfinite(float(trainer.callback_metrics[key])) for key in validation)


def test_lpips_from_local_files_and_off_switches(tiny_config, tmp_path):
    vgg, lin = lpips_files(tmp_path)
    module = make_module(tiny_config, **{"loss.lpips": {"vgg_path": str(vgg), "lin_path": str(lin)}})
    assert isinstance(module.loss.perceptual, LPIPS)
    assert not any(k.startswith("loss.perceptual") for k in module.state_dict())  # never checkpointed
    logger = MemoryLogger()
    make_trainer(tmp_path, batches=1, logger=logger, limit_val_batches=0).fit(
        module, ClipDataModule(photo_clips(2))
    )
    assert {"train/lpips", "train/reg_lpips"} <= logger.keys()

    missing = {"vgg_path": str(tmp_path / "absent.pth"), "lin_path": None}
    with pytest.raises(FileNotFoundError, match=r"model\.loss\.lpips=null"):
        build_vae_loss(lpips=missing)
    assert build_vae_loss(lpips=missing, perceptual_weight=0.0).perceptual is None
    assert build_vae_loss(lpips=None).perceptual is None


def test_checkpoint_reload_ema_resume_and_init_from_ckpt(tiny_config, tmp_path):
    module = make_module(tiny_config, **{"loss.disc_start": 1, "ema_decay": 0.9})
    datamodule = ClipDataModule(photo_clips(4))
    make_trainer(tmp_path, batches=3).fit(module, datamodule)
    ckpt = tmp_path / "model.ckpt"
    module.trainer.save_checkpoint(ckpt)

    # EMA: differs from the live weights after training; ema_scope swaps it in and back.
    raw, ema = flat(module.vae), flat(module.ema.module)
    assert not torch.allclose(raw, ema)
    with module.ema_scope():
        assert torch.equal(flat(module.vae), ema)
        with module.ema_scope():  # nested: no second swap
            assert torch.equal(flat(module.vae), ema)
    assert torch.equal(flat(module.vae), raw) and torch.equal(flat(module.ema.module), ema)

    checkpoint = torch.load(ckpt, weights_only=False)
    assert checkpoint[CHECKPOINT_KEY]["batch_step"] == 3
    assert checkpoint["hyper_parameters"]["vae"] == module.vae.config

    x = photo_clips(1, seed=5)
    module.eval()
    with torch.no_grad():
        expected, _, _ = module.reconstruct(x)
        loaded = VAEModule.load_from_checkpoint(ckpt).eval()
        assert loaded.loss is None and loaded.ema is not None and loaded.batch_step == 3
        torch.testing.assert_close(loaded.reconstruct(x)[0], expected, rtol=0, atol=1e-6)
        vae = load_vae(ckpt)  # EMA weights by default
        torch.testing.assert_close(vae.decode(vae.encode(x).mode()), expected, rtol=0, atol=1e-6)
        assert torch.equal(flat(load_vae(ckpt, use_ema=False)), raw)
        assert torch.equal(flat(module.export_vae()), ema)

    # Resume continues the batch counter (disc_start and the EMA follow it).
    resumed = make_module(tiny_config, **{"loss.disc_start": 1, "ema_decay": 0.9})
    make_trainer(tmp_path, batches=4).fit(resumed, datamodule, ckpt_path=ckpt)
    assert resumed.batch_step == 4 and int(resumed.ema.num_updates) == 4

    # Stage 2: only the model weights (VAE, EMA, aux decoder, discriminators) come from the checkpoint.
    fresh = make_module(tiny_config, seed=1, **{"ema_decay": 0.9, "init_from_ckpt": str(ckpt)})
    assert torch.equal(flat(fresh.vae), raw) and torch.equal(flat(fresh.ema.module), ema)
    assert torch.equal(flat(fresh.loss.disc_3d), flat(module.loss.disc_3d))
    assert fresh.batch_step == 0 and fresh.hparams.initialised_from["ckpt"] == str(ckpt)
    no_ema = make_module(tiny_config, seed=1, **{"init_from_ckpt": str(ckpt)})
    assert torch.equal(flat(no_ema.vae), raw) and no_ema.ema is None
    absent = str(tmp_path / "absent.safetensors")
    with pytest.raises(Exception, match="SD3 VAE weights not found"):  # Hydra wraps the FileNotFoundError
        make_module(tiny_config, **{"init_from_sd3": absent, "vae.shortcut": False})
    with pytest.raises(Exception, match="without the block shortcut"):
        make_module(tiny_config, **{"init_from_sd3": absent})


@pytest.mark.slow
def test_overfitting_one_clip_raises_psnr(tiny_config, tmp_path):
    clip = photo_clips(1, frames=5, seed=3)
    module = make_module(
        tiny_config, **{"loss.disc_start": 10**6, "optimizer.lr": 2e-3, "loss.aux_decoder": None}
    )
    module.eval()
    with torch.no_grad():
        start = psnr(module.reconstruct(clip)[0], clip)
    make_trainer(tmp_path, batches=80, limit_val_batches=0).fit(module, ClipDataModule(clip, batch_size=1))
    module.eval()
    with torch.no_grad():
        end = psnr(module.reconstruct(clip)[0], clip)
    assert end > start + 6.0 and end > 14.0, (start, end)  # about 8.9 -> 16.5 dB


# ---------------------------------------------------------------------------------------------- callbacks


def test_callbacks_write_their_files(tiny_config, tmp_path):
    module = make_module(tiny_config)
    val = photo_clips(3, seed=7)
    videos = ReconstructionVideos(every_n_epochs=1, num_videos=2, fps=8)
    stats = LatentStatistics(every_n_epochs=None, at_train_end=True, max_batches=2)
    bias = LastFrameBias(every_n_epochs=1, at_train_end=False, max_batches=1)
    logger = TensorBoardLogger(str(tmp_path / "tb"), name=None, version="")
    trainer = make_trainer(
        tmp_path, batches=2, logger=logger, callbacks=[videos, stats, bias], limit_val_batches=2
    )
    trainer.fit(module, ClipDataModule(photo_clips(4), val=val))

    # ground truth | reconstruction, 2 clips stacked: (T, 2H, 2W, 3), every frame there
    (path,) = sorted((tmp_path / "videos").glob("step*.mp4"))
    frames = read_video(path)
    assert frames.shape == (FRAMES, 2 * SIZE, 2 * SIZE, 3)
    assert path == videos.last_path and not list((tmp_path / "videos").glob(".*"))
    left = torch.from_numpy(frames[:, :SIZE, :SIZE].astype(np.float32)) / 127.5 - 1
    assert psnr(left.permute(3, 0, 1, 2), val[0]) > 30  # the left half is the ground truth

    # latent_stats.json: mean / std of the same latents computed here independently
    saved = json.loads((tmp_path / "latent_stats.json").read_text())
    module.eval()
    with torch.no_grad():
        z = torch.cat([module.vae.encode(batch).mode() for batch in val.split(2)]).double()
    assert saved["num_values"] == z.numel()
    assert saved["mean"] == pytest.approx(float(z.mean()), rel=1e-6, abs=1e-9)
    assert saved["std"] == pytest.approx(float(z.std(unbiased=False)), rel=1e-6)
    assert saved["shift"] == pytest.approx(saved["mean"]) and saved["scale"] == pytest.approx(
        1 / saved["std"]
    )
    channel_std = z.transpose(0, 1).flatten(1).std(1, unbiased=False)
    assert saved["channel_std"] == pytest.approx(channel_std.tolist(), rel=1e-6)
    torch.testing.assert_close(module.vae.latent_shift, torch.full((16,), saved["mean"]))
    torch.testing.assert_close(module.vae.latent_scale, torch.full((16,), 1 / saved["std"]))
    histogram = saved["histogram"]  # what `isa4d ablate-report` plots
    assert len(histogram["edges"]) == len(histogram["counts"]) + 1 == LatentStatistics.HISTOGRAM_BINS + 1
    assert sum(histogram["counts"]) == histogram["num_values"] > 0
    assert (tmp_path / "latent_histogram.png").stat().st_size > 0

    # last_frame_bias.json: frame 0 and the 4 positions of each window, every metric finite
    result = json.loads((tmp_path / "last_frame_bias.json").read_text())
    assert [entry["position"] for entry in result["positions"]] == [0, 1, 2, 3]
    trained = [result["frame_0"]["sensitivity"]] + [e["sensitivity"] for e in result["positions"]]
    untrained = result["untrained_sensitivity"]  # a fresh VAE of the same configuration, subtracted
    assert len(untrained) == 5 and all(value > 0 for value in untrained) and untrained != trained
    assert result["sensitivity_minus_untrained"] == pytest.approx(
        [a - b for a, b in zip(trained, untrained, strict=True)]
    )
    assert result["num_clips"] == 2 and result["num_windows"] == 2 * 2  # 2 clips x 2 windows (T' = 3)
    for entry in [result["frame_0"], *result["positions"]]:
        assert set(LastFrameBias.METRICS) <= set(entry)
        assert all(math.isfinite(entry[name]) for name in LastFrameBias.METRICS)
        assert entry["sensitivity"] > 0
    assert (tmp_path / "last_frame_bias.png").stat().st_size > 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert "val/reconstruction" in events.Tags()["images"]
    assert {"latent/mean", "last_frame_bias/sensitivity_p3"} <= set(events.Tags()["scalars"])


def test_block_shortcut_starts_from_the_training_data(tiny_config, tmp_path):
    """A fresh run sets the tiny VAE's block shortcut to the PCA of its first training batches
    (their blocks encode to centred, uncorrelated component scores); it stays fixed, is saved with the model,
    and a resumed run keeps it."""

    class AtStart(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.state = {k: v.clone() for k, v in pl_module.vae.shortcut.state_dict().items()}

    module = make_module(tiny_config, **{"shortcut_init_batches": 2, "ema_decay": 0.9})
    assert not list(module.vae.shortcut.parameters())  # buffers: never trained
    train = photo_clips(4)
    at_start = AtStart()
    make_trainer(tmp_path, batches=1, callbacks=[at_start]).fit(module, ClipDataModule(train, batch_size=2))
    shortcut = module.vae.shortcut
    assert all(torch.equal(shortcut.state_dict()[k], v) for k, v in at_start.state.items())  # still fixed
    with torch.no_grad():
        latents = shortcut.encode_blocks(shortcut.blocks(train).flatten(0, -2)).double()  # the 2 batches
    torch.testing.assert_close(latents.mean(0), torch.zeros(16, dtype=torch.float64), atol=1e-4, rtol=0)
    variances = latents.var(0)  # the principal components' variances: decreasing, uncorrelated
    assert (variances[:-1] >= variances[1:] - 1e-6).all() and variances[0] > 10 * variances[-1]
    covariance = torch.cov(latents.T)
    torch.testing.assert_close(covariance, torch.diag(variances), atol=1e-4 * float(variances[0]), rtol=0)

    ckpt = tmp_path / "one.ckpt"
    module.trainer.save_checkpoint(ckpt)
    torch.testing.assert_close(load_vae(ckpt).shortcut.encode_weight, shortcut.encode_weight, rtol=0, atol=0)
    resumed = make_module(tiny_config, **{"shortcut_init_batches": 2, "ema_decay": 0.9})
    make_trainer(tmp_path, batches=2).fit(resumed, ClipDataModule(photo_clips(4, seed=9)), ckpt_path=ckpt)
    # not re-initialised from the new data
    torch.testing.assert_close(resumed.vae.shortcut.encode_weight, shortcut.encode_weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="datamodule"):  # the data must be reachable before training
        make_trainer(tmp_path, batches=1).fit(
            make_module(tiny_config, **{"shortcut_init_batches": 2}),
            train_dataloaders=ClipDataModule(train).train_dataloader(),
        )


def test_last_ckpt_carries_latent_statistics_of_its_own_weights(tiny_config, tmp_path):
    """The statistics are recomputed right before each checkpoint, so `last.ckpt` (written at the last
    training batch, before any end-of-training hook) holds the shift/scale of exactly its weights."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    module = make_module(tiny_config, **{"ema_decay": 0.9})
    val = photo_clips(3, seed=7)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, every_n_train_steps=2)
    stats = LatentStatistics(max_batches=2)  # the config's defaults: before every checkpoint only
    trainer = make_trainer(tmp_path, batches=3, callbacks=[stats, checkpoints], enable_checkpointing=True)
    trainer.fit(module, ClipDataModule(photo_clips(4), val=val, batch_size=2))

    path = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["global_step"] == 6 and checkpoint[LATENT_STATS_KEY]["global_step"] == 6
    vae = load_vae(path)  # EMA weights, as the DiT loads them
    with torch.no_grad():
        z = torch.cat([vae.encode(batch).mode() for batch in val.split(2)]).double()  # 2 batches
    mean, std = float(z.mean()), float(z.std(unbiased=False))
    assert abs(mean) > 1e-3 and abs(std - 1) > 1e-3  # not the untouched 0 / 1
    torch.testing.assert_close(vae.latent_shift.double(), torch.full((16,), mean, dtype=torch.float64))
    torch.testing.assert_close(vae.latent_scale.double(), torch.full((16,), 1 / std, dtype=torch.float64))
    assert checkpoint[LATENT_STATS_KEY]["mean"] == pytest.approx(mean, rel=1e-5)
    normalised = vae.normalize(z.float())
    assert float(normalised.mean()) == pytest.approx(0, abs=1e-4)
    assert float(normalised.std(unbiased=False)) == pytest.approx(1, rel=1e-4)


def test_callbacks_leave_other_modules_alone(tmp_path):
    callbacks = [ReconstructionVideos(), LatentStatistics(every_n_epochs=1), LastFrameBias(every_n_epochs=1)]
    trainer = make_trainer(tmp_path, batches=2, callbacks=callbacks, max_steps=2, limit_val_batches=1)
    trainer.fit(ToyModule(), ToyDataModule())
    assert not list(tmp_path.glob("*.json")) and not (tmp_path / "videos").exists()


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("root", ["train_vae", "train_dit"])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose(experiment, root, tmp_path):
    cfg = compose_for_test(root, tmp_path, [f"experiment={experiment}"])
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert cfg.model._target_ == "isa4d.modules.VAEModule"
    assert cfg.data._target_ == "isa4d.data.datamodules.VideoDataModule"
    assert {"reconstruction_videos", "latent_statistics", "last_frame_bias"} <= set(cfg.callbacks)
    assert (cfg.data.num_frames - 1) % 4 == 0


def test_experiment_settings(tmp_path):
    tiny = compose_for_test("train_vae", tmp_path, ["experiment=vae_tiny_cpu"])
    assert tiny.model.loss.lpips is None and tiny.trainer.accelerator == "cpu"
    assert (tiny.data.num_frames, tiny.data.resolution) == (17, 64)
    stage1 = compose_for_test("train_vae", tmp_path, ["experiment=vae_stage1_33f"])
    assert (stage1.data.num_frames, stage1.data.resolution, stage1.model.vae.name) == (33, 256, "sd3")
    assert stage1.trainer.precision == "bf16-mixed" and stage1.trainer.accelerator == "gpu"
    stage2 = compose_for_test("train_vae", tmp_path, ["experiment=vae_stage2_97f"])
    assert stage2.data.num_frames == 97 and OmegaConf.is_missing(stage2.model, "init_from_ckpt")
    no_reg = compose_for_test("train_vae", tmp_path, ["experiment=vae_no_reg"])
    assert no_reg.model.loss.aux_decoder is None and no_reg.model.loss.reg_weight == 0
    assert stage1.model.loss.aux_decoder is not None and stage1.model.loss.reg_weight == 1


def test_tiny_cpu_experiment_instantiates(tmp_path):
    cfg = compose_for_test("train_vae", tmp_path, ["experiment=vae_tiny_cpu"])
    model = instantiate(cfg.model)
    assert isinstance(model, VAEModule) and model.loss.perceptual is None
    assert model.loss.aux_decoder is not None and model.loss.disc_start == cfg.model.loss.disc_start
    assert sum(p.numel() for p in model.vae.parameters()) == pytest.approx(4.84e6, rel=0.01)
    datamodule = instantiate(cfg.data)
    assert datamodule.num_frames == 17
    callbacks = {name: instantiate(node) for name, node in cfg.callbacks.items()}
    assert isinstance(callbacks["latent_statistics"], LatentStatistics)
    assert callbacks["model_checkpoint"].monitor == "val/loss"
    assert callbacks["reconstruction_videos"].dirpath == tmp_path / "run" / "videos"


def test_sd3_lpips_weights_missing_fails_clearly(tmp_path):
    cfg = compose_for_test("train_vae", tmp_path, ["model=vae_sd3", f"paths.weights_dir={tmp_path}"])
    with open_dict(cfg):
        cfg.model.loss.disc_2d = cfg.model.loss.disc_3d = cfg.model.loss.aux_decoder = None
    with pytest.raises(Exception, match="vgg16-397923af.pth") as error:
        instantiate(cfg.model.loss)
    assert "model.loss.lpips=null" in str(error.value)


def test_benchmark_writes_its_reports(tmp_path, monkeypatch):
    from isa4d.bench import vae as bench

    monkeypatch.setattr(bench, "diffusers_version", lambda: None)  # the comparison is reported as missing
    args = ["--frames", "5", "--resolution", "16", "--repeats", "1", "--threads", "1", "--out", str(tmp_path)]
    report = bench.run(bench.parse_args(args))
    (row,) = report["results"]
    assert row["cogvideox"] is None and row["speed_ratio"] is None
    assert row["isa4d"]["frames_per_s"] > 0 and row["isa4d"]["peak_mib"] > 0, row["isa4d"]
    assert json.loads((tmp_path / "vae.json").read_text()) == report
    table = (tmp_path / "vae.md").read_text()
    assert "| tiny | 5 |" in table and "missing" in table


def test_benchmark_refuses_clip_lengths_the_vae_cannot_take(capsys):
    from isa4d.bench import vae as bench

    with pytest.raises(SystemExit):
        bench.parse_args(["--frames", "17", "18"])
    assert "--frames must be 1 + 4k, got 18" in capsys.readouterr().err


def test_encode_config_composes():
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose("encode", overrides=["ckpt_path=a.ckpt", "input_dir=in", "output_dir=out"])
    assert cfg.task_name == "encode" and cfg.num_versions >= 1 and list(cfg.control_videos) == []
    assert cfg.data.num_frames % 4 == 1  # the DiT's data config, whose augmentation the cache applies
