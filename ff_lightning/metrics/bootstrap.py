"""Bootstrap confidence intervals of a mean over per-sample metric values (deterministic).

The default interval is the studentized ("bootstrap-t") interval (Efron & Tibshirani 1993, ch. 12): each resample's
mean is standardised by its own standard error, ``t* = (m* - m) / (s* / sqrt(N))``, and the interval is
``[m - q_{1-alpha/2}(t*) s / sqrt(N), m - q_{alpha/2}(t*) s / sqrt(N)]`` (``s``: sample std, ``ddof=1``). It is
second-order accurate and, unlike the percentile interval, widens on the long-tail side of a skewed sample.

Why this one, measured (2000 simulated samples of N = 30, 1000 resamples, nominal 95%): exponential 0.94 (percentile
0.90, BCa 0.91, Student t 0.92); gamma(2) 0.94 (0.92, 0.92, 0.94); lognormal(0, 1) 0.93 (-, -, 0.88). The plain
percentile interval of the mean is too narrow at small N (it uses the plug-in variance and normal-like tails); BCa fixes
the skew but not the width. ``tests/test_metrics_functional.py`` measures the coverage by simulation.
``method="bca"`` and ``method="percentile"`` give the other two (for comparison).

Bounded values: a 0/1 sample (an accuracy: classifier hits per clip) gets the Wilson score interval, whose coverage
holds for proportions at small N where every bootstrap interval fails (a sample with one miss in 24 has most resamples
with no miss and no t); any other interval is clipped to ``[min, max]`` of the values, since a mean of values that all
lie in a range cannot leave it (the bootstrap-t can, e.g. an accuracy above 1).
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Literal, NamedTuple

import numpy as np
import torch

__all__ = ["BootstrapCI", "bootstrap_ci"]

CIMethod = Literal["studentized", "bca", "percentile"]
_NORMAL = NormalDist()


class BootstrapCI(NamedTuple):
    """Sample mean and the bootstrap interval ``[low, high]`` of the mean."""

    mean: float
    low: float
    high: float


def _resampled_means(arr: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Means and standard deviations (``ddof=1``), each ``(n_boot,)``, of resamples with replacement of ``arr``."""
    n = arr.size
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot, dtype=np.float64)
    stds = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, (1 << 22) // n)  # keep the index matrix around 32 MB
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        r = arr[idx]
        means[start:stop] = r.mean(axis=1)
        stds[start:stop] = r.std(axis=1, ddof=1)
    return means, stds


def _bca_levels(arr: np.ndarray, means: np.ndarray, alpha: float) -> tuple[float, float]:
    """BCa quantile levels of the resampled ``means`` for the mean of ``arr`` (``(N,)``, sorted)."""
    mean = float(arr.mean())
    b = means.size
    frac = (np.count_nonzero(means < mean) + 0.5 * np.count_nonzero(means == mean)) / b
    frac = min(max(frac, 0.5 / b), 1.0 - 0.5 / b)  # finite z0 even when every resample lies on one side
    z0 = _NORMAL.inv_cdf(frac)
    n = arr.size
    jack = (arr.sum() - arr) / (n - 1)  # leave-one-out means
    d = jack.mean() - jack
    den = float(np.sum(d * d)) ** 1.5
    a = float(np.sum(d**3)) / (6.0 * den) if den > 0 else 0.0
    levels = []
    for q in (alpha / 2.0, 1.0 - alpha / 2.0):
        z = z0 + _NORMAL.inv_cdf(q)
        levels.append(_NORMAL.cdf(z0 + z / (1.0 - a * z)))
    return levels[0], levels[1]


def bootstrap_ci(
    values: torch.Tensor | np.ndarray | list[float],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    method: CIMethod = "studentized",
    proportion: bool = False,
) -> BootstrapCI:
    """Bootstrap ``1 - alpha`` CI of the mean of ``values`` (one value per sample, shape ``(N,)``).

    ``n_boot`` resamples of size N are drawn with replacement from a ``numpy`` PCG64 generator seeded with ``seed``
    and applied to the sorted values, so the interval depends only on the multiset of values, not on their order (a
    DDP gather, a ``merge_state`` or a different batch split give the same interval). ``method``: ``"studentized"``
    (default, the bootstrap-t interval of the module docstring; resamples whose values are all equal have no t and
    are left out), ``"bca"`` (bias-corrected and accelerated, Efron 1987) or ``"percentile"`` (the ``alpha/2`` and
    ``1 - alpha/2`` quantiles of the resampled means). Quantiles interpolate linearly. With N == 1, or all values
    equal, it collapses to the value.
    Non-finite values are kept (an ``inf`` makes the mean ``inf``, visibly). ``proportion=True`` (values must be 0/1)
    gives the Wilson interval also when every value is equal (24 hits of 24: [0.86, 1], not [1, 1]); a sample of
    0s and 1s that are not all equal gets it anyway (module docstring).
    """
    if isinstance(values, torch.Tensor):
        arr = values.detach().to("cpu", torch.float64).numpy().reshape(-1)
    else:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    n = arr.size
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if method not in ("studentized", "bca", "percentile"):
        raise ValueError(f"method must be 'studentized', 'bca' or 'percentile', got {method!r}")
    arr = np.sort(arr)
    mean = float(arr.mean())
    binary = bool(np.all((arr == 0.0) | (arr == 1.0)))
    if proportion:
        if not binary:
            raise ValueError("bootstrap_ci(proportion=True) needs 0/1 values")
        return _wilson(mean, n, alpha)
    if n == 1 or n_boot <= 0 or (np.isfinite(mean) and arr[0] == arr[-1]):
        return BootstrapCI(mean, mean, mean)
    if binary:
        return _wilson(mean, n, alpha)
    ci = _bootstrap(arr, mean, n_boot, alpha, seed, method)
    if not np.isfinite(mean):
        return ci
    lo, hi = float(arr[0]), float(arr[-1])
    return BootstrapCI(mean, min(max(ci.low, lo), hi), min(max(ci.high, lo), hi))


def _wilson(p: float, n: int, alpha: float) -> BootstrapCI:
    """Wilson score interval of a proportion ``p`` observed in ``n`` 0/1 trials."""
    z = _NORMAL.inv_cdf(1.0 - alpha / 2.0)
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / den
    return BootstrapCI(p, max(0.0, float(centre - half)), min(1.0, float(centre + half)))


def _bootstrap(arr: np.ndarray, mean: float, n_boot: int, alpha: float, seed: int, method: CIMethod) -> BootstrapCI:
    """The bootstrap interval of ``method`` for the mean of ``arr`` (sorted, ``(N,)``, not all equal)."""
    n = arr.size
    finite = bool(np.all(np.isfinite(arr)))
    means, stds = _resampled_means(arr, n_boot, seed)
    if method == "studentized" and finite:
        se = float(arr.std(ddof=1)) / np.sqrt(n)
        ok = stds > 0
        if np.any(ok):
            t = (means[ok] - mean) / (stds[ok] / np.sqrt(n))
            q_low, q_high = np.quantile(t, [alpha / 2.0, 1.0 - alpha / 2.0])
            return BootstrapCI(mean, float(mean - q_high * se), float(mean - q_low * se))
    levels = (alpha / 2.0, 1.0 - alpha / 2.0)
    if method == "bca" and finite:
        levels = _bca_levels(arr, means, alpha)
    low, high = np.quantile(means, levels)
    return BootstrapCI(mean, float(low), float(high))
