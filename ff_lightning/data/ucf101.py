"""UCF-101 layout: ``<root>/ucfTrainTestlist/{classInd,trainlist0N,testlist0N}.txt`` and ``<root>/<Class>/v_*.avi``.

``classInd.txt`` lines are ``"1 ApplyEyeMakeup"``; train lists ``"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"``;
test lists the same without the label. Labels are 0-based class indices; the caption is ``caption_template`` filled
with the class name split into lower-case words (``ApplyEyeMakeup`` -> ``"a video of apply eye makeup"``). A listed
``.avi`` that is absent is looked for as ``.mp4`` (and vice versa).

List lines with an unknown class folder, a label that is not an integer in 1..N, or a label naming another class
than the folder are skipped and counted (``skipped_annotations``, ``file:line`` reasons in ``annotation_problems``,
one warning); a malformed ``classInd.txt`` is an error naming its line (:mod:`ff_lightning.data.annotations`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .annotations import AnnotationError, AnnotationSkips
from .base import ClipOptions, ClipRecord, NoUsableSamplesError, VideoFileDataset
from .config import DataConfig

__all__ = ["UCF101Dataset", "class_prompt", "split_camel_case", "read_class_index", "read_split_list"]

_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z]|\d|\b)|[A-Z]?[a-z]+|\d+")
_VIDEO_EXTS = (".avi", ".mp4")


def split_camel_case(name: str) -> list[str]:
    """``"ApplyEyeMakeup"`` -> ``["Apply", "Eye", "Makeup"]``; ``"YoYo"`` -> ``["Yo", "Yo"]``."""
    return _WORDS.findall(name) or [name]


def class_prompt(name: str, template: str = "a video of {}") -> str:
    """A caption for class ``name``: ``template`` filled with its words in lower case."""
    return template.format(" ".join(w.lower() for w in split_camel_case(name)))


def read_class_index(path: Path) -> dict[str, int]:
    """``class name -> 0-based index`` from ``classInd.txt`` (lines ``"1 ApplyEyeMakeup"``, indices 1..N).

    Raises :class:`~ff_lightning.data.annotations.AnnotationError` naming the file and line of a malformed line, a
    repeated index or class, or indices that are not 1..N: every label depends on this file, so it is not guessed.
    """
    out: dict[str, int] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{n}"
        if len(parts) != 2 or not parts[0].isdigit():
            raise AnnotationError(f"{where}: expected '<index> <ClassName>' (e.g. '1 ApplyEyeMakeup'), got {line!r}")
        index, name = int(parts[0]) - 1, parts[1]
        if name in out or index in out.values():
            raise AnnotationError(f"{where}: class {name!r} or index {parts[0]} is listed twice")
        out[name] = index
    if sorted(out.values()) != list(range(len(out))):
        raise AnnotationError(f"{path}: class indices must be 1..{len(out)} without gaps, got {sorted(out.values())}")
    return out


def read_split_list(list_path: Path, classes: dict[str, int], skips: AnnotationSkips) -> list[tuple[str, str, int]]:
    """``(relative video path, class name, 0-based label)`` for each usable line of a train/test list.

    A train list line is ``"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"`` (1-based label), a test list line the
    path alone (the label is the class folder's). Lines whose class folder is not in ``classInd.txt``, whose label is
    not an integer in 1..N, or whose label names another class than the folder are skipped and counted in ``skips``.
    """
    names = {i: name for name, i in classes.items()}
    out = []
    for n, line in enumerate(list_path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{list_path}:{n}"
        rel = parts[0]
        cls_name = rel.split("/", 1)[0]
        if len(parts) > 2:
            skips.skip(where, f"expected '<Class>/<video> [label]', got {line.strip()!r}")
            continue
        if "/" not in rel or cls_name not in classes:
            skips.skip(where, f"class folder {cls_name!r} is not in classInd.txt")
            continue
        label = classes[cls_name]
        if len(parts) == 2:
            if not parts[1].lstrip("-").isdigit():
                skips.skip(where, f"label {parts[1]!r} is not an integer")
                continue
            given = int(parts[1]) - 1
            if given not in names:
                skips.skip(where, f"label {parts[1]} is outside 1..{len(names)} (labels are 1-based)")
                continue
            if given != label:
                skips.skip(where, f"label {parts[1]} is {names[given]!r} but the video is in the {cls_name!r} folder")
                continue
        out.append((rel, cls_name, label))
    return out


class UCF101Dataset(VideoFileDataset):
    """Class-labelled videos in the UCF-101 layout (see the module docstring)."""

    source = "ucf101"
    expected = "ucfTrainTestlist/{classInd,trainlist0N,testlist0N}.txt and <Class>/v_<Class>_gXX_cYY.avi (or .mp4)"

    def __init__(
        self,
        root: str | Path,
        split: str,
        options: ClipOptions,
        *,
        split_index: int = 1,
        lists_dir: str | Path | None = None,
        video_dir: str | None = None,
        caption_template: str = "a video of {}",
        max_samples: int | None = None,
        source: str | None = None,
    ) -> None:
        root = Path(root)
        if source:
            self.source = source
        lists = Path(lists_dir) if lists_dir else root / "ucfTrainTestlist"
        video_root = root / video_dir if video_dir else root
        kind = "trainlist" if split == "train" else "testlist"
        list_path = lists / f"{kind}{split_index:02d}.txt"
        class_ind = lists / "classInd.txt"
        for p in (class_ind, list_path):
            if not p.is_file():
                raise NoUsableSamplesError(f"{self.source}: {p} not found under {root}; expected {self.expected}")
        classes = read_class_index(class_ind)
        self.classes = [name for name, _ in sorted(classes.items(), key=lambda kv: kv[1])]
        skips = AnnotationSkips(self.source)
        entries = read_split_list(list_path, classes, skips)
        skips.raise_if_all_skipped(len(entries), split)
        records = [
            ClipRecord(
                path=str(_resolve_video(video_root / rel)),
                caption=class_prompt(cls_name, caption_template),
                label=label,
                key=Path(rel).stem,
            )
            for rel, cls_name, label in entries
        ]
        self.skipped_annotations, self.annotation_problems = skips.count, skips.reasons
        skips.warn(split)
        self.split_index = split_index
        super().__init__(records, root=root, split=split, options=options, max_samples=max_samples)

    @classmethod
    def from_config(cls, cfg: DataConfig, split: str, root: str | Path | None = None, **kwargs: Any) -> UCF101Dataset:
        split_name = "train" if split == "train" or cfg.val_split == "train" else split
        return cls(
            root or cfg.root or ".",
            split_name,
            ClipOptions.from_config(cfg, split),
            split_index=cfg.split_index,
            lists_dir=cfg.annotations,
            video_dir=cfg.video_dir,
            caption_template=cfg.caption_template,
            max_samples=cfg.max_samples if split == "train" else (cfg.max_val_samples or cfg.max_samples),
            **kwargs,
        )


def _resolve_video(path: Path) -> Path:
    """``path`` if it exists, else the same stem with another video extension that exists, else ``path``."""
    if path.is_file():
        return path
    for ext in _VIDEO_EXTS:
        alt = path.with_suffix(ext)
        if alt.is_file():
            return alt
    return path
