"""``KeyframesModule``: a trained text-to-image UNet extended in time and fine-tuned on clips (keyframe generation).

Setup: the Kandinsky 3 UNet of ``model.preset`` (+ ``model.overrides``) gets the weights of ``module.t2i_ckpt`` (a
checkpoint of the ``t2i`` system, its EMA weights when it has them and ``t2i_use_ema``; or a bare UNet state dict),
then :func:`~ff_lightning.models.keyframes.keyframe_unet_from_t2i` converts it to ``model.variant`` (a keyframe kind:
``blocks_conv1d_attn1d`` = the release, ``layers`` = the paper's baseline, ...; ``model.component: keyframe_unet``).
Spatial weights stay frozen and bit-exact; only the temporal layers / blocks (and the frame-position MLP) train, plus
the text projection and null embedding when ``module.train_text_projection``. Without a checkpoint the system refuses
to start unless ``module.allow_random_t2i`` (tests).

Training: clips ``(B, T, C, H, W)`` of ``data.num_frames`` frames -> frozen MoVQ latents ``(B T) 4 h w`` -> one
timestep and one caption per clip (null prompt with probability ``cfg_dropout``), independent noise per frame ->
MSE of the eps / v prediction over all frames.

Frame rate: the temporal attention sees frame positions ``0, s, 2s, ...`` with ``s = unit * step``: ``unit`` is
``module.frame_position_unit`` (default the release's ``180 // num_frames``) and ``step`` the number of source frames
between consecutive frames of the clip (``data.stride``, or ``source_fps / data.fps`` when resampled to a frame rate;
read per clip from the batch). Clips sampled twice as far apart get positions twice as far apart; that is how the
model is told the frame rate. ``frame_rate_conditioning: false`` always uses ``step = 1``. Samples use
``step = module.sample_frame_step`` (default ``data.stride``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ff_lightning import registry
from ff_lightning.checkpoints import T2I_CKPT_HINT, T2IWeights, read_t2i_checkpoint
from ff_lightning.config import ConfigError
from ff_lightning.models.keyframes import KEYFRAME_DESIGNS, KeyframeUNet, default_frame_stride, keyframe_unet_from_t2i
from ff_lightning.models.unet import KandinskyUNet
from ff_lightning.systems.t2i import DiffusionSystemConfig, LatentDiffusionSystem, _draw

__all__ = ["KeyframesSystemConfig", "KeyframesModule", "read_t2i_checkpoint", "T2IWeights", "T2I_CKPT_HINT"]

log = logging.getLogger(__name__)

CONVERSION_KEYS = ("num_frames", "frame_stride", "zero_init_ffn")  # model.overrides for the conversion, not the UNet


@dataclass
class KeyframesSystemConfig(DiffusionSystemConfig):
    """``module:`` section of the ``keyframes`` system."""

    t2i_ckpt: str | None = None  # the trained text-to-image model (a t2i-system checkpoint or a UNet state dict)
    t2i_use_ema: bool = True  # take the EMA weights of a t2i checkpoint that has them
    allow_random_t2i: bool = False  # tests only: a randomly initialised image UNet
    train_text_projection: bool = False  # also fine-tune the text projection and the null embedding
    train_spatial: bool = False  # also fine-tune the inherited spatial UNet (the paper freezes it)
    timestep_shift: float = 1.0  # >1 draws training steps towards high noise (SD3-style shift; 1 = uniform)
    # not the paper's: training adds this weight times the MSE of the frame-to-frame change of the prediction error
    # (the error's temporal-difference part weighed 1 + w times; 0 = the plain loss; validation is always plain)
    motion_loss_weight: float = 0.0
    frame_position_unit: float | None = None  # None: the release's 180 // num_frames
    frame_rate_conditioning: bool = True  # scale frame positions by the clip's source-frame step
    sample_frame_step: float | None = None  # source-frame step of logged samples (None: data.stride)


def _config_mismatches(cfg: Any, t2i_config: Mapping[str, Any]) -> list[str]:
    """Settings of this run that must equal those the text-to-image model was trained with."""
    from omegaconf import OmegaConf

    ours = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(ours, dict)
    problems = []
    for section, key in (("model", "preset"), ("module", "text_encoder"), ("module", "text_max_length")):
        theirs_v = (t2i_config.get(section) or {}).get(key)
        ours_v = ours[section].get(key)
        if theirs_v != ours_v:
            problems.append(f"{section}.{key}: t2i checkpoint {theirs_v!r}, this run {ours_v!r}")
    theirs_over = dict((t2i_config.get("model") or {}).get("overrides") or {})
    ours_over = {k: v for k, v in dict(ours["model"].get("overrides") or {}).items() if k not in CONVERSION_KEYS}
    if theirs_over != ours_over:
        problems.append(f"model.overrides: t2i checkpoint {theirs_over}, this run {ours_over}")
    return problems


class KeyframesModule(LatentDiffusionSystem):
    """Keyframe generation: a frozen text-to-image UNet with trainable temporal parts (see the module docstring).

    Reference-conditioned kinds (``ref_*``) belong to the ``reference_keyframes`` system
    (:class:`~ff_lightning.systems.reference_keyframes.ReferenceKeyframesModule`), which fills :meth:`unet_extras`.
    """

    unet: KeyframeUNet
    reference_conditioned = False  # whether this system trains ref_* kinds

    def build_unet(self) -> nn.Module:
        cfg, m = self.cfg, self.m
        mc = cfg.model
        if float(m.motion_loss_weight) < 0:
            raise ConfigError(f"module.motion_loss_weight must be >= 0, got {m.motion_loss_weight}")
        if mc.component != "keyframe_unet":
            raise ConfigError(f"the keyframes system needs model.component=keyframe_unet, got {mc.component!r}")
        if mc.variant not in KEYFRAME_DESIGNS:
            raise ConfigError(f"unknown keyframe variant {mc.variant!r}; valid choices: {', '.join(KEYFRAME_DESIGNS)}")
        if KEYFRAME_DESIGNS[mc.variant].reference != self.reference_conditioned:
            refs = [k for k, d in KEYFRAME_DESIGNS.items() if d.reference]
            raise ConfigError(
                f"model.variant={mc.variant!r} with system={cfg.system!r}: reference-conditioned variants "
                f"({', '.join(refs)}) train with system=reference_keyframes, the others with system=keyframes"
            )
        overrides = dict(mc.overrides)
        conversion = {k: overrides.pop(k) for k in CONVERSION_KEYS if k in overrides}
        num_frames = int(cfg.data.num_frames)
        if conversion.pop("num_frames", num_frames) != num_frames:
            raise ConfigError("model.overrides.num_frames must equal data.num_frames (or be left out)")
        image = registry.build("t2i_unet", "kandinsky3", mc.preset, **overrides)
        assert isinstance(image, KandinskyUNet)
        self._t2i: T2IWeights | None = None
        if m.t2i_ckpt:
            self._t2i = read_t2i_checkpoint(m.t2i_ckpt, m.t2i_use_ema)
            if self._t2i.config is not None:
                problems = _config_mismatches(cfg, self._t2i.config)
                if problems:
                    raise ConfigError(
                        f"module.t2i_ckpt={m.t2i_ckpt} was trained with other settings:\n  " + "\n  ".join(problems)
                    )
            missing, unexpected = image.load_state_dict(self._t2i.unet, strict=False)
            if missing or unexpected:
                raise ConfigError(
                    f"module.t2i_ckpt={m.t2i_ckpt} does not fit the t2i UNet of model.preset={mc.preset!r}: "
                    f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. "
                    f"{unexpected[:3]})"
                )
            log.info("loaded the t2i UNet from %s%s", m.t2i_ckpt, " (EMA weights)" if self._t2i.used_ema else "")
        elif not m.allow_random_t2i:
            raise ConfigError(
                "module.t2i_ckpt is not set: the keyframe model extends a trained text-to-image UNet. "
                f"{T2I_CKPT_HINT} module.allow_random_t2i=true is for tests only."
            )
        self.num_frames = num_frames
        self.position_unit = float(m.frame_position_unit or default_frame_stride(num_frames))
        return keyframe_unet_from_t2i(image, mc.variant, num_frames, copy=False, freeze_spatial=True, **conversion)

    def configure_trainable(self) -> None:
        t2i = self.__dict__.pop("_t2i", None)
        train_text = bool(self.m.train_text_projection)
        if t2i is not None:
            absent = [name for name, part in (("text projection", t2i.text_projection),
                                              ("null embedding", t2i.null_embedding)) if part is None]  # fmt: skip
            if absent and not train_text:  # a random part of a pretrained model must not stay frozen
                raise ConfigError(
                    f"module.t2i_ckpt={self.m.t2i_ckpt} has no {' and no '.join(absent)}, which would stay random "
                    "and frozen. Kandinsky 3.1 / Kandinsky Video 1.1 keep the projection in a separate file: import "
                    "the release (`ff import DIR --out OUT`) and pass OUT/<stage>/module.safetensors, or train them "
                    "(module.train_text_projection=true)"
                )
            if t2i.text_projection is not None:
                self.text_projection.load_state_dict(t2i.text_projection)
            if t2i.null_embedding is not None:
                self.null_embedding.load_state_dict(t2i.null_embedding)
        self.text_projection.requires_grad_(train_text)
        self.null_embedding.requires_grad_(train_text)
        self.unet.freeze_inherited(not bool(self.m.train_spatial))

    # ----------------------------------------------------------------------------------------------- frame rate
    def frame_strides(self, batch: Mapping[str, Any], videos: int) -> torch.Tensor:
        """Frame-position stride per clip ``(videos,)``: ``unit * source-frame step`` (see the module docstring)."""
        steps = [1.0] * videos
        if self.m.frame_rate_conditioning:
            default = float(self.cfg.data.stride)
            metas = batch.get("meta") or [{}] * videos
            steps = [_source_step(meta, default) for meta in metas]
        return torch.tensor(steps, device=self.device) * self.position_unit

    # ------------------------------------------------------------------------------------------------- training
    def diffusion_loss(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """``video (B, T, C, H, W)`` -> MSE of the eps / v prediction over the ``(B T)`` frame latents."""
        video = batch["video"]
        b, t = video.shape[:2]
        if t != self.num_frames:
            raise ValueError(f"clips of {t} frames for a keyframe model of {self.num_frames} (data.num_frames)")
        x0 = self.encode_frames(rearrange(video, "b t c h w -> (b t) c h w"))  # (b t) 4 h w
        context, mask = self.text_condition(batch["caption"], drop=generator is None)  # per clip: b l c, b l
        shift = float(self.m.timestep_shift)
        steps, noise = _draw(self.schedule, x0, b, generator, shift=shift)  # one step per clip, noise per frame
        steps = repeat(steps, "b -> (b t)", t=t)  # (b t): every frame at its clip's step
        x_t = self.schedule.q_sample(x0, steps, noise)
        extras = self.unet_extras(x0, b, generator)
        strides = self.frame_strides(batch, b)
        out = self.unet(x_t, steps.to(x0.dtype), context, mask, num_frames=t, frame_stride=strides, **extras)
        target = self.schedule.target(self.m.prediction, x0, noise, steps)
        loss = F.mse_loss(out.float(), target.float())
        weight = float(self.m.motion_loss_weight)
        if weight and generator is None and t > 1:  # training only
            err = rearrange(out.float() - target.float(), "(b t) c h w -> b t c h w", t=t)
            loss = loss + weight * (err[:, 1:] - err[:, :-1]).pow(2).mean()
        return loss

    def unet_extras(self, x0: torch.Tensor, videos: int, generator: torch.Generator | None) -> dict[str, Any]:
        """Extra UNet inputs of a training / validation batch (clip latents ``x0`` ``(b t) c h w``): none here."""
        return {}

    # ------------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        latent_size: tuple[int, int],
        decode: bool = True,
        frame_step: float | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Keyframe videos for ``prompts``: ``(B, T, 3, H, W)`` decoded (or latents ``(B, T, 4, h, w)``).

        ``frame_step``: source-frame step to condition on (default ``module.sample_frame_step``, else
        ``data.stride``). ``kwargs``: ``steps``, ``sampler``, ``guidance_weight``, ``seed``, ``progress``.
        Dynamic thresholding takes one quantile per video. Sampled by
        :class:`~ff_lightning.pipelines.stages.KeyframeStage` over this system's modules.
        """
        from ff_lightning.pipelines.live import keyframe_stage_of

        t = self.num_frames
        seed = kwargs.pop("seed", None)
        seed = self.m.sample_seed if seed is None else seed
        latents = keyframe_stage_of(self).model_latents(list(prompts), latent_size, frame_step=frame_step, seed=seed,
                                                        **kwargs)  # (b t) 4 h w  # fmt: skip
        out = self.decode_latents(latents, num_frames=t) if decode else latents
        return rearrange(out, "(b t) c h w -> b t c h w", t=t)  # b t c H W


def _source_step(meta: Mapping[str, Any], default: float) -> float:
    """Source frames between consecutive frames of a clip, from its batch ``meta`` (stride, or source_fps / fps)."""
    if meta.get("stride") is not None:
        return float(meta["stride"])
    fps, source_fps = meta.get("fps"), meta.get("source_fps")
    if fps and source_fps:
        return float(source_fps) / float(fps)
    return default
