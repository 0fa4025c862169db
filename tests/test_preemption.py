"""Preemption and checkpoints: signals save `last.ckpt` and exit non-zero, checkpoints are atomic and start
with the first steps (isa4d.callbacks.preemption, isa4d.callbacks.resume, isa4d.utils.checkpoint_io)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import open_dict

import isa4d.utils.files
from conftest import compose_for_test, with_toy_task
from isa4d.callbacks import StepCheckpoint
from isa4d.train import train
from isa4d.utils.checkpoint_io import AtomicCheckpointIO
from toy_lightning import ToyDataModule, ToyModule

CPU = [
    "trainer=cpu",
    "logger=csv",
    "callbacks.progress_bar.refresh_rate=0",
    "trainer.enable_model_summary=false",
]


class SignalAt(L.Callback):
    """Sends `signum` to this process when the batch after `step` optimiser steps starts (test helper)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def _step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


# ---------------------------------------------------------------------------------------------- atomic


def test_a_write_that_fails_halfway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    io, last = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    elsewhere = tmp_path / "system_tmp"  # a temporary folder that could be another filesystem
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    renames = []
    replace = os.replace
    monkeypatch.setattr(isa4d.utils.files.os, "replace", lambda a, b: renames.append((a, b)) or replace(a, b))
    io.save_checkpoint({"global_step": 1, "weights": torch.arange(1000.0)}, last)
    assert [Path(a).parent for a, _ in renames] == [last.parent] and Path(renames[0][1]) == last
    size = last.stat().st_size

    def killed_halfway(checkpoint: dict, file) -> None:
        file.write(b"\x00" * (size // 2))
        raise KeyboardInterrupt  # as a kill would stop it

    monkeypatch.setattr(torch, "save", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "weights": torch.zeros(1000)}, last)
    monkeypatch.undo()
    assert _step(last) == 1 and torch.equal(
        torch.load(last, weights_only=True)["weights"], torch.arange(1000.0)
    )
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no temporary file left
    assert not any(elsewhere.iterdir())


def test_the_trainer_config_writes_checkpoints_atomically(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_for_test("train_vae", tmp_path, CPU)
    assert isinstance(instantiate(cfg.trainer).strategy.checkpoint_io, AtomicCheckpointIO)


# ---------------------------------------------------------------------------------------------- steps


class ListAt(L.Callback):
    """Lists the checkpoint folder when the batch after `step` optimiser steps starts (test helper)."""

    def __init__(self, folder: Path, step: int) -> None:
        self.folder, self.step, self.names = folder, step, None

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            self.names = {p.name: _step(p) for p in self.folder.iterdir()}


def fit_toy(*callbacks: L.Callback, max_steps: int) -> L.Trainer:
    """Fit the toy task (8 batches per epoch, validation at its end) with `callbacks`, no logger."""
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(ToyModule(), datamodule=ToyDataModule())
    return trainer


@pytest.mark.parametrize("cls", [ModelCheckpoint, StepCheckpoint])
def test_last_ckpt_is_written_before_the_monitored_metric_exists(tmp_path, cls):
    """8 batches per epoch, validation at its end: Lightning's ModelCheckpoint writes nothing before."""
    checkpoint = cls(dirpath=tmp_path, monitor="val/loss", save_last=True, every_n_train_steps=2)
    probe = ListAt(tmp_path, step=4)
    fit_toy(checkpoint, probe, max_steps=6)
    # Lightning's: nothing at step 4 (the claim of the issue, checked against Lightning 2.6)
    assert probe.names == ({} if cls is ModelCheckpoint else {"last.ckpt": 4})


def test_top_k_checkpoints_still_wait_for_the_metric(tmp_path):
    checkpoint = StepCheckpoint(dirpath=tmp_path, monitor="val/loss", save_last=True, every_n_train_steps=2)
    probe = ListAt(tmp_path, step=8)  # before the validation at the end of the 8-batch epoch
    trainer = fit_toy(checkpoint, probe, max_steps=10)
    assert probe.names == {"last.ckpt": 8}
    # the first step checkpoint after the validation is the best one, with its val/loss
    assert _step(Path(checkpoint.best_model_path)) == 10
    assert checkpoint.best_model_score == trainer.callback_metrics["val/loss"]
    assert _step(tmp_path / "last.ckpt") == 10


# ---------------------------------------------------------------------------------------------- signals


def _signalled_run(tmp_path: Path, signum: int, extra: list[str] | None = None):
    cfg = with_toy_task(
        compose_for_test("train_vae", tmp_path, [*CPU, "trainer.max_steps=50", *(extra or [])])
    )
    with open_dict(cfg):
        cfg.callbacks.signal_at = {"_target_": "test_preemption.SignalAt", "step": 3, "signum": int(signum)}
    with pytest.raises(SystemExit) as stopped:
        train(cfg)
    return stopped.value.code, Path(cfg.paths.output_dir)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_finishes_the_step_saves_last_ckpt_and_exits_non_zero(tmp_path, signum):
    before = signal.getsignal(signum)
    code, run = _signalled_run(tmp_path, signum)
    assert code == 128 + signum  # 143 for SIGTERM, 138 for SIGUSR1
    assert _step(run / "checkpoints" / "last.ckpt") == 4  # the step the signal came in was finished
    assert signal.getsignal(signum) is before  # Lightning restored the handlers


def test_the_signal_reaches_the_handler_that_was_there_before(tmp_path):
    """Handlers are chained, not replaced (what keeps submitit's and Lightning's SLURM handlers working)."""
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    try:
        code, run = _signalled_run(tmp_path, signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert code == 138 and calls == [signal.SIGUSR1] and _step(run / "checkpoints" / "last.ckpt") == 4


def test_lightning_slurm_requeue_still_runs_on_sigusr1(tmp_path, monkeypatch):
    """Under SLURM, Lightning's own SIGUSR1 handler saves `hpc_ckpt_1.ckpt` and requeues (`scontrol` is
    missing here: it only warns); the preemption callback adds `last.ckpt` at the end of the step."""
    slurm = {
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_NAME": "isa4d",
        "SLURM_JOB_ID": "42",
    }
    slurm |= {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol
    code, run = _signalled_run(tmp_path, signal.SIGUSR1)
    assert code == 138
    assert _step(run / "hpc_ckpt_1.ckpt") == 3  # saved inside the handler, mid-step (Lightning's way)
    assert _step(run / "checkpoints" / "last.ckpt") == 4


def test_bad_signal_names_are_refused(tmp_path):
    from isa4d.callbacks import PreemptionCheckpoint

    with pytest.raises(ValueError, match=r"callbacks.preemption.signals: \['SIGFOO'\] are not signal names"):
        PreemptionCheckpoint(tmp_path, signals=("SIGTERM", "SIGFOO"))


@pytest.mark.slow
def test_sigterm_makes_the_cli_exit_143_with_a_checkpoint(tmp_path):
    toy = ["+data={_target_: toy_lightning.ToyDataModule}", "+model={_target_: toy_lightning.ToyModule}"]
    signal_at = "+callbacks.signal_at={_target_: test_preemption.SignalAt, step: 3, signum: 15}"
    args = ["train-vae", *toy, *CPU, "trainer.max_steps=50", signal_at, f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    result = subprocess.run(
        [sys.executable, "-m", "isa4d", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 143, result.stderr[-3000:]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert _step(last) == 4
    assert f"Stopped by SIGTERM at step 4: resume with ckpt_path={last}" in result.stdout
