"""Convert a licensed SMPL pickle to an SMPL-format `.npz`, without chumpy and without trusting pickle.

SMPL model files are Python-2 pickles holding numpy arrays, a scipy sparse `J_regressor` and chumpy
`Ch` objects. chumpy does not import on current Python, and a pickle is untrusted input: unpickling
can run arbitrary code, and a crafted file can make numpy or scipy allocate without bound or crash
(a sparse matrix whose indices point outside it). So the file is read in three steps:

1. its size is bounded and its opcode stream is checked before anything runs (`_check_opcodes`):
   well formed, bounded length and memo indices, tuples nested at most `MAX_NESTING` deep (hashing
   a deeper tuple overflows the C stack);
2. a restricted unpickler resolves only the globals an SMPL file needs, each to an inert placeholder
   that records its arguments and state (numpy arrays and dtypes, scipy matrices, chumpy objects,
   sets): no numpy, scipy or chumpy code runs, and any other global, such as `os.system`, is refused;
3. the SMPL fields are built from the placeholders with every dtype, shape, size and sparse index
   checked before an array is made; `J_regressor` is densified by numpy indexing, not by scipy.

Every refusal is a `DataError` naming the file (and the field, where there is one).
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from isa4d.body.storage import MAX_BODY_ELEMENTS, SMPL_KEYS, check_body_shapes, save_body_npz
from isa4d.errors import DataError, MissingFileError
from isa4d.utils.files import verify_sha256

MAX_PICKLE_BYTES = 1 << 29
"""Largest SMPL pickle read (512 MiB; the SMPL files are 40-250 MB)."""
MAX_OPCODES = 1_000_000
"""Most pickle opcodes read (an SMPL file has a few thousand: its arrays are single byte strings)."""
MAX_NESTING = 64
"""Deepest tuple nesting accepted."""
MAX_CHUMPY_DEPTH = 8
"""Most chumpy objects followed from a field to the array it holds."""

_DTYPES = frozenset(f"{kind}{size}" for kind in "iu" for size in (1, 2, 4, 8)) | {"b1", "f2", "f4", "f8"}
"""Numpy dtype codes an SMPL array may have (numbers only: no objects, strings or records)."""


# ---------------------------------------------------------------------------------------------- placeholders


class _Recorded:
    """An object of an allowed pickled class: records its arguments and state, runs no code of the class."""

    args: tuple[Any, ...]
    state: Any

    def __new__(cls, *args: Any, **kwargs: Any) -> _Recorded:
        instance = super().__new__(cls)
        instance.args, instance.state = args, None
        return instance

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def state_dict(self) -> dict[Any, Any] | None:
        """The recorded state as a dict (the dict part of a `(dict, slots)` state), else None."""
        state = self.state
        if isinstance(state, tuple):
            state = next((part for part in state if isinstance(part, dict)), None)
        return state if isinstance(state, dict) else None


class _Array(_Recorded):
    """`numpy.ndarray` / `_reconstruct`: its state is `([version,] shape, dtype, fortran, data)`."""


class _FromBuffer(_Recorded):
    """numpy's `_frombuffer(data, dtype, shape, order)` (protocol-5 pickles)."""


class _Dtype(_Recorded):
    """`numpy.dtype(code, align, copy)`; the byte order is in the state `(version, order, ...)`."""


class _Opaque(_Recorded):
    """A value an SMPL field never needs (sets, numpy scalars): kept inert, never read."""


class _Chumpy(_Recorded):
    """A chumpy object: its value is the state's `x` (chumpy's value slot), else the first array in it."""


class _Sparse(_Recorded):
    """A scipy sparse matrix: `data`, the index arrays and `_shape` are in the state."""

    layout = ""


class _CSC(_Sparse):
    layout = "csc"


class _CSR(_Sparse):
    layout = "csr"


class _COO(_Sparse):
    layout = "coo"


