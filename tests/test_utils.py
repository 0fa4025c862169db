"""Checksums and atomic writes."""

from __future__ import annotations

import hashlib
import json

import pytest

from isa4d.utils.files import atomic_write, file_sha256, verify_sha256, write_json_atomic


def test_sha256_matches_hashlib_and_accepts_prefixes(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * 5000)  # > 1 MiB: several read blocks
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) == digest
    verify_sha256(path, digest.upper())
    verify_sha256(path, digest[:8])
    with pytest.raises(ValueError, match="mismatch"):
        verify_sha256(path, "0" * 64)
    with pytest.raises(ValueError, match="at least 8 hex digits"):
        verify_sha256(path, digest[:7])


def test_atomic_write_keeps_old_content_on_error(tmp_path):
    path = tmp_path / "sub" / "stats.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(RuntimeError), atomic_write(path, "w") as file:
        file.write('{"a": ')
        raise RuntimeError("interrupted")
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["stats.json"]
