"""The training entry point shared by both stages: instantiate, fit, optionally test.

Everything is built from the composed config with `hydra.utils.instantiate`, so this file stays the
same whatever model, data, trainer or logger a config selects.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from isa4d.callbacks.preemption import PreemptionCheckpoint
from isa4d.config import config_dir
from isa4d.errors import MissingFileError
from isa4d.modules.checkpoints import check_sharded_checkpoint, read_checkpoint
from isa4d.utils.checkpoint_io import restore_interrupted_swap

log = logging.getLogger(__name__)

_STAGE_OF_MODULE = {"isa4d.modules.VAEModule": "vae", "isa4d.modules.DiTModule": "dit"}
"""`read_checkpoint` stage of a resumed model's `_target_` (others: any checkpoint)."""


def _require_target(cfg: DictConfig, key: str) -> None:
    node = cfg.get(key)
    if node is None or "_target_" not in node:
        groups = sorted(p.stem for p in (config_dir() / key).glob("*.yaml"))
        raise ValueError(
            f"No `{key}` configured for task {cfg.get('task_name')!r}: select one with `{key}=<name>` "
            f"(available in conf/{key}/: {groups or 'none yet'}) or an `experiment=` that sets it."
        )


RESUME_OWN_LAST = "last"
"""`ckpt_path=last`: resume from the run folder's own last.ckpt if there is one (requeued SLURM jobs)."""


def _instantiate_named(node: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a `{name: config}` group (callbacks, loggers)."""
    if not node:
        return []
    return [instantiate(sub) for sub in node.values() if sub is not None and "_target_" in sub]


def _resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from: `ckpt_path` as given, or for `ckpt_path=last` this run's own
    `<checkpoints>/last.ckpt` when it exists (a requeued job in its first run folder), else None (the
    first start). A `trainer=fsdp` checkpoint folder whose last save was killed between its renames is put
    back under its name first."""
    given = cfg.get("ckpt_path") or None
    if given != RESUME_OWN_LAST:
        if given:
            restore_interrupted_swap(Path(given))
        return given
    folder = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
    last = Path(folder or Path(cfg.paths.output_dir) / "checkpoints") / "last.ckpt"
    restore_interrupted_swap(last)
    if last.exists():
        log.info("ckpt_path=last: resuming from %s", last)
        return str(last)
    log.info("ckpt_path=last: no %s yet, training from the start", last)
    return None


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and optionally test) the configured model; returns the final logged metrics."""
    _require_target(cfg, "data")
    _require_target(cfg, "model")
    ckpt_path = _resume_path(cfg)
    if ckpt_path:
        resume = Path(ckpt_path)
        if not resume.exists():
            raise MissingFileError(
                f"ckpt_path={ckpt_path} does not exist (resume needs a Lightning .ckpt, or the "
                "checkpoint folder of a trainer=fsdp run)"
            )
        # Read as Lightning will read it (weights_only=True), so that a bad file fails here with one
        # sentence; a trainer=fsdp folder, which torch reads partly with plain pickle, is checked first.
        if resume.is_dir():
            check_sharded_checkpoint(resume)
        else:
            read_checkpoint(resume, stage=_STAGE_OF_MODULE.get(cfg.model._target_), mmap=True)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    log.info("Instantiating model <%s>", cfg.model._target_)
    model: L.LightningModule = instantiate(cfg.model)
    callbacks = _instantiate_named(cfg.get("callbacks"))
    loggers = _instantiate_named(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    if cfg.get("train", True):
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SIGTERMException:  # Lightning stopped after the batch a signal arrived in
            _exit_preempted(cfg, trainer)
        if trainer.received_sigterm:  # the signal came in the last batch: stopped all the same
            _exit_preempted(cfg, trainer)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test", False):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    _report(cfg, trainer)
    return metrics


def _exit_preempted(cfg: DictConfig, trainer: L.Trainer) -> NoReturn:
    """Say where the checkpoint of a run stopped by a signal is, then exit with `128 + signal` (143 for
    SIGTERM) so that a scheduler requeues it (isa4d.callbacks.PreemptionCheckpoint saves it)."""
    preemption = next((cb for cb in trainer.callbacks if isinstance(cb, PreemptionCheckpoint)), None)
    signum = (preemption.received if preemption else None) or signal.SIGTERM
    _report(cfg, trainer)
    if preemption is None:
        resume = "no checkpoint saved (callbacks.preemption is off)"
    elif preemption.saved is None:
        resume = "no checkpoint saved (the signal came before training started)"
    else:
        resume = f"resume with ckpt_path={preemption.saved}"
    print(f"Stopped by {signum.name} at step {trainer.global_step}: {resume}")
    raise SystemExit(128 + signum)


def _report(cfg: DictConfig, trainer: L.Trainer) -> None:
    """Say where the run's outputs went."""
    lines = [f"Run folder: {cfg.paths.output_dir}"]
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
        lines.append(f"Checkpoints: {trainer.checkpoint_callback.dirpath}")
    lines += [f"Logs ({type(lg).__name__}): {lg.log_dir}" for lg in trainer.loggers if lg.log_dir]
    print("\n".join(lines))


def main(cfg: DictConfig) -> float | None:
    """Hydra task: returns the metric a sweep optimises (`optimized_metric`), if any."""
    metrics = train(cfg)
    name = cfg.get("optimized_metric")
    if name is None:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric {name!r} was not logged; logged: {sorted(metrics)}")
    return metrics[name]