def _latin1_bytes(text: Any, encoding: Any) -> bytes:
    """`_codecs.encode(text, "latin1")`: how Python 3 writes bytes in protocol 2 (no other codec)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only for latin-1 text (a byte string)")
    return text.encode("latin-1")


def _empty_bytes(*args: Any) -> bytes:
    """`bytes()`: how Python 3 writes an empty byte string in protocol 2 (`bytes(n)` would allocate n)."""
    if args:
        raise pickle.UnpicklingError("bytes(...) is allowed only without arguments (an empty byte string)")
    return b""


def _reconstructor(cls: Any, base: Any, state: Any) -> _Recorded:
    """`copyreg._reconstructor` (protocol 0/1 objects), for the placeholder classes only."""
    if not (isinstance(cls, type) and issubclass(cls, _Recorded)) or base is not object or state is not None:
        raise pickle.UnpicklingError(
            "copyreg._reconstructor is allowed only for plain numpy/scipy/chumpy objects"
        )
    return cls.__new__(cls)


_GLOBALS: dict[tuple[str, str], Any] = {
    **{(f"{numpy}.multiarray", "_reconstruct"): _Array for numpy in ("numpy.core", "numpy._core")},
    **{(f"{numpy}.multiarray", "scalar"): _Opaque for numpy in ("numpy.core", "numpy._core")},
    **{(f"{numpy}.numeric", "_frombuffer"): _FromBuffer for numpy in ("numpy.core", "numpy._core")},
    ("numpy", "ndarray"): _Array,
    ("numpy", "dtype"): _Dtype,
    **{
        (builtins, name): _Opaque for builtins in ("__builtin__", "builtins") for name in ("set", "frozenset")
    },
    **{(builtins, "object"): object for builtins in ("__builtin__", "builtins")},
    **{(builtins, "bytes"): _empty_bytes for builtins in ("__builtin__", "builtins")},
    **{(copyreg, "_reconstructor"): _reconstructor for copyreg in ("copy_reg", "copyreg")},
    ("_codecs", "encode"): _latin1_bytes,
}
"""The globals of an SMPL model pickle (numpy 1 and 2, Python 2 and 3 spellings) and what they load as."""
_SPARSE = {f"{layout}_matrix": cls for layout, cls in (("csc", _CSC), ("csr", _CSR), ("coo", _COO))}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler resolving only the globals an SMPL model file needs, each to something inert."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        if (module == "scipy.sparse" or module.startswith("scipy.sparse.")) and name in _SPARSE:
            return _SPARSE[name]
        if module == "chumpy" or module.startswith("chumpy."):
            return _Chumpy
        raise pickle.UnpicklingError(
            f"refusing to load the global {module}.{name}: an SMPL model file holds only numpy arrays, "
            "scipy sparse matrices and chumpy values"
        )


# ---------------------------------------------------------------------------------------------- reading


def _check_opcodes(data: bytes) -> None:
    """Walk the opcodes of a pickle without running them, simulating its stack.

    Raises:
        pickle.UnpicklingError: if the stream is malformed or truncated, longer than `MAX_OPCODES`,
            uses a memo index beyond the opcodes read, or nests tuples deeper than `MAX_NESTING`.
    """
    stack: list[int] = []  # the tuple nesting depth of each stack item (0: not a tuple)
    marks: list[int] = []
    memo: dict[int, int] = {}
    try:
        for count, (opcode, arg, _) in enumerate(pickletools.genops(data)):
            name, before = opcode.name, opcode.stack_before
            if count >= MAX_OPCODES:
                raise pickle.UnpicklingError(f"more than {MAX_OPCODES} pickle opcodes")
            if name == "MARK":
                marks.append(len(stack))
                continue
            if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):  # store the top item, keep it
                index = len(memo) if name == "MEMOIZE" else arg
                if len(stack) <= (marks[-1] if marks else 0) or not 0 <= index <= count:
                    raise pickle.UnpicklingError(f"memo index {index} out of range")
                memo[index] = stack[-1]
                continue
            items: list[int] = []
            if pickletools.markobject in before:
                if not marks:
                    raise pickle.UnpicklingError(f"{name} without a MARK")
                start = marks.pop()
                items = stack[start:]
                del stack[start:]
                before = before[: before.index(pickletools.markobject)]
            if len(stack) - len(before) < (marks[-1] if marks else 0):
                raise pickle.UnpicklingError(f"{name} on too few stack items")
            if before:
                items = stack[-len(before) :] + items
                del stack[-len(before) :]
            if name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise pickle.UnpicklingError(f"memo index {arg} was never stored")
                stack.append(memo[arg])
            elif name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"):
                stack.append(1 + max(items, default=0))
                if stack[-1] > MAX_NESTING:
                    raise pickle.UnpicklingError(f"tuples nested more than {MAX_NESTING} deep")
            elif name == "DUP":
                stack += items * 2
            else:
                stack += [0] * len(opcode.stack_after)
    except ValueError as error:  # pickletools: truncated data, an unknown opcode, a malformed argument
        raise pickle.UnpicklingError(str(error)) from None


def _unpickle(path: Path) -> Any:
    """The checked, restricted unpickling of `path` (placeholders for every non-builtin object).

    Raises:
        MissingFileError: if `path` does not exist.
        DataError: if it is too large, malformed, or refers to a global that is not allowed.
    """
    if not path.is_file():
        raise MissingFileError(f"SMPL model file {path} does not exist")
    if path.stat().st_size > MAX_PICKLE_BYTES:
        raise DataError(
            f"{path} has {path.stat().st_size} bytes, more than the {MAX_PICKLE_BYTES} of an SMPL model"
        )
    data = path.read_bytes()
    try:
        _check_opcodes(data)
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as error:  # whatever crafted bytes make the unpickler raise, the file is malformed
        detail = " ".join(str(error).split())[:300] or type(error).__name__
        raise DataError(f"{path} is not a readable SMPL model pickle: {detail}") from None


# ---------------------------------------------------------------------------------------------- arrays


class _FieldReader:
    """Builds the arrays of one file's fields from placeholders, checking each before it is made."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, field: str, problem: str) -> DataError:
        """The one-sentence refusal of `field`."""
        return DataError(f"{self.path}: field {field!r} {problem}; the file is damaged or not an SMPL model")

    def resolve(self, value: Any, field: str) -> Any:
        """`value` with chumpy objects replaced by the value they hold."""
        for _ in range(MAX_CHUMPY_DEPTH):
            if not isinstance(value, _Chumpy):
                return value
            state = value.state_dict()
            if state is None:
                raise self.error(field, "is a chumpy object without a state")
            if "x" in state:
                value = state["x"]
            else:
                value = next(
                    (v for v in state.values() if isinstance(v, _Array | _FromBuffer | _Chumpy)), None
                )
                if value is None:
                    raise self.error(field, "is a chumpy object that holds no array")
        raise self.error(field, f"nests chumpy objects more than {MAX_CHUMPY_DEPTH} deep")

    def shape(self, value: Any, field: str) -> tuple[int, ...]:
        """A declared shape: at most 8 non-negative ints, at most `MAX_BODY_ELEMENTS` elements."""
        if not isinstance(value, tuple | list) or len(value) > 8:
            raise self.error(field, "declares a malformed shape")
        if not all(type(n) is int and n >= 0 for n in value):
            raise self.error(field, "declares a shape with non-integer or negative sizes")
        if math.prod(max(n, 1) for n in value) > MAX_BODY_ELEMENTS:  # numpy refuses these even when empty
            raise self.error(field, f"declares the shape {tuple(value)}, beyond {MAX_BODY_ELEMENTS} elements")
        return tuple(value)

    def dtype(self, value: Any, field: str) -> np.dtype:
        """A declared dtype: one of `_DTYPES`, in a valid byte order."""
        code = value.args[0] if isinstance(value, _Dtype) and value.args else None
        if not isinstance(code, str) or code not in _DTYPES:
            shown = repr(code[:16]) if isinstance(code, str) else type(value).__name__.strip("_")
            raise self.error(field, f"has the element type {shown}, not a number type")
        state = value.state
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else "="
        if not isinstance(order, str) or order not in ("<", ">", "=", "|"):
            raise self.error(field, "has an invalid byte order")
        return np.dtype(code).newbyteorder("=" if order == "|" else order)

    def array(self, value: Any, field: str) -> np.ndarray:
        """The numpy array a pickled array stands for: dtype, shape and data length checked first."""
        value = self.resolve(value, field)
        if isinstance(value, _Array):
            state = value.state
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                raise self.error(field, "is a numpy array without a valid state")
            shape, dtype, fortran, data = state[-4:]
        elif isinstance(value, _FromBuffer) and len(value.args) == 4:
            data, dtype, shape, order = value.args
            fortran = order == "F"
        else:
            raise self.error(field, f"is a {type(value).__name__.strip('_')}, not a numpy array")
        shape, dtype = self.shape(shape, field), self.dtype(dtype, field)
        if isinstance(data, str):  # a Python-2 byte string, read as latin-1 text
            data = data.encode("latin-1", errors="replace")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise self.error(field, f"has {type(data).__name__} data, not bytes")
        expected = math.prod(shape) * dtype.itemsize
        if memoryview(data).nbytes != expected:
            raise self.error(
                field, f"has {memoryview(data).nbytes} bytes of data, its shape {shape} needs {expected}"
            )
        return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")

    def index_array(self, value: Any, field: str, length: int, bound: int) -> np.ndarray:
        """A 1-D integer array of `length` entries in `[0, bound)`, as int64."""
        array = self.array(value, field)
        if array.ndim != 1 or array.dtype.kind not in "iu" or len(array) != length:
            raise self.error(
                field, f"has shape {array.shape} and type {array.dtype}, expected {length} integers"
            )
        if array.size and (array.min() < 0 or array.max() >= bound):
            raise self.error(field, f"has entries outside [0, {bound})")
        return array.astype(np.int64)

    def sparse_shape(self, value: _Sparse, field: str) -> tuple[int, ...]:
        """The shape a sparse matrix declares (checked against the other fields before densifying)."""
        state = value.state_dict() or {}
        return self.shape(state.get("_shape", state.get("shape")), f"{field}.shape")

    def sparse_to_dense(self, value: _Sparse, field: str, shape: tuple[int, ...]) -> np.ndarray:
        """The dense matrix of a sparse one of the checked `shape`: no stored index may reach outside it."""
        state = value.state_dict() or {}
        data = self.array(state.get("data"), f"{field}.data")
        if data.ndim != 1:
            raise self.error(f"{field}.data", f"has shape {data.shape}, expected 1-D")
        if value.layout == "coo":
            coords = state["coords"] if "coords" in state else (state.get("row"), state.get("col"))
            if not isinstance(coords, tuple | list) or len(coords) != 2:
                raise self.error(f"{field}.coords", "is not a (row, col) pair")
            rows, cols = (
                self.index_array(coords[axis], f"{field}.coords[{axis}]", len(data), shape[axis])
                for axis in (0, 1)
            )
        else:
            major, minor = (1, 0) if value.layout == "csc" else (0, 1)
            indptr = self.index_array(state.get("indptr"), f"{field}.indptr", shape[major] + 1, len(data) + 1)
            if indptr[0] != 0 or indptr[-1] != len(data) or np.any(np.diff(indptr) < 0):
                raise self.error(
                    f"{field}.indptr", f"is not non-decreasing from 0 to the {len(data)} stored values"
                )
            indices = self.index_array(state.get("indices"), f"{field}.indices", len(data), shape[minor])
            outer = np.repeat(np.arange(shape[major]), np.diff(indptr))
            rows, cols = (indices, outer) if value.layout == "csc" else (outer, indices)
        dense = np.zeros(shape, np.float64)
        np.add.at(dense, (rows, cols), data)  # duplicate entries add up, as in scipy
        return dense


