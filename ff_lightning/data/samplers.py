"""A sampler that hands the epoch to the dataset with every index, so per-sample randomness survives worker processes.

Lightning calls ``set_epoch`` on a dataloader's sampler at the start of each training epoch. The sampler runs in the
main process and yields ``(epoch, index)`` pairs; :class:`~ff_lightning.data.base.ClipDataset` derives its random
generator from ``(seed, epoch, index)``, so a batch does not depend on ``num_workers`` or on worker persistence.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler

from .sampling import sample_rng

__all__ = ["EpochSampler"]


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` for ``index`` in ``range(num_samples)``, shuffled from ``(seed, epoch)`` if asked."""

    def __init__(self, num_samples: int, *, shuffle: bool = True, seed: int = 0, epoch: int = 0) -> None:
        self.num_samples, self.shuffle, self.seed, self.epoch = int(num_samples), shuffle, int(seed), int(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = sample_rng(self.seed, self.epoch, 0, salt=7).permutation(self.num_samples)
        else:
            order = range(self.num_samples)
        epoch = self.epoch
        for i in order:
            yield epoch, int(i)
