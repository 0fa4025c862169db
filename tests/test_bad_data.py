"""Bad data is skipped and counted, never fatal, and too much of it stops the run; manifests are verified.

Covers: malformed `meta.json` numbers (huge integers, inf, NaN, 0), bit flips caught by the members'
SHA-256 and by strict decoding, frame counts against `meta.json`, `data.max_skip_fraction`, `isa4d prepare`
and `isa4d encode` on bad clips, and `manifest.json` (shard checksums, schema versions, malformed files,
shard names, two concurrent writers).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import re
import time
from pathlib import Path

import av
import numpy as np
import pytest
import webdataset as wds
from hydra.utils import instantiate

from isa4d.config import compose
from isa4d.data import (
    decode_sample,
    encode_sample,
    encode_video,
    read_manifest,
    read_video,
    video_io,
    write_shards,
)
from isa4d.data import shards as shards_module
from isa4d.data.datamodules import VideoDataModule
from isa4d.data.format import CHECKSUMS, META, VIDEO, Clip, InvalidSampleError, png_bytes
from isa4d.data.latents import check_latent_cache
from isa4d.data.pipeline import SkipCounter, decode_window, read_header
from isa4d.data.prepare import ClipDefaults, load_clip_folder, prepare_folder
from isa4d.data.shards import (
    MANIFEST,
    check_writable,
    shard_paths,
    update_manifest,
    verified_shards_file,
    verify_shards,
)
from isa4d.encode import encode, main
from isa4d.errors import ConfigError, DataError, ISA4DError, OutputExistsError
from isa4d.utils.files import file_sha256
from test_data_format import H, T, W, make_clip, smooth_video
from test_encode import checkpoint, encode_config
from test_encode import clip as annotated_clip
from test_prepare import write_clip_folder

__all__ = ["checkpoint"]  # fixtures

HUGE_INT = "1" + "0" * 400  # a JSON integer no float holds: math.isfinite raised OverflowError on it


def video_clip(key: str, split: str = "train", frames: int = 9) -> Clip:
    """A small video-only clip (32 x 32) of `frames` frames."""
    return Clip.create(key, smooth_video(frames, 32, 32, phase=len(key)), 25.0, split=split)


def with_fps(sample: dict, raw: str) -> dict:
    """The sample with `meta.json`'s fps replaced by raw JSON text (e.g. `1e999`, a 400-digit integer)."""
    meta = json.dumps({**json.loads(sample[META]), "fps": "@fps@"})
    return {**sample, META: meta.replace('"@fps@"', raw).encode()}


def flip_bit(data: bytes, position: float = 0.5) -> bytes:
    flipped = bytearray(data)
    flipped[int(len(data) * position)] ^= 0x10
    return bytes(flipped)


def add_shard(folder: Path, split: str, name: str, content: list[dict] | bytes) -> None:
    """Write a tar of raw samples (or raw bytes) and list it, with its size and SHA-256, in `split`."""
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        with wds.TarWriter(str(path)) as writer:
            for sample in content:
                writer.write(sample)
    entry = {"name": name, "num_samples": 0, "num_bytes": path.stat().st_size, "sha256": file_sha256(path)}

    def add(manifest: dict) -> dict:
        manifest["splits"][split]["shards"].append(entry)
        return manifest

    update_manifest(folder, add)


def video_module(folder: Path, **overrides) -> VideoDataModule:
    kwargs = {
        "train_dirs": [folder],
        "val_dirs": [folder],
        "val_splits": ["train"],
        "num_frames": 5,
        "resolution": 16,
        "batch_size": 1,
        "num_workers": 0,
        "epoch_size": 4,
        "shuffle_buffer": 0,
        "image_prob": 0.0,
        **overrides,
    }
    module = VideoDataModule(**kwargs)
    module.setup("fit")
    return module


# ---------------------------------------------------------------------------------------------- fps


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (HUGE_INT, "meta.fps: 1000000"),
        ("1e999", "meta.fps: inf must be a positive number"),
        ("NaN", "meta.fps: nan must be a positive number"),
        ("0", "meta.fps: 0 must be a positive number"),
        ("5000", "meta.fps: 5000 must be a positive number, a frame rate in [0.001, 1000]"),
        ('"25"', "meta.fps: '25' has the wrong type str"),
    ],
)
def test_a_malformed_fps_is_an_invalid_sample_not_a_crash(raw, reason):
    sample = with_fps(encode_sample(video_clip("odd-fps")), raw)
    for decoder in (decode_sample, read_header):
        with pytest.raises(InvalidSampleError) as raised:
            decoder(sample)
        assert any(reason in problem for problem in raised.value.reasons), raised.value.reasons


