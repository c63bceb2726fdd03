"""The bundled offline data: a reduced build, idempotence, leak-free footage split, loading through the registry."""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from ff_lightning.data import DataConfig, build_datamodule, build_dataset
from ff_lightning.data.bundled import build_all, bundled_root, main_build
from ff_lightning.data.bundled.cache import MARKER as MARKER_NAME
from ff_lightning.data.bundled.shapes import ShapeClip, render_clip, ucf_class_names

CAPTION = re.compile(
    r"^a (red|green|blue|yellow|purple|orange|white) (circle|square|triangle) moving "
    r"(left|right|up|down) (slowly|quickly)$"
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("ffcache")
    build_all(cache, reduced=True, progress=False)
    return cache


def test_build_is_idempotent_and_marked(cache: Path) -> None:
    markers = {s: cache / "data" / s / MARKER_NAME for s in ("footage", "shapes", "shapes_ucf")}
    assert all(m.is_file() for m in markers.values())
    before = {s: m.stat().st_mtime_ns for s, m in markers.items()}
    build_all(cache, reduced=True, progress=False)
    assert {s: m.stat().st_mtime_ns for s, m in markers.items()} == before  # nothing rebuilt
    info = json.loads(markers["footage"].read_text())
    assert info["params"]["sources"] == ["carphone"] and info["version"] >= 1
    assert bundled_root("bundled_septuplet", cache) == cache / "data" / "footage" / "septuplet"
    assert main_build(["--cache", str(cache), "--reduced", "--only", "shapes"]) == 0
    assert markers["shapes"].stat().st_mtime_ns == before["shapes"]


def test_rebuild_when_marker_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not built"):
        bundled_root("bundled_shapes", tmp_path, build=False)
    assert main_build(["--cache", str(tmp_path), "--reduced", "--only", "shapes"]) == 0
    root = tmp_path / "data" / "shapes"
    (root / MARKER_NAME).unlink()
    (root / "stale.txt").write_text("half-written")
    build_all(tmp_path, reduced=True, progress=False, sets=["shapes"])
    assert (root / MARKER_NAME).is_file() and not (root / "stale.txt").exists()
    assert len((root / "train.csv").read_text().splitlines()) == 17
    assert bundled_root("bundled_shapes", tmp_path, build=False) == root


def test_footage_split_does_not_leak(cache: Path) -> None:
    for sub, length in (("septuplet", 7), ("clips16", 16)):
        root = cache / "data" / "footage" / sub
        frames: dict[str, dict[str, set[int]]] = defaultdict(lambda: {"train": set(), "test": set()})
        with open(root / "provenance.csv") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            first, last = int(r["first_frame"]), int(r["last_frame"])
            assert last - first + 1 == length
            frames[r["source"]][r["split"]].update(range(first, last + 1))
        for split in frames.values():
            assert split["train"] and split["test"] and split["train"].isdisjoint(split["test"])
        listed = {
            "train": (root / "sep_trainlist.txt").read_text().split(),
            "test": (root / "sep_testlist.txt").read_text().split(),
        }
        assert {r["key"] for r in rows if r["split"] == "train"} == set(listed["train"])
        assert set(listed["train"]).isdisjoint(listed["test"])
        seq = root / "sequences" / listed["test"][0]
        assert sorted(p.name for p in seq.iterdir()) == sorted(f"im{i}.png" for i in range(1, length + 1))


def test_bundled_sources_load(cache: Path) -> None:
    for split in ("train", "val"):
        ds = build_dataset(DataConfig(source="bundled_septuplet", cache_dir=str(cache), num_frames=8), split)
        assert ds.frames_per_sequence == 16 and ds[0]["video"].shape == (8, 3, 64, 64)  # 8 frames > 7: clips16
    sept = build_dataset(DataConfig(source="bundled_septuplet", cache_dir=str(cache), num_frames=7), "val")
    assert sept.frames_per_sequence == 7
    dm = build_datamodule(DataConfig(source="bundled_shapes", cache_dir=str(cache), num_frames=8, batch_size=4))
    dm.prepare_data()
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (4, 8, 3, 64, 64) and all(CAPTION.match(c) for c in batch["caption"])
    assert len(dm.dataset("val")) == 8
    ucf = build_dataset(DataConfig(source="bundled_shapes_ucf", cache_dir=str(cache), num_frames=8), "test")
    assert ucf.classes == ucf_class_names() and len(ucf.classes) == 12
    s = ucf[0]
    assert s["label"] == 0 and s["caption"] == "a video of circle moving left" and s["meta"]["path"].endswith(".avi")


def test_shapes_render_deterministic_and_moving() -> None:
    clip = ShapeClip("circle", "red", "right", "quickly", seed=5)
    a, b = render_clip(clip, 64, 8), render_clip(clip, 64, 8)
    assert a.shape == (8, 64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert clip.caption == "a red circle moving right quickly"
    red = (a[..., 0].astype(int) - a[..., 1] > 120) & (a[..., 0] > 180)  # the shape's pixels
    xs = [float(np.nonzero(m)[1].mean()) for m in red]
    assert xs[-1] - xs[0] > 10  # moved right by about 2.2 px per frame


def _measured_direction(video: np.ndarray, colour: str) -> str:
    """Direction of the shape's centroid from the first to the last frame of ``(T, 3, H, W)`` in [-1, 1]."""
    from ff_lightning.data.bundled.shapes import COLOURS

    px = (np.asarray(video).transpose(0, 2, 3, 1) + 1) * 127.5  # (T, H, W, 3) in [0, 255]
    ref = np.asarray(COLOURS[colour], dtype=np.float32) * 0.9
    mask = np.linalg.norm(px - ref, axis=-1) < 60  # the shape's pixels (shade 0.6-1.0 of its colour)
    first, last = (np.argwhere(mask[i]).mean(axis=0) for i in (0, -1))  # (y, x) centroids
    dy, dx = last - first
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def test_motion_augment_swaps_direction_words_with_the_motion(cache: Path) -> None:
    """``data.motion_augment``: mirrored / reversed clips carry the opposite direction word, measured from pixels."""
    from ff_lightning.data.motion_words import MIRROR_SWAP, REVERSE_SWAP, swap_words

    common = dict(source="bundled_shapes", cache_dir=str(cache), num_frames=8, size=[32, 32], random_crop=False,
                  random_start=False)  # fmt: skip
    plain = build_dataset(DataConfig(**common), "train")
    aug = build_dataset(DataConfig(**common, motion_augment="flip_reverse"), "train")
    seen = {"flipped": 0, "reversed": 0}
    for epoch in range(3):
        for i in range(len(plain)):
            a, b = plain[(epoch, i)], aug[(epoch, i)]
            colour, word = a["caption"].split()[1], a["caption"].split()[4]
            assert _measured_direction(a["video"].numpy(), colour) == word  # the measurement reads the data right
            assert _measured_direction(b["video"].numpy(), colour) == b["caption"].split()[4]
            expect_video, expect_caption = a["video"], a["caption"]
            if b["meta"]["flipped"]:
                expect_video, expect_caption = expect_video.flip(-1), swap_words(expect_caption, MIRROR_SWAP)
            if b["meta"]["reversed"]:
                expect_video, expect_caption = expect_video.flip(0), swap_words(expect_caption, REVERSE_SWAP)
            assert b["caption"] == expect_caption and np.array_equal(b["video"].numpy(), expect_video.numpy())
            seen = {k: v + int(b["meta"][k]) for k, v in seen.items()}
    n = 3 * len(plain)
    assert all(0.25 * n < v < 0.75 * n for v in seen.values()), seen  # each about half the time
    # the evaluation split and the default are untouched; unknown modes name the valid ones
    assert "flipped" not in build_dataset(DataConfig(**common, motion_augment="flip_reverse"), "test")[0]["meta"]
    with pytest.raises(ValueError, match="motion_augment must be one of 'none', 'flip', 'reverse', 'flip_reverse'"):
        DataConfig(**common, motion_augment="mirror")


def test_swap_words_whole_words_only() -> None:
    from ff_lightning.data.motion_words import REVERSE_SWAP, names_direction, swap_words

    assert (
        swap_words("Left of the upper dog, moving up-left", REVERSE_SWAP) == "Right of the upper dog, moving down-right"
    )
    assert swap_words("a man turns left then right", REVERSE_SWAP) == "a man turns right then left"
    assert not names_direction("an upbeat leftover") and names_direction("Up we go")
