"""Lightning fit from a validated experiment config (what ``ff train`` runs).

The run directory is ``run.output_dir/run.name/version_N`` (TensorBoard logger). The resolved config is written there
as ``config.yaml`` before training starts, and checkpoints go to its ``checkpoints/`` folder. ``trainer.max_steps=0``
only validates the model as built (no optimiser is configured, so a fully frozen model can be evaluated).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ff_lightning.config import save_config

log = logging.getLogger(__name__)

__all__ = ["RunResult", "fit", "build_system", "find_last_checkpoint"]


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


def _trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(t, dict)
    devices = t.pop("devices")
    t["devices"] = int(devices) if str(devices).isdigit() else devices
    return {k: v for k, v in t.items() if v is not None}


def find_last_checkpoint(output_dir: str | Path, name: str) -> Path | None:
    """The newest ``last.ckpt`` among ``output_dir/name/version_*/checkpoints`` (for ``run.resume=auto``)."""
    cands = sorted(Path(output_dir, name).glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return cands[-1] if cands else None


def fit(cfg: DictConfig, *, extra_callbacks: list[Any] | None = None) -> RunResult:
    """Train ``cfg`` with Lightning and return the run directory, best/last checkpoint and final logged metrics."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from ff_lightning.data import SkippedSamplesLogger, build_datamodule

    L.seed_everything(cfg.run.seed, workers=True)
    ckpt_path = cfg.run.resume
    if ckpt_path == "auto":
        found = find_last_checkpoint(cfg.run.output_dir, cfg.run.name)
        ckpt_path = str(found) if found else None
        log.info("resume=auto: %s", ckpt_path or "no checkpoint yet, starting fresh")
    logger = TensorBoardLogger(save_dir=cfg.run.output_dir, name=cfg.run.name, default_hp_metric=False)
    run_dir = Path(logger.log_dir)
    save_config(cfg, run_dir / "config.yaml")
    module = build_system(cfg)  # model and config errors surface before any data is touched
    datamodule = build_datamodule(cfg.data)
    ckpt_cb = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", save_last=True, every_n_train_steps=cfg.run.checkpoint_every_n_steps
    )
    callbacks = [ckpt_cb, LearningRateMonitor(logging_interval="step"), SkippedSamplesLogger(), *(extra_callbacks or [])]
    trainer = L.Trainer(logger=logger, callbacks=callbacks, default_root_dir=str(run_dir), **_trainer_kwargs(cfg))
    if cfg.trainer.max_steps == 0:  # evaluate as built (e.g. module.policy=none): no optimiser, no checkpoint
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path)
    else:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    last = Path(ckpt_cb.last_model_path) if ckpt_cb.last_model_path else None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    return RunResult(run_dir, last, metrics, module, trainer)
