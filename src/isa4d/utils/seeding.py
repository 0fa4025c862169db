"""Seeds derived from integers: what makes a run a pure function of its seed (docs/reliability.md)."""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(*values: int) -> int:
    """A 63-bit seed mixed from non-negative integers (`numpy.random.SeedSequence`): distinct tuples give
    independent seeds, the same tuple the same seed in every process and run (unlike `hash`)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def seed_all(seed: int) -> None:
    """Seed the global generators of torch (CPU and every CUDA device), numpy and Python's `random`."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global generator is what code draws from
    random.seed(seed)


__all__ = ["derive_seed", "seed_all"]
