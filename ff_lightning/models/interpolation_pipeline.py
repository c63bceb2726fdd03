"""Interpolation in latent space, training objective and sampling, for FusionFrames and the masked-frame baseline.

Plain torch (no Lightning): the ``interpolation`` system and ``benchmarks/interpolation_speed.py`` both use it.

Layout. A sequence of ``L = 4K - 3`` latents ``(B, L, c, h, w)`` holds ``K`` keyframes at positions ``0, 4, ...``
and three frames to generate in each of the ``G = K - 1`` gaps (:func:`split_sequence` / :func:`merge_sequence`).

- **FusionFrames** (:class:`FusionFramesMethod`, :class:`~ff_lightning.models.interpolation.InterpolationUNet`):
  one row per gap, ``(b g) (5c) h w`` = ``[left keyframe | 3 noisy frames | right keyframe]``, the ``G`` groups of a
  video on the UNet's temporal axis (``num_temporal_groups``); predicts the 3 middle frames of every group.
- **Masked frames** (:class:`MaskedFrameMethod`,
  :class:`~ff_lightning.models.masked_interpolation.MaskedInterpolationUNet`): one row per frame of the output,
  ``(b t) (2c + 1) h w`` = ``[noisy | known (zeros where unknown) | mask]``, ``t = L`` frames on the temporal axis;
  predicts every frame, the known ones are then replaced by the keyframes.

Training objective (:meth:`InterpolationMethod.loss`; the paper's, for both methods):

- v-prediction on the cosine schedule: one timestep per video, independent noise per frame; MSE on the frames to
  generate only (the masked model's outputs at known frames are not trained).
- Conditioning perturbation: a level ``tp`` uniform in ``{0, ..., max_perturbation}`` (250) per video noises the
  keyframe latents with the same VP process, :func:`perturb_conditioning`: ``tp = 0`` leaves them unchanged, ``tp >
  0`` is ``q_sample`` at step index ``tp - 1`` (``tp`` forward steps: ``alpha_bar = alphas_cumprod[tp - 1]``); the
  UNet sees ``tp`` through its perturbation embedding (``perturbation_time``).
- Unconditional training: with probability ``uncond_prob`` (0.1) per video the conditioning frames are zeroed (after
  perturbation; for the masked model also its mask channel, so it sees no known frame) and the temporal outputs are
  masked, ``mt = 0``: in the released interpolation UNet every temporal merge scalar is multiplied by a per-row mask,
  ``x = (1 - a mt) x + a mt conv3d(x)``, so for ``mt = 0`` each temporal layer returns its spatial input unchanged
  and the groups of a video are processed independently. :func:`temporal_mask` applies exactly that to every
  ``temporal_merge`` of a model (forward hooks; the UNet code is untouched).

Inference (:func:`interpolate`): context guidance ``(1 + w) c - w u`` (:func:`~ff_lightning.diffusion.
combine_guidance`, ``w = 0.25``) where ``u`` is the prediction with the conditioning frames zeroed and ``mt = 0`` (as
trained); both branches in one batched forward. The keyframes are perturbed to ``perturbation_time`` before
conditioning (0 as released, 150 in the paper); the output keeps the original keyframes. One pass turns ``K``
keyframes into ``4K - 3`` frames; ``passes = n`` repeats it (``4^n (K - 1) + 1`` frames). The skip-frame value of
the last pass is ``skip_frames`` (the source-frame step between output frames); earlier passes, whose outputs are 4
times further apart each, get ``skip_frames * 4^(n - 1 - p)`` unless a list gives one value per pass.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ff_lightning.diffusion import NoiseSchedule, SamplingSchedule, combine_guidance, sample
from ff_lightning.diffusion.parameterization import signal_noise
from ff_lightning.models.interpolation import (
    FRAMES_PER_GROUP,
    NUM_SKIP_EMBEDDINGS,
    InterpolationUNet,
    null_context,
    pack_interpolation_input,
    unpack_frames,
)
from ff_lightning.models.masked_interpolation import MaskedInterpolationUNet, pack_masked_input
from ff_lightning.models.unet import Block

__all__ = [
    "METHODS",
    "SamplingOptions",
    "num_keyframes_of",
    "output_frames",
    "keyframe_mask",
    "linear_blend",
    "shift_timesteps",
    "split_sequence",
    "merge_sequence",
    "perturb_conditioning",
    "temporal_mask",
    "pass_skips",
    "InterpolationMethod",
    "FusionFramesMethod",
    "MaskedFrameMethod",
    "method_for",
    "interpolate",
]

#: the interpolation methods (``module.method`` of the interpolation system)
METHODS: tuple[str, ...] = ("fusionframes", "masked")
_STEP = FRAMES_PER_GROUP + 1  # keyframes are 4 sequence positions apart


# ---------------------------------------------------------------------------------------------------- layout
def num_keyframes_of(length: int) -> int:
    """``L = 4K - 3`` -> ``K``."""
    if length < 5 or (length - 1) % _STEP:
        raise ValueError(f"an interpolation sequence has 4K - 3 frames (5, 9, 13, ...), got {length}")
    return (length - 1) // _STEP + 1


def output_frames(num_keyframes: int, passes: int = 1) -> int:
    """Frames after ``passes`` interpolation passes from ``K`` keyframes: ``4^n (K - 1) + 1``."""
    return _STEP**passes * (num_keyframes - 1) + 1


def keyframe_mask(length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(L,)`` bool, True at the keyframe positions ``0, 4, ...``."""
    num_keyframes_of(length)
    return torch.arange(length, device=device) % _STEP == 0


