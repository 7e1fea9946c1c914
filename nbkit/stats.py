"""How far a number on a few dozen test rows can be trusted: intervals, paired tests, rows needed.

On 80 rows one row is 1.25 points and a 95% interval on an accuracy near 0.8 is about +-9
points, so two systems a row or two apart are not told apart. These functions say so:

- :func:`wilson`: the 95% Wilson score interval of a proportion (accuracy).
- :func:`bootstrap`: a percentile bootstrap interval of any per-row mean (ROUGE, token F1, a
  per-query MRR), vectorised: 2,000 resamples of 1,000 rows take milliseconds.
- :func:`paired_bootstrap`: the interval of the difference between two systems scored on the
  same rows, resampling rows (not each system on its own).
- :func:`mcnemar`: the exact McNemar test of two classifiers on the same rows (a two-sided
  binomial test on the rows where exactly one of them is right).
- :func:`rows_needed`: test rows per system that separate two accuracies at a given level and power.
- :func:`seed_groups`: the targets that are one run per seed (``NAME-s0``, ``NAME-s1``, …).

Pure numpy (and the standard library); every random draw has a fixed seed, so an interval is
the same each time a report is made.
"""

from __future__ import annotations

import math
import re
from statistics import NormalDist
from typing import Sequence

Z95 = 1.959963984540054  # the two-sided 95% normal quantile


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``correct / n`` (95% by default); ``(0, 1)`` when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= correct <= n:
        raise ValueError(f"correct must be between 0 and n={n}, got {correct}")
    p, z2 = correct / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _resampled_means(values, resamples: int, seed: int):
    import numpy as np

    values = np.asarray(values, dtype=float)
    rows = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    return values[rows].mean(axis=1)


def bootstrap(values: Sequence[float], resamples: int = 2000, seed: int = 0,
              level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of per-row ``values``."""
    import numpy as np

    if len(values) == 0:
        return math.nan, math.nan
    means = _resampled_means(values, resamples, seed)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """``mean(b) - mean(a)`` on the same rows, its percentile interval, and a two-sided bootstrap p-value
    (twice the share of resampled differences on the far side of 0)."""
    import numpy as np

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values must be for the same rows: {len(a)} and {len(b)} values")
    if len(a) == 0:
        return {"difference": math.nan, "low": math.nan, "high": math.nan, "p_value": math.nan}
    diffs = _resampled_means(b - a, resamples, seed)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    p = min(1.0, 2 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    return {"difference": float(np.mean(b - a)), "low": float(low), "high": float(high), "p_value": p}


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict:
    """The exact McNemar test: of the rows where only one system is right (``only_a``, ``only_b``), is
    the split further from half-and-half than chance makes it? A two-sided binomial p-value."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired results must be for the same rows: {len(a_correct)} and {len(b_correct)}")
    only_a = sum(1 for x, y in zip(a_correct, b_correct) if x and not y)
    only_b = sum(1 for x, y in zip(a_correct, b_correct) if y and not x)
    n, k = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n if n else 1.0
    return {"only_a": only_a, "only_b": only_b, "p_value": min(1.0, 2 * tail)}


def distinguishable(low: float, high: float, p_value: float, level: float = 0.05) -> bool:
    """Whether a paired difference is one the rows support: its interval misses 0 *and* ``p_value`` is
    under ``level``. Both must agree: with few discordant rows the bootstrap interval can miss 0 while
    McNemar's exact p does not (a NaN p leaves the interval to decide)."""
    return not low <= 0 <= high and not p_value >= level


def rows_needed(p1: float, p2: float, level: float = 0.95, power: float = 0.8) -> int:
    """Test rows per system for a two-sided test at ``level`` to tell accuracies ``p1`` and ``p2``
    apart with probability ``power`` (two independent proportions, the normal approximation)."""
    for name, value in (("p1", p1), ("p2", p2)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be an accuracy between 0 and 1, got {value}")
    if p1 == p2:
        raise ValueError("p1 and p2 are equal: no number of rows tells them apart")
    z_a, z_b = NormalDist().inv_cdf(1 - (1 - level) / 2), NormalDist().inv_cdf(power)
    mean = (p1 + p2) / 2
    top = z_a * math.sqrt(2 * mean * (1 - mean)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(top * top / (p1 - p2) ** 2)


SEEDED = re.compile(r"^(.*)-s(\d+)$")  # a run that tune(seeds=[...]) named: NAME-s<seed>


def seed_groups(labels: Sequence[str]) -> dict[str, list[str]]:
    """Report targets that differ only in a run's ``-s<seed>`` suffix (``intent + lora-s0``,
    ``intent + lora-s1``, …), keyed by their common label with ``-s*``; groups of two or more."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        found = SEEDED.match(str(label))
        if found:
            groups.setdefault(found.group(1) + "-s*", []).append(label)
    return {group: members for group, members in groups.items() if len(members) > 1}
