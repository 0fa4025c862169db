"""Small shared helpers (files, checksums)."""

from isa4d.utils.files import atomic_write, file_sha256, verify_sha256, write_json_atomic

__all__ = ["atomic_write", "file_sha256", "verify_sha256", "write_json_atomic"]