def linear_blend(keys: torch.Tensor, length: int) -> torch.Tensor:
    """Keyframes ``(B, K, c, h, w)`` -> the sequence ``(B, L, c, h, w)`` whose frames between neighbouring keyframes
    are their linear blend ``(1 - j / 4) left + (j / 4) right`` at position ``j`` of the gap (keyframes kept)."""
    if output_frames(keys.shape[1]) != length:
        raise ValueError(f"{keys.shape[1]} keyframes make {output_frames(keys.shape[1])} frames, not {length}")
    left, right = keys[:, :-1], keys[:, 1:]  # b g c h w
    w = torch.arange(1, _STEP, device=keys.device, dtype=keys.dtype) / _STEP  # (3,): 1/4, 2/4, 3/4
    w = w[None, None, :, None, None, None]
    middles = (1 - w) * left[:, :, None] + w * right[:, :, None]  # b g f c h w
    return merge_sequence(keys, middles)


def split_sequence(seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, L, ...)`` -> keyframes ``(B, K, ...)`` and middle frames ``(B, K - 1, 3, ...)``."""
    k = num_keyframes_of(seq.shape[1])
    keys = seq[:, ::_STEP]
    body = seq[:, : (k - 1) * _STEP]  # every gap: keyframe + 3 middles
    body = rearrange(body, "b (g s) ... -> b g s ...", s=_STEP)  # one row of 4 frames per gap
    return keys, body[:, :, 1:]


def merge_sequence(keys: torch.Tensor, middles: torch.Tensor) -> torch.Tensor:
    """Keyframes ``(B, K, ...)`` and middle frames ``(B, K - 1, 3, ...)`` -> the sequence ``(B, 4K - 3, ...)``."""
    gaps = torch.cat([keys[:, :-1, None], middles], dim=2)  # b g 4 ...: each gap's keyframe then its middles
    body = rearrange(gaps, "b g s ... -> b (g s) ...")  # gaps one after another
    return torch.cat([body, keys[:, -1:]], dim=1)


# ------------------------------------------------------------------------------------------ conditioning noise
def perturb_conditioning(
    latents: torch.Tensor, perturbation_time: torch.Tensor | int, schedule: NoiseSchedule, noise: torch.Tensor
) -> torch.Tensor:
    """Noise conditioning latents ``(N, ...)`` to level ``tp`` (``(N,)`` ints or a scalar in ``[0, num_steps]``).

    ``tp = 0``: unchanged (exactly); ``tp > 0``: ``sqrt(ab) x + sqrt(1 - ab) noise`` with ``ab =
    alphas_cumprod[tp - 1]`` (``q_sample`` after ``tp`` forward steps). ``noise``: like ``latents``.
    """
    tp = torch.as_tensor(perturbation_time, device=latents.device).long()
    if tp.ndim == 0:
        tp = tp.expand(latents.shape[0])
    if tp.numel() and (int(tp.min()) < 0 or int(tp.max()) > schedule.num_steps):
        raise ValueError(f"perturbation levels must lie in [0, {schedule.num_steps}]")
    ab = torch.ones(tp.shape, dtype=torch.float64)
    nonzero = tp.cpu() > 0
    ab[nonzero] = schedule.alphas_cumprod[tp.cpu()[nonzero] - 1]
    a, s = signal_noise(ab, latents)
    noisy = a * latents + s * noise
    keep = (tp == 0).reshape(-1, *([1] * (latents.ndim - 1)))
    return torch.where(keep, latents, noisy)


def _temporal_merges(model: nn.Module) -> list[nn.Module]:
    return [m.temporal_merge for m in model.modules() if isinstance(m, Block) and m.temporal_merge is not None]


@contextlib.contextmanager
def temporal_mask(model: nn.Module, mask: torch.Tensor | None) -> Iterator[None]:
    """Within the block, every temporal merge of ``model`` is masked per row: ``mask`` ``(rows,)`` (1 keep, 0 off).

    A merge ``(1 - a) x + a conv(x)`` becomes ``x + mt ((1 - a) x + a conv(x) - x)``, i.e. ``(1 - a mt) x + a mt
    conv(x)`` (the release's temporal mask). ``None`` (or all ones): nothing changes.
    """
    if mask is None or (not mask.is_meta and bool((mask == 1).all())):
        yield
        return
    handles = []

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        spatial = args[0]
        if spatial.shape[0] != mask.shape[0]:
            raise ValueError(f"temporal mask of {mask.shape[0]} rows for a batch of {spatial.shape[0]}")
        m = mask.to(device=spatial.device, dtype=spatial.dtype).reshape(-1, *([1] * (spatial.ndim - 1)))
        return spatial + m * (out - spatial)

    merges = _temporal_merges(model)
    if not merges:
        raise ValueError(f"{type(model).__name__} has no temporal merges to mask")
    try:
        handles = [m.register_forward_hook(hook) for m in merges]
        yield
    finally:
        for h in handles:
            h.remove()


def pass_skips(skip_frames: int | Sequence[int] | torch.Tensor, passes: int) -> list[int | torch.Tensor]:
    """Skip-frame value of each pass: a list of ``passes`` values, or ``s`` for the last pass and ``4`` times more
    for each earlier one (see the module docstring); a ``(B,)`` tensor (one value per video) for a single pass.
    Every value must fit the skip embedding (``< 20``)."""
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    if isinstance(skip_frames, torch.Tensor) and skip_frames.ndim == 1 and passes == 1:
        if skip_frames.numel() and not 0 <= int(skip_frames.min()) <= int(skip_frames.max()) < NUM_SKIP_EMBEDDINGS:
            raise ValueError(
                f"skip values {skip_frames.tolist()} outside the skip embedding [0, {NUM_SKIP_EMBEDDINGS})"
            )
        return [skip_frames]
    if isinstance(skip_frames, torch.Tensor):
        skip_frames = int(skip_frames) if skip_frames.ndim == 0 else skip_frames.tolist()
    if isinstance(skip_frames, int):
        skips = [skip_frames * _STEP ** (passes - 1 - p) for p in range(passes)]
    else:
        skips = [int(s) for s in skip_frames]
        if len(skips) != passes:
            raise ValueError(f"{len(skips)} skip values for {passes} passes")
    bad = [s for s in skips if not 0 <= s < NUM_SKIP_EMBEDDINGS]
    if bad:
        raise ValueError(
            f"skip values {skips} per pass: {bad} outside the skip embedding [0, {NUM_SKIP_EMBEDDINGS}); pass a "
            "smaller skip_frames or one value per pass"
        )
    return skips


# ------------------------------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class SamplingOptions:
    """How latents are sampled: ``schedule`` (steps), ``sampler`` (ddim / ddpm), DDIM ``eta``, dynamic-thresholding
    percentile ``threshold`` (None: off; one quantile per video)."""

    schedule: SamplingSchedule
    sampler: str = "ddim"
    eta: float = 0.0
    threshold: float | None = None


def _rows_like(values: torch.Tensor | int | float, batch: int, device: torch.device) -> torch.Tensor:
    """A scalar or ``(batch,)`` values -> ``(batch,)`` on ``device``."""
    v = torch.as_tensor(values, device=device)
    return v.expand(batch) if v.ndim == 0 else v


def _draw_int(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``(n,)`` ints uniform in ``[0, high)`` (from ``generator`` on the CPU when given)."""
    if generator is None:
        return torch.randint(0, high, (n,), device=device)
    return torch.randint(0, high, (n,), generator=generator).to(device)


def shift_timesteps(t: torch.Tensor, num_steps: int, shift: float) -> torch.Tensor:
    """Uniform step indices ``t`` ``(n,)`` -> shifted ones: ``u = (t + 0.5) / N`` becomes ``shift u / (1 + (shift - 1)
    u)`` (the SD3 resolution shift; ``shift > 1`` trains more often at high noise). ``shift = 1`` returns ``t``."""
    if shift == 1.0:
        return t
    if not shift > 0:
        raise ValueError(f"timestep shift must be > 0, got {shift}")
    u = (t.double() + 0.5) / num_steps
    return (shift * u / (1 + (shift - 1) * u) * num_steps).long().clamp(0, num_steps - 1)


def _draw_uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if generator is None:
        return torch.rand(n, device=device)
    return torch.rand(n, generator=generator).to(device)


def _draw_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.randn_like(like)
    return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)


