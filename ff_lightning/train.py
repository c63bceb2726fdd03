"""Lightning fit from a validated experiment config (what ``ff train`` runs).

The run directory is ``run.output_dir/run.name/version_N`` (TensorBoard logger). The resolved config is written there
as ``config.yaml`` before training starts, and checkpoints go to its ``checkpoints/`` folder: ``last.ckpt`` (every
``run.checkpoint_every_n_steps`` optimiser steps and at the end of every epoch) and the periodic
``epoch=E-step=S.ckpt``. Checkpoint files are written atomically (:class:`~ff_lightning.callbacks.AtomicCheckpointIO`)
and loaded with ``weights_only=True``.

``run.resume``: a checkpoint path, or ``auto`` for the newest checkpoint of any earlier version of this run name
(:func:`find_last_checkpoint`); training continues where it stopped, mid-epoch included: the data order
(:class:`~ff_lightning.data.samplers.EpochSampler` state), optimiser, schedulers, EMA and the per-step seeds
(``run.seed_every_step``) continue as in an uninterrupted run. A non-finite training loss stops the run with a
checkpoint and a message naming the step and batch (:class:`~ff_lightning.callbacks.NonFiniteLossStop`). At the end,
the flattened config and the final metrics are logged as TensorBoard hyperparameters. The logger
(:class:`~ff_lightning.tb_logging.TensorBoardLogger`) writes the systems' sample videos as animated GIFs.

``trainer.max_steps=0`` only validates the model as built (no optimiser is configured, so a fully frozen model can be
evaluated). Scaling (``trainer.strategy``, ``precision``, ``devices``, ``num_nodes``, ``accumulate_grad_batches``,
``gradient_checkpointing``): see ``docs/scaling.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ff_lightning.config import save_config

log = logging.getLogger(__name__)

__all__ = ["RunResult", "fit", "build_system", "find_last_checkpoint", "enable_gradient_checkpointing"]

# TrainerConfig fields that ff_lightning handles itself instead of passing them to lightning.Trainer
_OWN_TRAINER_KEYS = ("gradient_checkpointing",)


@dataclass
class RunResult:
    run_dir: Path
    checkpoint: Path | None
    metrics: dict[str, float]
    module: Any
    trainer: Any


def build_system(cfg: DictConfig) -> Any:
    """Instantiate the LightningModule named by ``cfg.system`` from the whole config."""
    from ff_lightning.systems import system_class

    return system_class(cfg.system)(cfg)


def enable_gradient_checkpointing(module: Any, enabled: bool = True) -> int:
    """Switch activation checkpointing on in every submodule that supports it (``set_gradient_checkpointing``, e.g.
    the UNet levels of :class:`~ff_lightning.models.unet.KandinskyUNet`); returns how many were switched."""
    count = 0
    for sub in module.modules():
        fn = getattr(sub, "set_gradient_checkpointing", None)
        if callable(fn):
            fn(enabled)
            count += 1
    return count


def _trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(t, dict)
    for key in _OWN_TRAINER_KEYS:
        t.pop(key, None)
    devices = t.pop("devices")
    t["devices"] = int(devices) if str(devices).isdigit() else devices
    return {k: v for k, v in t.items() if v is not None}


def find_last_checkpoint(output_dir: str | Path, name: str) -> Path | None:
    """The newest checkpoint (by modification time) among ``output_dir/name/version_*/checkpoints/*.ckpt`` (and the
    ``hpc_ckpt_*.ckpt`` Lightning saves before a SLURM requeue), leaving out the checkpoints written on a non-finite
    loss (resuming from them would meet the same loss). For ``run.resume=auto``."""
    from ff_lightning.callbacks import NONFINITE_PREFIX

    root = Path(output_dir, name)
    found = [*root.glob("version_*/checkpoints/*.ckpt"), *root.glob("version_*/hpc_ckpt_*.ckpt")]  # + SLURM requeue
    cands = [p for p in found if not p.name.startswith(NONFINITE_PREFIX)]
    if not cands:
        return None
    # newest first; on equal times prefer last.ckpt (written right after the periodic file of the same step)
    return max(cands, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"))


def fit(cfg: DictConfig, *, extra_callbacks: list[Any] | None = None) -> RunResult:
    """Train ``cfg`` with Lightning and return the run directory, best/last checkpoint and final logged metrics."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.utilities import rank_zero_only

    from ff_lightning.callbacks import AtomicCheckpointIO, NonFiniteLossStop, StepSeed, log_final_hparams
    from ff_lightning.data import SkippedSamplesLogger, build_datamodule
    from ff_lightning.data.bundled import BUNDLED
    from ff_lightning.tb_logging import TensorBoardLogger

    L.seed_everything(cfg.run.seed, workers=True)
    ckpt_path = cfg.run.resume
    if ckpt_path == "auto":
        found = find_last_checkpoint(cfg.run.output_dir, cfg.run.name)
        ckpt_path = str(found) if found else None
        log.info("resume=auto: %s", ckpt_path or "no checkpoint yet, starting fresh")
    elif ckpt_path is not None and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"run.resume: checkpoint not found: {ckpt_path}")
    # model, config and annotation-file errors surface before the run directory exists (no empty run folders)
    module = build_system(cfg)
    if cfg.trainer.gradient_checkpointing and not enable_gradient_checkpointing(module):
        log.warning("trainer.gradient_checkpointing: %s has no module that supports it", cfg.system)
    datamodule = build_datamodule(cfg.data)
    if cfg.data.root is not None or cfg.data.source not in BUNDLED:  # bundled data is built in prepare_data first
        datamodule.setup("validate" if cfg.trainer.max_steps == 0 else "fit")  # lists the samples (cached)
    logger = TensorBoardLogger(save_dir=cfg.run.output_dir, name=cfg.run.name, default_hp_metric=False)
    run_dir = Path(logger.log_dir)
    # processes started by torchrun / srun / Lightning's ddp launcher each run this function: only global rank 0
    # (known from the launcher's environment) creates the run directory, the others would pick the next version
    if rank_zero_only.rank == 0:
        save_config(cfg, run_dir / "config.yaml")
    ckpt_dir = run_dir / "checkpoints"
    every = cfg.run.checkpoint_every_n_steps
    # both write (and overwrite) the one last.ckpt: no "-v1" copies
    # at the end of every training epoch, even when validation runs only every few epochs (Lightning would otherwise
    # save after validation only)
    ckpt_cb = ModelCheckpoint(
        dirpath=ckpt_dir, save_last=True, every_n_train_steps=every, enable_version_counter=False,
        save_on_train_epoch_end=True,
    )  # fmt: skip
    # periodic checkpoints replace the end-of-epoch ones in ModelCheckpoint: keep both
    epoch_cbs = (
        [
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="{epoch}-{step}-end",
                save_last=True,
                every_n_epochs=1,
                enable_version_counter=False,
                save_on_train_epoch_end=True,
            )  # fmt: skip
        ]
        if every
        else []
    )
    callbacks = [
        ckpt_cb,
        *epoch_cbs,
        LearningRateMonitor(logging_interval="step"),
        SkippedSamplesLogger(),
        NonFiniteLossStop(ckpt_dir),
        *([StepSeed(cfg.run.seed)] if cfg.run.seed_every_step else []),
        *(extra_callbacks or []),
    ]
    trainer = L.Trainer(
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # the datamodule's EpochSampler shards itself across ranks
        **_trainer_kwargs(cfg),
    )
    if cfg.trainer.max_steps == 0:  # evaluate as built (e.g. module.policy=none): no optimiser, no checkpoint
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path)
    else:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    last = Path(ckpt_cb.last_model_path) if ckpt_cb.last_model_path else None
    if last is None and (ckpt_dir / "last.ckpt").is_file():  # spawn/fork launchers: the callback ran in the workers
        last = ckpt_dir / "last.ckpt"
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    log_final_hparams(trainer, cfg)
    return RunResult(run_dir, last, metrics, module, trainer)
