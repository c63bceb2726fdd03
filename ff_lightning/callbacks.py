"""What every ``ff train`` run adds to Lightning: atomic checkpoint files, per-step seeding, a stop on non-finite losses
and the final hyperparameters-with-metrics record in TensorBoard.

- :class:`AtomicCheckpointIO`: a checkpoint is written to a temporary file in its own folder, flushed to disk
  (``fsync``) and renamed over the target (``os.replace``), then the folder entry is synced. A run killed while saving
  leaves the previous checkpoint intact, never a truncated one. Loading uses ``torch.load(weights_only=True)``: our
  checkpoints hold only tensors and plain containers.
- :class:`StepSeed`: before every training batch the global torch generator is reseeded from ``(run.seed, rank, epoch,
  batch index)``. Diffusion noise, timesteps and dropout of a step then depend on nothing else: a run resumed from a
  checkpoint draws what the uninterrupted run drew, and DDP ranks draw different noise (a shared seed would give
  every rank the same noise).
- :class:`NonFiniteLossStop`: a training step whose loss is NaN/inf stops the run; a checkpoint of the state before
  that step (``nonfinite-step=S-batch=B.ckpt``, never picked by ``run.resume=auto``) is written and the error names the
  global step, the batch and its samples.
- :func:`log_final_hparams`: the resolved config (flattened) with the final metrics (``final/<name>``) as TensorBoard
  hyperparameters, so runs can be compared in TensorBoard's HPARAMS tab.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from ff_lightning.io import atomic_torch_save

__all__ = [
    "AtomicCheckpointIO",
    "StepSeed",
    "NonFiniteLossStop",
    "NONFINITE_PREFIX",
    "step_seed",
    "flat_config",
    "log_final_hparams",
]

log = logging.getLogger(__name__)

NONFINITE_PREFIX = "nonfinite-"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints written atomically and durably; loaded with ``weights_only=True`` unless told otherwise."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        atomic_torch_save(checkpoint, path)
        _fsync_dir(path.parent)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> Any:
        from ff_lightning.checkpoints import load_checkpoint

        if weights_only is False:  # an explicit request for a trusted file
            return super().load_checkpoint(path, map_location=map_location, weights_only=False)
        return load_checkpoint(path, map_location=map_location or "cpu")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------------ seeding
def step_seed(seed: int, rank: int, epoch: int, batch_idx: int) -> int:
    """A 63-bit seed determined by ``(seed, rank, epoch, batch_idx)`` alone."""
    state = np.random.SeedSequence([seed & (2**64 - 1), rank, epoch, batch_idx, 0x5EED]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


class StepSeed(pl.Callback):
    """Reseed torch's global generator (every device) before each training batch; see the module docstring."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        torch.manual_seed(step_seed(self.seed, trainer.global_rank, trainer.current_epoch, batch_idx))


# ------------------------------------------------------------------------------------------------ non-finite loss
def _loss_of(outputs: Any) -> torch.Tensor | None:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) and isinstance(outputs.get("loss"), torch.Tensor):
        return outputs["loss"]
    return None


def _describe_batch(batch: Any, limit: int = 4) -> str:
    """The samples of a clip batch, as ``index (path)`` of up to ``limit`` of them."""
    metas = batch.get("meta") if isinstance(batch, dict) else None
    if not metas:
        return "samples unknown"
    parts = []
    for meta in list(metas)[:limit]:
        index = meta.get("requested_index", meta.get("index", "?"))
        parts.append(f"{index} ({meta.get('path', '?')})")
    more = f" and {len(metas) - limit} more" if len(metas) > limit else ""
    return "samples " + ", ".join(parts) + more


class NonFiniteLossStop(pl.Callback):
    """Stop on a NaN/inf training loss with a checkpoint and a message naming the step, batch and samples.

    Systems that check their own loss (they raise :class:`FloatingPointError` before the backward pass, so the weights
    are still those before the bad step) are caught in ``on_exception``; for the others the loss returned by
    ``training_step`` is checked after the batch (weights may then already be updated). The checkpoint goes to
    ``dirpath`` (default: the trainer's ``default_root_dir/checkpoints``); ``saved`` holds its path afterwards.
    """

    def __init__(self, dirpath: str | os.PathLike[str] | None = None) -> None:
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.saved: Path | None = None
        self._batch: Any = None
        self._batch_idx = -1

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch, self._batch_idx = batch, batch_idx

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = _loss_of(outputs)
        if loss is not None and not bool(torch.isfinite(loss.detach()).all()):
            raise FloatingPointError(
                f"non-finite loss {float(loss.detach().float().mean())} (returned by training_step)"
            )
        self._batch = None  # keep no reference to finished batches

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, FloatingPointError) or self._batch_idx < 0:
            return
        step, batch_idx, epoch = trainer.global_step, self._batch_idx, trainer.current_epoch
        where = f"global step {step}, epoch {epoch}, batch {batch_idx} ({_describe_batch(self._batch)})"
        try:
            path = self._save(trainer, f"{NONFINITE_PREFIX}step={step}-batch={batch_idx}.ckpt")
        except Exception as e:  # the message must still come out
            log.error("could not save the non-finite-loss checkpoint: %s", e)
            note = f"non-finite loss at {where}; saving a checkpoint failed: {e}"
        else:
            self.saved = path
            note = f"non-finite loss at {where}; the state before this step is saved in {path}"
        log.error("training stopped: %s", note)
        if hasattr(exception, "add_note"):
            exception.add_note(note)

    def _save(self, trainer: pl.Trainer, name: str) -> Path:
        folder = self.dirpath or Path(trainer.default_root_dir) / "checkpoints"
        if trainer.world_size == 1:
            path = folder / name
            trainer.save_checkpoint(path)
            return path
        # only this rank may have failed: no collective calls (trainer.save_checkpoint waits on a barrier)
        path = folder / name.replace(".ckpt", f"-rank={trainer.global_rank}.ckpt")
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, path)
        return path


# ------------------------------------------------------------------------------------------------ hyperparameters
def flat_config(cfg: Any, sep: str = "/") -> dict[str, Any]:
    """A resolved config as one flat dict of scalars (``section/key``); lists and None become strings."""
    from omegaconf import DictConfig, OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            if not node and prefix:
                out[prefix] = "{}"
            for k, v in node.items():
                walk(v, f"{prefix}{sep}{k}" if prefix else str(k))
        elif isinstance(node, bool | int | float | str):
            out[prefix] = node
        else:
            out[prefix] = str(node)

    walk(tree, "")
    return out


def log_final_hparams(trainer: pl.Trainer, cfg: Any, extra_metrics: dict[str, float] | None = None) -> dict[str, float]:
    """Log the flattened config with the final scalar metrics of ``trainer`` (``final/<name>``) to its TensorBoard
    logger, at the last global step (rank zero). Returns the metrics logged."""
    from lightning.pytorch.loggers import TensorBoardLogger

    metrics: dict[str, float] = {}
    for name, value in {**trainer.callback_metrics, **(extra_metrics or {})}.items():
        v = value.detach().float() if isinstance(value, torch.Tensor) else value
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                continue
            v = float(v)
        if isinstance(v, int | float) and math.isfinite(float(v)):
            metrics[f"final/{name}"] = float(v)
    if not trainer.is_global_zero:
        return metrics
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(flat_config(cfg), metrics=metrics or {"final/none": 0.0}, step=trainer.global_step)
            logger.finalize("success")  # flush and close the event file (the fit already closed the first one)
    return metrics
