"""Significance of a difference measured on a few runs or clips."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def one_sample_p(values: Sequence[float]) -> float | None:
    """Two-sided p-value of a one-sample t-test of mean 0 (None: under 2 values or no spread). On paired
    differences (the same seeds, the same clips) it is the paired t-test."""
    if len(values) < 2 or np.std(values) == 0:
        return None
    from scipy.stats import ttest_1samp

    return float(ttest_1samp(values, 0.0).pvalue)
