"""SMPL-format body arrays: validation, canonical dtypes and atomic `.npz` storage."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from isa4d.utils.files import atomic_write

SMPL_KEYS: tuple[str, ...] = (
    "v_template",
    "f",
    "J_regressor",
    "kintree_table",
    "weights",
    "shapedirs",
    "posedirs",
)
"""The arrays of an SMPL model file that a body model needs (all other keys are dropped)."""
_INTEGER_KEYS = ("f", "kintree_table")


def canonical_body_arrays(data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Keep the SMPL keys of `data` as float32 / int64 numpy arrays and check their shapes.

    Args:
        data: SMPL model arrays (array-likes; `J_regressor` may be a scipy sparse matrix). Extra keys
            are ignored.

    Returns:
        `v_template (V, 3)`, `f (F, 3)` int64, `J_regressor (J, V)` dense, `kintree_table (2, J)` int64,
        `weights (V, J)`, `shapedirs (V, 3, K)`, `posedirs (V, 3, P)`; float arrays are float32.

    Raises:
        KeyError: if SMPL keys are missing (all of them are listed).
        ValueError: if the shapes are inconsistent.
    """
    missing = [key for key in SMPL_KEYS if key not in data]
    if missing:
        raise KeyError(f"SMPL model data lacks the keys {missing} (needs {list(SMPL_KEYS)})")
    arrays = {}
    for key in SMPL_KEYS:
        value = data[key].toarray() if scipy.sparse.issparse(data[key]) else data[key]
        arrays[key] = np.asarray(value, dtype=np.int64 if key in _INTEGER_KEYS else np.float32)
    _check_shapes(arrays)
    return arrays


def _check_shapes(arrays: Mapping[str, np.ndarray]) -> None:
    num_vertices = arrays["v_template"].shape[0]
    num_joints = arrays["kintree_table"].shape[-1]
    expected = {
        "v_template": (num_vertices, 3),
        "f": (None, 3),
        "J_regressor": (num_joints, num_vertices),
        "kintree_table": (2, num_joints),
        "weights": (num_vertices, num_joints),
        "shapedirs": (num_vertices, 3, None),
        "posedirs": (num_vertices, 3, None),
    }
    for key, shape in expected.items():
        actual = arrays[key].shape
        if len(actual) != len(shape) or any(
            want not in (None, got) for want, got in zip(shape, actual, strict=True)
        ):
            raise ValueError(f"SMPL array {key!r} has shape {actual}, expected {shape} (None: any size)")


def save_body_npz(data: Mapping[str, Any], path: str | Path) -> Path:
    """Write the SMPL arrays of `data` to a compressed `.npz`, atomically.

    The file is written next to `path` under a temporary name and then renamed over `path`, so a
    reader never sees a partial file.

    Args:
        data: SMPL model arrays (see :func:`canonical_body_arrays`).
        path: destination `.npz` file; its folder is created if needed.

    Returns:
        The destination path.
    """
    path = Path(path)
    arrays = canonical_body_arrays(data)
    with atomic_write(path) as file:
        np.savez_compressed(file, **arrays)
    return path


def load_body_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read and check the SMPL arrays of an `.npz` written by :func:`save_body_npz`."""
    with np.load(path, allow_pickle=False) as npz:
        return canonical_body_arrays({key: npz[key] for key in npz.files})
