"""Intervals for every reported benchmark number.

Two kinds of metric, two treatments (the protocol's ``uncertainty`` section sets ``alpha``, the resample counts, the
seed and ``repeats``):

* **Per-sample metrics** (CLIPSIM, classifier accuracy): the mean over samples with a studentized-bootstrap
  ("bootstrap-t") ``1 - alpha`` interval over samples (:func:`ff_lightning.metrics.bootstrap.bootstrap_ci`, whose
  docstring gives the measured coverage at small N) (:func:`per_sample_record`, ``n_boot`` resamples). Per-sample values are stored
  in the result, so two runs on the same prompts can be compared pairwise (``ff eval compare``).
* **Distribution metrics** (IS, FVD, frame FID): ``value`` is the metric on all N generated samples, the number the
  published protocols define. The interval is a percentile bootstrap over *generated samples* with the real
  statistics held fixed (``n_boot_distribution`` resamples of N videos with replacement; frame FID resamples whole
  videos, keeping their frames together), *recentred on the full-sample value*. A resample holds only about 63%
  distinct videos, and Fréchet distances (and, less, IS) depend on the effective sample count, so the resampled
  values are shifted (for FID/FVD: upwards, often by more than their spread, which would leave the plain percentile
  interval entirely above ``value``). The shift ``bias = mean(resampled) - value`` is removed:
  ``[q_{alpha/2} - bias, q_{1-alpha/2} - bias]`` (:func:`recentred_interval`). The interval therefore measures how
  much the number moves with the draw of generated videos around the full-sample value; ``boot_mean`` and the raw
  percentiles (``ci_raw``) are recorded too. Compare runs with equal N (the finite-sample bias depends on N).

  This is the one convention for every distribution metric in the project: the ``ff eval`` protocols and the
  keyframe sweep's frame FID (:func:`ff_lightning.evaluation.keyframes.fid_bootstrap`) both use
  :func:`recentred_interval`. Why this one: a plain percentile interval of a Fréchet distance excludes its own
  value (the resampling bias exceeds the spread), and the basic ("reflected") bootstrap interval ``2 value - q`` is
  centred on ``value - bias``, an interval for a bias-corrected (larger-N) distance, which is not the N-sample number
  the protocols report. The bias is estimated by the mean of the resamples, the standard bootstrap bias
  estimate (Efron & Tibshirani 1993, ch. 10), not by their median.
  When ``repeats > 1``, mean ± std (population std, as TGANv2) over ``repeats`` disjoint consecutive subsets is
  reported as well (``repeats`` in the record): the protocols order samples round-robin over classes, so each subset
  is class-balanced. A subset has N / repeats samples, so its Fréchet distances are larger than ``value``.

Fréchet distances of resamples are computed without re-deriving the real square root: with real statistics
``(mu_r, S_r)`` and centred generated rows ``X`` (m x D), ``tr sqrt(sqrt(S_r) S_g sqrt(S_r))`` is the sum of square
roots of the eigenvalues of ``X S_r X^T / (m - 1)`` (m x m) when m < D (same non-zero spectrum), else of
``sqrt(S_r) S_g sqrt(S_r)`` (D x D) with ``sqrt(S_r)`` computed once. Both match
:func:`ff_lightning.metrics.functional.frechet_distance`, including its numerical-rank threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ff_lightning.metrics.bootstrap import bootstrap_ci
from ff_lightning.metrics.distribution import inception_score, psd_sqrt

__all__ = [
    "RECENTRED_METHOD",
    "FrechetBootstrap",
    "distribution_record",
    "inception_score_record",
    "frechet_record",
    "per_sample_record",
    "recentred_interval",
    "unavailable",
]

#: how :func:`recentred_interval` intervals are described in result records
RECENTRED_METHOD = "percentile bootstrap recentred on the value (bootstrap bias mean(resamples) - value removed)"


def unavailable(reason: str) -> dict[str, Any]:
    """A metric that was not measured, with the reason (never a number from stand-in weights)."""
    return {"value": None, "ci_low": None, "ci_high": None, "n": 0, "available": False, "reason": reason}


def per_sample_record(values: torch.Tensor | np.ndarray, *, alpha: float, n_boot: int, seed: int) -> dict[str, Any]:
    """Mean of per-sample ``values`` ``(N,)`` with a studentized-bootstrap interval over samples."""
    arr = np.asarray(values.detach().cpu().double() if isinstance(values, torch.Tensor) else values, np.float64)
    ci = bootstrap_ci(arr, n_boot=n_boot, alpha=alpha, seed=seed)
    return {
        "value": ci.mean,
        "ci_low": ci.low,
        "ci_high": ci.high,
        "n": int(arr.size),
        "available": True,
        "ci_method": f"studentized (bootstrap-t) bootstrap over samples ({n_boot} resamples, {100 * (1 - alpha):g}%)",
        "alpha": alpha,
        "n_boot": n_boot,
    }


def _drop_tiny(w: torch.Tensor) -> torch.Tensor:
    """Eigenvalues at or below ``size * eps * max|w|`` set to 0 (as :mod:`ff_lightning.metrics.distribution`)."""
    if w.numel() == 0:
        return w
    tol = w.numel() * torch.finfo(w.dtype).eps * w.abs().max()
    return torch.where(w > tol, w, torch.zeros_like(w))


class FrechetBootstrap:
    """Fréchet distance of (resampled) generated features against fixed real statistics (float64).

    Args:
        mu_real, sigma_real: real mean ``(D,)`` and covariance ``(D, D)``.
        features: generated features ``(N, D)`` (one row per video) or ``(N, F, D)`` (F frames per video; resampling
            picks videos and keeps their frames).
    """

    def __init__(self, mu_real: torch.Tensor, sigma_real: torch.Tensor, features: torch.Tensor) -> None:
        f = torch.as_tensor(features, dtype=torch.float64)
        if f.ndim == 2:
            f = f[:, None]
        if f.ndim != 3:
            raise ValueError(f"features must be (N, D) or (N, F, D), got {tuple(f.shape)}")
        self.n, self.frames, self.d = f.shape
        self.rows = f.reshape(-1, self.d)
        self.mu_r = torch.as_tensor(mu_real, dtype=torch.float64).reshape(-1)
        s = torch.as_tensor(sigma_real, dtype=torch.float64)
        self.sigma_r = 0.5 * (s + s.T)
        if self.mu_r.numel() != self.d or self.sigma_r.shape != (self.d, self.d):
            raise ValueError(f"real statistics ({self.mu_r.numel()}-d) do not match features ({self.d}-d)")
        self.tr_r = float(torch.trace(self.sigma_r))
        self.gram_route = self.n * self.frames < self.d
        if self.gram_route:
            self.gram = self.rows @ self.sigma_r @ self.rows.T  # (rows, rows)
        else:
            self.root = psd_sqrt(self.sigma_r)

    def _rows(self, videos: np.ndarray) -> np.ndarray:
        return (videos[:, None] * self.frames + np.arange(self.frames)[None]).reshape(-1)

    def value(self, videos: np.ndarray | None = None) -> float:
        """FD of the generated videos ``videos`` (indices, repeats allowed; None: all)."""
        r = np.arange(self.rows.shape[0]) if videos is None else self._rows(np.asarray(videos))
        m = r.size
        if m < 2:
            raise ValueError("need at least 2 generated feature rows")
        x = self.rows[r]
        mu = x.mean(dim=0)
        xc = x - mu
        tr_g = float((xc * xc).sum()) / (m - 1)
        if self.gram_route:
            rt = torch.from_numpy(r)
            g = self.gram[rt][:, rt]
            row = g.mean(dim=1, keepdim=True)
            inner = (g - row - row.T + g.mean()) / (m - 1)
        else:
            sg = (xc.T @ xc) / (m - 1)
            inner = self.root @ sg @ self.root
        eig = _drop_tiny(torch.linalg.eigvalsh(0.5 * (inner + inner.T)))
        diff = self.mu_r - mu
        fd = float(diff @ diff) + self.tr_r + tr_g - 2.0 * float(eig.sqrt().sum())
        return max(fd, 0.0)


def _interval(boot: Sequence[float], alpha: float) -> tuple[float | None, float | None]:
    if len(boot) == 0:
        return None, None
    lo, hi = np.quantile(np.asarray(boot, np.float64), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def recentred_interval(boot: Sequence[float] | np.ndarray, value: float, alpha: float = 0.05) -> dict[str, Any]:
    """The project's one interval for distribution metrics (IS, FVD, FID; see the module docstring).

    ``boot``: the metric on resamples of the generated samples (reference fixed); ``value``: the metric on all of
    them. Returns ``ci_low`` / ``ci_high`` = the ``alpha/2`` and ``1 - alpha/2`` percentiles of ``boot`` shifted by
    the bootstrap bias estimate ``bias = mean(boot) - value``, plus ``ci_raw`` (the unshifted percentiles),
    ``boot_mean`` and ``bias``. A single resample gives ``(value, value)``; none gives ``(None, None)``.
    """
    b = np.asarray(boot, np.float64).reshape(-1)
    raw_lo, raw_hi = _interval(list(b), alpha)
    if raw_lo is None or raw_hi is None:
        return {"ci_low": None, "ci_high": None, "ci_raw": [None, None], "boot_mean": None, "bias": None}
    bias = float(b.mean()) - float(value)
    return {
        "ci_low": raw_lo - bias,
        "ci_high": raw_hi - bias,
        "ci_raw": [raw_lo, raw_hi],
        "boot_mean": float(b.mean()),
        "bias": bias,
    }


def _repeats(n: int, repeats: int, fn: Any) -> dict[str, Any] | None:
    if repeats <= 1:
        return None
    size = n // repeats
    vals = [fn(np.arange(k * size, (k + 1) * size)) for k in range(repeats)]
    return {"k": repeats, "size": size, "mean": float(np.mean(vals)), "std": float(np.std(vals)), "values": vals}


def distribution_record(
    fn: Any, n: int, *, alpha: float, n_boot: int, repeats: int, seed: int, what: str
) -> dict[str, Any]:
    """Record for a distribution metric ``fn(indices) -> float`` over ``n`` samples (see the module docstring)."""
    value = float(fn(np.arange(n)))
    rng = np.random.default_rng(seed)
    boot = [float(fn(rng.integers(0, n, size=n))) for _ in range(n_boot)] if n >= 2 else []
    ci = recentred_interval(boot, value, alpha)
    return {
        "value": value,
        "ci_low": ci["ci_low"],
        "ci_high": ci["ci_high"],
        "n": n,
        "available": True,
        "ci_method": f"{RECENTRED_METHOD} over generated {what}, reference fixed ({n_boot} resamples, "
        f"{100 * (1 - alpha):g}%)",
        "alpha": alpha,
        "n_boot": n_boot,
        "boot_mean": ci["boot_mean"],
        "ci_raw": ci["ci_raw"],
        "repeats": _repeats(n, repeats, fn),
    }


def inception_score_record(
    logits: torch.Tensor, *, splits: int, alpha: float, n_boot: int, repeats: int, seed: int
) -> dict[str, Any]:
    """Inception Score of logits ``(N, K)`` with ``splits`` chunks, bootstrap interval and disjoint repeats.

    ``value`` is the IS on all samples (mean over ``splits`` chunks; TGANv2: one chunk); ``split_std`` the std over
    those chunks (0 for one chunk).
    """
    probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1)

    def fn(idx: np.ndarray) -> float:
        return inception_score(
            probs[torch.from_numpy(np.asarray(idx))], splits=min(splits, len(idx)), from_logits=False
        )[0]

    rec = distribution_record(fn, probs.shape[0], alpha=alpha, n_boot=n_boot, repeats=repeats, seed=seed, what="videos")
    rec["splits"] = splits
    rec["split_std"] = inception_score(probs, splits=splits, from_logits=False)[1]
    rec["higher_is_better"] = True
    return rec


def frechet_record(
    mu_real: torch.Tensor,
    sigma_real: torch.Tensor,
    features: torch.Tensor,
    *,
    alpha: float,
    n_boot: int,
    repeats: int,
    seed: int,
) -> dict[str, Any]:
    """Fréchet distance of generated ``features`` ``(N, D)`` / ``(N, F, D)`` to real statistics, with intervals."""
    fb = FrechetBootstrap(mu_real, sigma_real, features)
    rec = distribution_record(fb.value, fb.n, alpha=alpha, n_boot=n_boot, repeats=repeats, seed=seed, what="videos")
    rec["feature_dim"] = fb.d
    rec["frames_per_video"] = fb.frames
    rec["higher_is_better"] = False
    return rec
