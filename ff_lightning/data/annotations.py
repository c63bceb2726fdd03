"""Bad entries of annotation files (CSV rows, list lines, JSON records): skipped and counted, or one-line errors.

A source that lists its samples from an annotation file keeps an :class:`AnnotationSkips`: each unusable entry is
skipped with ``file:line: reason`` (``file: key[i]: reason`` for JSON records, which have no useful line), the dataset
keeps the count (``dataset.skipped_annotations``) and the reasons (``dataset.annotation_problems``, the first
:data:`MAX_REASONS`), and one summary warning is logged. A file that cannot be read at all (not UTF-8, not JSON,
a broken class index) raises :class:`AnnotationError` naming the file (and line), before any work. When every entry is
skipped, :meth:`AnnotationSkips.raise_if_all_skipped` raises
:class:`~ff_lightning.data.base.NoUsableSamplesError` with the first reasons.
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["AnnotationError", "AnnotationSkips", "MAX_REASONS"]

log = logging.getLogger(__name__)

#: how many skip reasons a dataset keeps and the summary warning shows
MAX_REASONS = 5


class AnnotationError(ValueError):
    """An annotation file that cannot be used at all; the message names the file (and line) and what is wrong."""


class AnnotationSkips:
    """Entries of annotation files skipped while a dataset lists its samples."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.count = 0
        self.reasons: list[str] = []

    def skip(self, where: str | Path, reason: str) -> None:
        """Count one skipped entry; ``where`` is ``file:line`` (or ``file: key[i]``)."""
        self.count += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(f"{where}: {reason}")

    def summary(self) -> str:
        more = f" (+{self.count - len(self.reasons)} more)" if self.count > len(self.reasons) else ""
        return "; ".join(self.reasons) + more

    def warn(self, split: str) -> None:
        """Log one warning with the count and the first reasons (nothing when no entry was skipped)."""
        if self.count:
            log.warning(
                "%s %s: skipped %d unusable annotation entr%s: %s",
                self.source, split, self.count, "y" if self.count == 1 else "ies", self.summary(),
            )  # fmt: skip

    def raise_if_all_skipped(self, kept: int, split: str) -> None:
        """:class:`NoUsableSamplesError` naming the first reasons when entries were skipped and none is left."""
        if kept == 0 and self.count:
            from .base import NoUsableSamplesError

            raise NoUsableSamplesError(
                f"{self.source}: no {split} samples: every annotation entry was unusable ({self.count} skipped): "
                f"{self.summary()}"
            )
