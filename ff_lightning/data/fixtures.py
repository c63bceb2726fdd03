"""Tiny datasets in each real on-disk layout, for tests (this project's and downstream systems').

Frame ``i`` of every written clip is a flat grey of value :func:`index_value` ``(i)``, so the source frame index of a
loaded clip can be read back from its pixels with :func:`decode_indices`, even after lossy video coding.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .video_io import write_video

__all__ = [
    "index_value",
    "index_frames",
    "decode_indices",
    "write_corrupt",
    "write_webvid_layout",
    "write_vimeo_layout",
    "write_ucf_layout",
    "write_msrvtt_layout",
]

_BASE, _STEP = 8, 8  # value of frame i: 8 + 8 i (i < 31)


def index_value(i: int) -> int:
    """Grey level that encodes frame index ``i`` (0 <= i < 31)."""
    if not 0 <= i < 31:
        raise ValueError(f"frame index {i} cannot be encoded (0..30)")
    return _BASE + _STEP * i


def index_frames(num_frames: int, size: tuple[int, int] = (32, 48)) -> np.ndarray:
    """``(num_frames, H, W, 3)`` uint8 flat frames encoding their own index."""
    values = np.array([index_value(i) for i in range(num_frames)], dtype=np.uint8)
    return np.broadcast_to(values[:, None, None, None], (num_frames, size[0], size[1], 3)).copy()


def decode_indices(video: torch.Tensor) -> list[int]:
    """Source frame indices of a clip ``(T, C, H, W)`` in [-1, 1] made of :func:`index_frames`."""
    grey = ((video.float() + 1) * 127.5).mean(dim=(1, 2, 3))
    return [int(round((float(g) - _BASE) / _STEP)) for g in grey]


def write_corrupt(path: Path, num_bytes: int = 2048, seed: int = 0) -> Path:
    """A file of random bytes named like a video."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, num_bytes, dtype=np.uint8).tobytes())
    return path


def write_webvid_layout(
    root: Path,
    num_videos: int = 6,
    num_frames: int = 16,
    fps: float = 8.0,
    *,
    corrupt: Sequence[int] = (),
    short: Sequence[int] = (),
    missing: Sequence[int] = (),
    short_frames: int = 3,
    csv_name: str = "train.csv",
    prefix: str = "v",
    path_column: bool = False,
) -> Path:
    """``<root>/<page_dir>/<videoid>.mp4`` + ``<root>/<csv_name>``; returns the CSV path.

    Videos listed in ``corrupt`` are random bytes, in ``short`` have ``short_frames`` frames, in ``missing`` are not
    written. With ``path_column`` the CSV has a ``path`` column (relative paths) as well.
    """
    rows = []
    for i in range(num_videos):
        vid, page = f"{prefix}{i:03d}", f"page{i % 2}"
        rel = f"{page}/{vid}.mp4"
        if i in corrupt:
            write_corrupt(root / rel, seed=i)
        elif i not in missing:
            write_video(root / rel, index_frames(short_frames if i in short else num_frames), fps)
        row = [vid, f"https://example.invalid/{vid}.mp4", "PT00H00M02S", page, f"caption of {vid}"]
        rows.append(row + [rel] if path_column else row)
    csv_path = root / csv_name
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"] + (["path"] if path_column else []))
        w.writerows(rows)
    return csv_path


def write_vimeo_layout(
    root: Path,
    num_train: int = 4,
    num_test: int = 2,
    frames: int = 7,
    size: tuple[int, int] = (32, 48),
    *,
    drop_frame: Sequence[str] = (),
) -> Path:
    """``<root>/sequences/00001/%04d/im1..imN.png`` + ``sep_trainlist.txt`` / ``sep_testlist.txt``.

    Sequence keys in ``drop_frame`` lack their last image (a broken sequence). Returns ``root``.
    """
    imgs = index_frames(frames, size)
    keys = [f"00001/{k:04d}" for k in range(1, num_train + num_test + 1)]
    for key in keys:
        d = root / "sequences" / key
        d.mkdir(parents=True, exist_ok=True)
        for i in range(frames - (1 if key in drop_frame else 0)):
            Image.fromarray(imgs[i]).save(d / f"im{i + 1}.png")
    (root / "sep_trainlist.txt").write_text("".join(k + "\n" for k in keys[:num_train]))
    (root / "sep_testlist.txt").write_text("".join(k + "\n" for k in keys[num_train:]))
    return root


def write_ucf_layout(
    root: Path,
    classes: Sequence[str] = ("ApplyEyeMakeup", "YoYo"),
    groups: Sequence[int] = (1, 8, 9),
    num_frames: int = 12,
    fps: float = 25.0,
    *,
    ext: str = ".avi",
    mp4_classes: Sequence[str] = (),
) -> Path:
    """UCF-101 layout; lists always name ``.avi`` (as UCF does) while ``mp4_classes`` are written as ``.mp4``.

    Split 1 tests on groups 1..7, split 2 on 8..14, split 3 on 15..21 (one clip ``c01`` per class and group).
    """
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    entries = []
    for ci, name in enumerate(classes):
        for g in groups:
            stem = f"v_{name}_g{g:02d}_c01"
            write_video(root / name / (stem + (".mp4" if name in mp4_classes else ext)), index_frames(num_frames), fps)
            entries.append((ci, g, f"{name}/{stem}.avi"))
    for n in (1, 2, 3):
        test_groups = range(7 * n - 6, 7 * n + 1)
        (lists / f"trainlist{n:02d}.txt").write_text(
            "".join(f"{rel} {ci + 1}\n" for ci, g, rel in entries if g not in test_groups)
        )
        (lists / f"testlist{n:02d}.txt").write_text("".join(f"{rel}\n" for ci, g, rel in entries if g in test_groups))
    return root


def write_msrvtt_layout(
    root: Path,
    video_ids: Sequence[int] = (0, 1, 2, 7010, 7011),
    captions_per_video: int = 3,
    num_frames: int = 12,
    fps: float = 15.0,
    *,
    split_field: dict[int, str] | None = None,
    with_split: bool = False,
) -> Path:
    """``<root>/videos/videoN.mp4`` + ``<root>/MSRVTT_data.json``; ``split_field`` sets some ``split`` values."""
    videos, sentences = [], []
    sen = 0
    for n in video_ids:
        vid = f"video{n}"
        write_video(root / "videos" / f"{vid}.mp4", index_frames(num_frames), fps)
        entry: dict[str, object] = {"video_id": vid, "category": 0, "id": n}
        split = (split_field or {}).get(n)
        if split is not None:
            entry["split"] = split
        elif with_split:
            entry["split"] = "test" if 7010 <= n <= 9999 else "train"
        videos.append(entry)
        for k in range(captions_per_video):
            sentences.append({"caption": f"{vid} caption {k}", "video_id": vid, "sen_id": sen})
            sen += 1
    (root / "MSRVTT_data.json").write_text(json.dumps({"info": {}, "videos": videos, "sentences": sentences}))
    return root
