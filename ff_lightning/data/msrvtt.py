"""MSR-VTT: ``<root>/MSRVTT_data.json`` (``videos``: ``{video_id, split, ...}``; ``sentences``: ``{caption,
video_id, sen_id}``) and ``<root>/videos/videoNNNN.mp4`` (or ``video_dir``; ``videos/all``, ``TrainValVideo`` and
``TestVideo`` are also looked in).

One sample per video, carrying all its captions (ordered by ``sen_id``; ``meta["captions"]``). The caption is the first
one, or a seeded random one in training when ``caption_mode == "random"``. A video is in the test split when its
``split`` field says ``test``, or, without that field, when its number is 7010..9999; everything else is train.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .base import ClipOptions, ClipRecord, NoUsableSamplesError, VideoFileDataset
from .config import DataConfig

__all__ = ["MSRVTTDataset", "is_test_video"]

_DEFAULT_DIRS = ("videos", "videos/all", "TrainValVideo", "TestVideo")
_TEST_IDS = range(7010, 10000)


def is_test_video(video_id: str, split_field: str | None = None) -> bool:
    """Whether a video belongs to the MSR-VTT test split (its ``split`` field, else its number)."""
    if split_field:
        return str(split_field).lower() == "test"
    m = re.search(r"(\d+)$", str(video_id))
    return bool(m) and int(m.group(1)) in _TEST_IDS


class MSRVTTDataset(VideoFileDataset):
    """Multi-caption videos in the MSR-VTT layout (see the module docstring)."""

    source = "msrvtt"
    expected = "MSRVTT_data.json (videos, sentences) and videos/videoNNNN.mp4"

    def __init__(
        self,
        root: str | Path,
        split: str,
        options: ClipOptions,
        *,
        annotations: str | Path | None = None,
        video_dir: str | None = None,
        max_samples: int | None = None,
        source: str | None = None,
    ) -> None:
        root = Path(root)
        if source:
            self.source = source
        ann = Path(annotations) if annotations else root / "MSRVTT_data.json"
        if not ann.is_file():
            raise NoUsableSamplesError(f"{self.source}: {ann} not found under {root}; expected {self.expected}")
        data = json.loads(ann.read_text())
        captions: dict[str, list[tuple[int, str]]] = {}
        for i, s in enumerate(data.get("sentences", [])):
            captions.setdefault(str(s["video_id"]), []).append((int(s.get("sen_id", i)), str(s["caption"]).strip()))
        videos = [(str(v["video_id"]), v.get("split")) for v in data.get("videos", [])]
        if not videos:  # annotation files without a videos table: every captioned video, split by number
            videos = [(vid, None) for vid in captions]
        dirs = [root / video_dir] if video_dir else [root / d for d in _DEFAULT_DIRS]
        found = _index_videos(dirs)
        want_test = split != "train"
        records = []
        for vid, split_field in sorted(videos, key=lambda v: _natural_key(v[0])):
            if is_test_video(vid, split_field) != want_test:
                continue
            caps = tuple(c for _, c in sorted(captions.get(vid, [])))
            records.append(
                ClipRecord(
                    path=str(found.get(vid, dirs[0] / f"{vid}.mp4")),
                    caption=caps[0] if caps else "",
                    captions=caps,
                    key=vid,
                )
            )
        super().__init__(records, root=root, split=split, options=options, max_samples=max_samples)

    @classmethod
    def from_config(cls, cfg: DataConfig, split: str, root: str | Path | None = None, **kwargs: Any) -> MSRVTTDataset:
        split_name = "train" if split == "train" or cfg.val_split == "train" else split
        return cls(
            root or cfg.root or ".",
            split_name,
            ClipOptions.from_config(cfg, split),
            annotations=cfg.annotations,
            video_dir=cfg.video_dir,
            max_samples=cfg.max_samples if split == "train" else (cfg.max_val_samples or cfg.max_samples),
            **kwargs,
        )


def _natural_key(video_id: str) -> tuple[str, int]:
    m = re.match(r"(.*?)(\d+)$", video_id)
    return (m.group(1), int(m.group(2))) if m else (video_id, -1)


def _index_videos(dirs: list[Path]) -> dict[str, Path]:
    """``stem -> path`` of the video files in ``dirs`` (one listing each; earlier folders win)."""
    found: dict[str, Path] = {}
    for d in reversed(dirs):
        if d.is_dir():
            for entry in d.iterdir():
                if entry.suffix.lower() in (".mp4", ".avi", ".webm"):
                    found[entry.stem] = entry
    return found
