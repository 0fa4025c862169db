"""Every root config, group option and experiment composes, resolves and instantiates."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_for_test
from isa4d.config import ROOT_CONFIGS, config_dir

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
TRAIN_ROOTS = ("train_vae", "train_dit")


def _resolve(cfg):
    """Resolve every interpolation, leaving user-mandatory `???` values as they are."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


@pytest.mark.parametrize("name", ROOT_CONFIGS)
def test_root_config_composes_and_resolves(name, tmp_path):
    cfg = compose_for_test(name, tmp_path)
    resolved = _resolve(cfg)
    assert resolved["task_name"] == name
    assert resolved["paths"]["output_dir"] == str(tmp_path / "run")


@pytest.mark.parametrize("root", TRAIN_ROOTS)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(root, experiment, tmp_path):
    cfg = compose_for_test(root, tmp_path, [f"experiment={experiment}"])
    _resolve(cfg)
    assert HydraConfig.get().launcher._target_


@pytest.mark.parametrize("option", ["default", "cpu", "gpu", "ddp", "fsdp"])
def test_trainer_options(option, tmp_path):
    cfg = compose_for_test("train_vae", tmp_path, [f"trainer={option}"])
    if cfg.trainer.accelerator in ("cpu", "auto"):
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.num_devices == 1
    else:  # GPU configs: the strategy must still be a valid object for this Lightning version
        assert cfg.trainer.precision == "bf16-mixed"
        if "strategy" in cfg.trainer:
            strategy = instantiate(cfg.trainer.strategy)
            assert type(strategy).__name__ == cfg.trainer.strategy._target_.rsplit(".", 1)[1]


@pytest.mark.parametrize("option", ["tensorboard", "csv", "many", "wandb"])
def test_logger_options(option, tmp_path):
    cfg = compose_for_test("train_dit", tmp_path, [f"logger={option}"])
    if option == "wandb":
        pytest.importorskip("wandb", reason="wandb is an optional extra (isa4d[wandb])")
    loggers = [instantiate(node) for node in cfg.logger.values()]
    assert loggers and all(lg.save_dir.startswith(str(tmp_path)) for lg in loggers)


def test_callbacks_instantiate(tmp_path):
    cfg = compose_for_test("train_vae", tmp_path)
    callbacks = {name: instantiate(node) for name, node in cfg.callbacks.items()}
    assert callbacks["model_checkpoint"].dirpath == str(tmp_path / "run" / "checkpoints")
    assert callbacks["model_checkpoint"].save_last is True


@pytest.mark.parametrize("option", ["fast_dev_run", "overfit", "profiler"])
def test_debug_options(option, tmp_path):
    cfg = compose_for_test("train_vae", tmp_path, [f"debug={option}"])
    assert cfg.trainer.accelerator == "cpu" and cfg.task_name == "debug"
    instantiate(cfg.trainer, logger=False, enable_checkpointing=False)


def test_slurm_launcher_follows_trainer():
    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=3"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train_dit", overrides=overrides, return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (3, 4, 4)


def test_body_options_point_at_the_loader(tmp_path, monkeypatch):
    monkeypatch.setenv("SMPL_MODEL_PATH", "/models/SMPL_NEUTRAL.npz")
    cfg = compose_for_test("train_dit", tmp_path, ["body=smpl"])
    assert cfg.body.source == "/models/SMPL_NEUTRAL.npz"
    with pytest.raises(InstantiationException, match="SMPL_NEUTRAL.npz"):
        instantiate(cfg.body)
    body = instantiate(compose_for_test("train_dit", tmp_path).body)
    assert body.faces.shape[-1] == 3
