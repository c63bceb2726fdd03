"""Percentile bootstrap confidence intervals over per-sample metric values (deterministic)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["BootstrapCI", "bootstrap_ci"]


class BootstrapCI(NamedTuple):
    """Sample mean and the percentile-bootstrap interval ``[low, high]`` of the mean."""

    mean: float
    low: float
    high: float


def bootstrap_ci(
    values: torch.Tensor | np.ndarray | list[float],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile bootstrap CI of the mean of ``values`` (one value per sample, shape ``(N,)``).

    ``n_boot`` resamples of size N are drawn with replacement from a ``numpy`` PCG64 generator seeded with ``seed``
    and applied to the sorted values, so the interval depends only on the multiset of values, not on their order (a
    DDP gather, a ``merge_state`` or a different batch split give the same interval). The interval is the
    ``alpha/2`` and ``1 - alpha/2`` quantiles of the resampled means (linear interpolation). With N == 1 it
    collapses to the value. Non-finite values are kept (an ``inf`` makes the mean ``inf``, visibly).
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
    arr = np.sort(arr)
    mean = float(arr.mean())
    if n == 1 or n_boot <= 0:
        return BootstrapCI(mean, mean, mean)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, (1 << 22) // n)  # keep the index matrix around 32 MB
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = arr[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapCI(mean, float(low), float(high))
