"""What the denoiser predicts, and conversions between the three views of one noisy sample.

With ``a = sqrt(alpha_bar_t)`` and ``s = sqrt(1 - alpha_bar_t)`` (so ``a^2 + s^2 = 1``):

- forward process: ``x_t = a * x0 + s * eps``;
- v (Salimans & Ho 2022): ``v = a * eps - s * x0``, hence ``x0 = a * x_t - s * v`` and ``eps = s * x_t + a * v``;
- from eps: ``x0 = (x_t - s * eps) / a``; from x0: ``eps = (x_t - a * x0) / s``.

Every function takes ``alpha_bar`` per row, ``(N,)`` (or a scalar), and broadcasts it over the remaining axes of
``(N, ...)`` tensors (frames of videos folded as ``(b t) c h w`` are rows like images). Computations run in the
dtype of the data; ``alpha_bar`` is cast to it.

Kandinsky 3 and the keyframe model predict eps; the interpolation model predicts v.
"""

from __future__ import annotations

import torch

__all__ = [
    "PREDICTIONS",
    "check_prediction",
    "broadcast_rows",
    "signal_noise",
    "x0_from_eps",
    "eps_from_x0",
    "v_from_x0_eps",
    "x0_from_v",
    "eps_from_v",
    "prediction_target",
    "x0_eps_from_prediction",
]

#: the supported model outputs: ``eps`` (noise) and ``v`` (velocity)
PREDICTIONS: tuple[str, ...] = ("eps", "v")


def check_prediction(kind: str) -> str:
    """``kind`` if it is one of :data:`PREDICTIONS`, else a ``ValueError`` naming the valid ones."""
    if kind not in PREDICTIONS:
        raise ValueError(f"unknown prediction {kind!r}; valid choices: {', '.join(PREDICTIONS)}")
    return kind


def broadcast_rows(values: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Per-row values ``(N,)`` (or a scalar) -> ``(N, 1, ..., 1)`` in ``like``'s dtype and device."""
    v = torch.as_tensor(values, device=like.device).to(like.dtype)
    if v.ndim == 0:
        return v
    if v.shape[0] != like.shape[0]:
        raise ValueError(f"{v.shape[0]} per-row values for a batch of {like.shape[0]} rows")
    return v.reshape(v.shape[0], *([1] * (like.ndim - 1)))


def signal_noise(alpha_bar: torch.Tensor | float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, s) = (sqrt(alpha_bar), sqrt(1 - alpha_bar))`` broadcast to ``like`` (computed in float64 first)."""
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
    return broadcast_rows(ab.sqrt(), like), broadcast_rows((1.0 - ab).sqrt(), like)


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """``x0 = (x_t - s * eps) / a``; all tensors ``(N, ...)``."""
    a, s = signal_noise(alpha_bar, x_t)
    return (x_t - s * eps) / a


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """``eps = (x_t - a * x0) / s``; all tensors ``(N, ...)``."""
    a, s = signal_noise(alpha_bar, x_t)
    return (x_t - a * x0) / s


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """``v = a * eps - s * x0``; all tensors ``(N, ...)``."""
    a, s = signal_noise(alpha_bar, x0)
    return a * eps - s * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """``x0 = a * x_t - s * v``; all tensors ``(N, ...)``."""
    a, s = signal_noise(alpha_bar, x_t)
    return a * x_t - s * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """``eps = s * x_t + a * v``; all tensors ``(N, ...)``."""
    a, s = signal_noise(alpha_bar, x_t)
    return s * x_t + a * v


def prediction_target(kind: str, x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """The regression target of a ``kind`` model for clean ``x0`` noised with ``eps``: ``eps`` or ``v``."""
    if check_prediction(kind) == "eps":
        return eps
    return v_from_x0_eps(x0, eps, alpha_bar)


def x0_eps_from_prediction(
    kind: str, x_t: torch.Tensor, output: torch.Tensor, alpha_bar: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A model's ``output`` (``kind`` = eps or v) at ``x_t`` -> its implied ``(x0, eps)``, each ``(N, ...)``."""
    if check_prediction(kind) == "eps":
        return x0_from_eps(x_t, output, alpha_bar), output
    return x0_from_v(x_t, output, alpha_bar), eps_from_v(x_t, output, alpha_bar)
