"""MSR-VTT: ``<root>/MSRVTT_data.json`` (``videos``: ``{video_id, split, ...}``; ``sentences``: ``{caption,
video_id, sen_id}``) and ``<root>/videos/videoNNNN.mp4`` (or ``video_dir``; ``videos/all``, ``TrainValVideo`` and
``TestVideo`` are also looked in).

One sample per video, carrying all its captions (ordered by ``sen_id``; ``meta["captions"]``). The caption is the first
one, or a seeded random one in training when ``caption_mode == "random"``. A video is in the test split when its
``split`` field says ``test``, or, without that field, when its number is 7010..9999; everything else is train.

Sentences without ``video_id`` or a text ``caption`` (``null`` included), videos without ``video_id`` and videos
without any usable caption are skipped and counted (``skipped_annotations``, ``file: sentences[i]`` reasons in
``annotation_problems``, one warning); a file that is not JSON is an error naming it and the line
(:mod:`ff_lightning.data.annotations`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .annotations import AnnotationError, AnnotationSkips
from .base import ClipOptions, ClipRecord, NoUsableSamplesError, VideoFileDataset
from .config import DataConfig

__all__ = ["MSRVTTDataset", "is_test_video", "read_msrvtt_json"]

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
        skips = AnnotationSkips(self.source)
        captions, videos = read_msrvtt_json(ann, skips)
        dirs = [root / video_dir] if video_dir else [root / d for d in _DEFAULT_DIRS]
        found = _index_videos(dirs)
        want_test = split != "train"
        records = []
        for vid, split_field in sorted(videos, key=lambda v: _natural_key(v[0])):
            if is_test_video(vid, split_field) != want_test:
                continue
            caps = tuple(c for _, c in sorted(captions.get(vid, [])))
            if not caps:  # nothing to condition on: training on "" would teach the unconditional model only
                skips.skip(f"{ann}: video {vid!r}", "no usable caption in sentences")
                continue
            records.append(
                ClipRecord(
                    path=str(found.get(vid, dirs[0] / f"{vid}.mp4")),
                    caption=caps[0],
                    captions=caps,
                    key=vid,
                )
            )
        skips.raise_if_all_skipped(len(records), split)
        self.skipped_annotations, self.annotation_problems = skips.count, skips.reasons
        skips.warn(split)
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


def _load_json(path: Path) -> dict[str, Any]:
    """The top-level object of ``path``; :class:`AnnotationError` naming the file for unreadable JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AnnotationError(
            f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}); fix the file or point data.annotations "
            "at an intact MSRVTT_data.json"
        ) from None
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected an object with 'videos' and 'sentences', got a {type(data).__name__}")
    for key in ("videos", "sentences"):
        if not isinstance(data.get(key, []), list):
            raise AnnotationError(f"{path}: {key!r} must be a list, got a {type(data[key]).__name__}")
    return data


def read_msrvtt_json(
    path: Path, skips: AnnotationSkips
) -> tuple[dict[str, list[tuple[int, str]]], list[tuple[str, str | None]]]:
    """``(video_id -> [(sen_id, caption)], [(video_id, split field)])`` from ``MSRVTT_data.json``.

    Sentences without a ``video_id`` or a non-empty string ``caption`` (``null`` included), or with a non-integer
    ``sen_id``, and videos without a ``video_id`` are skipped and counted in ``skips`` as ``file: sentences[i]`` /
    ``file: videos[i]`` (JSON records have no line of their own). Without a ``videos`` table, every captioned video
    is listed (split by number).
    """
    data = _load_json(path)
    captions: dict[str, list[tuple[int, str]]] = {}
    for i, s in enumerate(data.get("sentences", [])):
        where = f"{path}: sentences[{i}]"
        if not isinstance(s, dict):
            skips.skip(where, f"expected an object, got {s!r:.60}")
            continue
        vid, caption, sen_id = s.get("video_id"), s.get("caption"), s.get("sen_id", i)
        if vid is None or str(vid).strip() == "":
            skips.skip(where, "no 'video_id'")
        elif not isinstance(caption, str) or not caption.strip():
            skips.skip(where, "no 'caption'" if "caption" not in s else f"caption is {caption!r}, not a non-empty text")
        elif isinstance(sen_id, bool) or not (isinstance(sen_id, int) or str(sen_id).strip().isdigit()):
            skips.skip(where, f"sen_id {sen_id!r} is not an integer")
        else:
            captions.setdefault(str(vid), []).append((int(sen_id), caption.strip()))
    videos: list[tuple[str, str | None]] = []
    for i, v in enumerate(data.get("videos", [])):
        vid = v.get("video_id") if isinstance(v, dict) else None
        if vid is None or str(vid).strip() == "":
            skips.skip(f"{path}: videos[{i}]", "no 'video_id'")
            continue
        split = v.get("split")
        videos.append((str(vid), None if split is None else str(split)))
    if not videos and not data.get("videos"):  # annotation files without a videos table: every captioned video
        videos = [(vid, None) for vid in captions]
    return captions, videos


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
