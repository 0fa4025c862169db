"""Preemption: on SIGTERM or SIGUSR1, finish the step, write `last.ckpt`, stop non-zero (docs/reliability.md).

Lightning 2.6 already catches SIGTERM during `fit` (`_SignalConnector`): it sets `trainer.received_sigterm`
and, after the current batch, raises `SIGTERMException`, a `SystemExit` without status, so the process used
to exit 0 without saving. Under SLURM with auto-requeue it also handles SIGUSR1 (`hpc_ckpt_*.ckpt`, then
`scontrol requeue`), but installs that handler only when SIGUSR1 has none yet.

:class:`PreemptionCheckpoint` therefore installs its handlers at `on_train_start`, after Lightning's, and
chains to them: Lightning's SIGTERM notification and SLURM requeue still run, at once. At the end of the
batch during which a signal arrived, on every rank together, it saves `<dirpath>/last.ckpt` and sets
Lightning's `received_sigterm`, so that Lightning stops the run as it does for SIGTERM (after logging the
batch's metrics); `isa4d.train` then exits with `128 + signal` (143 for SIGTERM, 138 for SIGUSR1). Lightning
restores the previous handlers when `fit` ends.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class PreemptionCheckpoint(L.Callback):
    """On a signal of `signals` during training: finish the batch, save `<dirpath>/<filename>`, stop.

    Args:
        dirpath: the folder of the checkpoint (the run's `checkpoints/`, that of `ModelCheckpoint`).
        signals: names of the signals handled (`SIGTERM`: schedulers' preemption and time limit;
            `SIGUSR1`: SLURM's `--signal=USR1@<seconds>` warning).
        filename: the checkpoint's name; `last.ckpt` is what `ckpt_path=` resumes from.

    Attributes:
        received: the first signal received (None: none); the exit status is `128 + received`.
        saved: the path of the checkpoint written on that signal (None: none yet).
    """

    def __init__(
        self,
        dirpath: str | Path,
        signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1"),
        filename: str = "last.ckpt",
    ) -> None:
        unknown = [name for name in signals if not isinstance(getattr(signal, name, None), signal.Signals)]
        if unknown:
            raise ValueError(f"callbacks.preemption.signals: {unknown} are not signal names (e.g. SIGTERM)")
        self.path = Path(dirpath) / filename
        self.signals = [signal.Signals[name] for name in signals]
        self.received: signal.Signals | None = None
        self.saved: Path | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received, self.saved = None, None
        if threading.current_thread() is not threading.main_thread():
            log.warning("PreemptionCheckpoint: not in the main thread, signals are not handled")
            return
        for signum in self.signals:
            signal.signal(signum, self._handler(signal.getsignal(signum)))

    def _handler(self, previous: Any) -> Any:
        """A handler that notes the signal, then calls `previous` if it is a function (Lightning's)."""

        def handle(signum: int, frame: FrameType | None) -> None:
            if self.received is None:
                self.received = signal.Signals(signum)
                log.warning("Received %s: saving %s after this batch", self.received.name, self.path)
            if callable(previous):
                previous(signum, frame)

        return handle

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            self.received = self.received or signal.SIGTERM  # another rank's signal
            self._save(trainer)
            trainer._signal_connector.received_sigterm = True  # Lightning stops after this batch

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Lightning stopped for a signal before a batch ended (e.g. during validation): save there."""
        if isinstance(exception, SIGTERMException) and self.received is not None:
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        if self.saved is None:
            trainer.save_checkpoint(self.path)
            self.saved = self.path
            log.warning(
                "Saved %s at step %d: resume with ckpt_path=%s", self.path, trainer.global_step, self.path
            )


__all__ = ["PreemptionCheckpoint"]
