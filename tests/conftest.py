from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from isa4d.config import compose
from isa4d.data.shards import VERIFIED_SHARDS_ENV

TOY_DATA = {"_target_": "toy_lightning.ToyDataModule", "batch_size": 32, "num_workers": 0}
TOY_MODEL = {"_target_": "toy_lightning.ToyModule", "lr": 0.05}


@pytest.fixture(autouse=True, scope="session")
def _verified_shards_in_tmp(tmp_path_factory):
    """`verify_shards` remembers verified shards in a file of this test session, not in ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(VERIFIED_SHARDS_ENV, str(tmp_path_factory.mktemp("cache") / "verified_shards.json"))
        yield


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def compose_for_test(name: str, tmp_path: Path, overrides: list[str] | None = None) -> DictConfig:
    """Compose a root config with its run folders moved under `tmp_path`."""
    cfg = compose(name, overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.log_dir = str(tmp_path / "logs")
    return cfg


def with_toy_task(cfg: DictConfig, **model_kwargs) -> DictConfig:
    with open_dict(cfg):
        cfg.data = dict(TOY_DATA)
        cfg.model = {**TOY_MODEL, **model_kwargs}
    return cfg
