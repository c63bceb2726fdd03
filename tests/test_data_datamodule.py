"""DataModule behaviour: determinism across worker counts, skip accounting through Lightning, clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from ff_lightning.data import (
    DataConfig,
    NoUsableSamplesError,
    SkippedSamplesLogger,
    build_datamodule,
    build_dataset,
    dataset_names,
)
from ff_lightning.data.fixtures import write_vimeo_layout, write_webvid_layout
from ff_lightning.registry import UnknownChoiceError


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dm")
    write_webvid_layout(root, num_videos=10, num_frames=12, corrupt=[3], short=[5], missing=[8])
    write_webvid_layout(root, num_videos=2, csv_name="val.csv", prefix="val")
    return root


def _epochs(cfg: DataConfig, epochs: int = 2) -> list[dict]:
    loader = build_datamodule(cfg).train_dataloader()
    out = []
    for e in range(epochs):
        loader.sampler.set_epoch(e)
        out += list(loader)
    return out


def test_same_batches_with_and_without_workers(root: Path) -> None:
    base = dict(source="webvid", root=str(root), num_frames=3, stride=2, size=[16, 16], batch_size=3, seed=7)
    single = _epochs(DataConfig(**base, num_workers=0))
    multi = _epochs(DataConfig(**base, num_workers=2))
    assert len(single) == len(multi) == 6
    for a, b in zip(single, multi):
        assert torch.equal(a["video"], b["video"])
        assert a["caption"] == b["caption"] and a["skipped"] == b["skipped"]
        assert [m["start"] for m in a["meta"]] == [m["start"] for m in b["meta"]]
    # the two epochs differ (shuffle order and random starts)
    assert [m["key"] for b in single[:3] for m in b["meta"]] != [m["key"] for b in single[3:] for m in b["meta"]]


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.epochs: list[tuple[int, list[int]]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.epochs.append((self.current_epoch, [m["epoch"] for m in batch["meta"]]))
        return ((batch["video"].mean() - self.w) ** 2).sum()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        assert batch["video"].shape[1:] == (4, 3, 16, 16)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_skips_are_counted_and_logged_per_epoch_through_lightning(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = DataConfig(source="webvid", root=str(root), num_frames=4, size=[16, 16], batch_size=5, num_workers=2)
    cb = SkippedSamplesLogger()
    model = _Tiny()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[cb],
    )
    with caplog.at_level(logging.WARNING, logger="ff_lightning.data.callbacks"):
        trainer.fit(model, datamodule=build_datamodule(cfg))
    train = [h for h in cb.history if h[0] == "train"]
    assert [h[1] for h in train] == [0, 1]
    for _, _, summary in train:  # corrupt, too short, missing: each met at least once per epoch (also as replacements)
        assert summary["unique"] == 3 and summary["skipped"] >= 3
    assert sum("unusable clip(s) (3 distinct)" in r.getMessage() for r in caplog.records) == 2
    assert {e for e, _ in model.epochs} == {0, 1}
    assert all(set(ep) == {e} for e, ep in model.epochs)  # Lightning's set_epoch reached the sampler


def test_unknown_source_lists_choices() -> None:
    with pytest.raises(UnknownChoiceError) as err:
        build_datamodule(DataConfig(source="kinetics"))
    msg = str(err.value)
    for name in (
        "webvid",
        "vimeo_septuplet",
        "ucf101",
        "msrvtt",
        "bundled_septuplet",
        "bundled_shapes",
        "bundled_shapes_ucf",
    ):
        assert name in msg and name in dataset_names()
    assert isinstance(err.value, KeyError) and "kinetics" in msg


def test_no_usable_samples_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "vimeo"
    write_vimeo_layout(empty, num_train=0, num_test=1)
    with pytest.raises(NoUsableSamplesError, match=str(empty)) as err:
        build_dataset(DataConfig(source="vimeo_septuplet", root=str(empty)), "train")
    assert "sep_trainlist.txt" in str(err.value)
    bad = tmp_path / "bad"
    write_webvid_layout(bad, num_videos=3, corrupt=[0, 1], missing=[2])
    ds = build_dataset(DataConfig(source="webvid", root=str(bad), val_fraction=0.0, max_attempts=5), "train")
    with pytest.raises(NoUsableSamplesError, match=str(bad)):
        ds[0]
    with pytest.raises(NoUsableSamplesError, match="CSV"):
        build_dataset(DataConfig(source="webvid", root=str(tmp_path / "nothing")), "train")
    with pytest.raises(ValueError, match="data.root is required"):
        build_dataset(DataConfig(source="msrvtt"), "train")


def test_config_validation_and_max_samples(root: Path) -> None:
    with pytest.raises(ValueError, match="size"):
        DataConfig(size=[64])
    with pytest.raises(ValueError, match="eval_start"):
        DataConfig(eval_start="middle")
    ds = build_dataset(DataConfig(source="webvid", root=str(root), max_samples=4), "train")
    assert len(ds) == 4 and ds.records[0].key == "v000" and ds.records[-1].key == "v009"  # evenly spread
