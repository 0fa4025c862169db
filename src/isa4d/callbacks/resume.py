"""Callbacks that make a run resumable exactly: checkpoints from the first steps, per-step seeds
(docs/reliability.md).

A run resumed from `last.ckpt` continues as if it had never stopped: the model, optimisers, schedulers
and loops are Lightning's checkpoint; the data stream is the datamodule's `state_dict`
(:class:`~isa4d.data.datamodules.ShardDataModule`: epoch and batches consumed); the random draws of
every step come from :class:`SeedEveryStep`.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from isa4d.utils.seeding import derive_seed, seed_all

log = logging.getLogger(__name__)


class StepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that writes `last.ckpt` every `every_n_train_steps` steps from the start.

    With a `monitor` only validation logs (`val/loss`), Lightning 2.6 defers every step-triggered save,
    `last.ckpt` included, to the end of the next validation: a run that validates once per long epoch
    wrote nothing until then. Here `last.ckpt` is written at its step anyway (with `save_last: true`);
    the top-k checkpoints still wait for the metric. Arguments as `ModelCheckpoint`.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        every = self._every_n_train_steps
        due = every >= 1 and trainer.global_step % every == 0
        deferred = self._defer_save_until_validation and not self._should_skip_saving_checkpoint(trainer)
        if due and deferred and self.save_last is True:
            saved = self._last_global_step_saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = saved  # so the deferred top-k save still happens after validation


class SeedEveryStep(L.Callback):
    """Seeds torch, numpy and Python's `random` before every training batch from (seed, rank, step, batch).

    What a step draws (diffusion times and noise, posterior samples, condition dropout, windows) is then a
    function of the seed and the step alone: a run resumed from a checkpoint draws what the uninterrupted
    run drew, whatever ran in between (validation, sanity checks and new DataLoader iterators draw from
    the same global generators), and every rank draws its own.

    Args:
        seed: the run's seed (the config's `seed`); None: one drawn at the first batch and kept in
            checkpoints, so that a resumed run goes on with it.
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = seed

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.seed is None:
            self.seed = random.SystemRandom().randrange(2**32)
        seed_all(derive_seed(self.seed, trainer.global_rank, trainer.global_step, batch_idx))

    def state_dict(self) -> dict[str, int | None]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, int | None]) -> None:
        saved = state_dict["seed"]
        if self.seed is None:
            self.seed = saved
        elif saved is not None and saved != self.seed:
            log.warning(
                "seed=%d differs from the resumed checkpoint's %d: the steps from here draw other noise "
                "than the interrupted run would have",
                self.seed,
                saved,
            )


__all__ = ["SeedEveryStep", "StepCheckpoint"]
