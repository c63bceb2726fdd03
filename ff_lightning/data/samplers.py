"""A sampler that hands the epoch to the dataset with every index, shards itself across DDP ranks and resumes
mid-epoch.

The sampler runs in the main process and yields ``(epoch, index)`` pairs; :class:`~ff_lightning.data.base.ClipDataset`
derives its random generator from ``(seed, epoch, index)``, so a batch does not depend on ``num_workers`` or on worker
persistence.

Epochs: Lightning calls ``set_epoch`` on a dataloader's sampler before each training epoch (and before the first
one after a restore).

Distributed training: the sampler shards itself (``num_replicas``, ``rank``) instead of being wrapped in Lightning's
``DistributedSamplerWrapper`` (which would not forward the epoch to it). It subclasses
:class:`~torch.utils.data.DistributedSampler` only so that Lightning sees an already-distributed sampler and leaves it
alone. Rank ``r`` takes positions ``r, r + W, r + 2W, ...`` of the global (shuffled) order of the epoch, padded by
wrapping around to a multiple of ``W`` when ``pad`` (training: every rank runs the same number of steps). With
per-device batch ``b``, step ``k`` of the ``W`` ranks together covers positions ``[k W b, (k + 1) W b)`` of the
global order: exactly the batch of step ``k`` of one process with batch ``W b``.

Mid-epoch resume: :meth:`state_dict` is ``{"epoch", "consumed"}`` (samples of this rank's shard that the training
loop has taken, counted by :meth:`advance`, not by what workers or prefetching have read ahead);
:meth:`load_state_dict` makes the next iteration over that epoch skip them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler

from .sampling import sample_rng

__all__ = ["EpochSampler", "ResumableDataLoader"]


class EpochSampler(DistributedSampler):
    """Yields ``(epoch, index)`` for this rank's share of ``range(num_samples)``, shuffled from ``(seed, epoch)`` if
    asked (the same global order on every rank)."""

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        pad: bool = True,
    ) -> None:
        # DistributedSampler.__init__ is not called: it needs an initialised process group and a dataset
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        self.num_samples_total, self.shuffle, self.seed, self.epoch = int(num_samples), shuffle, int(seed), int(epoch)
        self.num_replicas, self.rank, self.pad = int(num_replicas), int(rank), pad
        self.consumed = 0  # samples of this rank's shard taken by the training loop in ``epoch``
        self._resume: tuple[int, int] | None = None  # (epoch, samples to skip) from a checkpoint

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.consumed = 0
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        """Samples this rank yields per epoch (what ``DistributedSampler.num_samples`` means)."""
        return len(self)

    def __len__(self) -> int:
        n, w = self.num_samples_total, self.num_replicas
        if self.pad:
            return -(-n // w)
        return len(range(self.rank, n, w))

    def global_order(self) -> list[int]:
        """Every sample index of the epoch in the order shared by all ranks (before sharding and padding)."""
        if self.shuffle:
            return [int(i) for i in sample_rng(self.seed, self.epoch, 0, salt=7).permutation(self.num_samples_total)]
        return list(range(self.num_samples_total))

    def shard(self) -> list[int]:
        """This rank's indices for the epoch, ``len(self)`` of them."""
        order = self.global_order()
        if self.pad and order:
            total = len(self) * self.num_replicas
            order = order + [order[i % len(order)] for i in range(total - len(order))]
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self.shard()
        skip = 0
        if self._resume is not None:
            epoch, skip = self._resume
            self._resume = None
            skip = skip if epoch == self.epoch else 0
        self.consumed = skip
        epoch = self.epoch
        for i in indices[skip:]:
            yield epoch, i

    # -------------------------------------------------------------------------------------------------- resuming
    def advance(self, num_samples: int) -> None:
        """Record that the training loop took ``num_samples`` more samples of this epoch."""
        self.consumed += int(num_samples)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Skip ``state["consumed"]`` samples when next iterating over ``state["epoch"]``."""
        self._resume = (int(state["epoch"]), int(state["consumed"]))


class ResumableDataLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` that Lightning treats as resumable (it has ``state_dict`` and
    ``load_state_dict``, saved in the fit loop's checkpoint state): a run restored mid-epoch continues with the next
    sample the interrupted run would have trained on. Consumption is reported by the owner through
    :meth:`advance` (the datamodule does it for every batch the training loop takes)."""

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        return sampler.state_dict() if isinstance(sampler, EpochSampler) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(self.sampler, EpochSampler) and state:
            self.sampler.load_state_dict(state)

    def advance(self, num_samples: int) -> None:
        if isinstance(self.sampler, EpochSampler):
            self.sampler.advance(num_samples)
