"""Shape handling shared by the per-frame metrics: videos ``(B, T, C, H, W)``, images ``(N, C, H, W)``."""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["Reduction", "as_videos", "reduce_frames"]

Reduction = Literal["mean", "none", "frames"]


def as_videos(pred: torch.Tensor, target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check shapes; images ``(N, C, H, W)`` become one-frame videos ``(N, 1, C, H, W)``."""
    if target is not None and pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.ndim == 4:
        return pred.unsqueeze(1), None if target is None else target.unsqueeze(1)
    if pred.ndim == 5:
        return pred, target
    raise ValueError(f"expected (B, T, C, H, W) videos or (N, C, H, W) images, got shape {tuple(pred.shape)}")


def reduce_frames(per_frame: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Reduce per-frame values ``(B, T)``: ``"frames"`` -> ``(B, T)``, ``"none"`` -> ``(B,)``, ``"mean"`` -> ``()``."""
    if reduction == "frames":
        return per_frame
    per_sample = per_frame.mean(dim=1)
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"unknown reduction {reduction!r}; valid: 'mean', 'none', 'frames'")
