"""SMPL-format body arrays: validation, canonical dtypes and atomic `.npz` storage."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from isa4d.errors import DataError
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


MAX_BODY_ELEMENTS = 1 << 26
"""Most elements one body array may declare (SMPL's largest, `shapedirs` with 300 components, has 6.2 M)."""


def canonical_body_arrays(
    data: Mapping[str, Any], source: str | Path = "SMPL model data"
) -> dict[str, np.ndarray]:
    """Keep the SMPL keys of `data` as float32 / int64 numpy arrays and check their shapes.

    The declared shapes are checked (`check_body_shapes`) before any array is converted or densified.

    Args:
        data: SMPL model arrays (array-likes; `J_regressor` may be a scipy sparse matrix). Extra keys
            are ignored.
        source: What `data` was read from, for the error messages (a file).

    Returns:
        `v_template (V, 3)`, `f (F, 3)` int64, `J_regressor (J, V)` dense, `kintree_table (2, J)` int64,
        `weights (V, J)`, `shapedirs (V, 3, K)`, `posedirs (V, 3, P)`; float arrays are float32.

    Raises:
        DataError: if SMPL keys are missing (all of them are listed) or the shapes are inconsistent.
    """
    missing = [key for key in SMPL_KEYS if key not in data]
    if missing:
        raise DataError(f"{source} lacks the SMPL arrays {missing} (an SMPL model has {list(SMPL_KEYS)})")
    check_body_shapes({key: np.shape(data[key]) for key in SMPL_KEYS}, source)
    arrays = {}
    for key in SMPL_KEYS:
        value = data[key].toarray() if scipy.sparse.issparse(data[key]) else data[key]
        arrays[key] = np.asarray(value, dtype=np.int64 if key in _INTEGER_KEYS else np.float32)
    return arrays


def check_body_shapes(shapes: Mapping[str, tuple[int, ...]], source: str | Path = "SMPL model data") -> None:
    """Check the shapes of the SMPL arrays against each other (V vertices, J joints) and their sizes.

    Args:
        shapes: The shape of each of `SMPL_KEYS`.
        source: What the arrays were read from, for the error messages.

    Raises:
        DataError: naming the first array whose shape is wrong or too large.
    """
    num_vertices = shapes["v_template"][0] if shapes["v_template"] else 0
    num_joints = shapes["kintree_table"][-1] if shapes["kintree_table"] else 0
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
        actual = tuple(shapes[key])
        if len(actual) != len(shape) or any(
            want not in (None, got) for want, got in zip(shape, actual, strict=True)
        ):
            raise DataError(
                f"{source}: SMPL array {key!r} has shape {actual}, expected {shape} (V = {num_vertices} "
                f"vertices from v_template, J = {num_joints} joints from kintree_table, None: any size)"
            )
        if math.prod(actual) > MAX_BODY_ELEMENTS:
            raise DataError(
                f"{source}: SMPL array {key!r} declares {math.prod(actual)} elements, more than the "
                f"{MAX_BODY_ELEMENTS} of any body model"
            )


def save_body_npz(data: Mapping[str, Any], path: str | Path, source: str | Path | None = None) -> Path:
    """Write the SMPL arrays of `data` to a compressed `.npz`, atomically.

    The file is written next to `path` under a temporary name and then renamed over `path`, so a
    reader never sees a partial file.

    Args:
        data: SMPL model arrays (see :func:`canonical_body_arrays`).
        path: destination `.npz` file; its folder is created if needed.
        source: What `data` was read from, for the error messages (default: SMPL model data).

    Returns:
        The destination path.

    Raises:
        DataError: if `data` are not consistent SMPL arrays (`canonical_body_arrays`).
    """
    path = Path(path)
    arrays = canonical_body_arrays(data, source or "SMPL model data")
    with atomic_write(path) as file:
        np.savez_compressed(file, **arrays)
    return path


def load_body_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read and check the SMPL arrays of an `.npz` written by :func:`save_body_npz`."""
    with np.load(path, allow_pickle=False) as npz:
        return canonical_body_arrays({key: npz[key] for key in npz.files}, path)
