"""Caption-aware motion augmentation: mirror or reverse a clip and swap the direction words of its caption.

A clip captioned ``"a red circle moving left slowly"`` played backwards shows a red circle moving right; mirrored
left-right it also moves right. Both give the model the same content with the opposite direction word, so the only
way to tell the two apart is the word: the augmentation that makes a text-to-video model bind a direction word to
the direction of motion (the shapes classifier of ``ff_lightning.evaluation.shapes_classifier`` is trained with
the same pair of transforms).

Only clips whose caption names a direction (``left``, ``right``, ``up``, ``down``, whole words, any case) are
transformed; others are returned as they are, so the option is safe on captions of any kind. Data option
``data.motion_augment`` (training only): ``none`` (default), ``flip`` (mirror with probability 1/2), ``reverse``
(play backwards with probability 1/2) or ``flip_reverse`` (both, independently).
"""

from __future__ import annotations

import re

import numpy as np
import torch

__all__ = ["MOTION_AUGMENTS", "MIRROR_SWAP", "REVERSE_SWAP", "swap_words", "names_direction", "augment_motion"]

#: valid values of ``data.motion_augment``
MOTION_AUGMENTS: tuple[str, ...] = ("none", "flip", "reverse", "flip_reverse")
#: direction words of a clip mirrored left-right
MIRROR_SWAP: dict[str, str] = {"left": "right", "right": "left"}
#: direction words of a clip played backwards
REVERSE_SWAP: dict[str, str] = {"left": "right", "right": "left", "up": "down", "down": "up"}
_WORDS = re.compile(r"\b(left|right|up|down)\b", re.IGNORECASE)


def names_direction(caption: str) -> bool:
    """Whether ``caption`` has a direction word (``left``, ``right``, ``up``, ``down``)."""
    return _WORDS.search(caption) is not None


def swap_words(caption: str, mapping: dict[str, str]) -> str:
    """Replace whole words of ``caption`` by ``mapping`` (all at once, so left <-> right swaps; case kept)."""

    def sub(m: re.Match[str]) -> str:
        word = m.group(0)
        new = mapping.get(word.lower())
        if new is None:
            return word
        return new.capitalize() if word[0].isupper() else new

    return _WORDS.sub(sub, caption)


def augment_motion(
    video: torch.Tensor, caption: str, mode: str, rng: np.random.Generator
) -> tuple[torch.Tensor, str, dict[str, bool]]:
    """Mirror and/or reverse ``video`` ``(T, C, H, W)`` with probability 1/2 each (as ``mode`` allows) and swap the
    caption's direction words to match. Two numbers are drawn from ``rng`` whatever the caption, so the random
    stream does not depend on it. Returns ``(video, caption, {"flipped": ..., "reversed": ...})``."""
    if mode not in MOTION_AUGMENTS:
        raise ValueError(f"unknown motion_augment {mode!r}; valid choices: {', '.join(MOTION_AUGMENTS)}")
    draws = rng.random(2) if mode != "none" else np.ones(2)
    applies = names_direction(caption)
    flip = applies and mode in ("flip", "flip_reverse") and bool(draws[0] < 0.5)
    reverse = applies and mode in ("reverse", "flip_reverse") and bool(draws[1] < 0.5)
    if flip:
        video, caption = video.flip(-1), swap_words(caption, MIRROR_SWAP)  # (T, C, H, W), W mirrored
    if reverse:
        video, caption = video.flip(0), swap_words(caption, REVERSE_SWAP)  # (T, C, H, W), T backwards
    return video.contiguous(), caption, {"flipped": flip, "reversed": reverse}
