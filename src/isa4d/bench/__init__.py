"""Benchmarks (`python -m isa4d.bench.<name>`); results go to `experiments/bench/`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def run_or_work(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], Any],
    run_worker: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """A benchmark's entry: `run(args)`, or with `--worker JSON` (one cell in a fresh process, started
    by `run`) `run_worker(cell)`, its result printed as one JSON line for the parent to read."""
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))), flush=True)
        return
    run(args)


def check_clip_frames(parser: argparse.ArgumentParser, frames: list[int]) -> None:
    """Exit through `parser.error` unless every clip length is `1 + 4k` (the causal VAE's 4x time)."""
    for count in frames:
        if count < 1 or (count - 1) % 4:
            parser.error(f"--frames must be 1 + 4k, got {count}")
