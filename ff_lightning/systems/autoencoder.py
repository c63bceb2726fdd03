"""Shared training loop of the autoencoder systems (image MoVQ and video decoder).

Manual optimisation, because the optional PatchGAN needs its own optimiser: per step the generator side minimises
``reconstruction (L1/L2) + lpips_weight * LPIPS + extra (e.g. codebook) + adaptive_w * gan_weight * hinge-G`` (the
GAN term only from ``gan_start_step`` on), then the discriminator minimises the hinge loss. Gradients are clipped
(by value 1.0 by default, as in MoVQGAN); an optional EMA of the trained parameters is kept and used for evaluation.
Subclasses define :meth:`reconstruct` and which parameters train.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from einops import rearrange
from omegaconf import DictConfig
from torch import nn

from ff_lightning.losses import adaptive_gan_weight, generator_loss, hinge_d_loss, reconstruction_loss
from ff_lightning.models.discriminator import PatchDiscriminator
from ff_lightning.systems.ema import EMA

__all__ = ["AutoencoderLossConfig", "AutoencoderSystem"]


@dataclass
class AutoencoderLossConfig:
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    lpips_weight: float = 0.0  # needs the AlexNet backbone file (see ff_lightning.metrics.weights); never random
    lpips_weights: str | None = None  # explicit path to the AlexNet backbone weights
    gan_weight: float = 0.0  # 0 disables the discriminator (MoVQGAN uses 0.8)
    gan_start_step: int = 0  # in optimiser steps (Lightning's global_step: 2 per batch once the GAN is active)
    disc_layers: int = 2
    disc_channels: int = 64
    disc_lr: float | None = None  # None: optim.lr
    grad_clip: float | None = 1.0
    grad_clip_algorithm: str = "value"  # "value" (MoVQGAN) or "norm"
    log_video_every_n_steps: int = 100  # TensorBoard side-by-side reconstructions (0 disables)
    num_log_samples: int = 2
    log_fps: int = 4


class AutoencoderSystem(L.LightningModule):
    """Base LightningModule; ``self.cfg`` is the whole validated experiment config, ``self.m`` its module section."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.cfg = cfg
        self.m = cfg.module
        self.save_hyperparameters({"config": _plain(cfg)})
        self.discriminator = (
            PatchDiscriminator(3, self.m.disc_channels, self.m.disc_layers) if self.m.gan_weight > 0 else None
        )
        self.lpips = self._build_lpips() if self.m.lpips_weight > 0 else None
        self.ema: EMA | None = None

    # ---------------------------------------------------------------------------------------------- to override
    def reconstruct(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``video (B, T, C, H, W)`` -> (prediction ``(B T) C H W``, target ``(B T) C H W``, extra losses)."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def last_layer(self) -> nn.Parameter:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------------- setup
    def _build_lpips(self) -> nn.Module:
        from ff_lightning.metrics.perceptual import build_lpips

        net = build_lpips(net="alex", backbone_path=self.m.lpips_weights)
        net.requires_grad_(False).eval()
        return net

    def on_fit_start(self) -> None:
        if self.cfg.optim.ema_decay and self.ema is None:
            self.ema = EMA(self.trainable_parameters(), self.cfg.optim.ema_decay)

    def configure_optimizers(self) -> Any:
        o = self.cfg.optim
        params = self.trainable_parameters()
        if not params:
            raise ValueError("nothing to train: every parameter is frozen (use trainer.max_steps=0 to only evaluate)")
        opt_g = torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        if self.discriminator is None:
            return opt_g
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.m.disc_lr or o.lr, betas=tuple(o.betas))
        return [opt_g, opt_d]

    # -------------------------------------------------------------------------------------------------- training
    def _clip(self, opt: torch.optim.Optimizer) -> None:
        if self.m.grad_clip:
            self.clip_gradients(
                opt, gradient_clip_val=self.m.grad_clip, gradient_clip_algorithm=self.m.grad_clip_algorithm
            )

    def _lr_scale(self) -> float:
        w = self.cfg.optim.warmup_steps
        return min(1.0, (self.global_step + 1) / w) if w else 1.0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        opts = self.optimizers()
        opt_g, opt_d = (opts if isinstance(opts, list) else [opts, None])[:2]
        for group in opt_g.param_groups:
            group["lr"] = self.cfg.optim.lr * self._lr_scale()
        pred, target, extra = self.reconstruct(batch["video"])
        rec = reconstruction_loss(pred, target, self.m.l1_weight, self.m.l2_weight)
        loss = rec + sum(extra.values(), pred.new_zeros(()))
        logs = {"train/rec_loss": rec.detach(), **{f"train/{k}": v.detach() for k, v in extra.items()}}
        if self.lpips is not None:
            p = self.lpips(pred.float(), target.float()).mean()
            loss = loss + self.m.lpips_weight * p
            logs["train/lpips"] = p.detach()
        use_gan = self.discriminator is not None and self.global_step >= self.m.gan_start_step
        if use_gan:
            g = generator_loss(self.discriminator(pred))
            layer = self.last_layer()
            # a frozen last layer (policy "temporal") has no gradient: balance the two losses at the output instead
            w = adaptive_gan_weight(loss, g, layer if layer.requires_grad else pred)
            loss = loss + self.m.gan_weight * w * g
            logs.update({"train/g_loss": g.detach(), "train/gan_adaptive_w": w})
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.global_step}, batch {batch_idx}")
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self._clip(opt_g)
        opt_g.step()
        if use_gan and opt_d is not None:
            d = hinge_d_loss(self.discriminator(target.detach()), self.discriminator(pred.detach()))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d)
            self._clip(opt_d)
            opt_d.step()
            logs["train/d_loss"] = d.detach()
        if self.ema is not None:
            self.ema.update(self.trainable_parameters())
        logs["train/loss"] = loss.detach()
        self.log_dict(logs, prog_bar=False, batch_size=batch["video"].shape[0])
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=batch["video"].shape[0])
        every = self.m.log_video_every_n_steps
        if every and self.global_step % every == 0:
            self._log_video("train/reconstruction", batch["video"], pred.detach())
        return loss.detach()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "ema" in checkpoint and self.cfg.optim.ema_decay:
            self.ema = EMA(self.trainable_parameters(), self.cfg.optim.ema_decay)
            self.ema.load_state_dict(checkpoint["ema"])

    # ------------------------------------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        if self.ema is not None:
            self.ema.swap_in(self.trainable_parameters())

    def on_validation_epoch_end(self) -> None:
        if self.ema is not None:
            self.ema.swap_out(self.trainable_parameters())

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        from ff_lightning.metrics.functional import mse, psnr, ssim, to_unit

        video = batch["video"]
        b, t = video.shape[:2]
        pred, target, _ = self.reconstruct(video)
        p = to_unit(rearrange(pred, "(b t) c h w -> b t c h w", b=b, t=t))  # [0, 1]
        y = to_unit(video)
        self.log_dict(
            {"val/psnr": psnr(p, y).mean(), "val/ssim": ssim(p, y).mean(), "val/mse": mse(p, y).mean()},
            batch_size=b,
            sync_dist=True,
        )
        if batch_idx == 0:
            self._log_video("val/reconstruction", video, pred)

    def _log_video(self, tag: str, video: torch.Tensor, pred: torch.Tensor) -> None:
        """TensorBoard video: target | reconstruction side by side, ``(N, T, C, H, 2W)`` in [0, 1]."""
        exp = getattr(self.logger, "experiment", None)
        if exp is None or not hasattr(exp, "add_video"):
            return
        n = min(self.m.num_log_samples, video.shape[0])
        b, t = video.shape[:2]
        rec = rearrange(pred, "(b t) c h w -> b t c h w", b=b, t=t)[:n]  # b t c h w
        both = torch.cat([video[:n], rec.to(video.dtype)], dim=-1)  # b t c h (2 w)
        both = ((both.float().clamp(-1, 1) + 1) / 2).cpu()
        try:
            exp.add_video(tag, both, global_step=self.global_step, fps=self.m.log_fps)
        except Exception:  # pragma: no cover - moviepy missing or broken: images instead
            exp.add_images(tag, both[:, 0], global_step=self.global_step)


def _plain(cfg: DictConfig) -> dict[str, Any]:
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    return c
