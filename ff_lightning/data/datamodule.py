"""The LightningDataModule every training system uses: one :class:`DataConfig` in, batches of clips out.

Training batches come in the order of a :class:`~ff_lightning.data.samplers.EpochSampler` sharded across the
trainer's ranks (Lightning does not wrap it), through a :class:`~ff_lightning.data.samplers.ResumableDataLoader` whose
position (epoch, samples taken) is saved in checkpoints, so a run restored mid-epoch sees the same data order as an
uninterrupted one.

Batches are dicts (see :func:`~ff_lightning.data.collate.collate_clips`): ``video`` ``(B, T, C, H, W)`` float32 in
[-1, 1], ``caption`` list[str], ``label`` int64 ``(B,)``, ``meta`` list[dict], ``skipped`` list[str]. Validation and
test read the source's held-out split (or the train split when ``val_split == "train"``) in a fixed order.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from .base import ClipDataset
from .bundled import BUNDLED, ensure_bundled
from .collate import collate_clips
from .config import DataConfig
from .registry import build_dataset, check_source
from .samplers import EpochSampler, ResumableDataLoader

__all__ = ["VideoDataModule", "build_datamodule"]

log = logging.getLogger(__name__)


class VideoDataModule(pl.LightningDataModule):
    """Train/val/test dataloaders over the source named by ``cfg.source`` (see :mod:`ff_lightning.data.registry`)."""

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__()
        check_source(cfg.source)
        self.cfg = cfg
        self.datasets: dict[str, ClipDataset] = {}
        self._train_loader: ResumableDataLoader | None = None

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

    def _replicas(self) -> tuple[int, int]:
        """``(world size, global rank)`` of the attached trainer; ``(1, 0)`` without one."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        cfg = self.cfg
        ds = self.dataset(split)
        batch_size = cfg.batch_size if train else (cfg.val_batch_size or cfg.batch_size)
        workers = int(cfg.num_workers)
        world, rank = self._replicas()
        sampler = EpochSampler(
            len(ds), shuffle=train and cfg.shuffle, seed=cfg.seed, num_replicas=world, rank=rank, pad=train
        )
        return (ResumableDataLoader if train else DataLoader)(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_clips,
            pin_memory=cfg.pin_memory,
            drop_last=train and cfg.drop_last and len(ds) >= batch_size,
            persistent_workers=cfg.persistent_workers and workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", train=True)
        assert isinstance(loader, ResumableDataLoader)
        self._train_loader = loader
        return loader

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the samples the training loop takes (the resumable position saved in checkpoints)."""
        trainer = getattr(self, "trainer", None)
        if self._train_loader is not None and trainer is not None and trainer.training:
            video = batch.get("video") if isinstance(batch, dict) else None
            self._train_loader.advance(len(video) if video is not None else self.cfg.batch_size)
        return batch

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)


def build_datamodule(cfg: DataConfig) -> VideoDataModule:
    """A :class:`VideoDataModule` for ``cfg`` (raises on an unknown ``cfg.source``, listing the valid ones)."""
    return VideoDataModule(cfg)
