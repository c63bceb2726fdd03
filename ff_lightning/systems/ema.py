"""Exponential moving average of a list of parameters (evaluation swaps the averages in and back out)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """``shadow = decay * shadow + (1 - decay) * param`` after every optimiser step."""

    def __init__(self, params: Sequence[nn.Parameter], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]
        self._backup: list[torch.Tensor] | None = None

    def _follow(self, params: Sequence[nn.Parameter]) -> None:
        """Keep each average on its parameter's device: a shadow restored from a checkpoint is on the device it was
        saved from (or the CPU) until the model has been moved (resuming on another device, another DDP rank)."""
        self.shadow = [s if s.device == p.device else s.to(p.device) for s, p in zip(self.shadow, params, strict=True)]

    @torch.no_grad()
    def update(self, params: Sequence[nn.Parameter]) -> None:
        self._follow(params)
        for s, p in zip(self.shadow, params, strict=True):
            s.lerp_(p.detach().to(s.dtype), 1.0 - self.decay)

    @torch.no_grad()
    def swap_in(self, params: Sequence[nn.Parameter]) -> None:
        self._follow(params)
        self._backup = [p.detach().clone() for p in params]
        for s, p in zip(self.shadow, params, strict=True):
            p.copy_(s)

    @torch.no_grad()
    def swap_out(self, params: Sequence[nn.Parameter]) -> None:
        if self._backup is None:
            return
        for b, p in zip(self._backup, params, strict=True):
            p.copy_(b)
        self._backup = None

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.decay = float(state["decay"])  # type: ignore[arg-type]
        self.shadow = list(state["shadow"])  # type: ignore[arg-type]
