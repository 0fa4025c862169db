"""Atomic Lightning checkpoints: a `.ckpt` is complete under its name, or the previous one is still there.

Lightning's `TorchCheckpointIO` serialises into memory, then writes through an fsspec transaction whose
temporary file lies in the system temporary folder: when that is another filesystem the final move is a
copy, and a kill during it leaves a truncated `last.ckpt`. :class:`AtomicCheckpointIO` writes through
:func:`isa4d.utils.files.atomic_write` instead: a temporary file beside the checkpoint, fsynced, then
renamed over it (`os.replace`, atomic within one filesystem).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH

from isa4d.utils.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves are atomic (remote URLs keep Lightning's own writing).

    Give it to the Trainer as a plugin (`conf/trainer/default.yaml`): every checkpoint goes through it,
    those of `ModelCheckpoint`, of the preemption callback and Lightning's SLURM `hpc_ckpt_*.ckpt`.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_write(path) as file:
            torch.save(checkpoint, file)


__all__ = ["AtomicCheckpointIO"]
