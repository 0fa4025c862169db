"""Property tests: malformed data of every kind ends in a `DataError` (or a counted skip), never a crash.

Generated SMPL / camera `.npz` members (wrong dtypes, NaN/inf, huge numbers, wrong shapes, missing keys,
random bytes), `meta.json` objects, reference images, videos, latent samples, manifests and input clip
folders are fed to the sample decoders (`decode_sample`, `read_header`, `LatentClipDecoder`), the
manifest reader and `isa4d prepare`'s clip reader. Each returns something valid or raises
`InvalidSampleError` / `DataError`; any other exception fails the property.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from torch.utils.data import default_collate

from isa4d.data import decode_sample, encode_mask_video, encode_sample, encode_video, validate_clip
from isa4d.data.augment import UnusableClipError
from isa4d.data.datamodules import HumanVideoDataModule
from isa4d.data.format import (
    BACKGROUND,
    CHECKSUMS,
    MASK,
    META,
    REF_IMAGE,
    VIDEO,
    InvalidSampleError,
    npz_bytes,
    png_bytes,
)
from isa4d.data.latents import CONDITIONS, LatentClipDecoder, latent_sample
from isa4d.data.pipeline import SkipCounter, decode_samples, read_header
from isa4d.data.prepare import MIN_CLIP_FRAMES, ClipDefaults, load_clip_folder
from isa4d.data.shards import MANIFEST, read_manifest, shard_paths
from isa4d.errors import DataError
from test_data_format import H, T, W, make_clip, smooth_video

PROPERTY = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,  # the same examples in every run (CI), no example database written
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CLIP = make_clip(key="base")
SAMPLE = encode_sample(
    CLIP, preset="ultrafast"
)  # every member: video, background, mask, annotations, reference
NPZ_MEMBERS = {
    "smpl.npz": CLIP.smpl,
    "camera.npz": CLIP.camera,
    "ref_smpl.npz": CLIP.reference.smpl,
    "ref_camera.npz": CLIP.reference.camera,
}

# ---------------------------------------------------------------------------------------------- strategies

HUGE = st.sampled_from([10**400, -(10**400), 10**309, 2**64, 1e308, 1e-320])  # most: beyond any float
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), HUGE, st.floats(allow_nan=True), st.text(max_size=6)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)
WEIRD_NUMBERS = st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, 1e-30])
FIELD_VALUES = st.one_of(HUGE, WEIRD_NUMBERS, st.sampled_from([0, -1, True, "", [], {}]), JSON_VALUES)
"""Values for a `meta.json` field: mostly edge cases of numbers and types."""
DTYPES = st.sampled_from(["<f2", "<f4", "<f8", "<i1", "<i8", "<u1", "|b1", "<c8", "<U3"])


@st.composite
def random_array(draw) -> np.ndarray:
    """Any small array: a random dtype (strings and complex too) and shape, NaN/inf/huge values."""
    shape = draw(st.lists(st.integers(0, 4), max_size=4).map(tuple))
    return draw(hnp.arrays(np.dtype(draw(DTYPES)), shape))


@st.composite
def npz_member(draw, arrays: dict[str, np.ndarray]) -> bytes:
    """`.npz` bytes: `arrays` with some deleted, replaced by random arrays, poked with NaN/inf/huge values
    or reshaped, extra arrays added; or random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    arrays = {name: np.array(value) for name, value in arrays.items()}
    for name in draw(st.lists(st.sampled_from(sorted(arrays)), unique=True, min_size=1, max_size=3)):
        action = draw(st.sampled_from(["delete", "random", "poke", "reshape", "dtype"]))
        if action == "delete":
            del arrays[name]
        elif action == "random":
            arrays[name] = draw(random_array())
        elif action == "poke" and arrays[name].size:
            poked = arrays[name].astype(np.float64)
            poked.flat[draw(st.integers(0, poked.size - 1))] = draw(WEIRD_NUMBERS)
            arrays[name] = poked
        elif action == "reshape":
            arrays[name] = arrays[name].reshape(-1)[: draw(st.integers(0, arrays[name].size))]
        else:
            arrays[name] = arrays[name].astype(draw(DTYPES))
    if draw(st.booleans()):
        arrays[draw(st.text("abcxyz_", min_size=1, max_size=5))] = draw(random_array())
    return npz_bytes(arrays)


