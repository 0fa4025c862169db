"""The SMPL converter on untrusted pickles: every crafted file is converted or refused with a `DataError`.

Crafted files run through `isa4d.body.convert_smpl_pickle` in a worker subprocess (with an 8 GiB address
space limit), so a crash (a segfault in scipy or in CPython's tuple hashing) or a huge allocation fails
the test instead of killing pytest.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import select
import struct
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from isa4d.body import SMPL_KEYS, canonical_body_arrays, convert_smpl_pickle, load_smpl_pickle
from isa4d.body import convert as convert_module
from isa4d.errors import DataError

V, J = 6, 3  # a tiny SMPL-like model: 6 vertices, 3 joints
_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's `_reconstruct`, as pickles name it

WORKER = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
from isa4d.body.convert import convert_smpl_pickle
from isa4d.errors import DataError
for line in sys.stdin:
    src = line.rstrip("\\n")
    try:
        convert_smpl_pickle(src, src + ".npz")
        outcome, message = "ok", ""
    except DataError as error:
        outcome, message = "DataError", str(error)
    except BaseException as error:
        outcome, message = type(error).__name__, str(error)
    print(outcome + "\\t" + " ".join(message.split()), flush=True)
"""


class ConverterWorker:
    """A Python process converting the files it is sent, one per line; restarted after a crash."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def convert(self, src: Path, timeout: float = 60.0) -> tuple[str, str]:
        """Convert `src` in the worker: ("ok", ""), ("DataError", message), (error type, message) or
        ("crash", how the process ended)."""
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                [sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
            )
        self.process.stdin.write(f"{src}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([self.process.stdout], [], [], timeout)
            chunk = os.read(self.process.stdout.fileno(), 1 << 16) if ready else b""
            if not chunk:
                self.process.kill()
                return "crash", f"worker ended with status {self.process.wait()} (or took over {timeout} s)"
            line += chunk
        outcome, _, message = line.decode().rstrip("\n").partition("\t")
        return outcome, message

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def worker() -> Iterator[ConverterWorker]:
    converter = ConverterWorker()
    yield converter
    converter.close()


# ---------------------------------------------------------------------------------------------- files


class Ch:
    """Mimics chumpy: the value lives in the `x` entry of the pickled __dict__."""

    def __init__(self, x: Any) -> None:
        self.x = x
        self._dirty_vars = {"x"}


@contextlib.contextmanager
def fake_chumpy() -> Iterator[None]:
    """Make `Ch` pickle as `chumpy.ch.Ch` (chumpy itself is not installed)."""
    package, module = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    module.Ch, package.ch = Ch, module
    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    sys.modules.update({"chumpy": package, "chumpy.ch": module})
    try:
        yield
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


class Forged:
    """Pickles as a numpy array whose state (shape, dtype, data) is whatever it is given."""

    def __init__(self, shape: Any, dtype: Any, data: Any, fortran: bool = False) -> None:
        self.shape, self.dtype, self.data, self.fortran = shape, dtype, data, fortran

    def __reduce__(self) -> tuple:
        return _RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, self.shape, self.dtype, self.fortran, self.data)


def smpl_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Consistent SMPL-like arrays of a tiny model, in the dtypes of the SMPL files."""
    rng = np.random.default_rng(seed)
    regressor = rng.random((J, V)) * (
        np.arange(V) % 2 == 0
    )  # 9 entries: columns 0, 2, 4 (indptr 0 3 3 6 6 9 9)
    kintree = np.array([[2**32 - 1, 0, 1], [0, 1, 2]], np.uint32)  # the root's parent is 2**32 - 1
    return {
        "v_template": rng.normal(size=(V, 3)),
        "f": np.array([[0, 1, 2], [3, 4, 5]], np.uint32),
        "J_regressor": regressor / regressor.sum(1, keepdims=True),
        "kintree_table": kintree,
        "weights": np.asfortranarray(rng.dirichlet(np.ones(J), size=V)),  # Fortran order, as some are
        "shapedirs": rng.normal(size=(V, 3, 2)),
        "posedirs": rng.normal(size=(V, 3, (J - 1) * 9)),
    }


