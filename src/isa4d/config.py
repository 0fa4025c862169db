"""Locating and composing the Hydra configuration tree (`conf/`)."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, open_dict

ROOT_CONFIGS = (
    "train_vae",
    "train_dit",
    "generate",
    "prepare",
    "synth",
    "footage",
    "encode",
    "evaluate",
)


def config_dir() -> Path:
    """The `conf/` folder: `$ISA4D_CONFIG_DIR` if set, else the one beside `src/` in the repository."""
    override = os.environ.get("ISA4D_CONFIG_DIR")
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "conf"
    if not (path / "train_vae.yaml").is_file():
        raise FileNotFoundError(
            f"ISA4D config tree not found at {path}. Run from a clone of the repository (pip install -e .) "
            "or set ISA4D_CONFIG_DIR to its conf/ folder."
        )
    return path


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose a root config as a Hydra run would see it, outside a run (tests, notebooks).

    The `hydra` node is removed from the result and held by `HydraConfig.get()`, as during a run,
    so `${hydra:...}` interpolations resolve.

    Args:
        config_name: one of `ROOT_CONFIGS`.
        overrides: Hydra override strings, e.g. `["trainer=cpu", "debug=fast_dev_run"]`.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    if config_name not in ROOT_CONFIGS:
        raise ValueError(f"unknown root config {config_name!r}; choose one of {ROOT_CONFIGS}")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=overrides or [], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