# --------------------------------------------------------------------------------------------------- methods
class InterpolationMethod(ABC):
    """One way of generating the frames between keyframes with a trained UNet (see the module docstring).

    Context: the null text context, built from ``null_embedding`` ``(d,)`` by
    :func:`~ff_lightning.models.interpolation.null_context` (one token and a masked padding token, as released).
    """

    name: ClassVar[str]

    def __init__(
        self, unet: nn.Module, blend_residual: bool = False, residual_scale: float = 1.0, timestep_shift: float = 1.0
    ) -> None:
        self.unet = unet
        self.timestep_shift = timestep_shift  # training steps towards high noise (1: uniform, the paper's)
        self.blend_residual = blend_residual  # diffuse the difference to the linear blend of the keyframes
        self.residual_scale = residual_scale  # ... times this factor (about 1 / its std: unit-variance targets)

    # -------------------------------------------------------------------------------------------- per method
    @abstractmethod
    def rows_per_video(self, num_keyframes: int) -> int:
        """UNet rows one video of ``K`` keyframes takes per denoising step (without guidance)."""

    @abstractmethod
    def _prepare(
        self,
        keys: torch.Tensor,
        length: int,
        keep: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Conditioning tensors for (perturbed) keyframes ``keys`` ``(B, K, c, h, w)``, ``keep`` ``(B,)`` bool (0:
        unconditional video)."""

    @abstractmethod
    def _model(
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        cond: dict[str, torch.Tensor],
        context: tuple[torch.Tensor, torch.Tensor],
        skip_frames: torch.Tensor,
        perturbation_time: torch.Tensor,
    ) -> torch.Tensor:
        """The UNet on the noisy tensor ``x`` (this method's sampling layout), temporal mask applied."""

    @abstractmethod
    def _targets(self, seq: torch.Tensor) -> torch.Tensor:
        """Clean latents ``(B, L, c, h, w)`` -> what this method generates, in its sampling layout."""

    @abstractmethod
    def _assemble(self, x0: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Sampled tensor + original keyframes ``(B, K, c, h, w)`` -> the sequence ``(B, 4K - 3, c, h, w)``."""

    @abstractmethod
    def _loss_weights(self, length: int, batch: int, device: torch.device) -> torch.Tensor | None:
        """Per-row weights of the MSE (None: all rows count)."""

    # ---------------------------------------------------------------------------------------------- shared
    def _context(self, null_embedding: torch.Tensor, videos: int) -> tuple[torch.Tensor, torch.Tensor]:
        return null_context(null_embedding, videos)

    def _offset(self, keys: torch.Tensor, length: int) -> torch.Tensor | None:
        """With ``blend_residual``: the linear blend of the clean keyframes ``(B, K, c, h, w)`` in this method's
        sampling layout (what is added to the sampled tensor, and subtracted from the training targets); else None."""
        if not self.blend_residual:
            return None
        return self._targets(linear_blend(keys, length))

    def loss(
        self,
        seq: torch.Tensor,
        skip_frames: torch.Tensor | int,
        schedule: NoiseSchedule,
        null_embedding: torch.Tensor,
        *,
        max_perturbation: int = 250,
        uncond_prob: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Training loss (see the module docstring) on clean latent sequences ``seq`` ``(B, 4K - 3, c, h, w)``.

        ``skip_frames``: ``(B,)`` or int. Random draws (timesteps, perturbation levels, noise, unconditional videos)
        come from ``generator`` (CPU) when given, else from the global generators. Returns the scalar MSE (float32).
        """
        b, length = seq.shape[:2]
        dev = seq.device
        keys, _ = split_sequence(seq)
        tp = _draw_int(max_perturbation + 1, b, generator, dev)  # one level per video
        t = _draw_int(schedule.num_steps, b, generator, dev)  # one timestep per video
        t = shift_timesteps(t, schedule.num_steps, self.timestep_shift)
        keep = _draw_uniform(b, generator, dev) >= uncond_prob
        flat = rearrange(keys, "b k c h w -> (b k) c h w")  # every keyframe a row
        flat = perturb_conditioning(
            flat, repeat(tp, "b -> (b k)", k=keys.shape[1]), schedule, _draw_normal(flat, generator)
        )
        keys_p = rearrange(flat, "(b k) c h w -> b k c h w", b=b) * keep[:, None, None, None, None].to(seq.dtype)
        x0 = self._targets(seq)  # rows of this method's layout
        offset = self._offset(keys, length)
        if offset is not None:
            x0 = (x0 - offset) * self.residual_scale  # the model generates the (scaled) difference to the blend
        noise = _draw_normal(x0, generator)
        rows_t = repeat(t, "b -> (b r)", r=x0.shape[0] // b)  # each video's rows share its timestep
        x_t = schedule.q_sample(x0, rows_t, noise)
        target = schedule.target("v", x0, noise, rows_t)
        cond = self._prepare(keys_p, length, keep)
        out = self._model(
            x_t, rows_t.to(seq.dtype), cond, self._context(null_embedding, b), _rows_like(skip_frames, b, dev), tp
        )
        err = (out.float() - target.float()).square()
        weights = self._loss_weights(length, b, dev)
        if weights is None:
            return err.mean()
        err = err.reshape(err.shape[0], -1).mean(dim=1)  # per row
        return (err * weights).sum() / weights.sum()

    def denoiser(
        self,
        keys: torch.Tensor,
        null_embedding: torch.Tensor,
        *,
        skip_frames: int | torch.Tensor,
        perturbation_time: int | torch.Tensor = 0,
        guidance_weight: float = 0.25,
    ) -> Any:
        """``denoise(x, t) -> v`` for conditioning keyframes ``keys`` ``(B, K, c, h, w)`` (already perturbed to
        ``perturbation_time``): ``(1 + w) cond - w uncond`` with both branches in one forward (``w = 0``: cond only)."""
        b, k = keys.shape[:2]
        length = output_frames(k)
        dev = keys.device
        skip = _rows_like(skip_frames, b, dev)
        tp = _rows_like(perturbation_time, b, dev)
        context = self._context(null_embedding, b)
        if guidance_weight == 0:
            cond = self._prepare(keys, length, torch.ones(b, dtype=torch.bool, device=dev))

            def conditional(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return self._model(x, t, cond, context, skip, tp)

            return conditional
        keep = torch.cat([torch.ones(b, dtype=torch.bool, device=dev), torch.zeros(b, dtype=torch.bool, device=dev)])
        both = self._prepare(torch.cat([keys, torch.zeros_like(keys)]), length, keep)  # videos [cond | uncond]
        context2 = tuple(torch.cat([c, c]) for c in context)
        skip2, tp2 = torch.cat([skip, skip]), torch.cat([tp, tp])

        def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = self._model(torch.cat([x, x]), torch.cat([t, t]), both, context2, skip2, tp2)  # rows [cond; uncond]
            c, u = out.chunk(2)
            return combine_guidance(c, u, guidance_weight)

        return guided

    def sample_shape(self, batch: int, num_keyframes: int, latent: Sequence[int]) -> tuple[int, ...]:
        """Shape of the tensor sampled for ``batch`` videos of ``K`` keyframes of latents ``latent = (c, h, w)``."""
        raise NotImplementedError

    @torch.no_grad()
    def interpolate_once(
        self,
        keys: torch.Tensor,
        null_embedding: torch.Tensor,
        sampling: SamplingOptions,
        *,
        skip_frames: int | torch.Tensor,
        perturbation_time: int = 0,
        guidance_weight: float = 0.25,
        train_schedule: NoiseSchedule | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One pass: keyframes ``(B, K, c, h, w)`` -> sequence ``(B, 4K - 3, c, h, w)`` (keyframes kept as given)."""
        b, k = keys.shape[:2]
        cond_keys = keys
        if perturbation_time:
            schedule = train_schedule or NoiseSchedule.cosine()
            flat = rearrange(keys, "b k c h w -> (b k) c h w")  # every keyframe a row
            noise = _draw_normal(flat, generator)
            cond_keys = rearrange(
                perturb_conditioning(flat, perturbation_time, schedule, noise), "(b k) c h w -> b k c h w", b=b
            )  # back to videos
        denoise = self.denoiser(
            cond_keys, null_embedding, skip_frames=skip_frames, perturbation_time=perturbation_time,
            guidance_weight=guidance_weight,
        )  # fmt: skip
        shape = self.sample_shape(b, k, keys.shape[2:])
        x0 = sample(
            denoise, shape, sampling.schedule, method=sampling.sampler, prediction="v", eta=sampling.eta,
            threshold=sampling.threshold, threshold_group=shape[0] // b, generator=generator, device=keys.device,
            dtype=keys.dtype,
        )  # fmt: skip
        offset = self._offset(keys, output_frames(k))
        return self._assemble(x0 if offset is None else x0 / self.residual_scale + offset, keys)


class FusionFramesMethod(InterpolationMethod):
    """FusionFrames: 3 middle frames per keyframe pair, groups of a video on the temporal axis."""

    name = "fusionframes"

    def rows_per_video(self, num_keyframes: int) -> int:
        return num_keyframes - 1

    def sample_shape(self, batch: int, num_keyframes: int, latent: Sequence[int]) -> tuple[int, ...]:
        return (batch * (num_keyframes - 1), FRAMES_PER_GROUP, *latent)

    def _prepare(self, keys: torch.Tensor, length: int, keep: torch.Tensor) -> dict[str, torch.Tensor]:
        left = rearrange(keys[:, :-1], "b g c h w -> (b g) c h w")  # left keyframe of each gap
        right = rearrange(keys[:, 1:], "b g c h w -> (b g) c h w")  # right keyframe of each gap
        mask = repeat(keep, "b -> (b g)", g=keys.shape[1] - 1)  # temporal mask per row
        return {"left": left, "right": right, "temporal_mask": mask}

    def _model(
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        cond: dict[str, torch.Tensor],
        context: tuple[torch.Tensor, torch.Tensor],
        skip_frames: torch.Tensor,
        perturbation_time: torch.Tensor,
    ) -> torch.Tensor:
        groups = cond["left"].shape[0] // skip_frames.shape[0]
        with temporal_mask(self.unet, cond["temporal_mask"]):
            out = self.unet(
                pack_interpolation_input(cond["left"], x, cond["right"]), time, *context,
                num_temporal_groups=groups, skip_frames=skip_frames, perturbation_time=perturbation_time,
            )  # fmt: skip
        return unpack_frames(out)  # (b g) 3 c h w

    def _targets(self, seq: torch.Tensor) -> torch.Tensor:
        _, middles = split_sequence(seq)
        return rearrange(middles, "b g f c h w -> (b g) f c h w")  # one row per gap

    def _assemble(self, x0: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        middles = rearrange(x0, "(b g) f c h w -> b g f c h w", b=keys.shape[0])  # rows back to videos
        return merge_sequence(keys, middles)

    def _loss_weights(self, length: int, batch: int, device: torch.device) -> torch.Tensor | None:
        return None


class MaskedFrameMethod(InterpolationMethod):
    """Masked-frame baseline: every output frame a row, known frames given through extra channels and a mask."""

    name = "masked"

    def rows_per_video(self, num_keyframes: int) -> int:
        return output_frames(num_keyframes)

    def sample_shape(self, batch: int, num_keyframes: int, latent: Sequence[int]) -> tuple[int, ...]:
        return (batch * output_frames(num_keyframes), *latent)

    def _prepare(self, keys: torch.Tensor, length: int, keep: torch.Tensor) -> dict[str, torch.Tensor]:
        b = keys.shape[0]
        known = keys.new_zeros(b, length, *keys.shape[2:])
        known[:, ::_STEP] = keys
        is_key = keyframe_mask(length, keys.device)
        mask = is_key[None, :] & keep[:, None]  # b t: known frames of conditional videos
        return {
            "known": rearrange(known, "b t c h w -> (b t) c h w"),  # frames folded
            "mask": rearrange(mask, "b t -> (b t)").to(keys.dtype),
            "temporal_mask": repeat(keep, "b -> (b t)", t=length),
        }

    def _model(
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        cond: dict[str, torch.Tensor],
        context: tuple[torch.Tensor, torch.Tensor],
        skip_frames: torch.Tensor,
        perturbation_time: torch.Tensor,
    ) -> torch.Tensor:
        frames = cond["known"].shape[0] // skip_frames.shape[0]
        with temporal_mask(self.unet, cond["temporal_mask"]):
            return self.unet(
                pack_masked_input(x, cond["known"], cond["mask"]), time, *context,
                num_frames=frames, skip_frames=skip_frames, perturbation_time=perturbation_time,
            )  # fmt: skip

    def _targets(self, seq: torch.Tensor) -> torch.Tensor:
        return rearrange(seq, "b t c h w -> (b t) c h w")  # every frame a row

    def _assemble(self, x0: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        seq = rearrange(x0, "(b t) c h w -> b t c h w", b=keys.shape[0]).clone()  # rows back to videos
        seq[:, ::_STEP] = keys
        return seq

    def _loss_weights(self, length: int, batch: int, device: torch.device) -> torch.Tensor | None:
        unknown = (~keyframe_mask(length, device)).float()
        return repeat(unknown, "t -> (b t)", b=batch)  # only the frames to generate count


def method_for(unet: nn.Module, blend_residual: bool = False, residual_scale: float = 1.0) -> InterpolationMethod:
    """The method matching a UNet: :class:`FusionFramesMethod` or :class:`MaskedFrameMethod`."""
    if isinstance(unet, InterpolationUNet):
        return FusionFramesMethod(unet, blend_residual, residual_scale)
    if isinstance(unet, MaskedInterpolationUNet):
        return MaskedFrameMethod(unet, blend_residual, residual_scale)
    raise TypeError(f"no interpolation method for {type(unet).__name__}")


@torch.no_grad()
def interpolate(
    method: InterpolationMethod | nn.Module,
    keyframes: torch.Tensor,
    null_embedding: torch.Tensor,
    sampling: SamplingOptions,
    *,
    passes: int = 1,
    skip_frames: int | Sequence[int] | torch.Tensor = 1,
    perturbation_time: int = 0,
    guidance_weight: float = 0.25,
    train_schedule: NoiseSchedule | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Interpolate latent keyframes ``(B, K, c, h, w)`` -> ``(B, 4^n (K - 1) + 1, c, h, w)`` in ``passes = n`` passes.

    ``method``: an :class:`InterpolationMethod` or a UNet (:func:`method_for`). ``skip_frames``: see
    :func:`pass_skips` (a ``(B,)`` tensor gives one value per video for a single pass). ``perturbation_time``: noise level of the conditioning keyframes (0 released, 150 paper),
    noised with ``train_schedule`` (default the 1000-step cosine). Random draws come from ``generator``.
    """
    if not isinstance(method, InterpolationMethod):
        method = method_for(method)
    if keyframes.ndim != 5 or keyframes.shape[1] < 2:
        raise ValueError(f"keyframes must be (B, K >= 2, c, h, w), got {tuple(keyframes.shape)}")
    seq = keyframes
    for skip in pass_skips(skip_frames, passes):
        seq = method.interpolate_once(
            seq, null_embedding, sampling, skip_frames=skip, perturbation_time=perturbation_time,
            guidance_weight=guidance_weight, train_schedule=train_schedule, generator=generator,
        )  # fmt: skip
    return seq


def mse_on_targets(pred: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
    """MSE between two sequences ``(B, L, ...)`` on the generated (non-keyframe) positions only."""
    unknown = ~keyframe_mask(seq.shape[1], seq.device)
    return F.mse_loss(pred[:, unknown].float(), seq[:, unknown].float())
