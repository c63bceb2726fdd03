"""Frame stacks to model input: resize (shorter side covers the target), crop, scale to [-1, 1].

The whole clip is resized in one ``F.interpolate`` call (bilinear, antialiased), so every frame gets the same crop.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["resize_crop", "to_model_range", "frames_to_clip"]


def resize_crop(
    clip: torch.Tensor, size: tuple[int, int], *, random_crop: bool = False, rng: np.random.Generator | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize ``clip`` ``(T, C, h, w)`` float so that it covers ``size = (H, W)``, then crop to ``(T, C, H, W)``.

    The scale is ``max(H / h, W / w)`` (the shorter side, relative to the target aspect, fits exactly). The crop is
    centred, or uniformly random with ``rng`` when ``random_crop``. Returns the clip and the crop's ``(top, left)`` in
    resized coordinates.
    """
    out_h, out_w = int(size[0]), int(size[1])
    h, w = int(clip.shape[-2]), int(clip.shape[-1])
    scale = max(out_h / h, out_w / w)
    new_h, new_w = max(out_h, round(h * scale)), max(out_w, round(w * scale))
    if (new_h, new_w) != (h, w):
        clip = F.interpolate(clip, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    if random_crop:
        if rng is None:
            raise ValueError("random_crop needs rng")
        top, left = int(rng.integers(0, new_h - out_h + 1)), int(rng.integers(0, new_w - out_w + 1))
    else:
        top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return clip[..., top : top + out_h, left : left + out_w], (top, left)


def to_model_range(clip: torch.Tensor) -> torch.Tensor:
    """Map values in [0, 255] to float32 in [-1, 1] (clamped: antialiasing may overshoot)."""
    return (clip.float() / 127.5 - 1.0).clamp_(-1.0, 1.0)


def frames_to_clip(
    frames: np.ndarray, size: tuple[int, int], *, random_crop: bool = False, rng: np.random.Generator | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(T, h, w, 3)`` uint8 frames to a ``(T, 3, H, W)`` float32 clip in [-1, 1]; also returns the crop origin."""
    clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    clip, origin = resize_crop(clip, size, random_crop=random_crop, rng=rng)
    return to_model_range(clip).contiguous(), origin
