"""Samplers: the release's ancestral DDPM sampler with dynamic thresholding, and DDIM.

A :class:`SamplingSchedule` is the list of sampling steps: ``alphas_cumprod[i]`` and the time value fed to the model
at step ``i`` (step 0 is the least noisy). Three spacings (:data:`SPACINGS`, :meth:`SamplingSchedule.build`):

- ``trailing`` (:meth:`SamplingSchedule.trailing`, the default): the training schedule's steps
  ``(i + 1) * N / n - 1``, the model fed that step index. Its noise levels are the release's (``alpha_bar((i + 1) /
  n)`` of the cosine schedule, up to the ``max_beta`` clip of the last step), and consistent with training: a model
  that predicts exactly what it was trained on leads the sampler to the data at any ``n``.
- ``subsample`` (:meth:`SamplingSchedule.subsample`): ``n`` steps of the training schedule evenly spaced over
  ``[0, N - 1]`` (both ends), the model fed the step index (consistent with training too).
- ``release`` (:meth:`SamplingSchedule.release`, Kandinsky 3 / Kandinsky Video, kept for fidelity): a cosine
  schedule *built for* ``n`` steps, the model fed ``i * (N // n)``. Its ``alphas_cumprod[i] = alpha_bar((i + 1) /
  n)`` is the training schedule's value at step ``(i + 1) * N / n - 1``, not at the time value fed: the model is told
  one sampling interval less noise than ``x`` has. At the release's ``n = 50`` the offset is 20 training steps; at
  ``n = 10`` it is 100, and even an exact denoiser misses the data (tests/test_diffusion_samplers.py measures it).

Each step goes from ``x_t`` (step ``i``) to the previous step ``i - 1`` (``alpha_bar_prev = 1`` after step 0):

- the model output (eps or v) is turned into ``x0`` and optionally dynamically thresholded (Imagen; the release
  with percentile ``p = 0.98``): per sample ``s = max(quantile_p(|x0|), 1)``, ``x0 = clamp(x0, -s, s) / s``; eps is
  then recomputed from the thresholded x0;
- ``ddpm``: ancestral step from the posterior ``q(x_prev | x_t, x0)``: mean
  ``sqrt(ab_prev) beta / (1 - ab) * x0 + sqrt(1 - beta) (1 - ab_prev) / (1 - ab) * x_t``, variance
  ``beta (1 - ab_prev) / (1 - ab)`` with ``beta = 1 - ab / ab_prev``;
- ``ddim`` (Song et al.): ``x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z`` with
  ``sigma = eta * sqrt((1 - ab_prev) / (1 - ab) * beta)``; ``eta = 0`` is deterministic given ``x_T``, ``eta = 1``
  is the DDPM step.

The last step (to ``alpha_bar_prev = 1``) returns ``x0`` without noise in both. Every random draw (``x_T`` and the
step noise) comes from the ``generator`` in a fixed order, so a seed reproduces a sample exactly.

Thresholding groups: latents of a video are ``(b t) c h w``; ``threshold_group = t`` takes one quantile over the
whole video instead of one per frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange, repeat

from ff_lightning.diffusion.guidance import Denoiser
from ff_lightning.diffusion.parameterization import (
    broadcast_rows,
    check_prediction,
    eps_from_x0,
    x0_eps_from_prediction,
)
from ff_lightning.diffusion.schedule import COSINE_OFFSET, NoiseSchedule, cosine_betas

__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "SamplingSchedule",
    "quantile_rows",
    "dynamic_threshold",
    "ddpm_step",
    "ddim_step",
    "sample",
]

#: sampler names accepted by :func:`sample`
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim")
#: timestep spacings of :meth:`SamplingSchedule.build` (the first is the default)
SPACINGS: tuple[str, ...] = ("subsample", "trailing", "release")


@dataclass(frozen=True)
class SamplingSchedule:
    """Sampling steps: ``alphas_cumprod`` ``(n,)`` float64 (increasing noise with ``i``) and ``model_times`` ``(n,)``
    the time value given to the model at step ``i``."""

    alphas_cumprod: torch.Tensor
    model_times: torch.Tensor

    def __post_init__(self) -> None:
        if self.alphas_cumprod.ndim != 1 or self.alphas_cumprod.shape != self.model_times.shape:
            raise ValueError("alphas_cumprod and model_times must be 1-D of the same length")
        if bool((self.alphas_cumprod[1:] >= self.alphas_cumprod[:-1]).any()):
            raise ValueError("alphas_cumprod must decrease strictly with the step index")

    @property
    def num_steps(self) -> int:
        return int(self.alphas_cumprod.numel())

    @classmethod
    def release(cls, num_steps: int = 50, train_steps: int = 1000, offset: float = COSINE_OFFSET) -> SamplingSchedule:
        """The release's: a cosine schedule built for ``num_steps``, time values ``i * (train_steps // num_steps)``."""
        if num_steps > train_steps:
            raise ValueError(f"{num_steps} sampling steps exceed the {train_steps} training steps")
        ab = torch.cumprod(1.0 - cosine_betas(num_steps, offset), dim=0)
        times = torch.arange(num_steps, dtype=torch.float64) * (train_steps // num_steps)
        return cls(ab, times)

    @classmethod
    def subsample(cls, schedule: NoiseSchedule, num_steps: int) -> SamplingSchedule:
        """``num_steps`` steps of ``schedule`` evenly spaced over ``[0, N - 1]`` (both ends included)."""
        if not 1 <= num_steps <= schedule.num_steps:
            raise ValueError(f"num_steps must be in [1, {schedule.num_steps}], got {num_steps}")
        steps = torch.linspace(0, schedule.num_steps - 1, num_steps, dtype=torch.float64).round().long()
        if num_steps == 1:
            steps = torch.tensor([schedule.num_steps - 1])
        return cls(schedule.alphas_cumprod[steps], steps.to(torch.float64))

    @classmethod
    def trailing(cls, schedule: NoiseSchedule, num_steps: int) -> SamplingSchedule:
        """Steps ``(i + 1) * N / num_steps - 1`` of ``schedule`` (``N - 1`` last), the model fed the step index."""
        if not 1 <= num_steps <= schedule.num_steps:
            raise ValueError(f"num_steps must be in [1, {schedule.num_steps}], got {num_steps}")
        n = schedule.num_steps
        steps = torch.tensor([round((i + 1) * n / num_steps) - 1 for i in range(num_steps)], dtype=torch.long)
        return cls(schedule.alphas_cumprod[steps], steps.to(torch.float64))

    @classmethod
    def build(cls, spacing: str, num_steps: int, schedule: NoiseSchedule) -> SamplingSchedule:
        """``spacing`` (:data:`SPACINGS`): ``trailing`` / ``subsample`` (steps of ``schedule``) or ``release``
        (a cosine schedule built for ``num_steps``)."""
        if spacing == "trailing":
            return cls.trailing(schedule, num_steps)
        if spacing == "release":
            return cls.release(num_steps, schedule.num_steps)
        if spacing == "subsample":
            return cls.subsample(schedule, num_steps)
        raise ValueError(f"unknown sampling spacing {spacing!r}; valid choices: {', '.join(SPACINGS)}")

    def alpha_bar_prev(self, i: int) -> float:
        """``alphas_cumprod[i - 1]``, 1 before the first step."""
        return 1.0 if i == 0 else float(self.alphas_cumprod[i - 1])


# ------------------------------------------------------------------------------------------------- thresholding
def quantile_rows(values: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolation quantile of each row of ``values`` ``(B, n)`` -> ``(B,)`` (as ``torch.quantile``, but
    through a sort, so without its input-size limit)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {q}")
    srt = values.sort(dim=1).values
    pos = q * (srt.shape[1] - 1)
    lo = int(pos)
    hi = min(lo + 1, srt.shape[1] - 1)
    frac = pos - lo
    return srt[:, lo] * (1.0 - frac) + srt[:, hi] * frac


def dynamic_threshold(
    x0: torch.Tensor, percentile: float, group: int = 1, min_scale: float = 1.0, max_scale: float | None = None
) -> torch.Tensor:
    """Imagen dynamic thresholding: ``s = max(quantile_p(|x0|), min_scale)`` per sample, ``clamp(x0, -s, s) / s``;
    ``max_scale`` also caps ``s`` (diffusers' ``sample_max_value``: at 1, a plain clip of ``x0`` to [-1, 1]).

    ``x0``: ``(N, ...)``; a sample is ``group`` consecutive rows (``N`` divisible by ``group``; e.g. the frames of a
    video folded as ``(b t)``). Returns ``(N, ...)``.
    """
    if x0.shape[0] % group:
        raise ValueError(f"{x0.shape[0]} rows are not a multiple of threshold group {group}")
    flat = rearrange(x0.abs().float(), "(b g) ... -> b (g ...)", g=group)  # one row per sample
    s = quantile_rows(flat, percentile).clamp(min=min_scale, max=max_scale)  # b
    s = repeat(s, "b -> (b g)", g=group)  # b -> (b g): one scale per row
    s = broadcast_rows(s, x0)
    return torch.maximum(torch.minimum(x0, s), -s) / s


# ------------------------------------------------------------------------------------------------------ steps
def ddpm_step(
    x_t: torch.Tensor, x0: torch.Tensor, alpha_bar: float, alpha_bar_prev: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """One ancestral step: a draw from ``q(x_prev | x_t, x0)`` (its mean when ``noise`` is None or at the last step).

    ``x_t``, ``x0``, ``noise``: ``(N, ...)``; ``alpha_bar``, ``alpha_bar_prev`` the cumulative alphas of this step
    and the previous one (1 after the first).
    """
    beta = 1.0 - alpha_bar / alpha_bar_prev
    coef_x0 = alpha_bar_prev**0.5 * beta / (1.0 - alpha_bar)
    coef_xt = (1.0 - beta) ** 0.5 * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    mean = coef_x0 * x0 + coef_xt * x_t
    var = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    if noise is None or var <= 0.0:
        return mean
    return mean + var**0.5 * noise


def ddim_step(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar: float,
    alpha_bar_prev: float,
    eta: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """One DDIM step with stochasticity ``eta`` (``noise`` needed when ``eta > 0``); tensors ``(N, ...)``."""
    sigma = eta * ((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev)) ** 0.5
    direction = max(1.0 - alpha_bar_prev - sigma**2, 0.0) ** 0.5
    out = alpha_bar_prev**0.5 * x0 + direction * eps
    if sigma > 0.0:
        if noise is None:
            raise ValueError("a DDIM step with eta > 0 needs noise")
        out = out + sigma * noise
    return out


# ---------------------------------------------------------------------------------------------------- the loop
def _randn(
    shape: Sequence[int], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


@torch.no_grad()
def sample(
    denoise: Denoiser,
    shape: Sequence[int],
    schedule: SamplingSchedule,
    *,
    method: str = "ddpm",
    prediction: str = "eps",
    eta: float = 0.0,
    threshold: float | None = 0.98,
    threshold_group: int = 1,
    threshold_max: float | None = None,
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Draw samples ``shape = (N, ...)`` by running ``denoise(x (N, ...), t (N,))`` over ``schedule`` backwards.

    - ``method``: ``ddpm`` (the release's ancestral sampler; ``eta`` ignored) or ``ddim`` (``eta`` in [0, 1]).
    - ``prediction``: what ``denoise`` returns, ``eps`` or ``v``.
    - ``threshold``: dynamic-thresholding percentile (None: x0 is not touched); ``threshold_group`` rows per sample;
      ``threshold_max`` caps the scale (:func:`dynamic_threshold`'s ``max_scale``).
    - ``generator``: source of every random draw (a fixed seed gives the same samples); ``x_T`` replaces the first.
    - ``progress``: a tqdm bar; ``callback(i, x_prev, x0)`` after every step.

    Returns the final ``x0`` ``(N, ...)`` in ``dtype``.
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; valid choices: {', '.join(SAMPLERS)}")
    check_prediction(prediction)
    if method == "ddim" and not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDIM eta must lie in [0, 1], got {eta}")
    dev = torch.device(device) if device is not None else (x_T.device if x_T is not None else torch.device("cpu"))
    x = _randn(shape, generator, dev, dtype) if x_T is None else x_T.to(device=dev, dtype=dtype)
    steps: Iterable[int] = range(schedule.num_steps - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, total=schedule.num_steps, desc=f"{method} sampling")
    for i in steps:
        ab, ab_prev = float(schedule.alphas_cumprod[i]), schedule.alpha_bar_prev(i)
        t = torch.full((x.shape[0],), float(schedule.model_times[i]), device=dev, dtype=dtype)
        out = denoise(x, t).to(dtype)
        x0, eps = x0_eps_from_prediction(prediction, x, out, ab)
        if threshold is not None:
            x0 = dynamic_threshold(x0, threshold, threshold_group, max_scale=threshold_max)
            eps = eps_from_x0(x, x0, ab)
        last = i == 0
        if method == "ddpm":
            noise = None if last else _randn(x.shape, generator, dev, dtype)
            x = ddpm_step(x, x0, ab, ab_prev, noise)
        else:
            noise = _randn(x.shape, generator, dev, dtype) if eta > 0 and not last else None
            x = ddim_step(x, x0, eps, ab, ab_prev, eta if not last else 0.0, noise)
        if callback is not None:
            callback(i, x, x0)
    return x
