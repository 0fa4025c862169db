"""The project's own error types: what a user did wrong, said in one sentence.

`isa4d` commands print an `ISA4DError` as one line (`isa4d: error: ...`) and exit non-zero; any other
exception is a bug and keeps its traceback. Each type also derives from the builtin a caller would
catch for it (`ValueError`, `FileNotFoundError`), so existing `except ValueError` code keeps working.
"""

from __future__ import annotations


class ISA4DError(Exception):
    """Base of every user-facing error of the suite (bad input, file, config or data)."""


class ConfigError(ISA4DError, ValueError):
    """A config value or command-line override is wrong (names the key)."""


class CheckpointError(ISA4DError, ValueError):
    """A file given as a checkpoint is not one, is of the other stage, or cannot be read safely."""


class DataError(ISA4DError, ValueError):
    """A dataset file (manifest, shard, sample, body model) is malformed or fails verification."""


class MissingFileError(ISA4DError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OutputExistsError(ISA4DError, FileExistsError):
    """An output would replace existing results that the user did not allow to be overwritten."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ISA4DError",
    "MissingFileError",
    "OutputExistsError",
]
