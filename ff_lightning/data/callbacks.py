"""A Lightning callback that counts the clips the datasets skipped and logs them once per epoch.

Skips happen in worker processes; each batch carries the skipped paths (``batch["skipped"]``), so counting in the main
process after each batch sees all of them.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["SkippedSamplesLogger", "SkipTally"]

log = logging.getLogger(__name__)


class SkipTally:
    """Skip events per path, in first-seen order."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, paths: list[str]) -> None:
        self.counts.update(paths)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self, first: int = 5) -> dict[str, Any]:
        return {"skipped": self.total, "unique": len(self.counts), "paths": list(self.counts)[:first]}

    def clear(self) -> None:
        self.counts.clear()


class SkippedSamplesLogger(pl.Callback):
    """Accumulates ``batch["skipped"]`` per stage and logs the count and the first ``show`` paths each epoch.

    Messages go to python logging (rank zero, WARNING when something was skipped); ``log_metric`` also logs
    ``data/skipped_<stage>`` through the LightningModule. ``history`` keeps ``(stage, epoch, summary)`` tuples.
    """

    def __init__(self, show: int = 5, log_metric: bool = True) -> None:
        self.show, self.log_metric = show, log_metric
        self.tallies = {"train": SkipTally(), "val": SkipTally(), "test": SkipTally()}
        self.history: list[tuple[str, int, dict[str, Any]]] = []

    def _add(self, stage: str, batch: Any) -> None:
        if isinstance(batch, dict) and batch.get("skipped"):
            self.tallies[stage].add(list(batch["skipped"]))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._add("train", batch)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._add("val", batch)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._add("test", batch)

    def _report(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tally = self.tallies[stage]
        summary = tally.summary(self.show)
        self.history.append((stage, int(trainer.current_epoch), summary))
        if summary["skipped"]:
            _warn(
                f"epoch {trainer.current_epoch} {stage}: skipped {summary['skipped']} unusable clip(s) "
                f"({summary['unique']} distinct), e.g. {', '.join(summary['paths'])}"
            )
        if self.log_metric and not trainer.sanity_checking:
            pl_module.log(f"data/skipped_{stage}", float(summary["skipped"]), rank_zero_only=True)
        tally.clear()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report("train", trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report("val", trainer, pl_module)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report("test", trainer, pl_module)


@rank_zero_only
def _warn(message: str) -> None:
    log.warning(message)
