"""Which weight file a metric used: every metrics result names its files (path + SHA-256 prefix)."""

from __future__ import annotations

from pathlib import Path

from isa4d.utils.files import file_sha256

MISSING = "missing"
"""The value of a metric whose weights file is not there (never computed with random weights)."""

SHA256_PREFIX = 16


def weights_record(path: str | Path) -> dict[str, str]:
    """`{"path": ..., "sha256": <first 16 hex digits>}` of a local weights file."""
    path = Path(path)
    return {"path": str(path.resolve()), "sha256": file_sha256(path)[:SHA256_PREFIX]}


def require_file(path: str | Path | None, what: str, config_key: str, expected_name: str) -> Path:
    """`path` as a `Path` if it is an existing file.

    Raises:
        FileNotFoundError: naming the expected file, the config key to set and the path tried.
    """
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(
            f"{what} needs the local weights file `{expected_name}` (nothing is downloaded at run time): "
            f"set `{config_key}` (now {path}). docs/evaluate.md says where to get it."
        )
    return Path(path)