def smpl_content(arrays: dict[str, Any], sparse: str = "csc") -> dict[str, Any]:
    """An SMPL model dict as the files hold it: chumpy values, a sparse regressor, extra keys."""
    content = dict(arrays)
    for key in ("v_template", "shapedirs"):
        if isinstance(content[key], np.ndarray):
            content[key] = Ch(content[key])
    if isinstance(content["J_regressor"], np.ndarray) and content["J_regressor"].ndim == 2:
        content["J_regressor"] = getattr(scipy.sparse, f"{sparse}_matrix")(content["J_regressor"])
    return {**content, "J": Ch(np.zeros((J, 3))), "bs_style": "lbs", "bs_type": "lrotmin"}


def pickled(content: Any, protocol: int = 2) -> bytes:
    with fake_chumpy():
        return pickle.dumps(content, protocol=protocol)


def sparse_with(layout: str = "csc", **fields: Any) -> scipy.sparse.spmatrix:
    """The regressor of `smpl_arrays` as a sparse matrix with internal fields replaced (unchecked)."""
    matrix = getattr(scipy.sparse, f"{layout}_matrix")(smpl_arrays()["J_regressor"])
    for name, value in fields.items():
        setattr(matrix, name, value)
    return matrix


# ---------------------------------------------------------------------------------------------- valid files


@pytest.mark.parametrize(
    ("protocol", "sparse"),
    [(2, "csc"), (2, "csr"), (2, "coo"), (0, "csc"), (5, "csc")],
    ids=["p2csc", "p2csr", "p2coo", "p0", "p5"],  # protocol 0: copyreg._reconstructor; 5: _frombuffer
)
def test_valid_files_convert_exactly(tmp_path, protocol, sparse):
    arrays = smpl_arrays()
    content = smpl_content(arrays, sparse)
    path = tmp_path / "model.pkl"
    path.write_bytes(pickled(content, protocol))
    loaded = load_smpl_pickle(path)
    assert sorted(loaded) == sorted(SMPL_KEYS)
    for key in SMPL_KEYS:
        np.testing.assert_array_equal(loaded[key], arrays[key], err_msg=key)
    converted = np.load(convert_smpl_pickle(path, tmp_path / "model.npz"))
    np.testing.assert_array_equal(converted["kintree_table"][0], [2**32 - 1, 0, 1])
    np.testing.assert_allclose(converted["J_regressor"], arrays["J_regressor"].astype(np.float32))


def test_duplicate_sparse_entries_add_up_as_in_scipy(tmp_path):
    """A coo regressor with repeated (row, col) entries densifies as scipy's `toarray` does."""
    rows, cols = np.array([0, 0, 2, 1, 0]), np.array([1, 1, 5, 0, 1])
    regressor = scipy.sparse.coo_matrix((np.array([0.1, 0.2, 0.3, 0.4, 0.5]), (rows, cols)), shape=(J, V))
    path = tmp_path / "dup.pkl"
    path.write_bytes(pickled(smpl_content({**smpl_arrays(), "J_regressor": regressor})))
    np.testing.assert_array_equal(load_smpl_pickle(path)["J_regressor"], regressor.toarray())


def test_python3_protocol2_empty_array_and_python2_text_data_are_read(tmp_path):
    """Protocol 2 writes an empty array's data as `bytes()` (a global call) and Python 2 wrote array
    data as `str`: both are accepted; a model with zero shape components converts."""
    arrays = smpl_arrays()
    arrays["shapedirs"] = np.zeros((V, 3, 0))
    raw = arrays["posedirs"].tobytes()
    content = smpl_content(arrays)
    content["posedirs"] = Forged(arrays["posedirs"].shape, np.dtype("<f8"), raw.decode("latin-1"))
    data = pickled(content)
    assert b"__builtin__\nbytes" in data  # the empty array's data
    path = tmp_path / "empty.pkl"
    path.write_bytes(data)
    loaded = load_smpl_pickle(path)
    assert loaded["shapedirs"].shape == (V, 3, 0)
    np.testing.assert_array_equal(loaded["posedirs"], arrays["posedirs"])
    assert np.load(convert_smpl_pickle(path, tmp_path / "empty.npz"))["shapedirs"].shape == (V, 3, 0)


def test_oversized_file_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickled(smpl_content(smpl_arrays())))
    monkeypatch.setattr(convert_module, "MAX_PICKLE_BYTES", path.stat().st_size - 1)
    with pytest.raises(DataError, match=rf"{path} has \d+ bytes, more than"):
        load_smpl_pickle(path)


