"""Discrete noise schedules: the cosine schedule (Nichol & Dhariwal 2021) of Kandinsky 3 / Kandinsky Video.

``alpha_bar(u) = f(u) / f(0)`` with ``f(u) = cos((u + s) / (1 + s) * pi / 2) ** 2``, ``s = 0.008``, ``u`` in [0, 1].
A schedule of ``N`` steps has ``beta_i = min(1 - alpha_bar((i + 1) / N) / alpha_bar(i / N), max_beta)`` and
``alphas_cumprod[i] = prod_{j <= i} (1 - beta_j)``; away from the ``max_beta`` clip this telescopes to
``alpha_bar((i + 1) / N)`` (only the last step is clipped for the default ``max_beta = 0.999``).

Training draws step indices ``t`` in ``[0, N)`` and feeds the model ``t`` itself as its time value. Sampling uses a
:class:`~ff_lightning.diffusion.samplers.SamplingSchedule` (the release's 50-step cosine schedule, or steps subsampled
from this one). Tables are kept in float64 on the CPU and cast to the data's dtype and device on use.
"""

from __future__ import annotations

import math

import torch

from ff_lightning.diffusion.parameterization import (
    prediction_target,
    signal_noise,
    x0_eps_from_prediction,
)

__all__ = ["cosine_alpha_bar", "cosine_betas", "NoiseSchedule"]

COSINE_OFFSET = 0.008
MAX_BETA = 0.999


def cosine_alpha_bar(u: torch.Tensor | float, offset: float = COSINE_OFFSET) -> torch.Tensor:
    """``alpha_bar(u) = f(u) / f(0)``, ``f(u) = cos((u + s) / (1 + s) * pi / 2) ** 2``; ``u`` in [0, 1] (float64)."""
    u = torch.as_tensor(u, dtype=torch.float64)
    f = torch.cos((u + offset) / (1 + offset) * math.pi / 2) ** 2
    f0 = math.cos(offset / (1 + offset) * math.pi / 2) ** 2
    return f / f0


def cosine_betas(num_steps: int, offset: float = COSINE_OFFSET, max_beta: float = MAX_BETA) -> torch.Tensor:
    """``(num_steps,)`` float64 betas of the cosine schedule, clipped at ``max_beta``."""
    if num_steps < 1:
        raise ValueError(f"a schedule needs at least one step, got {num_steps}")
    grid = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    ab = cosine_alpha_bar(grid, offset)
    return (1.0 - ab[1:] / ab[:-1]).clamp(max=max_beta)


class NoiseSchedule:
    """A discrete diffusion schedule of ``num_steps`` steps (default: cosine, 1000 steps).

    ``betas``, ``alphas_cumprod`` (float64, ``(num_steps,)``). Methods take step indices ``t`` ``(N,)`` long, one per
    row of ``(N, ...)`` data (frames of a video folded as ``(b t)`` carry their video's step).
    """

    def __init__(self, betas: torch.Tensor) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 1 or bool(((betas <= 0) | (betas >= 1)).any()):
            raise ValueError("betas must be a non-empty sequence in (0, 1)")
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    @classmethod
    def cosine(cls, num_steps: int = 1000, offset: float = COSINE_OFFSET, max_beta: float = MAX_BETA) -> NoiseSchedule:
        """The cosine schedule (Nichol & Dhariwal) of ``num_steps`` steps."""
        return cls(cosine_betas(num_steps, offset, max_beta))

    @property
    def num_steps(self) -> int:
        return int(self.betas.numel())

    def __repr__(self) -> str:
        return f"NoiseSchedule(num_steps={self.num_steps})"

    # ------------------------------------------------------------------------------------------------- lookups
    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """``alphas_cumprod[t]`` (float64, shape of ``t``); ``t`` long step indices in ``[0, num_steps)``."""
        t = torch.as_tensor(t).long().cpu()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_steps):
            raise IndexError(f"step indices must lie in [0, {self.num_steps}), got {t.min().item()}..{t.max().item()}")
        return self.alphas_cumprod[t]

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ``alpha_bar / (1 - alpha_bar)`` at ``t`` (float64)."""
        ab = self.alpha_bar(t)
        return ab / (1.0 - ab)

    def sample_timesteps(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """``(n,)`` step indices drawn uniformly from ``[0, num_steps)``."""
        gen_device = generator.device if generator is not None else "cpu"
        return torch.randint(0, self.num_steps, (n,), generator=generator, device=gen_device).to(device or gen_device)

    # ------------------------------------------------------------------------------------------ forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * noise``; ``x0``, ``noise`` ``(N, ...)``."""
        a, s = signal_noise(self.alpha_bar(t), x0)
        return a * x0 + s * noise

    def target(self, kind: str, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The training target of a ``kind`` (eps / v) model at ``t``: ``(N, ...)``."""
        return prediction_target(kind, x0, noise, self.alpha_bar(t))

    def x0_eps(
        self, kind: str, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A ``kind`` model's output at ``(x_t, t)`` -> implied ``(x0, eps)``, each ``(N, ...)``."""
        return x0_eps_from_prediction(kind, x_t, output, self.alpha_bar(t))
