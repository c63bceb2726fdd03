"""Distribution-level metrics on evaluator outputs: Fréchet distance (FID/FVD) and Inception Score.

Everything is computed in float64. The matrix square root is taken through symmetric eigendecompositions, never
``scipy.linalg.sqrtm`` of the non-symmetric product ``S1 S2``:

    FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr( sqrt( sqrt(S1) S2 sqrt(S1) ) )

``sqrt(S1)`` is the PSD square root of ``S1`` and ``sqrt(S1) S2 sqrt(S1)`` is symmetric PSD, so its trace-sqrt is the
sum of the square roots of its eigenvalues. This equals ``tr(sqrtm(S1 S2))`` (same eigenvalues) without the complex
parts and instability of the general ``sqrtm``.

Eigenvalues at or below the numerical-rank threshold ``D * eps * max|lambda|`` (the ``numpy.linalg.matrix_rank``
tolerance), negative round-off included, are set to 0 before the square root. Without this, the null space of a
rank-deficient covariance (fewer samples than feature dimensions, common for FVD) contributes ``sqrt(1e-14)``-sized
noise per eigenvalue, about 1e-5 in total for 128-d features from 40 samples.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "feature_statistics",
    "frechet_distance",
    "inception_score",
    "psd_sqrt",
    "statistics_from_sums",
]


def _f64(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64)
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def _drop_tiny(w: torch.Tensor) -> torch.Tensor:
    """Zero eigenvalues at or below ``D * eps * max|w|`` (negative round-off included)."""
    tol = w.numel() * torch.finfo(w.dtype).eps * w.abs().max()
    return torch.where(w > tol, w, torch.zeros_like(w))


def psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric PSD matrix ``(D, D)`` via ``eigh`` (round-off eigenvalues -> 0, see module doc)."""
    w, v = torch.linalg.eigh(0.5 * (s + s.T))
    return (v * _drop_tiny(w).sqrt()) @ v.T


def frechet_distance(
    mu1: torch.Tensor | np.ndarray,
    sigma1: torch.Tensor | np.ndarray,
    mu2: torch.Tensor | np.ndarray,
    sigma2: torch.Tensor | np.ndarray,
) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``; means ``(D,)``, covariances ``(D, D)``.

    Float64 throughout (see the module docstring for the square-root route). The result is clamped at 0 (round-off
    can otherwise give values like -1e-12 for identical statistics).
    """
    m1, m2, s1, s2 = _f64(mu1).reshape(-1), _f64(mu2).reshape(-1), _f64(sigma1), _f64(sigma2)
    d = m1.numel()
    if m2.numel() != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu1 {tuple(m1.shape)}, mu2 {tuple(m2.shape)}, sigma1 {tuple(s1.shape)}, "
            f"sigma2 {tuple(s2.shape)}"
        )
    root1 = psd_sqrt(s1)
    inner = root1 @ (0.5 * (s2 + s2.T)) @ root1
    eig = _drop_tiny(torch.linalg.eigvalsh(0.5 * (inner + inner.T)))
    diff = m1 - m2
    fd = diff @ diff + torch.trace(s1) + torch.trace(s2) - 2.0 * eig.sqrt().sum()
    return max(float(fd), 0.0)


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (``ddof=1``, as ``np.cov(rowvar=False)``) of ``(N, D)``."""
    x = _f64(features)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need features (N >= 2, D), got shape {tuple(x.shape)}")
    mu = x.mean(dim=0)
    xc = x - mu
    return mu, (xc.T @ xc) / (x.shape[0] - 1)


def statistics_from_sums(
    n: int | torch.Tensor, total: torch.Tensor, outer: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance from running sums: ``n``, ``sum x`` ``(D,)`` and ``sum x x^T`` ``(D, D)``."""
    n = int(n)
    if n < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {n}")
    total, outer = _f64(total), _f64(outer)
    mu = total / n
    sigma = (outer - n * torch.outer(mu, mu)) / (n - 1)
    return mu, 0.5 * (sigma + sigma.T)


def _looks_like_probs(x: torch.Tensor) -> bool:
    return bool((x >= 0).all()) and bool(torch.allclose(x.sum(dim=1), torch.ones_like(x[:, 0]), atol=1e-3))


def inception_score(
    logits_or_probs: torch.Tensor | np.ndarray, splits: int = 10, from_logits: bool | None = None
) -> tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` over ``splits`` consecutive chunks; returns ``(mean, std)``.

    Args:
        logits_or_probs: ``(N, K)`` classifier logits or class probabilities.
        splits: number of consecutive chunks ``[i N // splits, (i + 1) N // splits)`` (no shuffling). Each chunk's
            marginal ``p(y)`` is its mean of ``p(y|x)``. 10 is the image-IS convention; the TGANv2 UCF-101 video IS
            uses ``splits=1`` on 2048 samples and repeats the sampling 10 times.
        from_logits: whether the input holds logits (softmax applied in float64). ``None`` guesses: rows that are
            non-negative and sum to 1 are taken as probabilities.

    The standard deviation is the population one (``ddof=0``) over splits, as in the reference implementations.
    Terms with ``p(y|x) = 0`` contribute 0 (``xlogy``), so no epsilon is added.
    """
    x = _f64(logits_or_probs)
    if x.ndim != 2:
        raise ValueError(f"expected (N, K) logits or probabilities, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if splits < 1 or n < splits:
        raise ValueError(f"need 1 <= splits <= N, got splits={splits}, N={n}")
    if from_logits is None:
        from_logits = not _looks_like_probs(x)
    probs = torch.softmax(x, dim=1) if from_logits else x / x.sum(dim=1, keepdim=True)
    scores = []
    for i in range(splits):
        part = probs[i * n // splits : (i + 1) * n // splits]
        marginal = part.mean(dim=0, keepdim=True)
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)).sum(dim=1)
        scores.append(torch.exp(kl.mean()))
    s = torch.stack(scores)
    std = float(s.std(unbiased=False)) if splits > 1 else 0.0
    return float(s.mean()), std
