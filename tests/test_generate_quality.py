"""``benchmarks/generate_quality.py``: the per-frame check that ``ff generate``'s output shows the prompt's object.

The check must tell a pipeline that draws the object from one that does not: the same classifier finds the caption
in the real held-out frames (the ceiling row) and, at chance level, in what untrained stages draw.
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import load_benchmark

from ff_lightning.tiny_models import write_untrained_stages


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("generate_quality")


def test_bootstrap_interval_brackets_the_mean(bench: ModuleType) -> None:
    values = np.array([0.0, 1.0, 1.0, 1.0])
    mean, lo, hi = bench.bootstrap(values)
    assert mean == 0.75 and 0.0 <= lo <= mean <= hi <= 1.0 and lo < hi
    mean, lo, hi = bench.bootstrap(np.ones(48))  # every prompt scores 1: Wilson, not a point
    assert mean == 1.0 and hi == pytest.approx(1.0) and 0.9 < lo < 1.0


def test_untrained_stages_score_below_the_real_frames(bench: ModuleType, bundled_cache: Path, tmp_path: Path) -> None:
    ckpts = write_untrained_stages(tmp_path / "stages", seed=0)
    threads = torch.get_num_threads()
    try:
        args = ["--keyframes", str(ckpts["keyframes"]), "--interpolation", str(ckpts["interpolation"]),
                "--decoder", str(ckpts["decoder"]), "--prompts", "6", "--label", "untrained",
                "--out", str(tmp_path / "gen")]  # fmt: skip
        paths = bench.main(args)
    finally:
        torch.set_num_threads(threads)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {r["frames"]: r for r in csv.DictReader(open(paths["csv"], newline=""))}
    clips = {k: rows.pop(k) for k in list(rows) if rows[k]["motion_acc"]}  # the clip classifier's rows
    assert set(rows) == {"keyframes", "interpolated", "all", "real held-out clip (ceiling)",
                         "real clip through the image MoVQ (latent-space ceiling)"}  # fmt: skip
    # the keyframes as one clip, scored by make compare-temporal's clip classifier (colour / shape / motion)
    assert len(clips) == 3 and all(r["prompts"] == "6" for r in clips.values())
    real_clip = next(r for k, r in clips.items() if k.startswith("real held-out clip"))
    assert float(real_clip["colour_acc"]) >= 0.9 and float(real_clip["motion_acc"]) >= 0.6
    real, gen = rows["real held-out clip (ceiling)"], rows["all"]
    assert all(r["prompts"] == "6" and r["label"] == "untrained" for r in rows.values())
    # the classifier reads the real frames (ceiling) ...
    assert float(real["colour_acc"]) >= 0.9 and float(real["shape_acc"]) >= 0.6
    # ... and untrained stages' noise only by chance
    assert float(gen["colour_acc"]) <= 0.5 and float(gen["both_acc"]) < float(real["both_acc"])
    for r in rows.values():
        for attr in ("colour", "shape", "both"):
            assert float(r[f"{attr}_lo"]) <= float(r[f"{attr}_acc"]) <= float(r[f"{attr}_hi"])
    md = paths["md"].read_text()
    assert "| keyframes | 6 |" in md and "untrained" in md and str(ckpts["decoder"]) in md
