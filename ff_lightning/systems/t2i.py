"""Latent text-to-image diffusion (``T2IModule``) and the base shared with the keyframe system.

:class:`LatentDiffusionSystem` (on :class:`~ff_lightning.systems.frozen_movq.FrozenMoVQDiffusionSystem`, whose
optimiser / EMA / checkpoint code the interpolation system shares too) holds what the text-conditioned systems share:

- a frozen image MoVQ (``module.movq_ckpt``; ``allow_random_movq`` for tests) whose un-quantized latents are the
  diffusion space, multiplied by ``module.latent_scale``. Default ``null``: measured once, ``1 / std`` of the latents
  of up to 256 training frames at the start of training (a keyframe model takes its t2i checkpoint's value), then
  written into the run's config (``hyper_parameters.config`` of every checkpoint) and the checkpoint itself; 1.0 is
  the release's (no rescaling: the tiny MoVQ's latents have std ~0.23, so eps errors are amplified in x0);
- a frozen text encoder (``module.text_encoder``: ``t5`` / ``minilm`` / ``tiny``, see :mod:`ff_lightning.models.text`)
  behind a :class:`~ff_lightning.models.text.TextEmbeddingCache` (in memory, and on disk under
  ``module.text_cache_dir``), then the trainable :class:`~ff_lightning.models.text.TextProjection` to the UNet's
  ``context_dim`` and the learned :class:`~ff_lightning.models.text.NullEmbedding`;
- the cosine noise schedule of ``module.train_timesteps`` steps, v- or eps-prediction (``module.prediction``; the
  default v, the release eps), MSE
  loss on the target, captions replaced by the null prompt with probability ``module.cfg_dropout`` (0.1);
- optimiser AdamW over the trainable parameters (``optim.*``, linear warmup), optional EMA (``optim.ema_decay``; saved
  by name under ``ema_state_dict`` in checkpoints and swapped in for validation);
- validation loss at timesteps and noise drawn from a fixed seed per batch (comparable across runs), and TensorBoard
  samples: a few sampler steps (``module.sampler``, ``sample_steps``, spacing ``sample_spacing``, guidance
  ``guidance_weight``, dynamic thresholding ``dynamic_threshold``: off by default, the release's 0.98) decoded by
  the MoVQ.

Release-faithful settings (the Kandinsky 3 / Kandinsky Video recipe): ``module.latent_scale=1.0
module.prediction=eps module.dynamic_threshold=0.98 module.sample_spacing=release`` (:data:`RELEASE_SETTINGS`).

Neither the frozen MoVQ nor the text encoder is saved in checkpoints (they come from their own files).

``T2IModule`` trains the Kandinsky 3 UNet (``model.component: t2i_unet``) on frames of the captioned clips: every
frame of a clip is an independent image with the clip's caption (``data.num_frames: 1`` for single frames).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ff_lightning import registry
from ff_lightning.config import ConfigError
from ff_lightning.diffusion import PREDICTIONS, SAMPLERS, SPACINGS, NoiseSchedule
from ff_lightning.models.text import (
    NullEmbedding,
    TextEmbeddingCache,
    TextEncoder,
    TextProjection,
    build_text_encoder,
)
from ff_lightning.systems.ema import EMA
from ff_lightning.systems.frozen_movq import FrozenMoVQDiffusionSystem

__all__ = [
    "DiffusionSystemConfig",
    "T2ISystemConfig",
    "LatentDiffusionSystem",
    "T2IModule",
    "build_frozen_movq",
    "RELEASE_SETTINGS",
    "SPACINGS",
    "latent_scale_from",
]

log = logging.getLogger(__name__)

#: the release's (Kandinsky 3 / Kandinsky Video) diffusion settings, as ``module.*`` overrides
RELEASE_SETTINGS: tuple[str, ...] = (
    "module.latent_scale=1.0", "module.prediction=eps", "module.dynamic_threshold=0.98", "module.sample_spacing=release",
)  # fmt: skip
MEASURE_FRAMES = 256  # training frames whose latents give the measured latent_scale


@dataclass
class DiffusionSystemConfig:
    """Options shared by the latent diffusion systems (``module:`` section)."""

    # frozen autoencoder
    movq_ckpt: str | None = None  # the image MoVQ (required unless allow_random_movq)
    movq_preset: str = "tiny"  # its size preset (paper: MoVQGAN 270M)
    allow_random_movq: bool = False  # tests only: a randomly initialised MoVQ
    latent_scale: float | None = None  # latents = scale * movq.encode(x); None: measured 1 / std; release 1.0
    # text
    text_encoder: str = "tiny"  # t5 | minilm | tiny
    text_encoder_path: str | None = None  # t5: the local Flan-UL2 folder; minilm: default the packaged model
    text_max_length: int | None = None  # None: the encoder's default (t5 128, minilm 32, tiny 16)
    text_cache_dir: str | None = None  # persist caption embeddings here (None: in memory only)
    cfg_dropout: float = 0.1  # probability of training on the null prompt
    # diffusion
    prediction: str = "v"  # v | eps (the release)
    train_timesteps: int = 1000
    # logged samples
    sampler: str = "ddim"  # ddim | ddpm
    sample_spacing: str = "subsample"  # subsample | trailing | release (see ff_lightning.diffusion.samplers)
    sample_steps: int = 10
    ddim_eta: float = 0.0
    guidance_weight: float = 5.0
    dynamic_threshold: float | None = None  # the release: 0.98
    negative_prompt: str | None = None  # unconditional branch of guidance (None: the null embedding)
    sample_prompts: list[str] = field(default_factory=list)  # empty: the captions of the batch
    sample_seed: int = 0
    log_samples_every_n_steps: int = 500  # during training (0: never); samples are also logged at validation
    num_log_samples: int = 2
    log_fps: int = 4


@dataclass
class T2ISystemConfig(DiffusionSystemConfig):
    """``module:`` section of the ``t2i`` system."""


def build_frozen_movq(m: Any) -> nn.Module:
    """The frozen image MoVQ of ``module.movq_preset`` with the weights of ``module.movq_ckpt``."""
    movq = registry.build("movq", "movqgan", m.movq_preset)
    if m.movq_ckpt:
        from ff_lightning.interop.movq import load_weights

        load_weights(movq, m.movq_ckpt)
    elif not m.allow_random_movq:
        raise ConfigError(
            "module.movq_ckpt is not set: latent diffusion runs in the latent space of a trained image MoVQ. Pass "
            "module.movq_ckpt=/path/to/movq (ours, e.g. a run of experiments/movq/tiny.yaml, or the official "
            "movqgan_270M.ckpt with module.movq_preset=paper); module.allow_random_movq=true is for tests only."
        )
    return movq.eval().requires_grad_(False)


def _check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown module.{key} {value!r}; valid choices: {', '.join(choices)}")


class LatentDiffusionSystem(FrozenMoVQDiffusionSystem):
    """Base of the diffusion systems; ``self.cfg`` is the whole validated config, ``self.m`` its module section.

    Subclasses build ``self.unet`` (:meth:`build_unet`), define the loss (:meth:`diffusion_loss`) and the sampling
    layout (:meth:`generate`, which runs a typed stage of :mod:`ff_lightning.pipelines` over this system's modules:
    the sampling code lives there), and may change what trains (:meth:`configure_trainable`).
    """

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.m = m = cfg.module
        _check_choice("prediction", m.prediction, PREDICTIONS)
        _check_choice("sampler", m.sampler, SAMPLERS)
        _check_choice("sample_spacing", m.sample_spacing, SPACINGS)
        if not 0.0 <= m.cfg_dropout <= 1.0:
            raise ConfigError(f"module.cfg_dropout must lie in [0, 1], got {m.cfg_dropout}")
        self.save_hyperparameters({"config": OmegaConf.to_container(cfg, resolve=True)})
        self.schedule = NoiseSchedule.cosine(m.train_timesteps)
        self.movq = build_frozen_movq(m)
        try:
            encoder = build_text_encoder(m.text_encoder, m.text_encoder_path, max_length=m.text_max_length)
        except KeyError as e:  # UnknownChoiceError
            raise ConfigError(f"module.text_encoder: {e}") from None
        self.text_cache = TextEmbeddingCache(encoder, m.text_cache_dir)  # not a submodule: never checkpointed
        self.unet = self.build_unet()
        self._adopt_base_latent_scale()
        context_dim = int(self.unet.config["context_dim"])
        self.text_projection = TextProjection(encoder.dim, context_dim)
        self.null_embedding = NullEmbedding(context_dim)
        self.configure_trainable()
        self.ema: EMA | None = None

    # ------------------------------------------------------------------------------------------------ to define
    def build_unet(self) -> nn.Module:
        raise NotImplementedError

    def configure_trainable(self) -> None:
        """Set ``requires_grad``; by default UNet, projection and null embedding all train."""

    def diffusion_loss(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, prompts: Sequence[str], latent_size: tuple[int, int], **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------- components
    @property
    def text_encoder(self) -> TextEncoder:
        return self.text_cache.encoder

    # ------------------------------------------------------------------------------------------- latent scale
    def set_latent_scale(self, value: float) -> None:
        """Fix ``module.latent_scale`` (also in the hyper-parameters that every checkpoint stores)."""
        self.m.latent_scale = float(value)
        config = self.hparams.get("config") if hasattr(self, "_hparams") else None
        if isinstance(config, dict) and isinstance(config.get("module"), dict):
            config["module"]["latent_scale"] = float(value)

    def _adopt_base_latent_scale(self) -> None:
        """A model built on a t2i checkpoint (``self._t2i``, see the keyframes system) uses its latent scale."""
        t2i = getattr(self, "_t2i", None)
        theirs = ((getattr(t2i, "config", None) or {}).get("module") or {}).get("latent_scale")
        if theirs is None:
            return
        if self.m.latent_scale is None:
            self.set_latent_scale(float(theirs))
        elif abs(float(self.m.latent_scale) - float(theirs)) > 1e-9 * abs(float(theirs)):
            raise ConfigError(
                f"module.latent_scale={self.m.latent_scale} but module.t2i_ckpt was trained with {theirs}: "
                "leave module.latent_scale unset (null) to use the checkpoint's"
            )

    @torch.no_grad()
    def measure_latent_scale(self, frames: torch.Tensor) -> float:
        """``1 / std`` of the MoVQ latents of ``frames`` ``(n, 3, H, W)`` (3 significant digits); sets it."""
        scale = latent_scale_from(self.movq.encode(frames.to(self.device)))
        self.set_latent_scale(scale)
        log.info("module.latent_scale measured on %d frames: %s", frames.shape[0], scale)
        return scale

    def on_train_start(self) -> None:
        """Measure ``latent_scale`` (when unset) on up to :data:`MEASURE_FRAMES` training frames before step 0."""
        if self.m.latent_scale is not None:
            return
        frames: list[torch.Tensor] = []
        count = 0
        for batch in self.trainer.train_dataloader:
            video = batch["video"]
            frames.append(rearrange(video, "b t c h w -> (b t) c h w"))
            count += frames[-1].shape[0]
            if count >= MEASURE_FRAMES:
                break
        if frames:
            self.measure_latent_scale(torch.cat(frames)[:MEASURE_FRAMES])

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``(n, 3, H, W)`` in [-1, 1] -> latents ``(n, 4, h, w)`` (un-quantized, times ``latent_scale``;
        measured on these frames if still unset, e.g. outside ``fit``)."""
        latents = self.movq.encode(frames)
        if self.m.latent_scale is None:
            self.set_latent_scale(latent_scale_from(latents))
            log.warning("module.latent_scale was unset: measured on a batch of %d frames", frames.shape[0])
        return latents * self.m.latent_scale

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        """Latents ``(n, 4, h, w)`` -> frames ``(n, 3, H, W)`` (about [-1, 1])."""
        if self.m.latent_scale is None:
            raise ConfigError("module.latent_scale is unset (never measured): pass module.latent_scale=... or train")
        return self.movq.decode(latents / self.m.latent_scale, num_frames=num_frames)

    def text_condition(self, captions: Sequence[str], drop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions ``(B)`` -> projected context ``(B, L, context_dim)`` and mask ``(B, L)`` on this device; with
        ``drop``, rows are replaced by the null prompt with probability ``cfg_dropout``."""
        enc = self.text_cache.encoder
        if enc.device != self.device:
            enc.to(self.device)
        emb, mask = self.text_cache.lookup(list(captions))
        emb, mask = emb.to(self.device), mask.to(self.device)
        context = self.text_projection(emb.to(self.text_projection.projection.weight.dtype), mask)
        if drop and self.m.cfg_dropout > 0:
            dropped = torch.rand(len(captions), device=self.device) < self.m.cfg_dropout
            context, mask = self.null_embedding.drop(context, mask, dropped)
        return context, mask

    # ---------------------------------------------------------------------------------------------- optimisation
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.global_step}, batch {batch_idx}")
        bs = batch["video"].shape[0]
        self.log("train/loss", loss.detach(), batch_size=bs)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=bs)
        every = self.m.log_samples_every_n_steps
        if every and self.global_step % every == 0 and self.global_step > 0:
            self.log_samples("train/samples", batch)
        return loss

    # ------------------------------------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        gen = torch.Generator(device="cpu").manual_seed(self.cfg.run.seed * 100_003 + batch_idx)
        loss = self.diffusion_loss(batch, generator=gen)
        self.log("val/loss", loss, batch_size=batch["video"].shape[0], sync_dist=True)
        if batch_idx == 0 and self.m.num_log_samples > 0:
            self.log_samples("val/samples", batch)

    # ---------------------------------------------------------------------------------------------------- logging
    @torch.no_grad()
    def log_samples(self, tag: str, batch: Mapping[str, Any]) -> None:
        """Generate from the first ``num_log_samples`` prompts and log them (rank zero, TensorBoard only)."""
        exp = self._tensorboard()
        if exp is None or not self.trainer.is_global_zero:
            return
        n = min(self.m.num_log_samples, batch["video"].shape[0])
        prompts = list(self.m.sample_prompts) or list(batch["caption"][:n])
        latent = self.encode_frames(batch["video"][:1, 0])  # 1 4 h w: the latent size of these frames
        was_training = self.training
        self.eval()
        try:
            video = self.generate(prompts, tuple(latent.shape[-2:]))  # b t c H W in [-1, 1]
        finally:
            self.train(was_training)
        video = ((video.float().clamp(-1, 1) + 1) / 2).cpu()
        if video.shape[1] == 1:
            exp.add_images(tag, video[:, 0], global_step=self.global_step)
            return
        try:
            exp.add_video(tag, video, global_step=self.global_step, fps=self.m.log_fps)
        except Exception:  # pragma: no cover - moviepy missing or broken: the frames as one image strip instead
            strip = rearrange(video, "b t c h w -> b c h (t w)")  # frames side by side
            exp.add_images(tag, strip, global_step=self.global_step)

    # -------------------------------------------------------------------------------------------- checkpointing
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # without the frozen MoVQ, with the EMA by name
        if self.m.latent_scale is not None:
            checkpoint["latent_scale"] = float(self.m.latent_scale)
        if self.text_cache.cache_dir is not None and self.trainer.is_global_zero:
            self.text_cache.save()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.m.latent_scale is None and checkpoint.get("latent_scale") is not None:  # resumed: keep the measure
            self.set_latent_scale(float(checkpoint["latent_scale"]))
        elif self.m.latent_scale is None and not checkpoint.get("global_step"):  # an untrained checkpoint
            self.set_latent_scale(1.0)

    def on_train_epoch_end(self) -> None:
        if self.text_cache.cache_dir is not None and self.trainer.is_global_zero:
            self.text_cache.save()

    def on_fit_end(self) -> None:
        self.on_train_epoch_end()


class T2IModule(LatentDiffusionSystem):
    """Text-to-image Kandinsky 3 UNet on MoVQ latents of single frames (see the module docstring)."""

    def build_unet(self) -> nn.Module:
        mc = self.cfg.model
        if mc.component != "t2i_unet":
            raise ConfigError(f"the t2i system needs model.component=t2i_unet, got {mc.component!r}")
        return registry.build(mc.component, mc.variant, mc.preset, **mc.overrides)

    def diffusion_loss(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """Every frame an image: ``video (B, T, C, H, W)`` -> MSE of the eps / v prediction on ``(B T)`` latents."""
        video = batch["video"]
        b, t = video.shape[:2]
        x0 = self.encode_frames(rearrange(video, "b t c h w -> (b t) c h w"))  # (b t) 4 h w
        context, mask = self.text_condition(batch["caption"], drop=generator is None)  # b l c, b l
        context = repeat(context, "b l c -> (b t) l c", t=t)  # every frame gets its clip's caption
        mask = repeat(mask, "b l -> (b t) l", t=t)  # (b t) l
        steps, noise = _draw(self.schedule, x0, x0.shape[0], generator)
        x_t = self.schedule.q_sample(x0, steps, noise)
        out = self.unet(x_t, steps.to(x0.dtype), context, mask)
        target = self.schedule.target(self.m.prediction, x0, noise, steps)
        return F.mse_loss(out.float(), target.float())

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[str], latent_size: tuple[int, int], decode: bool = True, **kwargs: Any
    ) -> torch.Tensor:
        """Images for ``prompts``: ``(B, 1, 3, H, W)`` decoded (or latents ``(B, 1, 4, h, w)`` with ``decode=False``).

        ``kwargs``: ``steps``, ``sampler``, ``guidance_weight``, ``seed``, ``progress`` (defaults from ``module``).
        Sampled by :class:`~ff_lightning.pipelines.stages.ImageStage` over this system's modules.
        """
        from ff_lightning.pipelines.live import image_stage_of

        seed = kwargs.pop("seed", None)
        seed = self.m.sample_seed if seed is None else seed
        latents = image_stage_of(self).model_latents(list(prompts), latent_size, seed=seed, **kwargs)  # b 4 h w
        out = self.decode_latents(latents) if decode else latents
        return rearrange(out, "b c h w -> b 1 c h w")  # images as 1-frame videos


def _draw(
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    count: int,
    generator: torch.Generator | None,
    shift: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random step indices ``(count,)`` and noise like ``x0``; from ``generator`` (CPU) when given.

    ``shift`` 1: uniform steps. Otherwise ``u ~ U(0, 1)`` is mapped to ``shift u / (1 + (shift - 1) u)`` before it
    is scaled to a step index: ``shift > 1`` trains more often at high noise (the SD3 resolution shift).
    """
    if shift == 1.0:
        if generator is None:
            steps = torch.randint(0, schedule.num_steps, (count,), device=x0.device)
            return steps, torch.randn_like(x0)
        steps = torch.randint(0, schedule.num_steps, (count,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        return steps.to(x0.device), noise.to(x0.device)
    if not shift > 0:
        raise ValueError(f"timestep shift must be > 0, got {shift}")
    u = torch.rand((count,), generator=generator)  # (count,) on the CPU
    u = shift * u / (1 + (shift - 1) * u)
    steps = (u * schedule.num_steps).long().clamp_(0, schedule.num_steps - 1)
    noise = (
        torch.randn(x0.shape, generator=generator, dtype=x0.dtype) if generator is not None else torch.randn_like(x0)
    )
    return steps.to(x0.device), noise.to(x0.device)


def latent_scale_from(latents: torch.Tensor) -> float:
    """``1 / std`` of ``latents`` (any shape), rounded to 3 significant digits (a stable number for configs)."""
    std = float(latents.float().std())
    if not std > 0:
        raise ValueError(f"cannot measure a latent scale: the latents have std {std}")
    return float(f"{1.0 / std:.3g}")
