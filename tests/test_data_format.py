"""The shard format v1: video codecs, Clip <-> sample round trips through real tar shards, validation."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Callable

import numpy as np
import pytest
import webdataset as wds

from isa4d.data import (
    Cameras,
    Clip,
    InvalidSampleError,
    Reference,
    SMPLParams,
    decode_sample,
    encode_mask_video,
    encode_sample,
    encode_video,
    read_mask_video,
    read_video,
    validate_clip,
    video_info,
)
from isa4d.data.video_io import mask_codec, rgb_codec

T, H, W, P = 9, 48, 64, 2


def smooth_video(frames: int = T, height: int = H, width: int = W, phase: float = 0.0) -> np.ndarray:
    """`(T, H, W, 3)` uint8 of slowly moving sinusoids (what a video codec handles well)."""
    t = np.arange(frames)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    channels = [
        128 + 100 * np.sin(0.10 * x + 0.3 * t + phase) + 0 * y,
        128 + 100 * np.cos(0.08 * y - 0.2 * t + phase) + 0 * x,
        128 + 60 * np.sin(0.05 * (x + y) + 0.1 * t + phase),
    ]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 arrays, in dB."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def rotation_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def make_smpl(rng: np.random.Generator, persons: int, frames: int) -> SMPLParams:
    return SMPLParams(
        global_orient=rng.normal(0, 0.3, (persons, frames, 3)),
        body_pose=rng.normal(0, 0.2, (persons, frames, 69)),
        betas=rng.normal(0, 1, (persons, 10)),
        transl=rng.normal(0, 1, (persons, frames, 3)),
    )


def make_cameras(frames: int, height: int, width: int) -> Cameras:
    K = np.array([[60.0, 0, (width - 1) / 2], [0, 60.0, (height - 1) / 2], [0, 0, 1]])
    return Cameras(
        K=np.repeat(K[None], frames, axis=0),
        R=np.stack([rotation_y(0.05 * i) for i in range(frames)]),
        t=np.tile([0.0, -1.0, 3.0], (frames, 1)),
        image_size=(height, width),
    )


def make_clip(
    key: str = "clip-0", persons: int = P, full: bool = True, seed: int = 0, **create_kwargs
) -> Clip:
    """An annotated clip; `full` adds background, mask and reference."""
    rng = np.random.default_rng(seed)
    optional = {}
    if full:
        ref_size = (32, 40)
        optional = {
            "background": smooth_video(phase=1.0),
            "mask": rng.integers(0, persons + 1, (T, H, W)).astype(np.uint8),
            "reference": Reference(
                image=rng.integers(0, 256, (*ref_size, 3)).astype(np.uint8),
                smpl=make_smpl(rng, persons, 1),
                camera=make_cameras(1, *ref_size),
            ),
        }
    return Clip.create(
        key,
        smooth_video(),
        25.0,
        smpl=make_smpl(rng, persons, T),
        camera=make_cameras(T, H, W),
        **optional,
        **create_kwargs,
    )


def through_shard(tmp_path, clips: list[Clip]) -> list[Clip]:
    """Encode clips into a real tar shard with ShardWriter, read it back with WebDataset and decode."""
    pattern = str(tmp_path / "test-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=100, verbose=0) as writer:
        for clip in clips:
            writer.write(encode_sample(clip))
    dataset = wds.WebDataset(str(tmp_path / "test-000000.tar"), shardshuffle=False)
    return [decode_sample(sample) for sample in dataset]


def assert_same_arrays(actual: object, expected: object) -> None:
    for field in dataclasses.fields(expected):
        got, want = getattr(actual, field.name), getattr(expected, field.name)
        assert got.dtype == want.dtype, field.name
        np.testing.assert_array_equal(got, want, err_msg=field.name)


# ---------------------------------------------------------------------------------------------- videos


def test_codecs_of_this_pyav_build():
    assert rgb_codec() == "libx264"  # the PyPI av wheels bundle libx264
    assert mask_codec() == "libx264"


def test_video_round_trip_is_within_codec_tolerance():
    video = smooth_video()
    decoded = read_video(encode_video(video, fps=25))
    assert decoded.shape == video.shape and decoded.dtype == np.uint8
    assert psnr(decoded, video) > 30


def test_read_video_decodes_the_frames_asked_for(tmp_path):
    data = encode_video(smooth_video(), fps=25)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    everything = read_video(data)
    np.testing.assert_array_equal(read_video(path, [4, 0, 4]), everything[[4, 0, 4]])
    assert read_video(data, []).shape == (0, H, W, 3)
    with pytest.raises(IndexError, match="out of range"):
        read_video(data, [2, T])


def test_video_info_reads_the_header():
    info = video_info(encode_video(smooth_video(), fps=30000 / 1001))
    assert (info.num_frames, info.height, info.width) == (T, H, W)
    assert info.fps == pytest.approx(29.97, abs=1e-3)


def test_odd_sizes_are_refused():
    with pytest.raises(ValueError, match="even"):
        encode_video(smooth_video(height=47), fps=25)


@pytest.mark.parametrize("top", [3, 255])
def test_mask_video_is_exact_at_any_size(top):
    labels = np.random.default_rng(top).integers(0, top + 1, (T, 47, 63)).astype(np.uint8)
    np.testing.assert_array_equal(read_mask_video(encode_mask_video(labels, fps=25)), labels)


# ---------------------------------------------------------------------------------------------- round trips


def test_every_field_survives_a_shard(tmp_path):
    clip = make_clip(source="unit-test", licence="CC-BY-4.0", split="val", extra={"take": 3})
    (decoded,) = through_shard(tmp_path, [clip])
    assert decoded.key == clip.key
    assert decoded.meta == clip.meta
    assert decoded.meta.extra == {"take": 3}
    assert_same_arrays(decoded.smpl, clip.smpl)
    assert_same_arrays(decoded.camera, clip.camera)
    np.testing.assert_array_equal(decoded.reference.image, clip.reference.image)
    assert_same_arrays(decoded.reference.smpl, clip.reference.smpl)
    assert_same_arrays(decoded.reference.camera, clip.reference.camera)
    np.testing.assert_array_equal(decoded.mask, clip.mask)
    for name in ("video", "background"):
        got, want = getattr(decoded, name), getattr(clip, name)
        assert got.shape == want.shape and got.dtype == np.uint8
        assert psnr(got, want) > 30, name


def test_video_only_sample_round_trip(tmp_path):
    clip = Clip.create("vae-clip", smooth_video(), 24.0, num_persons=1)
    sample = encode_sample(clip)
    assert sorted(name for name in sample if not name.startswith("__")) == ["meta.json", "video.mp4"]
    (decoded,) = through_shard(tmp_path, [clip])
    assert decoded.meta == clip.meta
    assert decoded.smpl is decoded.camera is decoded.mask is decoded.reference is None
    assert psnr(decoded.video, clip.video) > 30


def test_meta_json_holds_the_documented_fields():
    sample = encode_sample(make_clip(persons=1, full=False))
    meta = json.loads(sample["meta.json"])
    checksums = meta.pop("sha256")  # of every other member
    assert sorted(checksums) == ["camera.npz", "smpl.npz", "video.mp4"]
    assert checksums["video.mp4"] == hashlib.sha256(sample["video.mp4"]).hexdigest()
    assert meta == {
        "schema_version": 1,
        "fps": 25.0,
        "source": "unknown",
        "licence": "unknown",
        "split": "train",
        "num_persons": 1,
        "num_frames": T,
        "height": H,
        "width": W,
    }


# ---------------------------------------------------------------------------------------------- validation


def test_a_valid_clip_has_no_problems():
    assert validate_clip(make_clip()) == []


def _set(path: str, value: Callable[[np.ndarray], np.ndarray]) -> Callable[[Clip], None]:
    """A mutation replacing the array at dotted `path` of a clip by `value(old)`."""
    *parents, name = path.split(".")

    def mutate(clip: Clip) -> None:
        owner = clip
        for parent in parents:
            owner = getattr(owner, parent)
        setattr(owner, name, value(getattr(owner, name)))

    return mutate


def _with_nan(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array.flat[5] = np.nan
    return array


def _zero_focal(K: np.ndarray) -> np.ndarray:
    K = K.copy()
    K[3, 0, 0] = 0
    return K


INVALID = {
    "camera frames": (_set("camera.K", lambda K: K[:-1]), "camera.K: 8 frames, but video.mp4 has 9"),
    "smpl frames": (_set("smpl.transl", lambda a: a[:, :-2]), "smpl.transl: 7 frames, but video.mp4 has 9"),
    "background frames": (_set("background", lambda a: a[:-1]), "background.mp4: 8 frames"),
    "mask frames": (_set("mask", lambda a: a[1:]), "mask.mp4: 8 frames"),
    "nan": (_set("smpl.body_pose", _with_nan), "smpl.body_pose: contains NaN"),
    "nan in camera": (_set("camera.t", _with_nan), "camera.t: contains NaN"),
    "zero focal": (_set("camera.K", _zero_focal), "camera.K: focal lengths fx, fy must be > 0"),
    "negative focal": (_set("camera.K", lambda K: K * [[-1, 1, 1], [1, 1, 1], [1, 1, 1]]), "camera.K: focal"),
    "not a rotation": (_set("camera.R", lambda R: 2 * R), "camera.R: not a rotation"),
    "image size": (
        _set("camera.image_size", lambda s: s[::-1]),
        "camera.image_size: (64, 48), but video.mp4",
    ),
    "ref image size": (_set("reference.camera.image_size", lambda s: s + 2), "ref_camera.image_size"),
    "body_pose shape": (
        _set("smpl.body_pose", lambda a: np.zeros((P, T, 72))),
        "smpl.body_pose: shape (2, 9, 72)",
    ),
    "betas shape": (_set("smpl.betas", lambda a: a[:, :8]), "smpl.betas: shape (2, 8), expected (2, 10)"),
    "ref frames": (_set("reference.smpl.transl", lambda a: np.zeros((P, 2, 3))), "ref_smpl.transl: 2 frames"),
    "video dtype": (
        _set("video", lambda v: v.astype(np.float32)),
        "video.mp4: dtype float32, expected uint8",
    ),
    "odd size": (_set("video", lambda v: v[:, :-1]), "video.mp4: height x width 47x64 must both be even"),
    "mask label": (_set("mask", lambda m: m + 1), "mask.mp4: label 3 exceeds meta.num_persons = 2"),
    "person count": (_set("meta.num_persons", lambda n: 3), "meta.num_persons: 3, but smpl.npz has 2"),
    "frame count": (_set("meta.num_frames", lambda n: 10), "meta.num_frames: 10, but video.mp4 has 9"),
    "schema version": (_set("meta.schema_version", lambda v: 2), "meta.schema_version: 2 is not supported"),
    "fps": (_set("meta.fps", lambda f: 0.0), "meta.fps: 0.0 must be a positive number"),
    "smpl without camera": (_set("camera", lambda c: None), "smpl.npz, camera.npz"),
    "key": (_set("key", lambda k: "clip.0"), "key 'clip.0'"),
}


@pytest.mark.parametrize("case", INVALID)
def test_validation_names_the_field(case):
    mutate, expected = INVALID[case]
    clip = make_clip()
    mutate(clip)
    problems = validate_clip(clip)
    assert any(expected in problem for problem in problems), problems
    with pytest.raises(InvalidSampleError) as raised:
        encode_sample(clip)
    assert raised.value.key == clip.key and raised.value.reasons == problems


def _tamper(sample: dict, member: str, data: bytes | None) -> dict:
    sample = dict(sample)
    if data is None:
        del sample[member]
    else:
        sample[member] = data
    return sample


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _bad_camera(sample: dict) -> bytes:
    with np.load(io.BytesIO(sample["camera.npz"])) as archive:
        arrays = dict(archive)
    arrays["t"][2, 1] = np.inf
    return _npz(**arrays)


def _bad_meta(sample: dict) -> bytes:
    return json.dumps({**json.loads(sample["meta.json"]), "schema_version": 99}).encode()


TAMPERED = {
    "non-finite camera": ("camera.npz", _bad_camera, "camera.t: contains NaN or infinite values"),
    "future schema": ("meta.json", _bad_meta, "meta.schema_version: 99 is not supported"),
    "missing arrays": ("smpl.npz", lambda s: _npz(betas=np.zeros((2, 10))), "smpl.npz: cannot decode"),
    "garbage video": ("video.mp4", lambda s: b"not a video", "video.mp4: cannot decode"),
    "missing video": ("video.mp4", lambda s: None, "video.mp4: missing"),
    "partial reference": ("ref.png", lambda s: None, "a reference needs all three"),
    "mask frames": (
        "mask.mp4",
        lambda s: encode_mask_video(np.zeros((T - 1, H, W), np.uint8), 25),
        "mask.mp4: 8",
    ),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_decode_rejects_a_bad_sample(case):
    member, data, expected = TAMPERED[case]
    sample = encode_sample(make_clip(key="tampered"))
    with pytest.raises(InvalidSampleError) as raised:
        decode_sample(_tamper(sample, member, data(sample)))
    assert raised.value.key == "tampered"
    assert any(expected in reason for reason in raised.value.reasons), raised.value.reasons


def test_fallback_codecs_work(monkeypatch):
    """Builds of PyAV without libx264 write MPEG-4 Part 2 videos and FFV1 masks."""
    from isa4d.data import video_io

    monkeypatch.setattr(video_io, "rgb_codec", lambda: "mpeg4")
    monkeypatch.setattr(video_io, "mask_codec", lambda: "ffv1")
    video = smooth_video()
    assert psnr(read_video(encode_video(video, fps=25)), video) > 30
    labels = np.random.default_rng(1).integers(0, 4, (T, 47, 63)).astype(np.uint8)
    np.testing.assert_array_equal(read_mask_video(encode_mask_video(labels, fps=25)), labels)
