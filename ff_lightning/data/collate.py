"""Batching of dataset samples into the batch dict every training system consumes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["collate_clips"]


def collate_clips(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples from :class:`~ff_lightning.data.base.ClipDataset` into a batch.

    Returns ``video`` ``(B, T, C, H, W)`` float32 in [-1, 1], ``caption`` list[str] (B), ``label`` int64 ``(B,)``
    (-1: none), ``meta`` list[dict] (B), and ``skipped`` list[str]: every path found unusable while producing the
    batch's samples (possibly empty; repeated paths are kept, so ``len`` is the number of skip events).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    return {
        "video": torch.stack([s["video"] for s in samples]),
        "caption": [s["caption"] for s in samples],
        "label": torch.tensor([int(s["label"]) for s in samples], dtype=torch.long),
        "meta": [s["meta"] for s in samples],
        "skipped": [p for s in samples for p in s.get("skipped", ())],
    }
