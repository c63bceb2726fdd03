"""Procedural captioned videos: a textured shape moving over a textured background.

Every clip is determined by ``(seed, set, index)``: shape (circle, square, triangle), colour, motion direction (left,
right, up, down) and speed (slowly, quickly) are drawn, and the caption states them: ``"a red circle moving left
slowly"``. Frames are rendered for the whole clip at once (numpy, 2x supersampled edges). Two layouts are written:

- :func:`write_shapes_webvid`: ``<root>/<page_dir>/<videoid>.mp4`` with ``train.csv`` / ``test.csv`` in WebVid columns
  ``videoid,contentUrl,duration,page_dir,name``;
- :func:`write_shapes_ucf`: UCF-101 layout, one class per shape x direction (``CircleMovingLeft``, ...); a group
  (``gXX``) shares its background and colour, like UCF's actors, and split N tests on groups ``2N-1`` and ``2N``.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..video_io import write_video

__all__ = [
    "SHAPES",
    "COLOURS",
    "DIRECTIONS",
    "SPEEDS",
    "ShapeClip",
    "ShapesParams",
    "draw_clip_spec",
    "render_clip",
    "write_shapes_webvid",
    "write_shapes_ucf",
    "ucf_class_names",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
SPEEDS: dict[str, float] = {"slowly": 1.2, "quickly": 2.4}  # pixels per frame at 64 px
#: radius range of the shape at 64 px (a circle covers ~13-22% of the frame: big enough that the caption's shape
#: matters to a model's loss; style 1 drew 7-11 px, ~3-6%)
RADIUS: tuple[float, float] = (13.0, 17.0)


@dataclass(frozen=True)
class ShapeClip:
    """What a clip shows; ``seed`` drives the background and the exact placement."""

    shape: str
    colour: str
    direction: str
    speed: str
    seed: int

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction} {self.speed}"


@dataclass(frozen=True)
class ShapesParams:
    """Build parameters (stored in the marker; a change triggers a rebuild)."""

    size: int = 64
    num_frames: int = 16
    fps: int = 8
    train_clips: int = 200
    test_clips: int = 48
    ucf_groups: int = 6
    ucf_clips_per_group: int = 3
    seed: int = 0
    style: int = 2  # rendering version (2: larger shapes, faster motion); a change rebuilds the sets

    @classmethod
    def reduced(cls) -> ShapesParams:
        return cls(train_clips=16, test_clips=8, ucf_groups=3, ucf_clips_per_group=1)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def draw_clip_spec(rng: np.random.Generator, seed: int, **fixed: str) -> ShapeClip:
    """Draw the attributes not given in ``fixed`` (shape, colour, direction, speed)."""
    pick = {
        "shape": fixed.get("shape") or SHAPES[int(rng.integers(len(SHAPES)))],
        "colour": fixed.get("colour") or list(COLOURS)[int(rng.integers(len(COLOURS)))],
        "direction": fixed.get("direction") or list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))],
        "speed": fixed.get("speed") or list(SPEEDS)[int(rng.integers(len(SPEEDS)))],
    }
    return ShapeClip(seed=seed, **pick)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size, 3)`` float texture: smooth colour blobs, diagonal stripes and fine grain."""
    coarse = rng.uniform(15, 110, (4, 4, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(5, 12) * size / 64
    stripes = 12 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    grain = rng.normal(0, 5, (size, size, 1)).astype(np.float32)
    return smooth + stripes[..., None] + grain


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    """Inside test for offsets ``dy, dx`` (any shape) from the centre, radius ``r``."""
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return np.maximum(np.abs(dy), np.abs(dx)) <= 0.85 * r
    if shape == "triangle":  # apex up, base at +0.8 r
        return (dy >= -r) & (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) * 0.6)
    raise ValueError(f"unknown shape {shape!r}; valid choices: {', '.join(SHAPES)}")


def render_clip(
    clip: ShapeClip, size: int = 64, num_frames: int = 16, background_seed: int | None = None
) -> np.ndarray:
    """Render ``clip`` as ``(num_frames, size, size, 3)`` uint8 (background from ``background_seed`` if given)."""
    rng = np.random.default_rng(clip.seed)
    bg = _background(np.random.default_rng(background_seed) if background_seed is not None else rng, size)
    scale = size / 64
    r = float(rng.uniform(*RADIUS)) * scale
    vy, vx = DIRECTIONS[clip.direction]
    speed = SPEEDS[clip.speed] * scale
    travel = speed * (num_frames - 1)

    def start(v: int) -> float:  # keep the shape inside the frame for the whole clip when it fits
        lo, hi = r + 1 + (travel if v < 0 else 0), size - r - 1 - (travel if v > 0 else 0)
        return float(rng.uniform(lo, hi)) if hi > lo else size / 2 - v * travel / 2

    cy0, cx0 = start(vy), start(vx)
    t = np.arange(num_frames, dtype=np.float32)
    cy, cx = cy0 + vy * speed * t, cx0 + vx * speed * t  # (T,)
    ss = 2  # supersampling for soft edges
    grid = (np.arange(size * ss, dtype=np.float32) + 0.5) / ss
    dy = grid[None, :, None] - cy[:, None, None]  # (T, S*ss, 1)
    dx = grid[None, None, :] - cx[:, None, None]  # (T, 1, S*ss)
    mask = _shape_mask(clip.shape, dy, dx, r).astype(np.float32)
    mask = mask.reshape(num_frames, size, ss, size, ss).mean(axis=(2, 4))[..., None]  # (T, S, S, 1)
    # shape texture: shading stripes that move with the shape, so the motion is visible inside it too
    ys = np.arange(size, dtype=np.float32)
    sy, sx = ys[None, :, None] - cy[:, None, None], ys[None, None, :] - cx[:, None, None]
    shade = 0.8 + 0.2 * np.sin((sy + sx) * (2 * np.pi / (5 * scale)))[..., None]
    colour = np.asarray(COLOURS[clip.colour], dtype=np.float32)
    fg = colour * shade
    noise = rng.normal(0, 2.0, (num_frames, size, size, 1)).astype(np.float32)  # sensor noise over time
    frames = bg[None] * (1 - mask) + fg * mask + noise
    return np.clip(frames + 0.5, 0, 255).astype(np.uint8)


def _clip_seed(seed: int, part: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, part, index]).generate_state(1)[0])


