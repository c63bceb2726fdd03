"""Loaders over tiny fixtures in each real on-disk layout: WebVid CSV, Vimeo septuplets, UCF-101, MSR-VTT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ff_lightning.data import DataConfig, build_datamodule, build_dataset
from ff_lightning.data.fixtures import (
    decode_indices,
    write_msrvtt_layout,
    write_ucf_layout,
    write_vimeo_layout,
    write_webvid_layout,
)
from ff_lightning.data.ucf101 import class_prompt, split_camel_case


def _check_batch(batch: dict, b: int, t: int, hw: tuple[int, int]) -> None:
    v = batch["video"]
    assert v.shape == (b, t, 3, *hw) and v.dtype == torch.float32
    assert v.min() >= -1 and v.max() <= 1
    assert len(batch["caption"]) == b and all(isinstance(c, str) for c in batch["caption"])
    assert batch["label"].dtype == torch.long and batch["label"].shape == (b,)
    assert len(batch["meta"]) == b and isinstance(batch["skipped"], list)


@pytest.fixture(scope="module")
def webvid_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("webvid")
    # 0..7 usable; 2 is corrupt, 4 too short, 6 missing
    write_webvid_layout(root, num_videos=8, corrupt=[2], short=[4], missing=[6])
    write_webvid_layout(root, num_videos=2, csv_name="val.csv", prefix="val")
    return root


def test_webvid_skips_bad_clips_and_counts_them(webvid_root: Path) -> None:
    cfg = DataConfig(source="webvid", root=str(webvid_root), num_frames=4, stride=2, size=[16, 24], batch_size=4)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 8 and len(dm.datasets["val"]) == 2
    skipped: list[str] = []
    seen = []
    for batch in dm.train_dataloader():
        _check_batch(batch, 4, 4, (16, 24))
        skipped += batch["skipped"]
        seen += [m["key"] for m in batch["meta"]]
        assert all(c.startswith("caption of v") for c in batch["caption"])
        assert (batch["label"] == -1).all()
    bad = {str(webvid_root / "page0" / n) for n in ("v002.mp4", "v004.mp4", "v006.mp4")}
    assert set(skipped) == bad  # each bad clip is met once (its own index) and replaced by a good one
    assert not set(seen) & {"v002", "v004", "v006"}
    val = next(iter(dm.val_dataloader()))
    _check_batch(val, 2, 4, (16, 24))
    assert [m["key"] for m in val["meta"]] == ["val000", "val001"]


def test_webvid_path_column_and_heldout_fraction(tmp_path: Path) -> None:
    write_webvid_layout(tmp_path, num_videos=20, num_frames=6, path_column=True)
    cfg = DataConfig(source="webvid", root=str(tmp_path), num_frames=2, val_fraction=0.3)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    train_keys, val_keys = {r.key for r in train.records}, {r.key for r in val.records}
    assert train_keys.isdisjoint(val_keys) and len(train_keys | val_keys) == 20 and val_keys
    assert build_dataset(cfg, "val").records == val.records  # deterministic
    assert train[0]["video"].shape == (2, 3, 64, 64)


def test_vimeo_septuplets_and_broken_frame(tmp_path: Path) -> None:
    write_vimeo_layout(tmp_path, num_train=4, num_test=2, drop_frame=["00001/0002"])
    cfg = DataConfig(source="vimeo_septuplet", root=str(tmp_path), num_frames=3, stride=2, size=[32, 32])
    train = build_dataset(cfg, "train")
    assert train.frames_per_sequence == 7 and len(train) == 4
    s = train[1]  # its sequence lacks im7.png: skipped; the replacement is a complete one
    assert s["skipped"] and s["skipped"][0].endswith("im7.png") and s["meta"]["key"] != "00001/0002"
    test = build_dataset(cfg, "test")
    assert [r.key for r in test.records] == ["00001/0005", "00001/0006"]
    t = test[0]
    assert t["meta"]["indices"] == [1, 3, 5] and decode_indices(t["video"]) == [1, 3, 5]  # centred start
    first = build_dataset(DataConfig(**{**cfg.__dict__, "eval_start": "first"}), "test")[0]
    assert decode_indices(first["video"]) == [0, 2, 4]


def test_vimeo_longer_sequences_detected(tmp_path: Path) -> None:
    write_vimeo_layout(tmp_path, num_train=2, num_test=1, frames=16)
    ds = build_dataset(
        DataConfig(source="vimeo_septuplet", root=str(tmp_path), num_frames=8, eval_start="first"), "val"
    )
    assert ds.frames_per_sequence == 16
    assert decode_indices(ds[0]["video"]) == list(range(8))


def test_ucf101_labels_captions_splits_and_extensions(tmp_path: Path) -> None:
    write_ucf_layout(tmp_path, classes=("ApplyEyeMakeup", "YoYo"), groups=(1, 8, 9), mp4_classes=("YoYo",))
    cfg = DataConfig(source="ucf101", root=str(tmp_path), num_frames=4, batch_size=2)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert len(train) == 4 and len(test) == 2  # split 1 tests on groups 1..7
    assert sorted({r.label for r in train.records}) == [0, 1] and train.classes == ["ApplyEyeMakeup", "YoYo"]
    by_label = {r.label: r for r in test.records}
    assert by_label[0].caption == "a video of apply eye makeup" and by_label[1].path.endswith(".mp4")
    s = test[1]
    assert s["label"] == 1 and s["caption"] == "a video of yo yo" and s["video"].shape == (4, 3, 64, 64)
    split2 = build_dataset(DataConfig(**{**cfg.__dict__, "split_index": 2}), "test")
    assert len(split2) == 4  # groups 8 and 9
    batch = next(iter(build_datamodule(cfg).train_dataloader()))
    _check_batch(batch, 2, 4, (64, 64))
    assert set(batch["label"].tolist()) <= {0, 1}


def test_camel_case_prompts() -> None:
    assert split_camel_case("ApplyEyeMakeup") == ["Apply", "Eye", "Makeup"]
    assert split_camel_case("CleanAndJerk") == ["Clean", "And", "Jerk"]
    assert class_prompt("PlayingDaf", "{}") == "playing daf"


def test_msrvtt_splits_and_captions(tmp_path: Path) -> None:
    write_msrvtt_layout(tmp_path, video_ids=(0, 1, 2, 7010, 7011), split_field={2: "test"})
    cfg = DataConfig(source="msrvtt", root=str(tmp_path), num_frames=4, seed=3)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert [r.key for r in train.records] == ["video0", "video1"]
    assert [r.key for r in test.records] == ["video2", "video7010", "video7011"]  # split field, then by id
    t = test[0]
    assert t["caption"] == "video2 caption 0" and t["meta"]["captions"] == [f"video2 caption {k}" for k in range(3)]
    captions = {train[(e, 0)]["caption"] for e in range(12)}
    assert captions <= {f"video0 caption {k}" for k in range(3)} and len(captions) > 1  # seeded random per epoch
    assert train[(5, 0)]["caption"] == train[(5, 0)]["caption"]
    first = build_dataset(DataConfig(**{**cfg.__dict__, "caption_mode": "first"}), "train")
    assert {first[(e, 0)]["caption"] for e in range(4)} == {"video0 caption 0"}
