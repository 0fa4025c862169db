"""Real-footage shards: scene cuts, windowing and hold-out, the build, the Hydra task, the real files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from omegaconf import open_dict
from scipy.ndimage import gaussian_filter

from isa4d.config import compose
from isa4d.data import decode_sample, encode_video, read_manifest, shard_paths, video_info
from isa4d.data.footage import (
    TRAIN,
    VAL,
    FootageSource,
    Window,
    build_footage_shards,
    detect_scene_cuts,
    main,
    plan_windows,
    read_resized,
    video_distances,
)

RAW_DIR = Path(os.environ.get("ISA4D_DATA", Path(__file__).resolve().parents[1] / "data")) / "raw"
BIKES_CUTS = [30, 76, 137, 187, 242]  # checked by eye on the frames either side (docs/footage.md)
# Colour palettes (low, high RGB) of the synthetic scenes: warm, cool, green.
PALETTES = (([120, 40, 10], [250, 160, 60]), ([10, 40, 110], [90, 170, 250]), ([20, 90, 20], [140, 230, 120]))


def translating_scene(
    frames: int, palette: int, height: int = 48, width: int = 64, step: int = 3
) -> np.ndarray:
    """A smooth random texture in one palette, seen through a window moving `step` px per frame.

    Returns:
        `(frames, height, width, 3)` uint8.
    """
    rng = np.random.default_rng(palette)
    texture = gaussian_filter(rng.standard_normal((height + step * frames, width + step * frames)), 4)
    texture = (texture - texture.min()) / np.ptp(texture)
    low, high = (np.float32(colour) for colour in PALETTES[palette])
    image = (low + texture[..., None] * (high - low)).astype(np.uint8)
    return np.stack([image[i * step : i * step + height, i * step : i * step + width] for i in range(frames)])


def scenes(*lengths: int, **kwargs: int) -> tuple[np.ndarray, list[int]]:
    """Translating scenes of these lengths (palettes in turn) and the frames where each new one starts."""
    video = np.concatenate([translating_scene(n, i % len(PALETTES), **kwargs) for i, n in enumerate(lengths)])
    return video, np.cumsum(lengths)[:-1].tolist()


# ---------------------------------------------------------------------------------------- scene cuts


def test_detects_exact_cuts():
    video, cuts = scenes(15, 17, 13, 9)
    assert cuts == [15, 32, 45]
    assert detect_scene_cuts(video) == cuts


def test_no_false_cuts_on_smooth_motion():
    video = translating_scene(40, 0, step=4)
    assert detect_scene_cuts(video) == []
    # the texture does change: the floor and the ratio, not a zero distance, keep it from cutting
    assert video_distances(video).max() > 0


def test_detects_cuts_in_a_video_file(tmp_path):
    video, cuts = scenes(20, 20, 20, height=96, width=128)
    path = tmp_path / "cuts.mp4"
    path.write_bytes(encode_video(video, fps=25))
    assert detect_scene_cuts(path) == cuts  # codec noise and the analysis downscale do not matter


# ---------------------------------------------------------------------------------- windows, hold-out


def test_plan_windows_respects_cuts_and_holdout():
    holdout_start, windows = plan_windows(100, [30, 45], clip_frames=9, stride=9, holdout_fraction=0.2)
    assert holdout_start == 80
    expected = [(0, 0), (9, 0), (18, 0), (30, 1), (45, 2), (54, 2), (63, 2)]
    assert windows == [Window(start, scene, TRAIN) for start, scene in expected] + [
        Window(80, 2, VAL),
        Window(89, 2, VAL),
    ]
    _, no_holdout = plan_windows(100, [], clip_frames=33, stride=33, holdout_fraction=0.0)
    assert [window.start for window in no_holdout] == [0, 33, 66] and {w.split for w in no_holdout} == {TRAIN}


SYNTH = FootageSource("synth", "synth.mp4", "synthetic test scenes", "CC0-1.0")


@pytest.fixture
def synth_dir(tmp_path) -> Path:
    """A source folder with one 80-frame, 25 fps, 72x96 video: a cut at frame 40."""
    video, _ = scenes(40, 40, height=72, width=96, step=2)
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / SYNTH.file).write_bytes(encode_video(video, fps=25))
    return folder


def _build(src_dir: Path, out_dir: Path, **kwargs):
    kwargs = {"size": (32, 48), "clip_frames": 9, "stride": 8, "holdout_fraction": 0.25, **kwargs}
    return build_footage_shards(
        src_dir, out_dir, sources=[SYNTH], preset="ultrafast", progress=False, **kwargs
    )


def test_build_windows_holdout_and_manifest(synth_dir, tmp_path):
    out = tmp_path / "shards"
    result = _build(synth_dir, out)
    (summary,) = result.sources
    assert (summary.num_frames, summary.fps, summary.cuts, summary.holdout_start) == (80, 25, [40], 60)

    manifest = read_manifest(out)
    assert manifest == result.manifest
    frames: dict[str, set[int]] = {}
    source = read_resized(synth_dir / SYNTH.file, (32, 48))
    for split in (TRAIN, VAL):
        urls = [str(path) for path in shard_paths(out, split)]
        clips = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).map(decode_sample))
        entry = manifest["splits"][split]
        assert entry["num_samples"] == len(clips) == summary.count(split)
        assert entry["num_frames"] == sum(clip.meta.num_frames for clip in clips)
        frames[split] = set()
        for clip in clips:
            extra = clip.meta.extra
            start = extra["start_frame"]
            assert clip.video.shape == (9, 32, 48, 3) and clip.meta.fps == 25
            assert re.fullmatch(r"synth-\d{6}", clip.key) and clip.key == f"synth-{start:06d}"
            assert (clip.meta.split, clip.meta.source, clip.meta.licence) == (
                split,
                SYNTH.source,
                SYNTH.licence,
            )
            assert extra["source_file"] == SYNTH.file and extra["scene"] == int(start >= 40)
            window = set(range(start, start + 9))
            assert not (40 in window and 39 in window), "a clip crosses the scene cut"
            frames[split] |= window
            # the clip is the resized source at start_frame (a moving texture: a frame off would show)
            errors = {
                offset: np.abs(clip.video.astype(int) - source[offset : offset + 9]).mean()
                for offset in (start - 1, start, start + 1)
                if 0 <= offset <= len(source) - 9
            }
            assert min(errors, key=errors.get) == start and errors[start] < 3, (clip.key, errors)
    assert sorted(frames[TRAIN]) == [*range(0, 33), *range(40, 57)]  # windows 0, 8, 16, 24 and 40, 48
    assert sorted(frames[VAL]) == [*range(60, 77)]  # 60, 68
    assert not frames[TRAIN] & frames[VAL]


def test_build_refuses_overwrite_and_missing_sources(synth_dir, tmp_path):
    out = tmp_path / "shards"
    _build(synth_dir, out, holdout_fraction=0.0)
    assert set(read_manifest(out)["splits"]) == {TRAIN}
    with pytest.raises(FileExistsError, match="overwrite"):
        _build(synth_dir, out, holdout_fraction=0.0)
    with pytest.raises(FileNotFoundError, match=r"synth\.mp4.*scripts/fetch_footage\.sh"):
        _build(tmp_path / "empty", out)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        _build(synth_dir, out, clip_frames=8)
    with pytest.raises(ValueError, match="no 'val' clip"):
        _build(synth_dir, tmp_path / "other", holdout_fraction=0.05)


def test_hydra_task_reports_missing_sources(tmp_path, capsys):
    cfg = compose("footage")
    assert cfg.task_name == "footage" and list(cfg.size) == [256, 256] and cfg.clip_frames % 4 == 1
    with open_dict(cfg):
        cfg.source_dir = str(tmp_path / "raw")
        cfg.output_dir = str(tmp_path / "shards")
    with pytest.raises(SystemExit, match=r"vtest\.avi.*fetch_footage\.sh"):
        main(cfg)
    assert not (tmp_path / "shards").exists()


# ---------------------------------------------------------------------------------------- real files


def raw_file(name: str) -> Path:
    path = RAW_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} not found: run `scripts/fetch_footage.sh {RAW_DIR}` (or set ISA4D_DATA)")
    return path


def test_vtest_avi():
    path = raw_file("vtest.avi")
    info = video_info(path)
    assert (info.num_frames, info.height, info.width, info.fps) == (795, 576, 768, 10)
    assert detect_scene_cuts(path) == []  # one static shot


def test_bikes_mp4_cuts():
    path = raw_file("bikes.mp4")
    info = video_info(path)
    assert (info.num_frames, info.height, info.width, info.fps) == (250, 272, 640, 25)
    assert detect_scene_cuts(path) == BIKES_CUTS
