"""The shared training entry point, exercised with a toy regression task on CPU."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from conftest import compose_for_test, with_toy_task
from isa4d.train import _resume_path, main, train
from toy_lightning import ToyDataModule, ToyModule

CPU = [
    "trainer=cpu",
    "logger=csv",
    "callbacks.progress_bar.refresh_rate=0",
    "trainer.enable_model_summary=false",
]


def _val_loss(module: ToyModule) -> float:
    x, y = ToyDataModule().val_set.tensors
    with torch.no_grad():
        return torch.nn.functional.mse_loss(module.net(x), y).item()


def test_fast_dev_run(tmp_path):
    cfg = with_toy_task(compose_for_test("train_vae", tmp_path, [*CPU, "debug=fast_dev_run"]))
    metrics = train(cfg)
    assert "train/loss" in metrics and "val/loss" in metrics


def test_fit_learns_checkpoints_and_resumes(tmp_path):
    overrides = [*CPU, "trainer.max_steps=40", "callbacks.model_checkpoint.every_n_train_steps=20"]
    cfg = with_toy_task(compose_for_test("train_dit", tmp_path, overrides))
    torch.manual_seed(cfg.seed)
    initial = _val_loss(ToyModule())  # same seed -> same initial weights as the run
    metrics = train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert metrics["val/loss"] < 0.1 * initial
    assert torch.load(last, weights_only=False)["global_step"] == 40

    # Resume continues the step count instead of starting over.
    with open_dict(cfg):
        cfg.ckpt_path = str(last)
        cfg.trainer.max_steps = 60
        cfg.paths.output_dir = str(tmp_path / "resumed")
    train(cfg)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == 60


def test_ckpt_path_last_resumes_the_run_folders_own_checkpoint(tmp_path, caplog):
    """`ckpt_path=last` (what a requeued SLURM job starts with, in its first run folder): the first start
    trains from step 0; a second start in the same folder resumes from that folder's last.ckpt."""
    overrides = [
        *CPU,
        "trainer.max_steps=20",
        "callbacks.model_checkpoint.every_n_train_steps=10",
        "ckpt_path=last",
    ]
    cfg = with_toy_task(compose_for_test("train_dit", tmp_path, overrides))
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    with caplog.at_level(logging.INFO):
        train(cfg)
    assert f"ckpt_path=last: no {last} yet, training from the start" in caplog.messages
    assert not any("Restored all states" in message for message in caplog.messages)
    assert torch.load(last, weights_only=True)["global_step"] == 20
    caplog.clear()
    with open_dict(cfg):
        cfg.trainer.max_steps = 30
    with caplog.at_level(logging.INFO):
        train(cfg)
    assert f"ckpt_path=last: resuming from {last}" in caplog.messages
    assert f"Restored all states from the checkpoint at {last}" in caplog.messages
    assert torch.load(last, weights_only=True)["global_step"] == 30
    # One metrics.csv with the rows of both starts (Lightning's CSVLogger deleted the first start's).
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv", newline="") as file:
        steps = [int(row["step"]) for row in csv.DictReader(file) if row.get("train/loss")]
    assert min(steps) < 20 <= max(steps) and max(steps) >= 29 and steps == sorted(steps)


@pytest.mark.parametrize("given", ["last", "path"])
def test_resume_puts_back_a_sharded_checkpoint_whose_save_was_killed_between_renames(tmp_path, given, caplog):
    """A `trainer=fsdp` save killed between its two renames leaves no `last.ckpt` folder but the previous one
    as `.last.ckpt.old`: the resume (`ckpt_path=last` or the path) puts it back and resumes from it."""
    cfg = compose_for_test("train_dit", tmp_path, [*CPU, f"ckpt_path={given}"])
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if given == "path":
        with open_dict(cfg):
            cfg.ckpt_path = str(last)
    old = last.with_name(".last.ckpt.old")
    old.mkdir(parents=True)
    (old / "__0_0.distcp").write_bytes(b"shard")
    with caplog.at_level(logging.WARNING):
        assert _resume_path(cfg) == str(last)
    assert not old.exists() and (last / "__0_0.distcp").read_bytes() == b"shard"
    assert any("restored from" in message for message in caplog.messages)
    assert _resume_path(cfg) == str(last)  # nothing left to restore: the same answer


def test_optimized_metric_is_returned(tmp_path):
    cfg = with_toy_task(compose_for_test("train_vae", tmp_path, [*CPU, "trainer.max_steps=8"]))
    with open_dict(cfg):
        cfg.optimized_metric = "val/loss"
    assert main(cfg) > 0
    with open_dict(cfg):
        cfg.optimized_metric = "val/psnr"
    with pytest.raises(KeyError, match="was not logged"):
        main(cfg)


def test_missing_model_is_a_clear_error(tmp_path):
    cfg = compose_for_test("train_vae", tmp_path, CPU)
    with pytest.raises(ValueError, match=r"No `data` configured .* `data=<name>`"):
        train(cfg)


def test_missing_resume_checkpoint_fails_before_building(tmp_path):
    cfg = with_toy_task(compose_for_test("train_vae", tmp_path, CPU))
    with open_dict(cfg):
        cfg.ckpt_path = str(tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        train(cfg)


def _isa4d(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "ISA4D_LOGS": str(cwd / "logs")}
    return subprocess.run(
        [sys.executable, "-m", "isa4d", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_sweep_writes_one_run_per_job(tmp_path):
    toy = [
        "+data={_target_: toy_lightning.ToyDataModule}",
        "+model={_target_: toy_lightning.ToyModule}",
        "trainer=cpu",
        "logger=csv",
        "trainer.max_steps=3",
    ]
    result = _isa4d("train-vae", "-m", *toy, "seed=1,2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((tmp_path / "logs" / "train_vae" / "multiruns").iterdir())
    assert len(sweeps) == 1
    for job in ("0", "1"):
        assert (sweeps[0] / job / "checkpoints" / "last.ckpt").is_file()
        assert (sweeps[0] / job / ".hydra" / "config.yaml").is_file()


def test_cli_reports_missing_model(tmp_path):
    result = _isa4d("train-vae", "trainer=cpu", cwd=tmp_path)
    assert result.returncode != 0
    assert "No `data` configured" in result.stderr + result.stdout
