"""Typed data configuration shared by every training system.

:class:`DataConfig` is a plain dataclass so the lead's omegaconf schema can embed it (``OmegaConf.structured``): every
field has a default and only ``str``/``int``/``float``/``bool``/``Optional``/``list[int]``/``list[str]`` types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .motion_words import MOTION_AUGMENTS

__all__ = ["DataConfig", "SPLITS", "data_config_problems"]

#: The split names a dataset factory accepts. ``val`` and ``test`` both read the held-out split of a source.
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class DataConfig:
    """Which dataset to read, how to sample clips from it and how to batch them.

    Clip sampling: ``num_frames`` frames are taken ``stride`` source frames apart, or, when ``fps`` is set, at that
    frame rate (resampled from the container's rate; ``stride`` is then ignored). Frames are resized so the shorter
    side covers ``size = [H, W]`` and cropped to it (random crop and random start in training when ``random_crop`` /
    ``random_start``; centred crop and ``eval_start`` otherwise). Randomness is derived from ``(seed, epoch, index)``
    so batches do not depend on ``num_workers``.
    """

    # what to read
    source: str = "bundled_septuplet"
    root: str | None = None  # None: the bundled cache (FF_CACHE_DIR, else ~/.cache/ff_lightning)
    # annotations when not at the source's default place: the train CSV (webvid), MSRVTT_data.json (msrvtt), the
    # ucfTrainTestlist folder (ucf101) or the train list file (vimeo_septuplet)
    annotations: str | None = None
    val_annotations: str | None = None  # held-out CSV (webvid) or test list file (vimeo_septuplet)
    path_column: str | None = None  # CSV sources: column with the video path (default: "path" if present)
    video_dir: str | None = None  # directory of the videos when not the source's default (relative to root)
    split_index: int = 1  # UCF-101 train/test split 1..3
    val_fraction: float = 0.05  # CSV sources without val_annotations: held-out fraction (by hash of videoid)
    val_split: str = "test"  # what validation reads: "test" (the held-out split) or "train" (overfitting checks)
    frames_per_sequence: int | None = None  # Vimeo layout: images per sequence (None: detect from the first one)
    sequence_fps: float = 30.0  # Vimeo layout: frame rate of image sequences without a sequence_info.json
    caption_template: str = "a video of {}"  # UCF-101 prompt built from the class name split into words
    caption_mode: str = "random"  # several captions per video (MSR-VTT): "random" (seeded, train) or "first"
    # clip sampling
    num_frames: int = 8
    stride: int = 1
    fps: float | None = None
    size: list[int] = field(default_factory=lambda: [64, 64])  # (H, W)
    random_crop: bool = True  # train only
    random_start: bool = True  # train only
    eval_start: str = "center"  # "center" or "first"
    min_frames: int = 0  # clips with fewer source frames than this (or than the clip needs) are skipped
    # train only: mirror / play backwards clips whose caption names a direction, swapping the words to match
    # ("none", "flip", "reverse", "flip_reverse"; ff_lightning.data.motion_words)
    motion_augment: str = "none"
    # loading
    batch_size: int = 2
    val_batch_size: int | None = None  # None: batch_size
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    shuffle: bool = True
    drop_last: bool = True  # train only
    seed: int = 0
    max_samples: int | None = None  # cap the train dataset length (quick runs)
    max_val_samples: int | None = None  # cap the val/test dataset length (None: max_samples)
    max_attempts: int = 16  # replacement samples tried before a sample is declared unusable
    cache_dir: str | None = None  # bundled cache (None: FF_CACHE_DIR, else ~/.cache/ff_lightning)

    def __post_init__(self) -> None:
        problems = data_config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))


def data_config_problems(cfg: Any, prefix: str = "data.") -> list[str]:
    """Every out-of-range value of a data config (a :class:`DataConfig` or the ``data`` node of a composed config),
    one message each, naming the key, the allowed values and the value given. Types are not checked here."""
    problems: list[str] = []

    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            problems.append(f"{prefix}{key} must be {rule}, got {getattr(cfg, key)!r}")

    size = list(cfg.size)
    if len(size) != 2 or min((int(v) for v in size), default=0) < 1:
        problems.append(f"{prefix}size must be [H, W] with two positive values, got {size}")
    for key in ("num_frames", "stride", "batch_size", "max_attempts"):
        need(int(getattr(cfg, key)) >= 1, key, ">= 1")
    for key in ("val_batch_size", "max_samples", "max_val_samples", "frames_per_sequence"):
        need(getattr(cfg, key) is None or int(getattr(cfg, key)) >= 1, key, ">= 1 (or null)")
    need(int(cfg.num_workers) >= 0, "num_workers", ">= 0")
    need(int(cfg.min_frames) >= 0, "min_frames", ">= 0")
    need(0.0 <= float(cfg.val_fraction) <= 1.0, "val_fraction", "a fraction in [0, 1]")
    need(cfg.fps is None or float(cfg.fps) > 0, "fps", "positive (or null)")
    need(float(cfg.sequence_fps) > 0, "sequence_fps", "positive")
    need(cfg.eval_start in ("center", "first"), "eval_start", "'center' or 'first'")
    need(cfg.caption_mode in ("random", "first"), "caption_mode", "'random' or 'first'")
    need(cfg.val_split in ("test", "train"), "val_split", "'test' or 'train'")
    need(
        str(getattr(cfg, "motion_augment", "none")) in MOTION_AUGMENTS,
        "motion_augment",
        "one of " + ", ".join(repr(m) for m in MOTION_AUGMENTS),
    )
    need(cfg.split_index in (1, 2, 3), "split_index", "1, 2 or 3")
    return problems