def test_training_skips_a_sample_with_a_huge_integer_fps(tmp_path, caplog):
    write_shards([video_clip("good")], tmp_path, "train", 8, 1e9, progress=False)
    bad = [with_fps(encode_sample(video_clip(f"bad{i}")), raw) for i, raw in enumerate([HUGE_INT, "1e999"])]
    add_shard(tmp_path, "train", "train-000001.tar", bad)
    module = video_module(tmp_path, val_dirs=[], epoch_size=4)
    keys = [key for batch in module.train_dataloader() for key in batch["key"]]
    assert keys == ["good"] * 4
    assert module.skips["train"].counts["invalid"] >= 1 and module.skips["train"].counts["unusable"] == 0
    assert "meta.fps: 100000000" in caplog.text


# ------------------------------------------------------------------------------------------ corrupt videos


MEMBERS = (
    "video.mp4",
    "background.mp4",
    "mask.mp4",
    "smpl.npz",
    "camera.npz",
    "ref.png",
    "ref_smpl.npz",
    "ref_camera.npz",
)


def test_a_bit_flip_in_any_member_is_caught_by_its_checksum():
    sample = encode_sample(make_clip(key="flipped"))
    assert sorted(json.loads(sample[META])[CHECKSUMS]) == sorted(
        name for name in sample if name not in (META, "__key__")
    )
    for member in MEMBERS:
        corrupt = {**sample, member: flip_bit(sample[member])}
        for decoder in (decode_sample, read_header):
            with pytest.raises(InvalidSampleError) as raised:
                decoder(corrupt)
            assert f"{member}: SHA-256 differs from the one in meta.json (the member is corrupt)" in (
                raised.value.reasons
            ), (member, raised.value.reasons)


