"""Atomic Lightning checkpoints: a `.ckpt` is complete under its name, or the previous one is still there.

Lightning's `TorchCheckpointIO` serialises into memory, then writes through an fsspec transaction whose
temporary file lies in the system temporary folder: when that is another filesystem the final move is a
copy, and a kill during it leaves a truncated `last.ckpt`. :class:`AtomicCheckpointIO` writes through
:func:`isa4d.utils.files.atomic_write` instead: a temporary file beside the checkpoint, fsynced, then
renamed over it (`os.replace`, atomic within one filesystem). :class:`SafeModelParallelStrategy` does
the same for the checkpoint folders of `trainer=fsdp` (one file per rank), and checks a folder before
torch reads it (`check_sharded_checkpoint`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import ModelParallelStrategy

from isa4d.modules.checkpoints import check_sharded_checkpoint
from isa4d.utils.files import atomic_write

log = logging.getLogger(__name__)


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


class SafeModelParallelStrategy(ModelParallelStrategy):
    """Lightning's `ModelParallelStrategy` (`trainer=fsdp`) whose checkpoint folders are written whole or not
    at all and are checked before torch reads them.

    Saving: every rank writes into `.<name>.partial` beside the checkpoint, then rank 0 swaps it in (the
    previous folder is renamed to `.<name>.old` and removed). Lightning writes into the checkpoint's own
    folder, so a kill during a save left a mix of old and new shards under the name a resume reads. A kill
    between the two renames leaves no `<name>` but the previous checkpoint as `.<name>.old`, which the next
    save and every resume put back (`restore_interrupted_swap`).

    Loading: a folder goes through `check_sharded_checkpoint` first (torch reads its `.metadata` with plain
    pickle), whoever starts the resume (`isa4d train-*` also checks it before building anything).
    """

    def load_checkpoint(self, checkpoint_path: _PATH, weights_only: bool | None = None) -> dict[str, Any]:
        restore_interrupted_swap(Path(checkpoint_path))
        if Path(checkpoint_path).is_dir():
            check_sharded_checkpoint(checkpoint_path)
        return super().load_checkpoint(checkpoint_path, weights_only)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any | None = None
    ) -> None:
        if not self._save_distributed_checkpoint:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        path = Path(self.broadcast(filepath))
        partial, old = (path.with_name(f".{path.name}.{suffix}") for suffix in ("partial", "old"))
        if self.global_rank == 0:
            restore_interrupted_swap(path)
            _remove(partial)  # what an interrupted save left
        self.barrier("partial checkpoint folder")
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier("checkpoint shards written")
        if self.global_rank == 0:
            _remove(old)
            if path.exists():
                path.rename(old)
            partial.rename(path)
            _remove(old)
        self.barrier("checkpoint folder in place")


def restore_interrupted_swap(path: Path) -> bool:
    """Put a sharded checkpoint folder back under its name when a save of `SafeModelParallelStrategy` was
    killed between its two renames (no `<name>`, the previous checkpoint as `.<name>.old`); True if it did.
    Safe to call from every rank at once: the ranks that lose the race find it done."""
    old = path.with_name(f".{path.name}.old")
    if path.exists() or not old.is_dir():
        return False
    try:
        old.rename(path)
    except FileNotFoundError:  # another rank renamed it first
        return False
    log.warning("%s: restored from %s (a checkpoint save was interrupted between its renames)", path, old)
    return True


def _remove(path: Path) -> None:
    """Remove a file or a folder tree, if there is one."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


__all__ = ["AtomicCheckpointIO", "SafeModelParallelStrategy", "restore_interrupted_swap"]
