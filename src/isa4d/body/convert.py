"""Convert a licensed SMPL pickle to an SMPL-format `.npz`, without chumpy and without trusting pickle.

SMPL model files are Python-2 pickles holding numpy arrays, a scipy sparse `J_regressor` and chumpy
`Ch` objects. chumpy does not import on current Python, and unpickling an untrusted file can run
arbitrary code, so the file is read with a restricted unpickler. It resolves only numpy array
reconstruction, scipy sparse matrices, a few inert helpers (set, frozenset, object, codecs.encode,
copyreg._reconstructor) and chumpy classes, which map to a placeholder that keeps the pickled state
and never runs chumpy code. Any other global, such as `os.system`, is refused before it can be called.
"""

from __future__ import annotations

import builtins
import codecs
import copyreg
import importlib
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from isa4d.body.storage import SMPL_KEYS, save_body_npz
from isa4d.utils.files import verify_sha256

_SPARSE_CLASSES = frozenset({"csc_matrix", "csr_matrix", "coo_matrix"})
_BUILTINS = frozenset({"set", "frozenset", "object"})
_NUMPY_FUNCTIONS = {
    "multiarray": frozenset({"_reconstruct", "scalar"}),
    "numeric": frozenset({"_frombuffer"}),
}


class _ChumpyState:
    """Placeholder for a pickled chumpy object: records its state, runs no chumpy code."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _ChumpyState:
        return super().__new__(cls)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def to_array(self) -> np.ndarray:
        """The object's value: its state's `x` (chumpy's value slot), else the first array in its state.

        Raises:
            pickle.UnpicklingError: if the state holds no array.
        """
        state = getattr(self, "state", None)
        if isinstance(state, tuple):  # (dict, slots) states
            state = next((part for part in state if isinstance(part, dict)), None)
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("a chumpy object in the pickle has no state to read a value from")
        if "x" in state:
            return _plain_array(state["x"])
        value = next((item for item in state.values() if isinstance(item, np.ndarray | _ChumpyState)), None)
        if value is None:
            raise pickle.UnpicklingError(
                f"a chumpy object in the pickle holds no array (state keys {sorted(state)})"
            )
        return _plain_array(value)


def _plain_array(value: Any) -> Any:
    """`value` with chumpy placeholders reduced to numpy arrays (other values unchanged)."""
    return value.to_array() if isinstance(value, _ChumpyState) else value


def _numpy_global(module: str, name: str) -> Any | None:
    """The numpy array-reconstruction function `module.name` (either numpy 1 or 2 spelling), else None."""
    package, _, submodule = module.rpartition(".")
    if package not in ("numpy.core", "numpy._core") or name not in _NUMPY_FUNCTIONS.get(submodule, ()):
        return None
    try:
        return getattr(importlib.import_module(f"numpy._core.{submodule}"), name)
    except ImportError:  # numpy < 2
        return getattr(importlib.import_module(f"numpy.core.{submodule}"), name)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler resolving only the globals an SMPL model file needs."""

    def find_class(self, module: str, name: str) -> Any:
        numpy_function = _numpy_global(module, name)
        if numpy_function is not None:
            return numpy_function
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module == "scipy.sparse" or module.startswith("scipy.sparse.")) and name in _SPARSE_CLASSES:
            return getattr(scipy.sparse, name)
        if module in ("__builtin__", "builtins") and name in _BUILTINS:
            return getattr(builtins, name)
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return copyreg._reconstructor
        if module == "_codecs" and name == "encode":  # how Python 3 writes bytes in protocol 2
            return codecs.encode
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyState
        raise pickle.UnpicklingError(
            f"refusing to load the global {module}.{name}: an SMPL model file holds only numpy arrays, "
            "scipy sparse matrices and chumpy values"
        )


def load_smpl_pickle(path: str | Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """Read the SMPL arrays of an SMPL model pickle safely.

    Args:
        path: SMPL `.pkl` (Python-2 pickle; chumpy need not be installed).
        expected_sha256: if given, the file's SHA-256 must match (checked before unpickling).

    Returns:
        The SMPL keys present in the file, chumpy values reduced to numpy arrays (`J_regressor` may
        still be sparse).

    Raises:
        ValueError: on a checksum mismatch.
        pickle.UnpicklingError: if the pickle references a global that is not allowed, or is not a dict.
    """
    if expected_sha256 is not None:
        verify_sha256(path, expected_sha256)
    with open(path, "rb") as file:
        content = _RestrictedUnpickler(file, encoding="latin1").load()
    if not isinstance(content, Mapping):
        raise pickle.UnpicklingError(f"{path} holds a {type(content).__name__}, not an SMPL model dict")
    return {key: _plain_array(content[key]) for key in SMPL_KEYS if key in content}


def convert_smpl_pickle(src_pkl: str | Path, dst_npz: str | Path, expected_sha256: str | None = None) -> Path:
    """Convert an SMPL model pickle to an SMPL-format `.npz` for :class:`isa4d.body.BodyModel`.

    The `.npz` holds only `v_template, f, J_regressor (dense), kintree_table, weights, shapedirs,
    posedirs` as float32 / int64 arrays and is written atomically.

    Args:
        src_pkl: SMPL `.pkl`, e.g. `basicModel_neutral_lbs_10_207_0_v1.0.0.pkl`.
        dst_npz: destination, e.g. `SMPL_NEUTRAL.npz`.
        expected_sha256: optional hex SHA-256 of `src_pkl`, verified before reading it.

    Returns:
        The destination path.

    Raises:
        ValueError: on a checksum mismatch or inconsistent array shapes.
        KeyError: if SMPL keys are missing (all are listed).
        pickle.UnpicklingError: if the pickle references a global that is not allowed.
    """
    return save_body_npz(load_smpl_pickle(src_pkl, expected_sha256), dst_npz)