def test_huge_declared_body_arrays_are_refused_before_densifying():
    """`canonical_body_arrays` (also the Python API) checks declared shapes before `toarray`."""
    vertices, joints = 2**20, 100  # J_regressor: 1e8 elements, dense 400 MB, never allocated
    data = {
        "v_template": np.broadcast_to(0.0, (vertices, 3)),
        "f": np.zeros((1, 3), np.int64),
        "J_regressor": scipy.sparse.csc_matrix((joints, vertices)),
        "kintree_table": np.zeros((2, joints), np.int64),
        "weights": np.broadcast_to(0.0, (vertices, joints)),
        "shapedirs": np.broadcast_to(0.0, (vertices, 3, 1)),
        "posedirs": np.broadcast_to(0.0, (vertices, 3, 1)),
    }
    with pytest.raises(DataError, match=r"^big\.npz: SMPL array 'J_regressor' declares 104857600 elements"):
        canonical_body_arrays(data, "big.npz")


# ---------------------------------------------------------------------------------------------- crafted files


def _replace(key: str, value: Any) -> bytes:
    return pickled(smpl_content({**smpl_arrays(), key: value}))


CRAFTED: dict[str, tuple[bytes | Any, str]] = {
    # the sparse regressor: structure and declared shape, checked before densifying
    "indices_out_of_range": (
        lambda: _replace("J_regressor", sparse_with(indices=np.full(9, 10**6, np.int32))),
        rf"'J_regressor\.indices' has entries outside \[0, {J}\)",
    ),
    "negative_indices": (
        lambda: _replace("J_regressor", sparse_with(indices=np.full(9, -5, np.int32))),
        rf"'J_regressor\.indices' has entries outside \[0, {J}\)",
    ),
    "indptr_not_monotone": (
        lambda: _replace("J_regressor", sparse_with(indptr=np.array([0, 5, 2, 3, 4, 5, 9], np.int32))),
        r"'J_regressor\.indptr' is not non-decreasing",
    ),
    "indptr_wrong_length": (
        lambda: _replace("J_regressor", sparse_with(indptr=np.array([0, 9], np.int32))),
        r"'J_regressor\.indptr' has shape \(2,\)",
    ),
    "data_indices_lengths_differ": (
        lambda: _replace("J_regressor", sparse_with(data=np.ones(3))),
        r"'J_regressor\.indptr'|'J_regressor\.indices'",
    ),
    "declared_shape_not_the_vertex_count": (
        lambda: _replace("J_regressor", sparse_with(_shape=(J, V + 1))),
        rf"'J_regressor' has shape \({J}, {V + 1}\).*V = {V} vertices",
    ),
    "declared_shape_huge": (
        lambda: _replace("J_regressor", sparse_with(_shape=(10**6, 10**7))),
        r"'J_regressor\.shape' declares the shape \(1000000, 10000000\), beyond",
    ),
    "coo_coords_out_of_range": (
        lambda: _replace("J_regressor", sparse_with("coo", coords=(np.zeros(9, int), np.full(9, V)))),
        rf"'J_regressor\.coords\[1\]' has entries outside \[0, {V}\)",
    ),
    # declared array shapes and sizes
    "array_shape_larger_than_its_data": (
        lambda: _replace("weights", Forged((V, J + 1), np.dtype("<f8"), np.ones((V, J)).tobytes())),
        r"'weights' has 144 bytes of data, its shape \(6, 4\) needs 192",
    ),
    "array_declares_huge_shape": (
        lambda: _replace("posedirs", Forged((10**5, 10**5, 3), np.dtype("<f8"), b"")),
        r"'posedirs' declares the shape \(100000, 100000, 3\), beyond",
    ),
    "negative_shape": (lambda: _replace("f", Forged((-1, 3), np.dtype("<u4"), b"")), r"'f' declares a shape"),
    "object_dtype": (
        lambda: _replace("v_template", Forged((V, 3), np.dtype(object), [0.0] * 18)),
        r"'v_template' has the element type 'O8'",
    ),
    "wrong_field_type": (
        lambda: _replace("v_template", "not an array"),
        r"'v_template' is a str, not a numpy array",
    ),
    "content_not_a_dict": (lambda: pickled([1, 2, 3]), r"holds a list, not an SMPL model dict"),
    "missing_fields": (lambda: pickled({"v_template": np.zeros((V, 3))}), r"lacks the SMPL fields \['f', "),
    # recursion, nesting, memory and truncation
    "chumpy_cycle": (lambda: _cyclic_chumpy(), r"'v_template' nests chumpy objects more than 8 deep"),
    "self_containing_list": (lambda: _self_containing_list(), r"'weights' is a list, not a numpy array"),
    "deeply_nested_tuple_key": (
        b"\x80\x02}" + b")" + b"\x85" * 200_000 + b"K\x01s.",
        r"tuples nested more than 64 deep",
    ),
    "deeply_nested_lists": (
        b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b".",
        r"holds a list, not an SMPL",
    ),
    "huge_memo_index": (b"\x80\x02N" + b"r" + struct.pack("<I", 2**31) + b".", r"memo index 2147483648"),
    "huge_declared_bytes": (b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b".", r"not a readable"),
    "codec_bomb": (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x03\x00\x00\x00hex\x86R.", r"latin-1"),
    "bytes_allocation": (b"\x80\x02c__builtin__\nbytes\nJ\xff\xff\xff\x7f\x85R.", r"without arguments"),
    "code_execution": (b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R.", r"global posix\.system"),
    "truncated": (lambda: pickled(smpl_content(smpl_arrays()))[:700], r"not a readable SMPL model pickle"),
    "empty_file": (b"", r"not a readable SMPL model pickle"),
    "text_file": (b"v_template: 1 2 3\n", r"not a readable SMPL model pickle"),
}


def _cyclic_chumpy() -> bytes:
    value = Ch(None)
    value.x = value
    return _replace("v_template", value)


def _self_containing_list() -> bytes:
    value: list = []
    value.append(value)
    return _replace("weights", value)


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_file_is_one_data_error(worker, tmp_path, name):
    data, message = CRAFTED[name]
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(data() if callable(data) else data)
    outcome, text = worker.convert(path)
    assert outcome == "DataError", (outcome, text)
    assert text.startswith(str(path)), text
    assert re.search(message, text), text
    assert not (tmp_path / f"{name}.pkl.npz").exists()


# ---------------------------------------------------------------------------------------------- property


_BASE = smpl_arrays()
_ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.int64, np.uint32, np.bool_, np.complex64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=7),
)
_SHAPES = st.lists(st.integers(-2, 8) | st.sampled_from([10**9, 2**62]), max_size=4)
_REPLACEMENTS = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=4),
    st.lists(st.floats(allow_nan=False), max_size=4),
    _ARRAYS,
    st.builds(
        Forged,
        _SHAPES,
        st.sampled_from([np.dtype("<f8"), np.dtype(">i4"), np.dtype("u1")]),
        st.binary(max_size=64),
    ),
    st.builds(
        sparse_with,
        indices=hnp.arrays(np.int32, st.integers(0, 12), elements=st.integers(-3, 2 * V)),
    ),
    st.builds(sparse_with, indptr=hnp.arrays(np.int64, st.integers(0, 9), elements=st.integers(-2, 12))),
    st.builds(sparse_with, _shape=st.tuples(st.integers(0, 10), st.integers(0, 10))),
)
_MUTATIONS = st.one_of(
    st.tuples(
        st.just("flip"),
        st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
    ),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("replace"), st.tuples(st.sampled_from(SMPL_KEYS), _REPLACEMENTS)),
)


def _mutated(mutation: tuple[str, Any]) -> bytes:
    kind, argument = mutation
    if kind == "replace":
        key, value = argument
        return pickled(smpl_content({**_BASE, key: value}))
    data = bytearray(pickled(smpl_content(_BASE)))
    if kind == "truncate":
        return bytes(data[: argument % len(data)])
    for position, byte in argument:
        data[position % len(data)] = byte
    return bytes(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutation=_MUTATIONS)
def test_mutated_files_convert_or_raise_data_error(worker, tmp_path_factory, mutation):
    path = tmp_path_factory.mktemp("mutated") / "model.pkl"
    path.write_bytes(_mutated(mutation))
    outcome, text = worker.convert(path)
    event(f"{mutation[0]}: {outcome}")
    assert outcome in ("ok", "DataError"), (outcome, text)
    if outcome == "ok":
        assert sorted(np.load(f"{path}.npz").files) == sorted(SMPL_KEYS)
