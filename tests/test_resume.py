"""Reproducibility and exact resume: the data stream is a pure function of (seed, epoch, rank, worker), and a
run killed and resumed from `last.ckpt` logs the losses of the uninterrupted run (docs/reliability.md)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import open_dict

from conftest import compose_for_test
from dit_fixtures import human_shards, vae_ckpt
from isa4d.data import Clip, write_shards
from isa4d.data.augment import CropJitter, StructuredMotion
from isa4d.data.datamodules import StreamLoader, VideoDataModule
from isa4d.data.pipeline import SkipCounter, StreamSeed, _shard_stream, make_webdataset
from isa4d.train import train

__all__ = ["human_shards", "vae_ckpt"]  # fixtures

FRAMES, SIZE = 9, 32


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """6 noise clips of 13 frames in 3 training shards."""
    folder = tmp_path_factory.mktemp("resume_shards")
    rng = np.random.default_rng(0)
    clips = [
        Clip.create(f"c{i}", rng.integers(0, 256, (13, SIZE, SIZE, 3), dtype=np.uint8), 25.0, split="train")
        for i in range(6)
    ]
    write_shards(clips, folder, "train", 2, 1e9, progress=False, preset="ultrafast")
    return folder


def video_module(folder: Path, **overrides) -> VideoDataModule:
    args = dict(
        train_dirs=[str(folder)],
        num_frames=FRAMES,
        resolution=SIZE,
        batch_size=1,
        num_workers=0,
        epoch_size=6,
        shuffle_buffer=4,
        image_prob=0.3,
        motion=StructuredMotion(prob=1.0),
        crop=CropJitter(scale=(0.5, 1.0)),
    )
    module = VideoDataModule(**{**args, **overrides})
    module.setup("fit")
    return module


def same(a: list[dict], b: list[dict]) -> bool:
    """Same batches: keys and videos (the augmentation) equal."""
    return len(a) == len(b) and all(
        x["key"] == y["key"] and torch.equal(x["video"], y["video"]) for x, y in zip(a, b, strict=True)
    )


# ---------------------------------------------------------------------------------------------- streams


def test_a_pass_is_a_pure_function_of_seed_and_epoch(shards):
    module = video_module(shards)

    def one_pass(seed: int, epoch: int) -> list[dict]:
        stream = make_webdataset(
            module._sources_of("train"),
            decode_fn=module.decoder(train=True),
            batch_size=1,
            resampled=True,
            shuffle_buffer=4,
            seed=seed,
            epoch_size=6,
            skips=SkipCounter(),
        )
        stream.epoch = epoch
        return list(stream)

    first = one_pass(seed=0, epoch=0)
    assert same(first, one_pass(seed=0, epoch=0))
    assert not same(first, one_pass(seed=0, epoch=1))  # another draw of shards, samples and augmentation
    assert not same(first, one_pass(seed=1, epoch=0))


def test_ranks_split_one_resampled_draw_sequence_between_them(shards):
    """Every rank draws the same sequence and keeps its share: rank r has draws r, r + world, ... (disjoint
    across ranks, together the single-process stream)."""
    urls = [url for source in video_module(shards)._sources_of("train") for url in source]

    def keys(rank: int, world: int) -> list[str]:
        stream = StreamSeed(seed=3, epoch=1, rank=rank, worker=0, workers=1, world=world)
        samples = _shard_stream(
            urls, resampled=True, shuffle_buffer=4, stream=stream, source=0, skips=SkipCounter()
        )
        return [sample["__key__"] for _, sample in zip(range(12 // world), samples, strict=False)]

    single = keys(0, 1)
    assert len(set(single)) > 1
    assert keys(0, 2) == single[0::2] and keys(1, 2) == single[1::2]
    assert [keys(r, 3) for r in range(3)] == [single[r::3] for r in range(3)]


def test_a_resumed_loader_continues_the_stream_of_two_workers(shards):
    """Workers take turns from worker 0: after 3 batches, worker 0 plays stream 1 from its 2nd batch."""
    full = video_module(shards, num_workers=2)
    first = list(full.train_dataloader())
    assert len(first) == full.batches_per_epoch() == 6
    settings = full._stream_settings()

    resumed = video_module(shards, num_workers=2)
    resumed.load_state_dict({"epoch": 0, "batches": 3, **settings})
    assert same(list(resumed.train_dataloader()), first[3:])

    # a checkpoint at the end of an epoch resumes at the start of the next one
    resumed.load_state_dict({"epoch": 0, "batches": 6, **settings})
    loader = resumed.train_dataloader()
    assert isinstance(loader, StreamLoader)
    following = full.train_dataloader()
    following.next_pass = lambda: (1, 0)
    second = list(following)
    assert same(list(loader), second) and not same(second, first)
    assert resumed._epoch == 1  # the stream counts on from the epoch it resumed at


def test_a_changed_stream_is_reported_on_resume(shards, caplog):
    module = video_module(shards)
    module.load_state_dict({"epoch": 2, "batches": 1, **module._stream_settings(), "seed": 5})
    assert "cannot continue exactly" in caplog.text and "seed 5 -> 0" in caplog.text
    assert module._next_pass() == (2, 1) and module._next_pass() == (3, 0)


class Recorder(L.LightningModule):
    """Records the key and video sum of every training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight, self.seen = torch.nn.Parameter(torch.zeros(())), []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.append((batch["key"][0], float(batch["video"].sum())))
        return (self.weight - batch["video"].mean()) ** 2

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("overfit", [0, 2])
def test_epochs_differ_except_when_overfitting(shards, overfit):
    """`debug=overfit` (`trainer.overfit_batches`) trains on the same batches every epoch."""
    recorder = Recorder()
    L.Trainer(
        max_epochs=3,
        limit_train_batches=2,
        overfit_batches=overfit,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(recorder, datamodule=video_module(shards))
    epochs = [recorder.seen[i : i + 2] for i in (0, 2, 4)]
    assert (epochs[0] == epochs[1] == epochs[2]) == bool(overfit)


# ---------------------------------------------------------------------------------------------- runs

COMMON = [
    "trainer=cpu",
    "logger=csv",
    "+logger.csv.flush_logs_every_n_steps=1",
    "trainer.log_every_n_steps=1",
    "+trainer.limit_val_batches=1",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar.refresh_rate=0",
    "data.val_splits=[video]",
    "data.train_weights=null",
    f"data.num_frames={FRAMES}",
    f"data.resolution={SIZE}",
    "data.batch_size=1",
]
BATCHES, KILLED_AFTER = 4, 2


def stage_overrides(stage: str, shards: Path, vae: Path, epoch_size: int = 3) -> tuple[str, list[str], int]:
    """Root config, overrides and optimiser steps per batch of a tiny run of `stage` with `epoch_size`
    batches per epoch (3: the runs cross an epoch end and its validation)."""
    data = [f"data.train_dirs=[{shards}]", f"data.val_dirs=[{shards}]", f"data.epoch_size={epoch_size}"]
    if stage == "vae":  # manual optimisation: a generator and a discriminator step per batch
        model = ["data=video", "model=vae_tiny", "model.shortcut_init_batches=2", "model.loss.disc_start=1"]
        return "train_vae", [*model, *COMMON, *data, "data.num_workers=1"], 2
    model = [
        "data=human",
        "model=dit_tiny",
        f"model.vae_ckpt={vae}",
        "model.num_points=32",
        "data.max_persons=2",
    ]
    return "train_dit", [*model, *COMMON, *data, "data.num_workers=0"], 1


class PauseAt(L.Callback):
    """Writes `marker` and waits to be killed when the batch after `step` optimiser steps starts."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            self.marker.touch()
            time.sleep(600)


def losses(run: Path) -> dict[int, float]:
    """`train/loss` of every logged step of a run (CSV logger)."""
    with open(run / "csv" / "metrics.csv") as file:
        return {
            int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(file) if row["train/loss"]
        }


def run_in_process(
    name: str, overrides: list[str], out: Path, ckpt_path: Path | None = None
) -> dict[int, float]:
    cfg = compose_for_test(name, out, overrides)
    with open_dict(cfg):
        cfg.ckpt_path = str(ckpt_path) if ckpt_path else None
    train(cfg)
    return losses(out / "run")


def run_and_kill(
    name: str, overrides: list[str], out: Path, step: int, ckpt_path: Path | None = None
) -> Path:
    """Run the CLI in a subprocess (resuming from `ckpt_path` if given), SIGKILL it once the checkpoint of
    `step` is written; its run folder."""
    marker = out / "paused"
    pause = f"+callbacks.pause={{_target_: test_resume.PauseAt, step: {step}, marker: '{marker}'}}"
    command = [
        sys.executable,
        "-m",
        "isa4d",
        name.replace("_", "-"),
        *overrides,
        pause,
        f"hydra.run.dir={out}",
        *([f"ckpt_path={ckpt_path}"] if ckpt_path else []),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    out.mkdir(parents=True)
    with open(out / "output.txt", "w") as output:
        process = subprocess.Popen(command, cwd=out, env=env, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        process.kill()
        process.wait()
    assert marker.exists(), (out / "output.txt").read_text()[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["vae", "dit"])
def test_a_killed_run_resumes_exactly(stage, tmp_path, human_shards, vae_ckpt):
    name, overrides, steps_per_batch = stage_overrides(stage, human_shards, vae_ckpt)
    overrides += [f"trainer.max_steps={BATCHES * steps_per_batch}"]
    overrides += [f"callbacks.model_checkpoint.every_n_train_steps={steps_per_batch}"]  # every batch
    uninterrupted = run_in_process(name, overrides, tmp_path / "a")
    assert len(uninterrupted) == BATCHES

    killed = run_and_kill(name, overrides, tmp_path / "b", step=KILLED_AFTER * steps_per_batch)
    last = killed / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == KILLED_AFTER * steps_per_batch
    before = losses(killed)
    assert sorted(before) == list(range(KILLED_AFTER))
    for step, loss in before.items():  # same seed, another process: the same losses up to float32 rounding
        assert loss == pytest.approx(uninterrupted[step], rel=1e-6, abs=0), step

    after = run_in_process(name, overrides, tmp_path / "c", ckpt_path=last)
    assert sorted(after) == list(range(KILLED_AFTER, BATCHES))
    for step, loss in after.items():
        assert loss == pytest.approx(uninterrupted[step], rel=1e-6, abs=0), step


@pytest.mark.slow
def test_a_run_killed_twice_at_epoch_ends_resumes_exactly(tmp_path, human_shards, vae_ckpt):
    """Killed after an epoch's last batch, resumed, killed again after a later epoch's last batch and resumed:
    each resumed run goes on with the next epoch's data (Lightning counts the epochs of a run resumed from an
    epoch's last batch differently, and the stream must not follow its count)."""
    name, overrides, _ = stage_overrides("dit", human_shards, vae_ckpt, epoch_size=2)
    overrides += ["trainer.max_steps=8", "callbacks.model_checkpoint.every_n_train_steps=1"]
    uninterrupted = run_in_process(name, overrides, tmp_path / "a")
    first = run_and_kill(name, overrides, tmp_path / "b", step=2)
    second = run_and_kill(
        name, overrides, tmp_path / "c", step=4, ckpt_path=first / "checkpoints" / "last.ckpt"
    )
    after = run_in_process(name, overrides, tmp_path / "d", ckpt_path=second / "checkpoints" / "last.ckpt")
    assert sorted(losses(second)) == [2, 3] and sorted(after) == [4, 5, 6, 7]
    for step, loss in {**losses(second), **after}.items():
        assert loss == pytest.approx(uninterrupted[step], rel=1e-6, abs=0), step


@pytest.mark.slow
def test_two_runs_with_the_same_seed_log_the_same_losses(tmp_path, human_shards, vae_ckpt):
    name, overrides, steps_per_batch = stage_overrides("dit", human_shards, vae_ckpt)
    overrides += [f"trainer.max_steps={BATCHES}"]
    first, second = (run_in_process(name, overrides, tmp_path / run) for run in ("a", "b"))
    assert len(first) == BATCHES and first == second
    other = run_in_process(name, [*overrides, "seed=7"], tmp_path / "c")
    assert all(other[step] != first[step] for step in first)
