"""Reading checkpoints that users give: never running code from the files.

`read_checkpoint` reads a Lightning `.ckpt` (or a plain state dict) with `torch.load(weights_only=True)`;
`check_sharded_checkpoint` checks a `trainer=fsdp` checkpoint folder before torch reads it (torch reads parts
of it with plain pickle). Both raise one `CheckpointError` sentence for anything else in the files.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.load import _METADATA_FILENAME
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

from isa4d.errors import CheckpointError, MissingFileError

STAGES = {"vae": ("VAE", "VAEModule", "isa4d train-vae"), "dit": ("DiT", "DiTModule", "isa4d train-dit")}
"""Checkpoint stage -> (name, module class, the command that writes its checkpoints)."""


def checkpoint_stage(checkpoint: Mapping[str, Any]) -> str | None:
    """`"vae"` or `"dit"`: the stage whose module wrote `checkpoint` (by its hyper-parameters), else None."""
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, Mapping):
        return None
    if "dit" in hparams and "vae_ckpt" in hparams:
        return "dit"
    return "vae" if isinstance(hparams.get("vae"), Mapping) else None


def read_checkpoint(path: str | Path, stage: str | None = None, mmap: bool = False) -> dict[str, Any]:
    """Load a Lightning checkpoint (or a plain state dict) on the CPU, never running code from the file.

    The file is read with `torch.load(weights_only=True)` only: tensors, numbers, strings and plain
    containers; any other pickled object (a class, a function such as `os.system`) is refused before it
    is created. Checkpoints written by `isa4d train-vae` / `train-dit` hold nothing else.

    Args:
        path: The checkpoint file.
        stage: `"vae"` or `"dit"`: the stage the checkpoint must come from (`checkpoint_stage`); None
            accepts any.
        mmap: Map the tensors from the file instead of reading them (a cheap check of a big file).

    Raises:
        MissingFileError: if the file does not exist.
        CheckpointError: if it is not a readable checkpoint, holds other objects, or is of another stage.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise _refused(path, error) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError, TypeError):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint, or is truncated or damaged") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    found = checkpoint_stage(checkpoint)
    if stage is not None and found != stage:
        name, module, command = STAGES[stage]
        what = f"is a {STAGES[found][0]} checkpoint" if found else f"is not a {module} checkpoint"
        raise CheckpointError(f"{path} {what}; give the {name} checkpoint (the one written by {command})")
    return checkpoint


# The globals a `torch.distributed.checkpoint` `.metadata` pickle refers to (besides torch's dtypes).
_DCP_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorStorageMetadata", "TensorProperties",
        "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only the classes of a `.metadata` file and torch's dtypes; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _DCP_METADATA_GLOBALS.get(module, ()) or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not allowed")


def _refused(path: Path, error: pickle.UnpicklingError) -> CheckpointError:
    """The one-sentence error for an unpickling error of `path` (the global it refused, if any)."""
    unsafe = re.search(r"GLOBAL ([\w.]+)", str(error))
    if unsafe is None:
        return CheckpointError(f"{path} is not a PyTorch checkpoint, or is truncated or damaged")
    return CheckpointError(
        f"{path} holds the Python object {unsafe.group(1)}, refused because loading it could run code: "
        "a checkpoint may hold only tensors, numbers, strings and plain containers"
    )


def check_sharded_checkpoint(folder: str | Path) -> dict[str, Any]:
    """Check a sharded checkpoint folder (`torch.distributed.checkpoint`: what a `trainer=fsdp` run saves)
    before torch reads it, never running code from its files; returns its `meta.pt` (everything but the
    module and optimiser states).

    torch reads such a folder's `.metadata` with plain `pickle` and its non-tensor entries (optimiser
    hyper-parameters) with `torch.load(weights_only=False)`. Here `.metadata` is unpickled with only the
    classes torch writes into it, every non-tensor entry is read with `torch.load(weights_only=True)`,
    and `meta.pt` with `read_checkpoint`; the tensors torch itself reads with `weights_only=True`.

    Raises:
        MissingFileError: if `folder` does not exist.
        CheckpointError: if it is not a sharded checkpoint, or any of its files holds other objects.
    """
    folder = Path(folder)
    if not folder.exists():
        raise MissingFileError(f"checkpoint folder {folder} does not exist")
    metadata_path = folder / ".metadata"
    if not metadata_path.is_file() or not (folder / _METADATA_FILENAME).is_file():
        raise CheckpointError(
            f"{folder} is not a sharded checkpoint folder (no .metadata or {_METADATA_FILENAME}): give a "
            "checkpoint folder that a trainer=fsdp run saved, e.g. <run>/checkpoints/last.ckpt"
        )
    try:
        with metadata_path.open("rb") as file:
            metadata = _MetadataUnpickler(file).load()
    except pickle.UnpicklingError as error:
        raise _refused(metadata_path, error) from None
    # damaged bytes: a bad opcode or argument, or a length field past any real size (MemoryError,
    # OverflowError: raised before anything is allocated)
    except (
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        OverflowError,
    ):
        raise CheckpointError(f"{metadata_path} is damaged") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{metadata_path} holds a {type(metadata).__name__}, not checkpoint metadata")
    for index, info in metadata.storage_data.items():
        if not isinstance(metadata.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            continue  # a tensor: torch reads it with weights_only=True
        shard = (folder / info.relative_path).resolve()
        if not shard.is_relative_to(folder.resolve()) or not shard.is_file() or info.transform_descriptors:
            raise CheckpointError(f"{metadata_path}: entry {index.fqn} is not stored in a file of {folder}")
        with shard.open("rb") as file:
            file.seek(info.offset)
            data = io.BytesIO(file.read(info.length))
        try:
            torch.load(data, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise _refused(shard, error) from None
        except (RuntimeError, EOFError, ValueError):
            raise CheckpointError(f"{shard}: entry {index.fqn} is truncated or damaged") from None
    return read_checkpoint(folder / _METADATA_FILENAME)


__all__ = ["STAGES", "check_sharded_checkpoint", "checkpoint_stage", "read_checkpoint"]
