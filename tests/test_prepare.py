"""`isa4d prepare` and `write_shards`: rejection report, shard splitting, atomic writes, Hydra task."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from omegaconf import open_dict

from conftest import compose_for_test
from isa4d.data import (
    InvalidSampleError,
    decode_sample,
    encode_mask_video,
    encode_video,
    read_manifest,
    shard_paths,
    write_shards,
)
from isa4d.data import shards as shards_module
from isa4d.data.format import png_bytes
from isa4d.data.prepare import ClipDefaults, NoValidClipsError, load_clip_folder, main, prepare_folder
from test_data_format import H, T, W, make_cameras, make_clip, make_smpl, psnr, smooth_video

GOOD = ("good-a", "good-b", "good-c")


def _npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def write_clip_folder(root: Path, name: str, seed: int = 0, **files: bytes | dict) -> Path:
    """A clip folder as a user would hand it in: `video.mp4`, `smpl.npz`, `camera.npz`, and `files`.

    `files` maps file names to bytes (or a JSON object for `meta.json`) and overrides the defaults;
    a value of `None` leaves the file out.
    """
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    smpl = make_smpl(rng, 1, T)
    camera = make_cameras(T, H, W)
    defaults = {
        "video.mp4": encode_video(smooth_video(phase=seed), fps=25),
        "smpl.npz": dataclasses.asdict(smpl),
        "camera.npz": dataclasses.asdict(camera),
    }
    for file_name, content in {**defaults, **files}.items():
        if content is None:
            continue
        if file_name.endswith(".npz"):
            _npz(folder / file_name, **content)
        elif file_name.endswith(".json"):
            (folder / file_name).write_text(json.dumps(content))
        else:
            (folder / file_name).write_bytes(content)
    return folder


def make_input(root: Path) -> Path:
    """3 good clip folders (each using a different input convenience) and 2 bad ones."""
    rng = np.random.default_rng(7)
    single = make_smpl(rng, 1, T)
    static = make_cameras(1, H, W)
    write_clip_folder(root, "good-a", seed=1, **{"meta.json": {"source": "studio", "take": 4}})
    write_clip_folder(  # single-person arrays without the P axis, a static camera, a .mov name, a mask.npz
        root,
        "good-b",
        seed=2,
        **{
            "video.mp4": None,
            "video.mov": encode_video(smooth_video(phase=2), fps=30),
            "smpl.npz": {name: array[0] for name, array in dataclasses.asdict(single).items()},
            "camera.npz": {"K": static.K[0], "R": static.R[0], "t": static.t[0]},
            "mask.npz": {"mask": np.ones((T, H, W), bool)},
        },
    )
    clip = make_clip(persons=2, seed=3)
    ref = clip.reference
    write_clip_folder(  # two persons with background, mask video and reference
        root,
        "good-c",
        **{
            "video.mp4": encode_video(clip.video, fps=25),
            "smpl.npz": dataclasses.asdict(clip.smpl),
            "camera.npz": dataclasses.asdict(clip.camera),
            "background.mp4": encode_video(clip.background, fps=25),
            "mask.mp4": encode_mask_video(clip.mask, fps=25),
            "ref.png": png_bytes(ref.image),
            "ref_smpl.npz": dataclasses.asdict(ref.smpl),
            "ref_camera.npz": dataclasses.asdict(ref.camera),
        },
    )
    short = make_cameras(T - 1, H, W)
    write_clip_folder(root, "bad-frames", **{"camera.npz": dataclasses.asdict(short)})
    transl = make_smpl(rng, 1, T)
    transl.transl[0, 3, 1] = np.nan
    write_clip_folder(root, "bad-nan", **{"smpl.npz": dataclasses.asdict(transl), "meta.json": {"fps": 24}})
    return root


def read_split(data_dir: Path, split: str) -> dict:
    urls = [str(path) for path in shard_paths(data_dir, split)]
    return {clip.key: clip for clip in map(decode_sample, wds.WebDataset(urls, shardshuffle=False))}


def test_prepare_writes_the_valid_clips_and_reports_the_others(tmp_path, capsys):
    out = tmp_path / "shards"
    result = prepare_folder(make_input(tmp_path / "input"), out, maxcount=2, progress=False)

    assert result.written == {"train": list(GOOD)}
    assert sorted(result.rejected) == ["bad-frames", "bad-nan"]
    assert result.rejected["bad-frames"] == ["camera.K: 8 frames, but video.mp4 has 9"] + [
        f"camera.{name}: 8 frames, but video.mp4 has 9" for name in ("R", "t")
    ]
    assert result.rejected["bad-nan"] == ["smpl.transl: contains NaN or infinite values"]
    report = capsys.readouterr().out
    assert "2 of 5 clip folder(s) rejected" in report
    assert "bad-nan:\n    - smpl.transl: contains NaN" in report

    assert sorted(path.name for path in out.iterdir()) == [
        ".manifest.json.lock",  # the manifest's file lock (kept: removing it would race with waiters)
        "manifest.json",
        "train-000000.tar",
        "train-000001.tar",
    ]
    manifest = read_manifest(out)
    assert manifest == result.manifest
    split = manifest["splits"]["train"]
    assert split["num_samples"] == 3 and split["num_frames"] == 3 * T
    assert split["frames_per_sample"] == {"min": T, "max": T}
    assert split["resolutions"] == {f"{H}x{W}": 3}
    assert split["persons"] == {"1": 2, "2": 1}
    assert split["fps"] == {"25": 2, "30": 1}
    assert split["members"]["video.mp4"] == 3 and split["members"]["mask.mp4"] == 2
    assert [(shard["name"], shard["num_samples"]) for shard in split["shards"]] == [
        ("train-000000.tar", 2),
        ("train-000001.tar", 1),
    ]

    clips = read_split(out, "train")
    assert sorted(clips) == list(GOOD)
    assert clips["good-a"].meta.source == "studio" and clips["good-a"].meta.extra == {"take": 4}
    assert clips["good-b"].meta.fps == 30 and clips["good-b"].camera.K.shape == (T, 3, 3)
    np.testing.assert_array_equal(clips["good-b"].mask, np.ones((T, H, W), np.uint8))
    source = load_clip_folder(tmp_path / "input" / "good-c")
    written = clips["good-c"]
    np.testing.assert_array_equal(written.smpl.body_pose, source.smpl.body_pose)
    np.testing.assert_array_equal(written.mask, source.mask)
    np.testing.assert_array_equal(written.reference.image, source.reference.image)
    assert psnr(written.video, source.video) > 30


def test_meta_json_sets_the_split(tmp_path):
    write_clip_folder(tmp_path / "input", "one", **{"meta.json": {"split": "val", "licence": "CC-BY-4.0"}})
    write_clip_folder(tmp_path / "input", "two", seed=1)
    result = prepare_folder(tmp_path / "input", tmp_path / "out", progress=False)
    assert result.written == {"val": ["one"], "train": ["two"]}
    assert sorted(read_manifest(tmp_path / "out")["splits"]) == ["train", "val"]
    assert read_split(tmp_path / "out", "val")["one"].meta.licence == "CC-BY-4.0"


def test_existing_shards_are_refused_unless_overwrite(tmp_path):
    source = make_input(tmp_path / "input")
    out = tmp_path / "out"
    prepare_folder(source, out, maxcount=2, progress=False)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(FileExistsError, match="overwrite=true"):
        prepare_folder(source, out, maxcount=2, progress=False)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before

    prepare_folder(
        source, out, maxcount=10, overwrite=True, progress=False
    )  # one shard now: the stale one goes
    assert sorted(path.name for path in out.iterdir()) == [
        ".manifest.json.lock",
        "manifest.json",
        "train-000000.tar",
    ]
    assert read_manifest(out)["splits"]["train"]["shards"][0]["num_samples"] == 3


def test_a_crash_mid_write_leaves_no_shard_and_no_manifest(tmp_path, monkeypatch):
    encode = shards_module.encode_sample
    calls = []

    def failing_encode(clip, **kwargs):
        calls.append(clip.key)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return encode(clip, **kwargs)

    monkeypatch.setattr(shards_module, "encode_sample", failing_encode)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_folder(make_input(tmp_path / "input"), out, maxcount=1, progress=False)
    assert len(calls) == 3
    assert list(out.iterdir()) == []


def test_write_shards_checks_its_clips(tmp_path):
    with pytest.raises(ValueError, match="belongs to split 'train', not 'val'"):
        write_shards([make_clip(full=False)], tmp_path, "val", 10, 1e9, progress=False)
    with pytest.raises(ValueError, match="repeated"):
        write_shards(
            [make_clip(full=False), make_clip(full=False)], tmp_path, "train", 10, 1e9, progress=False
        )
    with pytest.raises(ValueError, match="no samples"):
        write_shards([], tmp_path, "train", 10, 1e9, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_no_valid_clip_is_an_error(tmp_path):
    write_clip_folder(tmp_path / "input", "no-video", **{"video.mp4": None})
    write_clip_folder(tmp_path / "input", "garbage-video", **{"video.mp4": b"garbage"})
    with pytest.raises(NoValidClipsError):
        prepare_folder(tmp_path / "input", tmp_path / "out", defaults=ClipDefaults(fps=25), progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(InvalidSampleError, match="video.mp4: cannot read"):
        load_clip_folder(tmp_path / "input" / "garbage-video")
    with pytest.raises(InvalidSampleError, match=r"video\.\*: missing"):
        load_clip_folder(tmp_path / "input" / "no-video")


def test_hydra_task_runs_from_the_composed_config(tmp_path, capsys):
    make_input(tmp_path / "input")
    cfg = compose_for_test(
        "prepare",
        tmp_path,
        [f"input_dir={tmp_path / 'input'}", "shard_max_count=2", "video_preset=ultrafast"],
    )
    with open_dict(cfg):
        cfg.paths.data_dir = str(tmp_path / "data")
    main(cfg)
    out = tmp_path / "data" / "shards" / "custom"
    assert [shard["num_samples"] for shard in read_manifest(out)["splits"]["train"]["shards"]] == [2, 1]
    assert "bad-frames" in capsys.readouterr().out

    with pytest.raises(SystemExit) as raised:  # the second run finds the shards in place
        main(cfg)
    assert "overwrite=true" in str(raised.value.code)
