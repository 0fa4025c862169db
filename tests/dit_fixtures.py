"""Shared fixtures of the stage-2 tests: tiny synthetic shards, a tiny VAE checkpoint, a small DiT."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from isa4d.data import write_shards
from isa4d.data.datamodules import HumanVideoDataModule
from isa4d.data.synth import generate_clip
from isa4d.models.dit import dit_tiny
from isa4d.models.vae import vae_tiny
from isa4d.modules import DiTModule, VAEModule

SIZE, FRAMES = 32, 9  # 32x32 frames -> 4x4 latents -> a 2x2 patch grid; 9 frames -> 3 latent frames
DIT_CONFIG = dit_tiny(hidden_size=64, depth=1, num_heads=2, use_canonical=False).config


@pytest.fixture(scope="session")
def human_shards(tmp_path_factory) -> Path:
    """Rendered synthetic clips (one person): 2 in `train`, 1 in `video`."""
    folder = tmp_path_factory.mktemp("human_shards")
    for split, count in (("train", 2), ("video", 1)):
        clips = [generate_clip(split, i, size=SIZE, frames=FRAMES, persons=1) for i in range(count)]
        write_shards(clips, folder, split, 4, 1e9, progress=False, preset="ultrafast")
    return folder


@pytest.fixture(scope="session")
def vae_ckpt(tmp_path_factory) -> Path:
    """A VAEModule checkpoint: random tiny VAE (no block shortcut: all 16 channels carry random features)
    with non-trivial latent statistics."""
    torch.manual_seed(0)
    module = VAEModule(vae_tiny(shortcut=False))
    module.vae.set_latent_stats(0.05, 1.5)
    path = tmp_path_factory.mktemp("vae") / "vae.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def datamodule(folder: Path, **overrides) -> HumanVideoDataModule:
    args = dict(
        train_dirs=[str(folder)],
        val_dirs=[str(folder)],
        val_splits=["video"],
        num_frames=FRAMES,
        resolution=SIZE,
        max_persons=2,
        batch_size=1,
        num_workers=0,
        epoch_size=2,
        crop=None,
    )
    return HumanVideoDataModule(**{**args, **overrides})


def dit_module(vae_ckpt: Path, **overrides) -> DiTModule:
    torch.manual_seed(0)
    return DiTModule(DIT_CONFIG, str(vae_ckpt), num_points=64, **overrides)


def trainer(root: Path, max_steps: int, **overrides) -> L.Trainer:
    args = dict(
        default_root_dir=str(root),
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
    )
    return L.Trainer(**{**args, **overrides})


@pytest.fixture(scope="session")
def dit_ckpt(tmp_path_factory, human_shards, vae_ckpt) -> Path:
    """A DiTModule checkpoint after two training steps."""
    root = tmp_path_factory.mktemp("dit")
    fit = trainer(root, max_steps=2)
    fit.fit(dit_module(vae_ckpt), datamodule=datamodule(human_shards))
    path = root / "dit.ckpt"
    fit.save_checkpoint(path)
    return path
