"""Vimeo-90k layout: frame sequences ``<root>/sequences/%05d/%04d/im1.png .. imN.png`` listed in
``<root>/sep_trainlist.txt`` / ``<root>/sep_testlist.txt`` (lines like ``00001/0001``).

Septuplets have N = 7; the same loader reads longer sequences (the bundled 16-frame footage clips): N is taken from
``frames_per_sequence`` or detected from the first listed sequence. Image sequences have no container frame rate:
``<root>/sequence_info.json`` may give one (``{"default_fps": 25.0, "folder_fps": {"00001": 29.97}}``), otherwise
``sequence_fps`` is used. Vimeo has no captions or labels (caption ``""``, label -1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .base import ClipDataset, ClipOptions, ClipRecord, NoUsableSamplesError
from .config import DataConfig
from .sampling import ClipPlan
from .video_io import read_image_frames

__all__ = ["VimeoSequenceDataset", "detect_sequence_length", "list_file_for"]

_LIST_NAMES = {"train": ("sep_trainlist.txt", "tri_trainlist.txt"), "test": ("sep_testlist.txt", "tri_testlist.txt")}


def list_file_for(root: Path, split: str) -> Path:
    """The list file of ``split`` (``val``/``test`` read the test list); septuplet names first, then triplet ones."""
    names = _LIST_NAMES["train" if split == "train" else "test"]
    for name in names:
        if (root / name).is_file():
            return root / name
    return root / names[0]


def detect_sequence_length(seq_dirs: list[Path], ext: str = ".png", probe: int = 8) -> int:
    """Images ``im1..imN`` in the first of ``seq_dirs`` that has any (at most ``probe`` folders are looked at)."""
    for d in seq_dirs[:probe]:
        n = 0
        while (d / f"im{n + 1}{ext}").is_file():
            n += 1
        if n:
            return n
    return 0


class VimeoSequenceDataset(ClipDataset):
    """Frame sequences in the Vimeo-90k layout (see the module docstring)."""

    source = "vimeo_septuplet"
    expected = "sequences/%05d/%04d/im1.png..imN.png listed in sep_trainlist.txt / sep_testlist.txt"

    def __init__(
        self,
        root: str | Path,
        split: str,
        options: ClipOptions,
        *,
        list_file: str | Path | None = None,
        sequences_dir: str | Path | None = None,
        frames_per_sequence: int | None = None,
        sequence_fps: float = 30.0,
        max_samples: int | None = None,
        source: str | None = None,
    ) -> None:
        root = Path(root)
        if source:
            self.source = source
        lst = Path(list_file) if list_file else list_file_for(root, split)
        seq_root = root / (sequences_dir or "sequences")
        if not lst.is_file():
            raise NoUsableSamplesError(
                f"{self.source}: list file {lst} not found under {root}; expected {self.expected}"
            )
        keys = [line.strip() for line in lst.read_text().splitlines() if line.strip()]
        dirs = [seq_root / k for k in keys]
        n = frames_per_sequence or detect_sequence_length(dirs)
        if keys and n == 0:
            raise NoUsableSamplesError(
                f"{self.source}: no im1.png in the first listed sequences under {seq_root}; expected {self.expected}"
            )
        self.frames_per_sequence = n
        self._fps = _read_fps(root, sequence_fps)
        records = [ClipRecord(path=str(d), num_frames=n, key=k) for d, k in zip(dirs, keys)]
        super().__init__(records, root=root, split=split, options=options, max_samples=max_samples)

    @classmethod
    def from_config(
        cls, cfg: DataConfig, split: str, root: str | Path | None = None, **kwargs: Any
    ) -> VimeoSequenceDataset:
        split_name = "train" if split == "train" or cfg.val_split == "train" else split
        ann = cfg.annotations if split_name == "train" else cfg.val_annotations
        return cls(
            root or cfg.root or ".",
            split_name,
            ClipOptions.from_config(cfg, split),
            list_file=ann,
            sequences_dir=cfg.video_dir,
            frames_per_sequence=cfg.frames_per_sequence,
            sequence_fps=cfg.sequence_fps,
            max_samples=cfg.max_samples if split == "train" else (cfg.max_val_samples or cfg.max_samples),
            **kwargs,
        )

    def read_frames(self, record: ClipRecord, rng: np.random.Generator) -> tuple[np.ndarray, ClipPlan, float, int]:
        fps = self._fps(record.key)
        plan = self.plan(record.path, record.num_frames, fps, rng)
        seq = Path(record.path)
        frames = read_image_frames([seq / f"im{i + 1}.png" for i in plan.indices])
        return frames, plan, fps, record.num_frames


def _read_fps(root: Path, default: float) -> Any:
    """A ``key -> fps`` function from ``sequence_info.json`` (per top-level folder), else the constant ``default``."""
    info_path = root / "sequence_info.json"
    folder_fps: dict[str, float] = {}
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        default = float(info.get("default_fps", default))
        folder_fps = {str(k): float(v) for k, v in info.get("folder_fps", {}).items()}

    def fps_of(key: str) -> float:
        return folder_fps.get(key.split("/", 1)[0], default)

    return fps_of