def load_smpl_pickle(path: str | Path, expected_sha256: str | None = None) -> dict[str, np.ndarray]:
    """Read the SMPL arrays of an SMPL model pickle safely (see the module docstring).

    Args:
        path: SMPL `.pkl` (Python-2 pickle; chumpy need not be installed).
        expected_sha256: if given, the file's SHA-256 must match (checked before unpickling).

    Returns:
        The arrays of `SMPL_KEYS`, chumpy values reduced to numpy arrays and `J_regressor` dense; their
        shapes are consistent (`check_body_shapes`).

    Raises:
        MissingFileError: if the file does not exist.
        DataError: on a checksum mismatch, a malformed, oversized or malicious pickle (a global that is
            not allowed), missing SMPL fields, or a field of the wrong type, shape or structure.
    """
    path = Path(path)
    if expected_sha256 is not None and path.is_file():
        try:
            verify_sha256(path, expected_sha256)
        except ValueError as error:
            raise DataError(str(error)) from None
    content = _unpickle(path)
    if not isinstance(content, dict):
        raise DataError(f"{path} holds a {type(content).__name__.strip('_')}, not an SMPL model dict")
    missing = [key for key in SMPL_KEYS if key not in content]
    if missing:
        raise DataError(f"{path} lacks the SMPL fields {missing} (an SMPL model has {list(SMPL_KEYS)})")
    reader = _FieldReader(path)
    arrays = {key: reader.array(content[key], key) for key in SMPL_KEYS if key != "J_regressor"}
    regressor = reader.resolve(content["J_regressor"], "J_regressor")
    shapes = {key: array.shape for key, array in arrays.items()}
    if isinstance(regressor, _Sparse):
        shapes["J_regressor"] = reader.sparse_shape(regressor, "J_regressor")
    else:
        regressor = reader.array(regressor, "J_regressor")
        shapes["J_regressor"] = regressor.shape
    check_body_shapes(shapes, path)  # before the sparse regressor is densified
    if isinstance(regressor, _Sparse):
        regressor = reader.sparse_to_dense(regressor, "J_regressor", shapes["J_regressor"])
    return {**arrays, "J_regressor": regressor}


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
        MissingFileError: if `src_pkl` does not exist.
        DataError: if `src_pkl` is not a valid SMPL model file (`load_smpl_pickle`).
    """
    return save_body_npz(load_smpl_pickle(src_pkl, expected_sha256), dst_npz, source=src_pkl)
