"""Interpolation samples: layout and frame indices for several s, too-short videos, augmentations, bundled long footage."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ff_lightning.data import DataConfig, NoUsableSamplesError, read_video_frames
from ff_lightning.data.bundled import build_set, bundled_root
from ff_lightning.data.interpolation import (
    InterpolationDataOptions,
    InterpolationSequenceDataset,
    SkipChoice,
    choose_skip,
    crop_origins,
    gaussian_blur,
    keyframe_positions,
    max_fitting_skip,
    num_keyframes_for,
    plan_sequence,
    sequence_length,
    sequence_span,
    target_positions,
)
from ff_lightning.data.transforms import frames_to_clip

TRAIN_FRAMES, TEST_FRAMES = 90, 26  # the reduced build: carphone (120 frames), 75 % train, gap 4


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ffcache")
    build_set("footage_long", root, reduced=True, progress=False)
    return root


def _cfg(cache: Path, **kw: object) -> DataConfig:
    base = DataConfig(source="bundled_footage_long", cache_dir=str(cache), num_frames=9, size=[16, 16], seed=3)
    return replace(base, **kw)


def test_layout_33_frames_is_9_keyframes_and_8_gaps_of_3() -> None:
    assert sequence_length(9) == 33 and num_keyframes_for(33) == 9 and num_keyframes_for(9) == 3
    assert keyframe_positions(9) == tuple(range(0, 33, 4))
    assert len(target_positions(9)) == 8 * 3 and 4 not in target_positions(9)
    for bad in (8, 10, 3):
        with pytest.raises(ValueError, match="4K - 3"):
            num_keyframes_for(bad)


@pytest.mark.parametrize("skip", [1, 2, 5, 12])
def test_frame_indices_of_keyframes_and_targets(skip: int) -> None:
    k = 3
    plan = plan_sequence(200, k, SkipChoice(skip, skip, False), start="first")
    assert plan.indices == tuple(j * skip for j in range(9))
    assert plan.keyframe_indices == (0, 4 * skip, 8 * skip)  # keyframes 4 s source frames apart
    assert plan.target_indices == tuple(j * skip for j in (1, 2, 3, 5, 6, 7))  # 3 targets per gap, s apart
    assert sequence_span(k, skip) == 8 * skip + 1
    strided = plan_sequence(200, k, SkipChoice(skip, skip, False), stride=2, start="first", neighbours=True)
    assert strided.indices == tuple(j * 2 * skip for j in range(9)) and strided.step == 2 * skip
    assert strided.neighbours == tuple(i + 1 for i in strided.keyframe_indices)
    centred = plan_sequence(8 * skip + 11, k, SkipChoice(skip, skip, False), start="center")
    assert centred.start == 5 and centred.indices[-1] == 5 + 8 * skip
    paper = plan_sequence(400, 9, SkipChoice(skip, skip, False), start="first")
    assert paper.keyframe_indices == tuple(range(0, 32 * skip + 1, 4 * skip)) and len(paper.target_indices) == 24


def test_too_short_videos_are_resampled_or_skipped() -> None:
    rng = np.random.default_rng(0)
    assert max_fitting_skip(40, 3) == 4 and max_fitting_skip(8, 3) == 0
    choices = [choose_skip(40, 3, rng, max_skip=12) for _ in range(300)]
    assert all(c is not None and 1 <= c.skip <= 4 for c in choices)
    resampled = [c for c in choices if c.resampled]
    assert resampled and all(c.drawn > 4 for c in resampled)  # drawn too large, then drawn again among 1..4
    assert {c.skip for c in resampled} == {1, 2, 3, 4}
    assert all(c.skip == c.drawn for c in choices if not c.resampled)
    assert choose_skip(40, 3, rng, fixed=9, too_short="skip") is None
    assert choose_skip(40, 3, rng, fixed=9).resampled  # resample policy
    assert choose_skip(8, 3, rng) is None  # not even s = 1 fits: skipped
    assert choose_skip(8, 3, rng, min_skip=1, max_skip=1) is None


def test_bundled_long_footage_is_split_in_time_without_leakage(cache: Path) -> None:
    root = bundled_root("bundled_footage_long", cache)
    rows = list(csv.DictReader(open(root / "provenance.csv")))
    assert {r["split"] for r in rows} == {"train", "test"}
    by_view: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
    for r in rows:
        by_view.setdefault((r["source"], r["view"]), {})[r["split"]] = (int(r["first_frame"]), int(r["last_frame"]))
    for spans in by_view.values():
        assert spans["train"][1] < spans["test"][0]  # test frames come later, none shared
    assert [int(r["num_frames"]) for r in rows] == [TRAIN_FRAMES, TEST_FRAMES]
    for split in ("train", "test"):
        header = (root / f"{split}.csv").read_text().splitlines()[0]
        assert header == "videoid,contentUrl,duration,page_dir,name,path"


def test_wrapper_reads_the_planned_frames(cache: Path) -> None:
    opts = InterpolationDataOptions(eval_skip=3, crop_scale=1.25)
    ds = InterpolationSequenceDataset.from_config(_cfg(cache), "val", opts)
    sample = ds[0]
    meta = sample["meta"]
    assert sample["video"].shape == (9, 3, 16, 16)
    assert meta["skip_frames"] == 3 and not meta["skip_resampled"] and meta["num_keyframes"] == 3
    start = meta["start"]
    assert meta["indices"] == [start + 3 * j for j in range(9)] and start == (TEST_FRAMES - 25) // 2  # centred
    assert meta["keyframe_indices"] == [start, start + 12, start + 24]
    frames = read_video_frames(meta["path"], meta["indices"])
    clip, _ = frames_to_clip(frames, (20, 20))  # the load size: 1.25 x 16
    torch.testing.assert_close(sample["video"], clip[..., 2:18, 2:18])  # centred crop outside training
    assert ds.counts["planned"] >= 1


def test_too_short_videos_are_counted_and_skipped(cache: Path) -> None:
    opts = InterpolationDataOptions(max_skip=20, too_short="resample", augment=False)
    train = InterpolationSequenceDataset.from_config(_cfg(cache), "train", opts)
    samples = [train[(e, 0)] for e in range(30)]
    skips = [s["meta"]["skip_frames"] for s in samples]
    assert max(skips) <= max_fitting_skip(TRAIN_FRAMES, 3) == 11
    resampled = [s["meta"] for s in samples if s["meta"]["skip_resampled"]]
    assert resampled and all(m["drawn_skip"] > 11 for m in resampled)
    assert train.counts["resampled"] == len(resampled) and train.counts["too_short"] == 0

    skipping = InterpolationSequenceDataset.from_config(_cfg(cache), "train", replace(opts, too_short="skip"))
    samples = [skipping[(e, 0)] for e in range(30)]
    events = sum(len(s["skipped"]) for s in samples)  # the paths the batch reports (SkippedSamplesLogger counts)
    assert events > 0 and skipping.counts["too_short"] == events
    assert all(s["meta"]["skip_frames"] <= 11 for s in samples)

    paper = InterpolationSequenceDataset.from_config(_cfg(cache, num_frames=33, max_attempts=3), "val", opts)
    with pytest.raises(NoUsableSamplesError, match="too short"):
        paper[0]  # 26 test frames < 33: nothing fits, every attempt skipped
    assert paper.counts["too_short"] == 3


def test_augmentations(cache: Path) -> None:
    base = InterpolationDataOptions(min_skip=1, max_skip=1, slide_prob=0.0, flip_prob=0.0, reverse_prob=0.0,
                                    average_prob=0.0, blur_prob=0.0)  # fmt: skip
    plain = InterpolationSequenceDataset.from_config(_cfg(cache), "train", base)
    avg = InterpolationSequenceDataset.from_config(_cfg(cache), "train", replace(base, average_prob=1.0))
    a, b = plain[(0, 0)], avg[(0, 0)]
    assert a["meta"]["indices"] == b["meta"]["indices"] and b["meta"]["augment"]["averaged"] == [0, 4, 8]
    keys = [0, 4, 8]
    targets = [j for j in range(9) if j not in keys]
    assert torch.equal(a["video"][targets], b["video"][targets])  # targets untouched
    torch.testing.assert_close(b["video"][0], 0.5 * (a["video"][0] + a["video"][1]))  # s = 1: next frame is #1

    both = InterpolationSequenceDataset.from_config(_cfg(cache), "train", replace(base, flip_prob=1.0,
                                                                                  reverse_prob=1.0))  # fmt: skip
    c = both[(0, 0)]
    assert torch.equal(c["video"], a["video"].flip(0).flip(-1))
    assert c["meta"]["indices"] == a["meta"]["indices"][::-1]
    assert c["meta"]["keyframe_indices"] == a["meta"]["keyframe_indices"][::-1]

    default = InterpolationSequenceDataset.from_config(_cfg(cache), "train", InterpolationDataOptions())
    s1, s2 = default[(2, 0)], default[(2, 0)]
    assert torch.equal(s1["video"], s2["video"])  # determined by (seed, epoch, index)
    assert s1["video"].shape == (9, 3, 16, 16) and s1["video"].abs().max() <= 1.0

    flat = torch.full((1, 3, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 1.0), flat)
    noise = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert gaussian_blur(noise, 1.0).std() < noise.std() * 0.7
    rng = np.random.default_rng(1)
    slide = crop_origins(9, (4, 4), "slide", rng)
    assert len(slide) == 9 and all(0 <= t <= 4 and 0 <= left <= 4 for t, left in slide)
    assert crop_origins(3, (4, 6), "center") == [(2, 3)] * 3
