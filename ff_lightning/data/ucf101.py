"""UCF-101 layout: ``<root>/ucfTrainTestlist/{classInd,trainlist0N,testlist0N}.txt`` and ``<root>/<Class>/v_*.avi``.

``classInd.txt`` lines are ``"1 ApplyEyeMakeup"``; train lists ``"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"``;
test lists the same without the label. Labels are 0-based class indices; the caption is ``caption_template`` filled
with the class name split into lower-case words (``ApplyEyeMakeup`` -> ``"a video of apply eye makeup"``). A listed
``.avi`` that is absent is looked for as ``.mp4`` (and vice versa).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .base import ClipOptions, ClipRecord, NoUsableSamplesError, VideoFileDataset
from .config import DataConfig

__all__ = ["UCF101Dataset", "class_prompt", "split_camel_case", "read_class_index"]

_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z]|\d|\b)|[A-Z]?[a-z]+|\d+")
_VIDEO_EXTS = (".avi", ".mp4")


def split_camel_case(name: str) -> list[str]:
    """``"ApplyEyeMakeup"`` -> ``["Apply", "Eye", "Makeup"]``; ``"YoYo"`` -> ``["Yo", "Yo"]``."""
    return _WORDS.findall(name) or [name]


def class_prompt(name: str, template: str = "a video of {}") -> str:
    """A caption for class ``name``: ``template`` filled with its words in lower case."""
    return template.format(" ".join(w.lower() for w in split_camel_case(name)))


def read_class_index(path: Path) -> dict[str, int]:
    """``class name -> 0-based index`` from ``classInd.txt``."""
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out[parts[1]] = int(parts[0]) - 1
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
        records = []
        for line in list_path.read_text().splitlines():
            parts = line.split()
            if not parts:
                continue
            rel = parts[0]
            cls_name = rel.split("/", 1)[0]
            if cls_name not in classes:
                raise ValueError(f"{list_path}: class {cls_name!r} is not in {class_ind}")
            label = int(parts[1]) - 1 if len(parts) > 1 else classes[cls_name]
            records.append(
                ClipRecord(
                    path=str(_resolve_video(video_root / rel)),
                    caption=class_prompt(cls_name, caption_template),
                    label=label,
                    key=Path(rel).stem,
                )
            )
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