def write_shapes_webvid(root: Path, params: ShapesParams, progress: bool = True) -> dict[str, Any]:
    """Captioned clips as mp4 + WebVid-style ``train.csv`` / ``test.csv`` (50 videos per ``page_dir``)."""
    counts = {}
    bar = tqdm(
        total=params.train_clips + params.test_clips, desc="shapes", unit="clip", disable=not progress, leave=False
    )
    for part, (split, n) in enumerate((("train", params.train_clips), ("test", params.test_clips))):
        rng = np.random.default_rng([params.seed, 100 + part])
        rows = []
        for i in range(n):
            clip = draw_clip_spec(rng, _clip_seed(params.seed, part, i))
            videoid = f"{split}_{i:05d}"
            page_dir = f"{split}_{i // 50:03d}"
            write_video(
                root / page_dir / f"{videoid}.mp4", render_clip(clip, params.size, params.num_frames), params.fps
            )
            duration = f"PT00H00M{params.num_frames // params.fps:02d}S"
            rows.append([videoid, f"{page_dir}/{videoid}.mp4", duration, page_dir, clip.caption])
            bar.update()
        with open(root / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"])
            w.writerows(rows)
        counts[split] = n
    bar.close()
    return counts


def ucf_class_names() -> list[str]:
    """``CircleMovingLeft``, ... (shape x direction), in class-index order."""
    return [f"{s.capitalize()}Moving{d.capitalize()}" for s in SHAPES for d in DIRECTIONS]


def write_shapes_ucf(root: Path, params: ShapesParams, progress: bool = True) -> dict[str, Any]:
    """Class-labelled clips as ``<Class>/v_<Class>_gXX_cYY.avi`` + ``ucfTrainTestlist`` (splits 1..3)."""
    classes = ucf_class_names()
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    entries = []  # (class index, group, relative path)
    bar = tqdm(
        total=len(classes) * params.ucf_groups * params.ucf_clips_per_group,
        desc="shapes_ucf",
        unit="clip",
        disable=not progress,
        leave=False,
    )
    for g in range(1, params.ucf_groups + 1):
        group_rng = np.random.default_rng([params.seed, 200, g])
        colour = list(COLOURS)[int(group_rng.integers(len(COLOURS)))]
        bg_seed = _clip_seed(params.seed, 300, g)
        for ci, name in enumerate(classes):
            shape, direction = SHAPES[ci // len(DIRECTIONS)], list(DIRECTIONS)[ci % len(DIRECTIONS)]
            for c in range(1, params.ucf_clips_per_group + 1):
                seed = _clip_seed(params.seed, 400 + g, ci * 100 + c)
                clip = draw_clip_spec(
                    np.random.default_rng(seed), seed, shape=shape, direction=direction, colour=colour
                )
                rel = f"{name}/v_{name}_g{g:02d}_c{c:02d}.avi"
                write_video(root / rel, render_clip(clip, params.size, params.num_frames, bg_seed), params.fps)
                entries.append((ci, g, rel))
                bar.update()
    bar.close()
    for n in (1, 2, 3):
        test_groups = {2 * n - 1, 2 * n}
        train = [f"{rel} {ci + 1}\n" for ci, g, rel in entries if g not in test_groups]
        test = [f"{rel}\n" for ci, g, rel in entries if g in test_groups]
        (lists / f"trainlist{n:02d}.txt").write_text("".join(train))
        (lists / f"testlist{n:02d}.txt").write_text("".join(test))
    return {"classes": len(classes), "clips": len(entries), "groups": params.ucf_groups}
