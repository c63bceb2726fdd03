"""Which source frames a clip uses, and the per-sample random generators that choose them.

Randomness never comes from global state: :func:`sample_rng` derives a generator from ``(seed, epoch, index, salt)``,
so a sample is the same whichever worker process loads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["ClipPlan", "sample_rng", "clip_offsets", "plan_clip", "frames_needed"]

_MASK64 = (1 << 64) - 1


def sample_rng(seed: int, epoch: int, index: int, salt: int = 0) -> np.random.Generator:
    """A numpy generator determined by ``(seed, epoch, index, salt)`` alone."""
    return np.random.default_rng(np.random.SeedSequence([seed & _MASK64, epoch & _MASK64, index & _MASK64, salt]))


@dataclass(frozen=True)
class ClipPlan:
    """Source frame ``indices`` (0-based, length ``num_frames``) starting at ``start``; ``step`` source frames apart
    (fractional when resampling to a target fps, which is then ``fps``)."""

    indices: tuple[int, ...]
    start: int
    step: float
    fps: float | None
    stride: int | None


def clip_offsets(num_frames: int, step: float) -> np.ndarray:
    """Offsets ``floor(i * step + 0.5)`` of the ``num_frames`` frames from the clip start, ``(num_frames,)`` int64."""
    return np.floor(np.arange(num_frames, dtype=np.float64) * step + 0.5 + 1e-9).astype(np.int64)


def plan_clip(
    num_available: int,
    num_frames: int,
    *,
    stride: int = 1,
    fps: float | None = None,
    source_fps: float | None = None,
    rng: np.random.Generator | None = None,
    start: str = "center",
    min_frames: int = 0,
) -> ClipPlan | None:
    """Choose ``num_frames`` frame indices out of ``num_available``, or ``None`` if the clip is too short.

    With ``fps`` set, frames are ``source_fps / fps`` source frames apart (``stride`` is ignored); otherwise ``stride``
    apart. ``start`` is ``"random"`` (uses ``rng``), ``"center"`` or ``"first"``.
    """
    if fps is not None:
        if not source_fps or not math.isfinite(source_fps) or source_fps <= 0:
            raise ValueError("target fps sampling needs the source frame rate")
        step, stride_used, fps_used = float(source_fps) / float(fps), None, float(fps)
    else:
        step, stride_used, fps_used = float(stride), int(stride), None
    offsets = clip_offsets(num_frames, step)
    span = int(offsets[-1]) + 1
    if num_available < max(span, min_frames):
        return None
    max_start = num_available - span
    if start == "random":
        if rng is None:
            raise ValueError("a random start needs rng")
        first = int(rng.integers(0, max_start + 1))
    elif start == "center":
        first = max_start // 2
    elif start == "first":
        first = 0
    else:
        raise ValueError(f"start must be 'random', 'center' or 'first', got {start!r}")
    return ClipPlan(tuple(int(first + o) for o in offsets), first, step, fps_used, stride_used)


def frames_needed(
    num_frames: int, *, stride: int = 1, fps: float | None = None, source_fps: float | None = None
) -> int:
    """Source frames a clip spans (``1 + last offset``)."""
    step = float(source_fps) / float(fps) if fps is not None and source_fps else float(stride)
    return int(clip_offsets(num_frames, step)[-1]) + 1
