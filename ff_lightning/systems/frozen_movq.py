"""What every latent-diffusion system shares (T2I, keyframes, interpolation): a frozen MoVQ and an optimised subset.

:class:`FrozenMoVQDiffusionSystem` is a LightningModule base that holds no model of its own. Subclasses set
``self.cfg`` (the experiment config), ``self.movq`` (the frozen autoencoder) and ``self.ema`` (``None`` until fit
starts) in their ``__init__``; the base then supplies:

- ``train()`` that keeps the MoVQ in inference mode;
- the trainable parameters (those with ``requires_grad``), AdamW over them with an optional linear warmup;
- an EMA of those parameters (``optim.ema_decay``): created at fit start, updated once per optimiser step (before the
  callbacks' ``on_train_batch_end``, where checkpoints are written, so a checkpoint holds that step's EMA), swapped in
  for validation, saved by parameter name as ``ema_state_dict``;
- checkpoints without the MoVQ's weights (they come from ``module.movq_ckpt``), refilled on load.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn

from ff_lightning.systems.ema import EMA

__all__ = ["FrozenMoVQDiffusionSystem"]


class FrozenMoVQDiffusionSystem(L.LightningModule):
    """Base of the diffusion systems: frozen MoVQ, AdamW + warmup over the trainable parameters, EMA, checkpoints."""

    cfg: DictConfig
    movq: nn.Module
    ema: EMA | None

    def train(self, mode: bool = True) -> FrozenMoVQDiffusionSystem:
        super().train(mode)
        self.movq.eval()  # frozen: always in inference mode
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    # ---------------------------------------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        o = self.cfg.optim
        params = self.trainable_parameters()
        if not params:
            raise ValueError("nothing to train: every parameter is frozen")
        opt = torch.optim.AdamW(
            params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, fused=self._fused_adamw(params)
        )
        if not o.warmup_steps:
            return opt
        warmup = int(o.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    #: Lightning precisions under which the fused AdamW is used (no gradient scaler; Lightning's mixed-precision
    #: plugins refuse gradient clipping with an optimizer that unscales gradients itself, as the fused one does)
    FUSED_ADAMW_PRECISIONS = ("32-true", "32", "64-true", "64")

    def _fused_adamw(self, params: list[nn.Parameter]) -> bool:
        """The fused AdamW kernel (one pass over the parameters instead of about ten small ops per tensor: the
        single-threaded CPU step of the 17.6M-parameter small UNet: 66 -> 23 ms) where it applies: float parameters on
        CPU or CUDA, full precision (or no trainer attached yet). Same update up to float rounding."""
        if not all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params):
            return False
        trainer = self._trainer
        return trainer is None or str(trainer.precision) in self.FUSED_ADAMW_PRECISIONS

    def on_fit_start(self) -> None:
        if self.cfg.optim.ema_decay and self.ema is None:
            self.ema = EMA(self.trainable_parameters(), self.cfg.optim.ema_decay)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimiser step, then the EMA update: once per optimiser step (not per accumulated batch), and before
        the callbacks' ``on_train_batch_end`` (where checkpoints are saved), so a checkpoint holds this step's EMA."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.trainable_parameters())

    # ------------------------------------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        if self.ema is not None:
            self.ema.swap_in(self.trainable_parameters())

    def on_validation_epoch_end(self) -> None:
        if self.ema is not None:
            self.ema.swap_out(self.trainable_parameters())

    # ---------------------------------------------------------------------------------------------------- logging
    def _tensorboard(self) -> Any | None:
        """The TensorBoard ``SummaryWriter`` when the run logs to TensorBoard, else ``None``."""
        exp = getattr(self.logger, "experiment", None)
        return exp if exp is not None and hasattr(exp, "add_images") else None

    # -------------------------------------------------------------------------------------------- checkpointing
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("movq.")]:
            del state[key]  # the frozen MoVQ comes from module.movq_ckpt
        if self.ema is not None:
            names = [n for n, _ in self.trainable_named_parameters()]
            checkpoint["ema_state_dict"] = {n: s for n, s in zip(names, self.ema.shadow, strict=True)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        ema = checkpoint.get("ema_state_dict")
        if ema and self.cfg.optim.ema_decay:
            names = [n for n, _ in self.trainable_named_parameters()]
            self.ema = EMA(self.trainable_parameters(), self.cfg.optim.ema_decay)
            self.ema.shadow = [ema[n].to(self.device) for n in names]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Checkpoints leave out the frozen MoVQ: fill its entries from the model already loaded."""
        full = dict(state_dict)
        for key, value in self.movq.state_dict().items():
            full.setdefault(f"movq.{key}", value)
        return super().load_state_dict(full, strict=strict, assign=assign)