def test_a_stream_skips_a_bit_flipped_video_and_counts_it(tmp_path, caplog):
    good = [encode_sample(video_clip(f"good{i}")) for i in range(3)]
    flipped = encode_sample(video_clip("flipped"))
    flipped[VIDEO] = flip_bit(flipped[VIDEO], 0.4)
    write_shards([video_clip("first")], tmp_path, "train", 8, 1e9, progress=False)
    add_shard(tmp_path, "train", "train-000001.tar", [good[0], flipped, *good[1:]])
    module = video_module(tmp_path, max_skip_fraction=0.5)
    keys = [key for batch in module.val_dataloader() for key in batch["key"]]
    assert keys == ["first", "good0", "good1", "good2"]
    assert module.skips["val"].counts == {"read": 0, "invalid": 1, "unusable": 0}
    assert "flipped" in caplog.text and "video.mp4: SHA-256 differs" in caplog.text


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_decoder_errors_raise_instead_of_being_concealed(codec, monkeypatch):
    """Samples written before the checksums rely on the decoder: its errors are no longer concealed."""
    monkeypatch.setattr(video_io, "rgb_codec", lambda: codec)
    data = encode_video(smooth_video(), fps=25)
    start, end = data.find(b"mdat") + 8, data.find(b"moov")
    assert 0 < start < end

    def lax(src: bytes) -> np.ndarray:  # how read_video decoded before: errors concealed
        with av.open(io.BytesIO(src)) as container:
            return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])

    rng = np.random.default_rng(0)
    refused = {"lax": 0, "strict": 0}
    for _ in range(20):
        corrupt = bytearray(data)
        at = int(rng.integers(start, end - 16))
        corrupt[at : at + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        for name, reader in (("lax", lax), ("strict", read_video)):
            try:
                reader(bytes(corrupt))
            except (av.FFmpegError, ValueError, IndexError):
                refused[name] += 1
    assert refused["strict"] >= refused["lax"] + 3, refused


def test_a_container_with_another_frame_count_than_meta_is_invalid():
    sample = encode_sample(video_clip("short-video", frames=9))
    meta = json.loads(sample[META])
    del meta[CHECKSUMS]  # as written before the checksums
    sample = {**sample, META: json.dumps(meta).encode(), VIDEO: encode_video(smooth_video(5, 32, 32), 25)}
    header = read_header(sample)  # nothing but the video is wrong
    with pytest.raises(InvalidSampleError, match="the container lists 5 frames, but the sample has 9"):
        decode_window(sample, header, [0, 1, 2])  # frames the short video has
    with pytest.raises(ValueError, match="lists 5 frames"):
        read_video(sample[VIDEO], [0], num_frames=9)
    assert read_video(sample[VIDEO], [0, 4], num_frames=5).shape == (2, 32, 32, 3)


# ---------------------------------------------------------------------------------------------- fraction


def bad(reason: str) -> InvalidSampleError:
    return InvalidSampleError("k", [reason])


def test_skip_counter_stops_above_the_fraction_naming_counts_and_reasons():
    skips = SkipCounter(max_fraction=0.25, min_samples=8)
    for _ in range(2):  # bad first: too few samples seen to judge
        skips.add("invalid", "k", bad("video.mp4: SHA-256 differs from the one in meta.json"))
    skips.add("unusable", "k", ValueError("3 frames, fewer than the 5 needed"))
    for _ in range(5):
        skips.succeeded()
    assert skips.delivered == 5 and skips.total == 3  # 2 bad of 8 = 25%: not above
    with pytest.raises(DataError) as raised:
        skips.add("read", "(shard)", OSError("unexpected end of data"))
    message = str(raised.value)
    assert message.startswith("3 of 9 samples were bad (33%, more than data.max_skip_fraction = 0.25; ")
    assert "read 1, invalid 2, unusable 1" in message
    assert "most often: 2x video.mp4: SHA-256 differs from the one in meta.json; 1x OSError" in message
    assert "fewer than" not in message  # unusable samples are not bad data

    never = SkipCounter(max_fraction=1.0, min_samples=1)
    for _ in range(50):
        never.add("invalid", "k", bad("x"))
    with pytest.raises(ConfigError, match=r"data.max_skip_fraction: 1.5 must be in \[0, 1\]"):
        SkipCounter(max_fraction=1.5)


def test_a_validation_pass_above_the_fraction_stops_the_run(tmp_path):
    write_shards([video_clip(f"good{i}") for i in range(3)], tmp_path, "train", 8, 1e9, progress=False)
    add_shard(tmp_path, "train", "train-000001.tar", [with_fps(encode_sample(video_clip("bad")), "0")])
    with pytest.raises(DataError, match=r"^1 of 4 samples were bad \(25%.*1x meta.fps: # must be"):
        list(video_module(tmp_path, max_skip_fraction=0.2).val_dataloader())
    module = video_module(tmp_path, max_skip_fraction=0.25)
    assert [key for batch in module.val_dataloader() for key in batch["key"]] == ["good0", "good1", "good2"]


@pytest.mark.parametrize(("root", "name"), [("train_vae", "video"), ("train_dit", "human")])
def test_data_configs_set_the_skip_fraction_and_checksum_verification(root, name):
    cfg = compose(
        root, [f"data={name}", "data.train_dirs=[x]", "data.val_dirs=[]", "data.train_weights=null"]
    )
    assert cfg.data.max_skip_fraction == 0.1 and cfg.data.verify_checksums is True
    module = instantiate(cfg.data)
    assert module.skips["train"].max_fraction == module.skips["val"].max_fraction == 0.1
    assert module.verify_checksums is True
    with pytest.raises(ConfigError, match=r"data.max_skip_fraction: 2 must be in \[0, 1\]"):
        type(module)(train_dirs=["x"], max_skip_fraction=2)


# ---------------------------------------------------------------------------------------------- prepare


def test_prepare_skips_malformed_clip_folders_with_their_reasons(tmp_path, capsys):
    root = tmp_path / "input"
    write_clip_folder(root, "good")
    frame = smooth_video()[0]
    single = {"video.mp4": None, "smpl.npz": None, "camera.npz": None}
    write_clip_folder(root, "image", **{**single, "video.png": png_bytes(frame)})
    write_clip_folder(root, "one-frame", **{**single, "video.mp4": encode_video(frame[None], fps=25)})
    for name, fps in [
        ("fps-zero", 0),
        ("fps-negative", -25),
        ("fps-huge", 10**400),
        ("fps-nan", float("nan")),
    ]:
        write_clip_folder(root, name, **{"meta.json": {"fps": fps}})
    result = prepare_folder(root, tmp_path / "out", progress=False)

    assert result.written == {"train": ["good"]}
    assert sorted(result.rejected) == sorted(
        ["image", "one-frame", "fps-zero", "fps-negative", "fps-huge", "fps-nan"]
    )
    needs = "frame(s); a clip needs at least 2 (a single image is not a clip)"
    assert result.rejected["image"] == [f"video.png: 1 {needs}"]
    assert result.rejected["one-frame"] == [f"video.mp4: 1 {needs}"]
    for name, shown in [("fps-zero", "0"), ("fps-negative", "-25"), ("fps-huge", "1000"), ("fps-nan", "nan")]:
        (reason,) = result.rejected[name]
        assert reason.startswith(f"meta.fps: {shown}") and "must be a positive number" in reason, reason
    assert "6 of 7 clip folder(s) rejected and skipped" in capsys.readouterr().out
    assert read_manifest(tmp_path / "out")["splits"]["train"]["num_samples"] == 1

    with pytest.raises(ConfigError, match="fps_default: 0 must be a positive number"):
        prepare_folder(root, tmp_path / "other", defaults=ClipDefaults(fps=0), progress=False)
    assert not (tmp_path / "other").exists()


def test_fps_is_taken_from_meta_json_as_given_else_from_the_video(tmp_path):
    assert load_clip_folder(write_clip_folder(tmp_path, "given", **{"meta.json": {"fps": 30}})).meta.fps == 30
    assert load_clip_folder(write_clip_folder(tmp_path, "video", **{"meta.json": {}})).meta.fps == 25


# ---------------------------------------------------------------------------------------------- manifests


def test_manifest_records_and_verifies_every_shard_checksum(tmp_path, caplog):
    write_shards([video_clip(f"c{i}") for i in range(3)], tmp_path, "train", 2, 1e9, progress=False)
    shards = read_manifest(tmp_path)["splits"]["train"]["shards"]
    for shard in shards:
        path = tmp_path / shard["name"]
        assert shard["sha256"] == file_sha256(path) and shard["num_bytes"] == path.stat().st_size
    assert verify_shards(tmp_path, "train") == 2
    video_module(tmp_path)  # setup verifies

    path = tmp_path / shards[1]["name"]
    data = path.read_bytes()
    path.write_bytes(flip_bit(data, 0.7))  # same size, one bit
    with pytest.raises(DataError, match=rf"{re.escape(str(path))} is corrupt or was replaced \(its SHA-256"):
        video_module(tmp_path)
    assert video_module(tmp_path, verify_checksums=False).verify_checksums is False  # skipped for speed
    path.write_bytes(data[:-512])
    with pytest.raises(DataError, match=r"\(\d+ bytes, the manifest says \d+\).*verify_checksums=false"):
        verify_shards(tmp_path, "train")


def test_verified_shards_are_not_read_again_until_they_change(tmp_path, monkeypatch):
    write_shards([video_clip(f"c{i}") for i in range(3)], tmp_path, "train", 2, 1e9, progress=False)
    names = [shard["name"] for shard in read_manifest(tmp_path)["splits"]["train"]["shards"]]
    reads = []

    def counted_sha256(path):
        reads.append(Path(path).name)
        return file_sha256(path)

    monkeypatch.setattr(shards_module, "file_sha256", counted_sha256)
    assert verify_shards(tmp_path, "train") == 2 and reads == names  # every byte, once
    memory = json.loads(verified_shards_file().read_text())
    assert {str((tmp_path / name).resolve()) for name in names} <= set(memory)
    assert verify_shards(tmp_path, "train") == 2 and reads == names  # remembered: not read again

    path = tmp_path / names[1]
    data = path.read_bytes()
    path.write_bytes(flip_bit(data, 0.3))  # same size, a new modification time: read again, refused
    with pytest.raises(DataError, match="its SHA-256 differs"):
        verify_shards(tmp_path, "train")
    assert reads == [*names, names[1]]
    path.write_bytes(data)  # restored: read again, passes, remembered
    assert verify_shards(tmp_path, "train") == 2 and reads == [*names, names[1], names[1]]
    verified_shards_file().write_text("{not json")  # an unreadable memory: every shard read again
    assert verify_shards(tmp_path, "train") == 2 and reads[-2:] == names
    assert verify_shards(tmp_path, "train") == 2 and len(reads) == 6


def write_manifest(folder: Path, manifest: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return folder / MANIFEST


SHARD = {"name": "train-000000.tar", "num_samples": 1, "num_bytes": 10}
MALFORMED = {
    "not json": ("{'splits':", "is not valid JSON"),
    "a list": ([1, 2], "must hold a JSON object, not list"),
    "no version": ({"splits": {}}, "needs one of ['latent_schema_version', 'schema_version'], found none"),
    "two versions": ({"schema_version": 1, "latent_schema_version": 2, "splits": {}}, "needs one of"),
    "future pixel schema": (
        {"schema_version": 2, "splits": {}},
        "schema_version 2 is not one this isa4d reads",
    ),
    "string version": ({"schema_version": "1", "splits": {}}, "schema_version '1' is not one"),
    "future latent schema": ({"latent_schema_version": 3, "splits": {}}, "latent_schema_version 3 is not"),
    "no splits": ({"schema_version": 1}, "'splits' must be an object"),
    "no shards": ({"schema_version": 1, "splits": {"train": {"num_samples": 3}}}, "with a 'shards' list"),
    "shard without name": (
        {"schema_version": 1, "splits": {"train": {"shards": [{"num_samples": 1, "num_bytes": 1}]}}},
        "splits.train.shards[0].name None",
    ),
    "bad count": (
        {"schema_version": 1, "splits": {"train": {"shards": [{**SHARD, "num_samples": -1}]}}},
        "num_samples -1 must be an integer >= 0",
    ),
    "bad digest": (
        {"schema_version": 1, "splits": {"train": {"shards": [{**SHARD, "sha256": "abc"}]}}},
        "sha256 'abc' must be 64 lowercase hex digits",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_manifest_is_a_data_error_naming_the_file(case, tmp_path):
    content, expected = MALFORMED[case]
    path = write_manifest(tmp_path, content)
    for reader in (read_manifest, lambda folder: shard_paths(folder, "train"), video_module):
        with pytest.raises(DataError) as raised:
            reader(tmp_path)
        assert str(path) in str(raised.value) and expected in str(raised.value), str(raised.value)


@pytest.mark.parametrize("name", ["../train-000000.tar", "/etc/passwd", "sub/x.tar", ".hidden.tar", "..", ""])
def test_a_shard_name_that_leaves_the_folder_is_refused(name, tmp_path):
    write_manifest(
        tmp_path, {"schema_version": 1, "splits": {"train": {"shards": [{**SHARD, "name": name}]}}}
    )
    with pytest.raises(DataError, match="must be a file name in the folder"):
        shard_paths(tmp_path, "train")


def test_a_latent_cache_of_another_schema_is_refused(tmp_path):
    latents = {"latent_schema_version": 3, "vae_sha256": "0" * 64}
    write_manifest(tmp_path, {"latent_schema_version": 3, "latents": latents, "splits": {}})
    with pytest.raises(DataError, match="latent_schema_version 3 is not one this isa4d reads"):
        check_latent_cache(tmp_path, vae_sha256="0" * 64, resolution=(16, 16), num_frames=5)
    write_manifest(
        tmp_path, {"latent_schema_version": 2, "latents": {"latent_schema_version": 2}, "splits": {}}
    )
    with pytest.raises(DataError, match=r"latents.vae_sha256 is missing or malformed"):
        check_latent_cache(tmp_path, vae_sha256="0" * 64, resolution=(16, 16), num_frames=5)
    with pytest.raises(DataError, match="lists other shards"):  # no pixel shards into a latent folder
        write_shards([video_clip("a")], tmp_path, "train", 8, 1e9, progress=False)
    assert not list(tmp_path.glob("*.tar"))


def _write_split_slowly(folder: str, split: str, barrier) -> None:
    """A writer process: one clip as `split`, its manifest update stretched to 0.5 s (read ... write)."""
    write_json = shards_module.write_json_atomic

    def slow_write(path, data):
        time.sleep(0.5)
        write_json(path, data)

    shards_module.write_json_atomic = slow_write
    clip = video_clip(f"clip-{split}", split=split)
    barrier.wait(timeout=60)
    write_shards([clip], folder, split, 8, 1e9, progress=False, preset="ultrafast")


def test_two_processes_writing_different_splits_into_one_folder_keep_both(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    writers = [
        context.Process(target=_write_split_slowly, args=(str(tmp_path), split, barrier))
        for split in ("train", "val")
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [writer.exitcode for writer in writers] == [0, 0]
    manifest = read_manifest(tmp_path)
    assert sorted(manifest["splits"]) == ["train", "val"]
    for split in ("train", "val"):
        (shard,) = manifest["splits"][split]["shards"]
        assert shard["sha256"] == file_sha256(tmp_path / shard["name"])


# ---------------------------------------------------------------------------------------------- encode


@pytest.fixture(scope="module")
def bad_source(tmp_path_factory) -> Path:
    """Annotated shards: 3 good clips, then a shard with a bit-flipped clip and a truncated shard."""
    folder = tmp_path_factory.mktemp("bad-source")
    good = [annotated_clip(f"good-{i}", 5) for i in range(3)]
    write_shards(good, folder, "train", 8, 1e9, progress=False, preset="ultrafast")
    flipped = encode_sample(annotated_clip("flipped", 5), preset="ultrafast")
    flipped[VIDEO] = flip_bit(flipped[VIDEO])
    add_shard(folder, "train", "train-000001.tar", [flipped])
    whole = encode_sample(annotated_clip("cut", 5), preset="ultrafast")
    buffer = io.BytesIO()
    with wds.TarWriter(buffer) as writer:
        writer.write(whole)
    add_shard(folder, "train", "train-000002.tar", buffer.getvalue()[:1500])
    return folder


def encode_bad(source: Path, checkpoint: Path, output: Path, **overrides):
    options = {"ckpt_path": checkpoint, "input_dir": source, "output_dir": output, "num_versions": 1}
    return encode_config(**options, **overrides)


def test_encode_skips_bad_samples_counts_and_reports_them(bad_source, checkpoint, tmp_path, capsys):
    out = tmp_path / "latents"
    main(encode_bad(bad_source, checkpoint, out, **{"data.max_skip_fraction": 0.9}))
    entry = read_manifest(out)["splits"]["train"]
    assert entry["num_samples"] == 3 and entry["num_clips"] == 3
    skipped = entry["skipped"]
    assert skipped["invalid"] >= 1 and skipped["read"] >= 1 and skipped["unusable"] == 0  # flipped, cut
    total = sum(skipped.values())
    assert f"train: 3 sample(s) of 3 clip(s) in 1 shard(s); {total} skipped (read " in capsys.readouterr().out


def test_encode_stops_above_the_skip_fraction_and_writes_nothing(bad_source, checkpoint, tmp_path):
    out = tmp_path / "latents"
    with pytest.raises(DataError, match=r"samples were bad .*more than data.max_skip_fraction = 0.1"):
        encode(encode_bad(bad_source, checkpoint, out))  # the default fraction: 0.1
    assert not (out / MANIFEST).exists() and not list(out.glob("*.tar"))


def test_samples_written_before_the_checksums_are_still_read():
    sample = encode_sample(make_clip(key="old"))
    meta = json.loads(sample[META])
    del meta[CHECKSUMS]
    clip = decode_sample({**sample, META: json.dumps(meta).encode()})
    assert clip.video.shape == (T, H, W, 3) and clip.meta.extra == {}


def test_existing_shards_and_bad_split_names_are_user_errors(tmp_path):
    """Writing over existing shards without `overwrite` is a one-line user error (still a FileExistsError)."""
    write_shards([video_clip("a")], tmp_path, "train", 10, 1e9, progress=False)
    with pytest.raises(OutputExistsError, match="already holds 1 'train' shard.*overwrite=true") as caught:
        check_writable(tmp_path, "train", overwrite=False)
    assert isinstance(caught.value, ISA4DError) and isinstance(caught.value, FileExistsError)
    check_writable(tmp_path, "train", overwrite=True)
    check_writable(tmp_path, "val", overwrite=False)
    with pytest.raises(ConfigError, match="split '../x' must be"):
        check_writable(tmp_path, "../x", overwrite=True)
