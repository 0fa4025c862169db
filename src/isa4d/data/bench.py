"""Data-loading benchmark: clips per second that a DataModule's training loader delivers (`make bench`).

    python -m isa4d.data.bench                       # conf/data/video.yaml on ${paths.data_dir} shards
    python -m isa4d.data.bench --synthetic           # on a small generated shard set (no data needed)
    python -m isa4d.data.bench --config human data.num_workers=4

Results go to `experiments/bench/data_<config>.json` and `.md` (and stdout).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from isa4d.config import compose
from isa4d.data.datamodules import ShardDataModule
from isa4d.data.format import Cameras, Clip, Reference, SMPLParams
from isa4d.data.shards import write_shards
from isa4d.geometry import intrinsics_from_fov, look_at
from isa4d.utils.files import write_json_atomic, write_text_atomic

ROOTS = {"video": "train_vae", "human": "train_dit"}


def benchmark_loader(
    data: DictConfig | ShardDataModule, num_batches: int = 20, warmup: int = 3
) -> dict[str, float | int | str]:
    """Time the training loader of a DataModule (its configured workers, augmentation and sizes).

    `epoch_size` is raised if needed so that one epoch holds `warmup + num_batches` batches per rank.

    Args:
        data: a DataModule, or its config (a `conf/data/*.yaml` node) to instantiate.
        num_batches: batches timed, after `warmup` batches (worker start-up, shuffle buffers filling).
        warmup: batches not timed (>= 1).

    Returns:
        `clips_per_s` (samples delivered per second; an image batch's samples count as 1-frame clips),
        `frames_per_s`, `batches_per_s`, `startup_s` (until the first batch), `seconds` timed, the setup
        (`batch_size`, `num_workers`, `num_frames`, `resolution`, `torch_threads`) and the skips.
    """
    module = instantiate(data) if isinstance(data, DictConfig) else data
    module.setup("fit")
    module.epoch_size = max(module.epoch_size, (warmup + num_batches) * module.batch_size)
    start = time.perf_counter()
    batches = iter(module.train_dataloader())
    next(batches)
    startup = time.perf_counter() - start
    for _ in range(warmup - 1):
        next(batches)
    clips = frames = 0
    start = time.perf_counter()
    for _ in range(num_batches):
        video = next(batches)["video"]
        clips += video.shape[0]
        frames += video.shape[0] * video.shape[2]
    seconds = time.perf_counter() - start
    del batches  # stops the workers
    return {
        "clips_per_s": clips / seconds,
        "frames_per_s": frames / seconds,
        "batches_per_s": num_batches / seconds,
        "startup_s": startup,
        "seconds": seconds,
        "num_batches": num_batches,
        "batch_size": module.batch_size,
        "num_workers": module.num_workers,
        "num_frames": module.num_frames,
        "resolution": "x".join(map(str, module.resolution)),
        "torch_threads": torch.get_num_threads(),
        "skipped": module.skips["train"].total,
    }


def _bench_clips(split: str, count: int, frames: int, size: tuple[int, int]) -> Iterator[Clip]:
    """Annotated clips of smooth moving colour patterns, one standing person, a static camera."""
    t, y, x = np.meshgrid(
        np.arange(frames), np.arange(size[0]), np.arange(size[1]), indexing="ij", sparse=True
    )
    K = intrinsics_from_fov(50.0, size, torch.float64)
    R, tr = look_at(torch.tensor([0.0, 1.0, 3.0]).double(), torch.tensor([0.0, 1.0, 0.0]).double())

    def smpl(n: int) -> SMPLParams:
        return SMPLParams(np.zeros((1, n, 3)), np.zeros((1, n, 69)), np.zeros((1, 10)), np.zeros((1, n, 3)))

    def cameras(n: int) -> Cameras:
        return Cameras(*(a.expand(n, *a.shape).numpy() for a in (K, R, tr)), image_size=size)

    for index in range(count):
        phase = index + (100 if split == "val" else 0)
        channels = (
            128 + 100 * np.sin(0.05 * x + 0.2 * t + phase),
            128 + 100 * np.cos(0.04 * y - 0.15 * t + phase),
            128 + 60 * np.sin(0.03 * (x + y) + 0.1 * t),
        )
        video = np.stack(np.broadcast_arrays(*channels), axis=-1).astype(np.uint8)
        yield Clip.create(
            f"bench-{index:04d}",
            video,
            30.0,
            smpl=smpl(frames),
            camera=cameras(frames),
            background=np.ascontiguousarray(video[:, ::-1]),
            reference=Reference(video[0], smpl(1), cameras(1)),
            split=split,
            source="bench",
        )


def make_bench_shards(
    folder: str | Path, num_clips: int = 16, frames: int = 49, size: tuple[int, int] = (288, 384)
) -> Path:
    """Write a small annotated dataset for the benchmark: splits `train` and `val` (a quarter as many).

    Frames are smooth moving colour patterns (H.264 handles them like real footage, unlike noise), larger
    than the default 256 px so that resizing is timed; every clip has SMPL, cameras, a background and a
    reference frame, so both DataModules can read it.
    """
    for split, count in (("train", num_clips), ("val", max(2, num_clips // 4))):
        write_shards(
            _bench_clips(split, count, frames, size), folder, split, 8, 1e9, overwrite=True, progress=False
        )
    return Path(folder)


def _markdown(name: str, result: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| `{key}` | {value:.3g} |" if isinstance(value, float) else f"| `{key}` | {value} |"
        for key, value in result.items()
    )
    return f"# Data loader benchmark: `conf/data/{name}.yaml`\n\n| metric | value |\n| --- | --- |\n{rows}\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(ROOTS), default="video", help="conf/data/<config>.yaml")
    parser.add_argument("--synthetic", action="store_true", help="benchmark on a generated shard set")
    parser.add_argument("--num-batches", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("experiments/bench"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.num_workers=4")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        overrides = [f"data={args.config}", *args.overrides]
        if args.synthetic:
            folder = make_bench_shards(scratch)
            dirs = f"[{folder}]"
            overrides += [f"data.{key}_dirs={dirs}" for key in ("train", "val")]
            overrides += ["data.train_splits=[train]", "data.val_splits=[val]", "data.train_weights=null"]
        cfg = compose(ROOTS[args.config], overrides)
        result = {"config": args.config, "data": "synthetic" if args.synthetic else "configured"}
        result |= benchmark_loader(cfg.data, num_batches=args.num_batches)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / f"data_{args.config}.json", result)
    write_text_atomic(args.out / f"data_{args.config}.md", _markdown(args.config, result))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