def _fields(value: object) -> dict[str, np.ndarray]:
    return {name: np.asarray(array) for name, array in vars(value).items()}


@st.composite
def meta_json(draw, meta: dict) -> bytes:
    """A `meta.json`: `meta` with fields deleted or replaced by any JSON value; any JSON; or random bytes."""
    kind = draw(st.sampled_from(["fields", "fields", "fields", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=80))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    meta = dict(meta)
    for name in draw(st.lists(st.sampled_from(sorted(meta)), unique=True, min_size=1, max_size=4)):
        if draw(st.integers(0, 3)) == 0:
            del meta[name]
        else:
            meta[name] = draw(FIELD_VALUES)
    return json.dumps(meta).encode()


@st.composite
def video_bytes(draw, valid: bytes) -> bytes:
    """Random bytes, a truncated video, a video with 16 random bytes written over, or another video."""
    kind = draw(st.sampled_from(["bytes", "truncated", "overwritten", "other"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "truncated":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == "overwritten":
        at = draw(st.integers(0, len(valid) - 16))
        return valid[:at] + draw(st.binary(min_size=16, max_size=16)) + valid[at + 16 :]
    frames, height, width = draw(st.integers(1, 3)), 2 * draw(st.integers(1, 8)), 2 * draw(st.integers(1, 8))
    return encode_video(smooth_video(frames, height, width), fps=25, preset="ultrafast")


@st.composite
def image_bytes(draw) -> bytes:
    """A PNG of a random size and mode, or random bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=120))
    mode = draw(st.sampled_from(["RGB", "RGBA", "L", "P", "I;16", "1"]))
    size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    buffer = io.BytesIO()
    Image.new(mode, size, color=draw(st.integers(0, 255))).save(buffer, format="PNG")
    return buffer.getvalue()


def without_checksums(sample: dict, keep: bool) -> dict:
    """`sample`, its `meta.json` without the members' SHA-256 unless `keep` (so changed members reach
    the decoders and validation, as in shards written before the checksums)."""
    if keep:
        return dict(sample)
    meta = json.loads(sample[META])
    del meta[CHECKSUMS]
    return {**sample, META: json.dumps(meta).encode()}


def assert_decoders_refuse_or_accept(sample: dict) -> None:
    """`decode_sample` and `read_header` return a valid result or raise `InvalidSampleError` only."""
    try:
        clip = decode_sample(sample)
    except InvalidSampleError as err:
        assert err.reasons and all(isinstance(reason, str) for reason in err.reasons)
    else:
        assert validate_clip(clip) == []
    try:
        header = read_header(sample)
    except InvalidSampleError as err:
        assert err.reasons
    else:
        assert header.meta.num_frames >= 1


# ---------------------------------------------------------------------------------------------- samples


@settings(PROPERTY, max_examples=30)
@given(meta=meta_json(json.loads(SAMPLE[META])))
def test_a_malformed_meta_json_is_an_invalid_sample(meta):
    assert_decoders_refuse_or_accept({**SAMPLE, META: meta})


@pytest.mark.parametrize("field", sorted(json.loads(SAMPLE[META])))
@settings(PROPERTY, max_examples=12)
@given(value=FIELD_VALUES)
def test_any_value_of_a_meta_json_field_is_valid_or_an_invalid_sample(field, value):
    meta = {**json.loads(SAMPLE[META]), field: value}
    assert_decoders_refuse_or_accept({**SAMPLE, META: json.dumps(meta).encode()})


@PROPERTY
@given(data=st.data(), member=st.sampled_from(sorted(NPZ_MEMBERS)), keep=st.booleans())
def test_malformed_smpl_and_camera_arrays_are_invalid_samples(data, member, keep):
    arrays = data.draw(npz_member(_fields(NPZ_MEMBERS[member])))
    assert_decoders_refuse_or_accept({**without_checksums(SAMPLE, keep), member: arrays})


@PROPERTY
@given(
    data=st.data(),
    member=st.sampled_from([VIDEO, BACKGROUND, MASK, REF_IMAGE]),
    keep=st.booleans(),
    drop=st.booleans(),
)
def test_malformed_videos_and_images_are_invalid_samples(data, member, keep, drop):
    sample = without_checksums(SAMPLE, keep)
    if drop and member != VIDEO:
        del sample[member]
    elif member == REF_IMAGE:
        sample[member] = data.draw(image_bytes())
    else:
        sample[member] = data.draw(video_bytes(SAMPLE[member]))
    assert_decoders_refuse_or_accept(sample)


@settings(PROPERTY, max_examples=20)
@given(metas=st.lists(meta_json(json.loads(SAMPLE[META])), min_size=1, max_size=5))
def test_a_stream_of_malformed_samples_counts_every_skip(metas):
    samples = [{**SAMPLE, "__key__": f"k{i}", META: meta} for i, meta in enumerate(metas)]
    skips = SkipCounter(max_fraction=1.0)
    delivered = list(decode_samples(samples, read_header, skips))
    assert (
        len(delivered) + skips.total == len(samples) and skips.counts["read"] == skips.counts["unusable"] == 0
    )


# ---------------------------------------------------------------------------------------------- latents


def _latent_base() -> dict:
    """A latent sample written by `latent_sample` from a decoded pixel sample and stand-in latents."""
    module = HumanVideoDataModule(train_dirs=["unused"], num_frames=5, resolution=16, max_persons=2)
    batch = default_collate(
        [{**module.decoder(train=False).decode(SAMPLE, None), "version": torch.tensor(0)}]
    )
    latents = {
        name: torch.zeros(1, 4, frames, 2, 2)
        for name, frames in (("latent", 2), ("background_latent", 2), ("ref_latent", 1))
    }
    return latent_sample(batch, {**latents, "control_latent": {}}, 0, np.float32)


LATENT = _latent_base()


@PROPERTY
@given(data=st.data(), member=st.sampled_from([META, CONDITIONS, "latent.npy"]), keep=st.booleans())
def test_malformed_latent_samples_are_invalid_samples(data, member, keep):
    decoder = LatentClipDecoder(max_persons=2)
    assert decoder(LATENT)["latent"].shape == (4, 2, 2, 2)
    sample = without_checksums(LATENT, keep)
    if member == META:
        sample[META] = data.draw(meta_json(json.loads(LATENT[META])))
    elif member == CONDITIONS:
        with np.load(io.BytesIO(LATENT[CONDITIONS])) as archive:
            sample[CONDITIONS] = data.draw(npz_member(dict(archive)))
    else:
        sample[member] = data.draw(st.binary(max_size=200) | npz_member({"x": np.zeros(3)}))
    try:
        out = decoder(sample)
    except (InvalidSampleError, UnusableClipError):
        return
    assert out["latent"].dtype == torch.float32


# ---------------------------------------------------------------------------------------------- manifests

SHARD = {"name": "train-000000.tar", "num_samples": 2, "num_bytes": 100, "sha256": "0" * 64}
MANIFEST_BASE = {"schema_version": 1, "splits": {"train": {"num_samples": 2, "shards": [SHARD]}}}


@st.composite
def manifest_text(draw) -> bytes:
    """A manifest with one node replaced by any JSON value (or a path-like shard name); or any JSON/bytes."""
    kind = draw(st.sampled_from(["node", "node", "name", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=80))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    manifest = json.loads(json.dumps(MANIFEST_BASE))
    if kind == "name":
        names = st.sampled_from(["../x.tar", "/etc/passwd", "a/b.tar", "..", ".", "", "x\x00.tar", "~/x"])
        manifest["splits"]["train"]["shards"][0]["name"] = draw(names | st.text(max_size=10))
        return json.dumps(manifest).encode()
    paths = [
        ("schema_version",),
        ("splits",),
        ("splits", "train"),
        ("splits", "train", "shards"),
        ("splits", "train", "shards", 0),
        *(("splits", "train", "shards", 0, key) for key in SHARD),
    ]
    *parents, leaf = draw(st.sampled_from(paths))
    node = manifest
    for key in parents:
        node = node[key]
    if draw(st.integers(0, 3)) == 0:
        del node[leaf]
    else:
        node[leaf] = draw(JSON_VALUES)
    return json.dumps(manifest).encode()


@PROPERTY
@given(text=manifest_text())
def test_a_malformed_manifest_is_a_data_error(text):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / MANIFEST).write_bytes(text)
        try:
            manifest = read_manifest(folder)
        except DataError as err:
            assert str(Path(folder) / MANIFEST) in str(err)
            return
        for split in manifest["splits"]:
            assert all(path.parent == Path(folder) for path in shard_paths(folder, split))


# ---------------------------------------------------------------------------------------------- prepare


@st.composite
def clip_folder_files(draw) -> dict[str, bytes]:
    """The files of an input clip folder, each valid or malformed."""
    fps = draw(st.sampled_from([None, 25, 0, -1, float("nan"), 10**400, "25", 1e9]))
    meta = {} if fps is None else {"fps": fps}
    files = {
        "video.mp4": encode_video(smooth_video(), fps=25, preset="ultrafast"),
        "meta.json": json.dumps(meta).encode(),
        "smpl.npz": npz_bytes(_fields(CLIP.smpl)),
        "camera.npz": npz_bytes(_fields(CLIP.camera)),
    }
    for name in draw(st.lists(st.sampled_from([*files, "mask.mp4", "image"]), unique=True, max_size=3)):
        if name == "video.mp4" and name in files:
            files[name] = draw(video_bytes(files[name]))
        elif name == "meta.json":
            files[name] = draw(meta_json({**meta, "source": "studio", "split": "train", "num_persons": 2}))
        elif name == "mask.mp4":
            labels = draw(st.sampled_from([CLIP.mask, CLIP.mask[:1], CLIP.mask * 3, CLIP.mask[:, :-2]]))
            files[name] = encode_mask_video(np.ascontiguousarray(labels), fps=25)
        elif name == "image":  # a single image where the video should be
            del files["video.mp4"]
            files["video.png"] = png_bytes(smooth_video(1)[0])
        else:
            files[name] = draw(npz_member(_fields(CLIP.smpl if name == "smpl.npz" else CLIP.camera)))
    return files


@settings(PROPERTY, max_examples=40)
@given(files=clip_folder_files(), default_fps=st.sampled_from([None, 30.0]))
def test_prepare_reads_a_malformed_clip_folder_as_a_rejection(files, default_fps):
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / "clip"
        folder.mkdir()
        for name, content in files.items():
            (folder / name).write_bytes(content)
        try:
            clip = load_clip_folder(folder, ClipDefaults(fps=default_fps))
        except InvalidSampleError as err:
            assert err.key == "clip" and err.reasons
            return
    assert validate_clip(clip) == [] and clip.meta.num_frames >= MIN_CLIP_FRAMES


def test_the_base_data_is_valid():
    """The properties start from valid data (else they would only test the first error)."""
    assert decode_sample(SAMPLE).meta.num_frames == T and decode_sample(SAMPLE).video.shape == (T, H, W, 3)
    assert LatentClipDecoder(max_persons=2)(LATENT)["person_mask"].tolist() == [True, True]
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / MANIFEST).write_text(json.dumps(MANIFEST_BASE))
        assert shard_paths(folder, "train") == [Path(folder) / "train-000000.tar"]
    with pytest.raises(InvalidSampleError, match="SHA-256 differs"):
        decode_sample({**SAMPLE, VIDEO: SAMPLE[BACKGROUND]})
