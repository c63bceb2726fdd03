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
