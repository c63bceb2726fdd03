"""Text-video CSV in WebVid style: ``videoid,contentUrl,duration,page_dir,name`` rows, caption = ``name``.

The video of a row is ``row[path_column]`` (relative to the video root unless absolute) when the CSV has that column
(``path_column``, default ``path`` if present), otherwise ``<video root>/<page_dir>/<videoid>.mp4``. The video root is
``<root>/<video_dir>`` or ``<root>``. The held-out split is a second CSV (``val_annotations``, or ``val.csv`` /
``test.csv`` / ``results_*_val.csv`` next to the train CSV), or else the rows whose ``crc32(videoid)`` falls in the
``val_fraction`` bucket (the train split then leaves them out), which does not depend on the row order.
"""

from __future__ import annotations

import csv
import zlib
from pathlib import Path
from typing import Any

from .base import ClipOptions, ClipRecord, NoUsableSamplesError, VideoFileDataset
from .config import DataConfig

__all__ = ["WebVidDataset", "read_webvid_csv", "in_heldout_bucket"]

_TRAIN_CSV = ("train.csv", "results_2M_train.csv", "results_10M_train.csv")
_VAL_CSV = ("val.csv", "test.csv", "results_2M_val.csv", "results_10M_val.csv")
_BUCKETS = 10_000


def in_heldout_bucket(videoid: str, fraction: float) -> bool:
    """Whether ``videoid`` belongs to the held-out ``fraction`` (a stable hash, independent of row order)."""
    return zlib.crc32(str(videoid).encode()) % _BUCKETS < round(fraction * _BUCKETS)


def read_webvid_csv(
    csv_path: Path, video_root: Path, path_column: str | None = None, ext: str = ".mp4"
) -> list[tuple[str, ClipRecord]]:
    """``(videoid, record)`` for each row of ``csv_path``; raises ``ValueError`` naming missing columns."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        col = path_column or ("path" if "path" in columns else None)
        needed = ["videoid", "name"] + ([col] if col else ["page_dir"])
        missing = [c for c in needed if c not in columns]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {', '.join(missing)}; has {', '.join(columns)}")
        out = []
        for row in reader:
            vid = str(row["videoid"]).strip()
            if col:
                p = Path(row[col])
                path = p if p.is_absolute() else video_root / p
            else:
                path = video_root / str(row["page_dir"]).strip() / f"{vid}{ext}"
            out.append((vid, ClipRecord(path=str(path), caption=str(row["name"]).strip(), key=vid)))
    return out


class WebVidDataset(VideoFileDataset):
    """Captioned videos listed in a WebVid-style CSV (see the module docstring)."""

    source = "webvid"
    expected = "a CSV with columns videoid,contentUrl,duration,page_dir,name (+ optional path) and its mp4 files"

    def __init__(
        self,
        root: str | Path,
        split: str,
        options: ClipOptions,
        *,
        annotations: str | Path | None = None,
        val_annotations: str | Path | None = None,
        path_column: str | None = None,
        video_dir: str | None = None,
        val_fraction: float = 0.05,
        max_samples: int | None = None,
        source: str | None = None,
    ) -> None:
        root = Path(root)
        if source:
            self.source = source
        train_csv = Path(annotations) if annotations else _first_existing(root, _TRAIN_CSV)
        val_csv = Path(val_annotations) if val_annotations else _first_existing(root, _VAL_CSV)
        if split != "train" and val_csv is not None and val_csv.is_file():
            csv_path, bucket = val_csv, None
        else:
            csv_path = train_csv
            has_val_csv = val_csv is not None and val_csv.is_file()
            bucket = None if (split == "train" and has_val_csv) else (split != "train")
        if csv_path is None or not csv_path.is_file():
            raise NoUsableSamplesError(
                f"{self.source}: no annotation CSV ({', '.join(_TRAIN_CSV)} or data.annotations) under {root}; "
                f"expected {self.expected}"
            )
        rows = read_webvid_csv(csv_path, root / video_dir if video_dir else root, path_column)
        if bucket is not None:  # held-out fraction of a single CSV: val keeps the bucket, train drops it
            rows = [r for r in rows if in_heldout_bucket(r[0], val_fraction) == bucket]
        self.annotations = csv_path
        super().__init__([r for _, r in rows], root=root, split=split, options=options, max_samples=max_samples)

    @classmethod
    def from_config(cls, cfg: DataConfig, split: str, root: str | Path | None = None, **kwargs: Any) -> WebVidDataset:
        split_name = "train" if split == "train" or cfg.val_split == "train" else split
        return cls(
            root or cfg.root or ".",
            split_name,
            ClipOptions.from_config(cfg, split),
            annotations=kwargs.pop("annotations", cfg.annotations),
            val_annotations=kwargs.pop("val_annotations", cfg.val_annotations),
            path_column=cfg.path_column,
            video_dir=cfg.video_dir,
            val_fraction=cfg.val_fraction,
            max_samples=cfg.max_samples if split == "train" else (cfg.max_val_samples or cfg.max_samples),
            **kwargs,
        )


def _first_existing(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_file():
            return root / name
    return None
