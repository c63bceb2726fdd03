"""The LightningDataModule every training system uses: one :class:`DataConfig` in, batches of clips out.

Batches are dicts (see :func:`~ff_lightning.data.collate.collate_clips`): ``video`` ``(B, T, C, H, W)`` float32 in
[-1, 1], ``caption`` list[str], ``label`` int64 ``(B,)``, ``meta`` list[dict], ``skipped`` list[str]. Validation and
test read the source's held-out split (or the train split when ``val_split == "train"``) in a fixed order.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from .base import ClipDataset
from .bundled import BUNDLED, ensure_bundled
from .collate import collate_clips
from .config import DataConfig
from .registry import build_dataset, check_source
from .samplers import EpochSampler

__all__ = ["VideoDataModule", "build_datamodule"]

log = logging.getLogger(__name__)


class VideoDataModule(pl.LightningDataModule):
    """Train/val/test dataloaders over the source named by ``cfg.source`` (see :mod:`ff_lightning.data.registry`)."""

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__()
        check_source(cfg.source)
        self.cfg = cfg
        self.datasets: dict[str, ClipDataset] = {}

    def prepare_data(self) -> None:
        """Build the bundled data once (rank zero) when the source reads it."""
        if self.cfg.root is None and self.cfg.source in BUNDLED:
            ensure_bundled(self.cfg.source, cache_dir=self.cfg.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "", ("train", "val", "test")):
            self.dataset(split)

    def dataset(self, split: str) -> ClipDataset:
        """The (cached) dataset of ``split``."""
        if split not in self.datasets:
            self.datasets[split] = build_dataset(self.cfg, split)
            log.info("%s %s: %d samples", self.cfg.source, split, len(self.datasets[split]))
        return self.datasets[split]

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        cfg = self.cfg
        ds = self.dataset(split)
        batch_size = cfg.batch_size if train else (cfg.val_batch_size or cfg.batch_size)
        workers = int(cfg.num_workers)
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=EpochSampler(len(ds), shuffle=train and cfg.shuffle, seed=cfg.seed),
            num_workers=workers,
            collate_fn=collate_clips,
            pin_memory=cfg.pin_memory,
            drop_last=train and cfg.drop_last and len(ds) >= batch_size,
            persistent_workers=cfg.persistent_workers and workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)


def build_datamodule(cfg: DataConfig) -> VideoDataModule:
    """A :class:`VideoDataModule` for ``cfg`` (raises on an unknown ``cfg.source``, listing the valid ones)."""
    return VideoDataModule(cfg)
