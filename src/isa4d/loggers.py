"""Loggers of the training runs (conf/logger); Lightning's, except where a resume would lose data."""

from __future__ import annotations

import csv

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing metrics.csv when it starts; this one continues it (its header
    becomes the first columns, new metrics are added as Lightning does within a run)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class CSVLogger(LightningCSVLogger):
    """Lightning's `CSVLogger`, except that a run started again in its own folder (a resume with
    `ckpt_path=last`, a requeued job) appends to `metrics.csv` instead of deleting the rows logged so far.
    Steps logged after the checkpoint and before the interruption appear twice (the later row is the
    resumed run's). A new run started in an old run's folder appends too: give each run its own folder."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


__all__ = ["CSVLogger"]
