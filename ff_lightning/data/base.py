"""The dataset base shared by every source: records, clip options, skip-and-replace of unusable clips.

A source lists :class:`ClipRecord` s (one per video or frame sequence) and implements :meth:`ClipDataset.read_frames`.
``dataset[i]`` (or ``dataset[(epoch, i)]``, as yielded by :class:`~ff_lightning.data.samplers.EpochSampler`) returns

- ``video``: ``(T, C, H, W)`` float32 in [-1, 1],
- ``caption``: str, ``label``: int (-1 if none),
- ``meta``: dict (``path``, ``start``, ``indices``, ``stride``, ``fps``, ``source_fps``, ``num_source_frames``, ...),
- ``skipped``: list[str], the paths found unusable while producing this sample.

A missing, corrupt or too-short clip raises :class:`~ff_lightning.data.video_io.ClipReadError` inside
:meth:`read_frames`; the dataset records its path and tries another record chosen deterministically from
``(seed, epoch, index)``. Only when ``max_attempts`` records in a row fail is :class:`NoUsableSamplesError` raised.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import Dataset

from .config import SPLITS, DataConfig
from .motion_words import augment_motion
from .sampling import ClipPlan, plan_clip, sample_rng
from .transforms import frames_to_clip
from .video_io import ClipReadError, probe_video, read_video_frames

__all__ = ["NoUsableSamplesError", "ClipRecord", "ClipOptions", "ClipDataset", "VideoFileDataset", "subsample"]

log = logging.getLogger(__name__)


class NoUsableSamplesError(RuntimeError):
    """A dataset with nothing to load: no records, or every attempt to load a sample failed."""


@dataclass(frozen=True, slots=True)
class ClipRecord:
    """One video (``path`` is a file) or frame sequence (``path`` is its folder, ``num_frames`` its image count).

    ``captions`` holds every caption when a video has several (``caption`` is the first); ``key`` is the source's id.
    """

    path: str
    caption: str = ""
    label: int = -1
    captions: tuple[str, ...] = ()
    num_frames: int = 0
    key: str = ""


@dataclass(frozen=True)
class ClipOptions:
    """How clips are sampled; ``train`` selects random start/crop/caption (when enabled) over deterministic ones."""

    num_frames: int = 8
    stride: int = 1
    fps: float | None = None
    size: tuple[int, int] = (64, 64)
    train: bool = False
    random_crop: bool = True
    random_start: bool = True
    eval_start: str = "center"
    caption_mode: str = "random"
    min_frames: int = 0
    seed: int = 0
    max_attempts: int = 16
    motion_augment: str = "none"

    @classmethod
    def from_config(cls, cfg: DataConfig, split: str) -> ClipOptions:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
        return cls(
            num_frames=cfg.num_frames,
            stride=cfg.stride,
            fps=cfg.fps,
            size=(int(cfg.size[0]), int(cfg.size[1])),
            train=split == "train",
            random_crop=cfg.random_crop,
            random_start=cfg.random_start,
            eval_start=cfg.eval_start,
            caption_mode=cfg.caption_mode,
            min_frames=cfg.min_frames,
            seed=cfg.seed,
            max_attempts=cfg.max_attempts,
            motion_augment=str(getattr(cfg, "motion_augment", "none")),
        )

    @property
    def start_mode(self) -> str:
        return "random" if self.train and self.random_start else self.eval_start


def subsample(records: list[ClipRecord], max_samples: int | None) -> list[ClipRecord]:
    """At most ``max_samples`` records, evenly spread over the list (so every class/folder stays represented)."""
    if max_samples is None or max_samples >= len(records):
        return records
    if max_samples <= 0:
        return []
    picks = np.unique(np.linspace(0, len(records) - 1, max_samples).round().astype(np.int64))
    return [records[int(i)] for i in picks]


class ClipDataset(Dataset, ABC):
    """Records plus clip sampling; subclasses list the records and read frames."""

    #: registry name of the source (for messages)
    source: ClassVar[str] = "clips"
    #: what the layout should contain (for the no-usable-samples message)
    expected: ClassVar[str] = "video clips"

    def __init__(
        self,
        records: list[ClipRecord],
        *,
        root: str | Path,
        split: str,
        options: ClipOptions,
        max_samples: int | None = None,
    ) -> None:
        self.root, self.split, self.options = Path(root), split, options
        self.records = subsample(list(records), max_samples)
        self.epoch = 0
        if not self.records:
            raise NoUsableSamplesError(f"{self.source}: no {split} samples under {self.root}; expected {self.expected}")

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (the :class:`EpochSampler` passes it with each index instead)."""
        self.epoch = int(epoch)

    @abstractmethod
    def read_frames(self, record: ClipRecord, rng: np.random.Generator) -> tuple[np.ndarray, ClipPlan, float, int]:
        """Load a clip of ``record``: ``(frames (T, h, w, 3) uint8, plan, source_fps, num_source_frames)``.

        Raises :class:`ClipReadError` for a missing, corrupt or too-short clip.
        """

    def plan(self, record_path: str, num_available: int, source_fps: float, rng: np.random.Generator) -> ClipPlan:
        """Frame indices for a clip of ``num_available`` frames; :class:`ClipReadError` if too short."""
        o = self.options
        try:
            plan = plan_clip(
                num_available,
                o.num_frames,
                stride=o.stride,
                fps=o.fps,
                source_fps=source_fps,
                rng=rng,
                start=o.start_mode,
                min_frames=o.min_frames,
            )
        except ValueError as e:
            raise ClipReadError(record_path, str(e)) from e
        if plan is None:
            raise ClipReadError(record_path, f"too short: {num_available} frames", num_frames=num_available)
        return plan

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (self.epoch, int(key))
        if not 0 <= index < len(self.records):
            raise IndexError(f"index {index} out of range for {len(self.records)} samples")
        pick_rng = sample_rng(self.options.seed, epoch, index, salt=1)
        skipped: list[str] = []
        reasons: list[str] = []
        candidate = index
        for attempt in range(max(1, self.options.max_attempts)):
            # no memory of earlier failures: whether a record fails may depend on the frames drawn, and a per-worker
            # cache would make the result depend on which worker loaded what before
            try:
                sample = self._load(
                    self.records[candidate], sample_rng(self.options.seed, epoch, index, salt=2 + attempt)
                )
            except ClipReadError as e:
                skipped.append(e.path)
                reasons.append(str(e))
                log.debug("skipping %s", e)
            else:
                sample["meta"].update(index=candidate, requested_index=index, epoch=epoch)
                sample["skipped"] = skipped
                return sample
            candidate = int(pick_rng.integers(0, len(self.records)))
        raise NoUsableSamplesError(
            f"{self.source}: no usable {self.split} sample under {self.root} after {len(skipped)} attempts "
            f"(expected {self.expected}); failures: {'; '.join(reasons[:3])}"
        )

    def _load(self, record: ClipRecord, rng: np.random.Generator) -> dict[str, Any]:
        o = self.options
        frames, plan, source_fps, n_src = self.read_frames(record, rng)
        video, (top, left) = frames_to_clip(frames, o.size, random_crop=o.train and o.random_crop, rng=rng)
        if record.captions and o.train and o.caption_mode == "random":
            caption = record.captions[int(rng.integers(0, len(record.captions)))]
        else:
            caption = record.caption or (record.captions[0] if record.captions else "")
        augmented: dict[str, bool] = {}
        if o.train and o.motion_augment != "none":
            video, caption, augmented = augment_motion(video, caption, o.motion_augment, rng)
        meta: dict[str, Any] = {
            "source": self.source,
            "split": self.split,
            "path": record.path,
            "key": record.key,
            "start": plan.start,
            "indices": list(plan.indices),
            "stride": plan.stride,
            "fps": plan.fps,
            "source_fps": source_fps,
            "num_source_frames": n_src,
            "crop": (top, left),
        }
        if record.captions:
            meta["captions"] = list(record.captions)
        if augmented:
            meta.update(augmented)
        return {"video": video, "caption": caption, "label": int(record.label), "meta": meta}


class VideoFileDataset(ClipDataset):
    """Records whose ``path`` is a video file decoded with PyAV (mp4, avi, ...)."""

    def __init__(self, records: list[ClipRecord], **kwargs: Any) -> None:
        super().__init__(records, **kwargs)
        self._counts: dict[str, tuple[int, float]] = {}  # path -> (frame count, fps), per process

    def read_frames(self, record: ClipRecord, rng: np.random.Generator) -> tuple[np.ndarray, ClipPlan, float, int]:
        path = record.path
        if path not in self._counts:
            info = probe_video(path)
            self._counts[path] = (info.num_frames, info.fps)
        n, fps = self._counts[path]
        state = rng.bit_generator.state  # replanning after a wrong header count must draw the same numbers
        plan = self.plan(path, n, fps, rng)
        try:
            return read_video_frames(path, plan.indices), plan, fps, n
        except ClipReadError as e:
            if e.num_frames is None or e.num_frames == n:
                raise
            # the container header overstated the frame count: plan again on the true count. The correction is not
            # cached, so the result depends on the file and the generator only (not on what this worker read before)
            rng.bit_generator.state = state
            plan = self.plan(path, e.num_frames, fps, rng)
            return read_video_frames(path, plan.indices), plan, fps, e.num_frames
