"""Checksums and atomic writes: a file is either complete under its final name or absent."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Check a file against an expected SHA-256, given whole or as a prefix of at least 8 hex digits.

    A prefix is how torch-hub file names carry their checksum (`vgg16-397923af.pth`).

    Raises:
        ValueError: on a malformed `expected` or a mismatch (both digests are named).
    """
    wanted = expected.strip().lower()
    if len(wanted) < 8 or any(c not in "0123456789abcdef" for c in wanted):
        raise ValueError(f"a SHA-256 must be at least 8 hex digits, got {expected!r}")
    actual = file_sha256(path)
    if not actual.startswith(wanted):
        raise ValueError(
            f"SHA-256 mismatch for {path}: expected {wanted}{'...' * (len(wanted) < 64)}, got {actual}"
        )


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Write through a temporary file beside `path` that replaces `path` only when complete.

    The folder is created if needed. On any error (or interruption) the temporary file is removed
    and `path` keeps its previous content, if it had any.

    Example:
        with atomic_write("out/stats.json", "w") as file:
            json.dump(stats, file)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` with :func:`atomic_write`."""
    with atomic_write(path, "w") as file:
        file.write(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON with :func:`atomic_write`."""
    with atomic_write(path, "w") as file:
        json.dump(data, file, indent=2)
        file.write("\n")


def write_figure_atomic(path: str | Path, figure: Any, dpi: int = 100) -> None:
    """Save a matplotlib figure as PNG with :func:`atomic_write`, then close it."""
    import matplotlib.pyplot as plt

    with atomic_write(path, "wb") as file:
        figure.savefig(file, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
