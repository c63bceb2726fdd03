"""Text-video CSV in WebVid style: ``videoid,contentUrl,duration,page_dir,name`` rows, caption = ``name``.

The video of a row is ``row[path_column]`` (relative to the video root unless absolute) when the CSV has that column
(``path_column``, default ``path`` if present), otherwise ``<video root>/<page_dir>/<videoid>.mp4``. The video root is
``<root>/<video_dir>`` or ``<root>``. The held-out split is a second CSV (``val_annotations``, or ``val.csv`` /
``test.csv`` / ``results_*_val.csv`` next to the train CSV), or else the rows whose ``crc32(videoid)`` falls in the
``val_fraction`` bucket (the train split then leaves them out), which does not depend on the row order.

Unusable rows (too few or too many fields, an unterminated quote, an empty videoid / name / video column) are skipped;
the dataset counts them (``skipped_annotations``, with ``file:line`` reasons in ``annotation_problems``) and logs one
warning (:mod:`ff_lightning.data.annotations`).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .annotations import AnnotationError, AnnotationSkips
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
    csv_path: Path,
    video_root: Path,
    path_column: str | None = None,
    ext: str = ".mp4",
    skips: AnnotationSkips | None = None,
) -> list[tuple[str, ClipRecord]]:
    """``(videoid, record)`` for each usable row of ``csv_path``.

    Rows with a different number of fields than the header, an empty ``videoid`` / ``name`` / video column, or
    unreadable quoting (an unterminated quote is skipped as one line; parsing goes on with the next line) are skipped
    and counted in ``skips`` with ``file:line``. Raises ``ValueError`` naming missing columns and
    :class:`~ff_lightning.data.annotations.AnnotationError` for a file that is not UTF-8 text.
    """
    skips = skips if skips is not None else AnnotationSkips("webvid")
    try:
        return _read_rows(Path(csv_path), video_root, path_column, ext, skips)
    except UnicodeDecodeError as e:
        raise AnnotationError(
            f"{csv_path}: not UTF-8 text ({e.reason} at byte {e.start}); re-save the CSV as UTF-8"
        ) from None


def _lines_from(path: Path, first: int) -> Iterator[str]:
    """The lines of ``path`` from 1-based line ``first`` on (newlines kept, as the csv module wants them)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        yield from itertools.islice(f, first - 1, None)


def _read_rows(
    csv_path: Path, video_root: Path, path_column: str | None, ext: str, skips: AnnotationSkips
) -> list[tuple[str, ClipRecord]]:
    with contextlib.closing(_lines_from(csv_path, 1)) as lines:
        header = next(csv.reader(lines), [])
    columns = [c.strip() for c in header]
    col = path_column or ("path" if "path" in columns else None)
    needed = ["videoid", "name"] + ([col] if col else ["page_dir"])
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {', '.join(missing)}; has {', '.join(columns)}")
    at = {c: columns.index(c) for c in needed}
    out: list[tuple[str, ClipRecord]] = []
    first = 2  # 1-based line where the next reader starts
    while True:
        lines = _lines_from(csv_path, first)
        reader = csv.reader(lines, strict=True)
        done = 0  # lines consumed by this reader before the current row
        try:
            for fields in reader:
                line, done = first + done, reader.line_num
                if not fields:  # a blank line
                    continue
                where = f"{csv_path}:{line}"
                if len(fields) != len(columns):
                    skips.skip(where, f"{len(fields)} fields, the header has {len(columns)}")
                    continue
                vid, name = fields[at["videoid"]].strip(), fields[at["name"]].strip()
                video = fields[at[col]] if col else fields[at["page_dir"]].strip()
                empty = [c for c, v in (("videoid", vid), ("name", name), (col or "page_dir", video)) if not v]
                if empty:
                    skips.skip(where, f"empty {', '.join(empty)}")
                    continue
                if col:
                    p = Path(video)
                    path = p if p.is_absolute() else video_root / p
                else:
                    path = video_root / video / f"{vid}{ext}"
                out.append((vid, ClipRecord(path=str(path), caption=name, key=vid)))
            return out
        except csv.Error as e:
            line = first + done
            what = "unterminated quote" if "end of data" in str(e) else f"unreadable CSV ({e})"
            skips.skip(f"{csv_path}:{line}", f"{what}; the row is skipped and reading goes on at the next line")
            first = line + 1
        finally:
            lines.close()


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
        skips = AnnotationSkips(self.source)
        rows = read_webvid_csv(csv_path, root / video_dir if video_dir else root, path_column, skips=skips)
        skips.raise_if_all_skipped(len(rows), split)
        if bucket is not None:  # held-out fraction of a single CSV: val keeps the bucket, train drops it
            rows = [r for r in rows if in_heldout_bucket(r[0], val_fraction) == bucket]
        self.annotations = csv_path
        self.skipped_annotations, self.annotation_problems = skips.count, skips.reasons
        skips.warn(split)
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
