"""Keyframe-model comparison (``make compare-temporal``): the evaluator and the prepare step of the temporal sweep.

Prepare chain of ``experiments/ablations/temporal.yaml`` (see :mod:`ff_lightning.ablate`):

1. ``movq_image`` (:func:`ff_lightning.evaluation.decoder.prepare_movq`): the frozen image MoVQ, trained on frames of
   the rows' data (the bundled captioned shapes) and cached by config hash, or ``movq_ckpt=...``;
2. ``t2i_base`` (:func:`prepare_t2i`): the text-to-image base model on that MoVQ's latents, trained with the step's
   experiment (``experiments/t2i/tiny.yaml`` plus the step's ``set``) and cached the same way as
   ``$FF_CACHE_DIR/models/t2i-<preset>-<key>.ckpt``, or ``t2i_ckpt=...``. Every keyframe row starts from it.

Evaluator ``keyframes`` (:func:`evaluate_keyframes`). Held-out set: the test split of ``cfg.data`` in its fixed order,
clips cut exactly as in training (``num_frames`` frames ``stride`` apart, centred crop and start). Options (the
sweep's ``evaluate:`` section, :data:`DEFAULTS`):

- **Samples.** Prompts are the captions of the first ``num_samples`` held-out clips (cycled when there are fewer);
  they are generated in batches of ``batch_size`` with seed ``seed * 1000 + batch index`` (the same prompts, seeds and
  initial noise for every row of the same clip shape), ``sample_steps`` sampler steps, the module's sampler and
  guidance unless ``sampler`` / ``guidance_weight`` are given.
- ``fid_frames``: frame FID (packaged InceptionV3, :class:`~ff_lightning.metrics.inception.InceptionFeatures`) of all
  frames of the generated clips against all frames of the held-out real clips (the reference). Interval: bootstrap
  over generated *clips* (their frames kept together; the reference fixed), ``fid_bootstrap`` resamples, each
  computed exactly in the ``n x n`` frame Gram space, percentile range shifted by the bootstrap bias (the project's
  one convention for distribution metrics, :func:`ff_lightning.evaluation.uncertainty.recentred_interval`; see
  :func:`fid_bootstrap`). With far fewer frames than the
  2048 feature dimensions the value is biased upwards: compare rows at the same sample count, never with published
  FIDs. The extra figure ``fid_frames_real_floor`` is the same FID of the real held-out clips the prompts describe
  (an oracle that reproduced exactly the described clips; they are part of the reference, so it is a lower bound for
  this sample count rather than an independent-sample floor).
- ``val_loss``: held-out denoising loss (MSE of the eps / v target) per held-out clip (all of them, or
  ``loss_samples``), averaged over the fixed timesteps ``loss_timesteps`` with noise seeded per (clip, timestep):
  identical inputs for every row, so rows are paired clip by clip. Reference-conditioned modules (system
  ``reference_keyframes``) are measured without a reference (the same inputs as every other row); their extra
  figure ``val_loss_given_reference`` is the same loss with the clip's own clean frame given as the reference (an
  oracle, the given frame included), which shows how much the model uses it. Their samples start from the image
  stage's reference (made by the T2I base), never a real frame; the extra figures ``reference_frame_mse`` /
  ``reference_other_frames_mse`` are the mean squared difference (pixels on [0, 1]) between that reference image and
  the generated frame that was given it / the other frames.
- ``motion_word_gain`` / ``time_order_gain`` (bundled captioned shapes only; what the model learned of motion, from
  the same held-out loss, clip by clip): the loss with the caption's direction word replaced by its opposite
  (left <-> right, up <-> down) minus the loss with the true caption, and the loss of the clip played backwards (true
  caption) minus the loss of the clip. Zero when the model ignores the motion words / the order of the frames; a
  positive interval that excludes 0 says it uses them. ``motion_acc`` cannot exceed chance while both are ~0.
- ``motion``: per generated clip, the mean absolute frame-to-frame change on [0, 1] (all pixels and channels);
  ``motion_gap``: ``|motion(generated i) - motion(real clip i)|``, real clip ``i`` being the held-out clip whose caption
  is prompt ``i`` (its shape, colour, direction and speed). The real mean is the extra figure ``real_motion``.
- ``frame_consistency``: per generated clip, the mean cosine similarity of the Inception features of consecutive
  frames (the usual "temporal consistency" of text-to-video work, with Inception in place of CLIP); the real value is
  the extra figure ``real_frame_consistency``. A frozen image is perfectly consistent, so read it with ``motion``.
- ``colour_acc``, ``shape_acc``, ``motion_acc`` (bundled captioned shapes only): the fraction of generated clips in
  which a held-out attribute classifier (:func:`~ff_lightning.evaluation.shapes_classifier.ensure_attribute_classifier`,
  trained once on the train clips in this clip format, cached) finds the prompt's colour, shape and motion direction
  (chance 1/7, 1/3, 1/4); the same on the real clips the prompts describe is the ceiling, extra figures
  ``real_colour_acc`` / ``real_shape_acc`` / ``real_motion_acc``.
- ``clipsim``, ``is``, ``fvd``: reported unavailable with the reason (weights not shipped; classes and clip lengths
  that do not fit these clips). Pixel-aligned metrics (PSNR, flicker of
  :func:`~ff_lightning.metrics.functional.temporal_consistency`) do not apply: a sample has no aligned ground truth.

Every per-clip metric carries its per-sample values (paired differences against the sweep's reference row) and a
percentile-bootstrap 95% interval. Artifacts (``artifacts_dir``): ``samples.npz`` (``videos`` uint8 ``(N, T, H, W,
3)``, ``prompts``, ``reference`` = the real clips the prompts describe, ``fps``) for the side-by-side grid, GIF and
mp4 of :func:`ff_lightning.reporting.render_samples`.

Real-clip features and the reference statistics are cached in memory and under ``$FF_CACHE_DIR/eval/`` (keyed by the
data settings), so rows after the first (and reruns) do not recompute them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from omegaconf import DictConfig, OmegaConf

from ff_lightning.evaluation.decoder import summarize
from ff_lightning.evaluation.uncertainty import RECENTRED_METHOD, FrechetBootstrap, recentred_interval
from ff_lightning.metrics.functional import feature_statistics

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULTS",
    "evaluate_keyframes",
    "fid_bootstrap",
    "frame_consistency",
    "heldout_loss",
    "motion_magnitude",
    "prepare_t2i",
]

DEFAULTS: dict[str, Any] = {
    "num_samples": 24,  # generated clips (prompts: captions of the first held-out clips)
    "batch_size": 8,  # prompts per generate() call; batch k is seeded seed * 1000 + k
    "seed": 0,
    "sample_steps": None,  # None: module.sample_steps
    "sampler": None,  # None: module.sampler
    "guidance_weight": None,  # None: module.guidance_weight
    "loss_timesteps": [50, 250, 500, 750, 950],
    "loss_samples": None,  # held-out clips for val_loss (None: all)
    "loss_seed": 0,
    "fid_bootstrap": 1000,  # bootstrap resamples of the FID interval
    "real_floor": True,  # also the FID of the real clips the prompts describe (extra figure)
    "fps": None,  # of the written samples (None: the clips' frame rate)
    "caption_accuracy": True,  # colour / shape / motion accuracy (captioned shapes; trains a classifier once, ~30 s)
}
RECIPE_VERSION = 2  # bump when the real-feature cache content changes
_REAL_CACHE: dict[str, dict[str, Any]] = {}
_INCEPTION: list[Any] = []


# ------------------------------------------------------------------------------------------------------- metrics
def motion_magnitude(video: torch.Tensor) -> torch.Tensor:
    """Mean absolute frame-to-frame change per clip: videos ``(B, T, 3, H, W)`` in [-1, 1] -> ``(B,)`` on [0, 1]."""
    u = (video.double().clamp(-1, 1) + 1) / 2
    if u.shape[1] < 2:
        return torch.zeros(u.shape[0], dtype=torch.float64)
    return (u[:, 1:] - u[:, :-1]).abs().mean(dim=(1, 2, 3, 4))


def frame_consistency(features: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of consecutive frames' features: ``(B, T, D)`` -> ``(B,)`` (1 for ``T == 1``)."""
    f = features.double()
    if f.shape[1] < 2:
        return torch.ones(f.shape[0], dtype=torch.float64)
    return F.cosine_similarity(f[:, 1:], f[:, :-1], dim=-1).mean(dim=1)


def fid_bootstrap(
    gen: torch.Tensor,
    mu_ref: torch.Tensor,
    sigma_ref: torch.Tensor,
    root_ref: torch.Tensor | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Frame FID of clips ``gen`` ``(N, T, D)`` against a reference ``N(mu_ref, sigma_ref)`` and its interval.

    Returns ``(fid, low, high)``: the FID of all ``N T`` frames and the project's interval for distribution metrics
    (:func:`ff_lightning.evaluation.uncertainty.recentred_interval`): ``n_boot`` resamples of the ``N`` clips with
    replacement (frames of a clip stay together, the reference fixed), their 2.5 / 97.5 percentiles shifted by the
    bootstrap bias ``mean(resampled FIDs) - fid`` (resamples with duplicated clips have a higher FID, so the raw
    percentiles would sit above the estimate). The same convention as the ``ff eval`` protocols.

    Every FID is computed by :class:`~ff_lightning.evaluation.uncertainty.FrechetBootstrap`: exact and cheap (an
    ``m x m`` eigenproblem) while the ``m`` frames are fewer than the ``D`` feature dimensions, the ``D x D`` form
    otherwise (about a second per resample at D = 2048 on a CPU core: lower ``n_boot`` for such sizes).
    ``root_ref`` (the PSD square root of ``sigma_ref``) is accepted for callers that have it and not needed.
    """
    n, t, _ = gen.shape
    if n * t < 2:
        raise ValueError(f"need at least 2 generated frames for an FID, got {n * t}")
    fb = FrechetBootstrap(mu_ref, sigma_ref, gen)
    value = fb.value()
    if n < 2 or n_boot <= 0:
        return value, value, value
    rng = np.random.default_rng(seed)
    vals = [fb.value(rng.integers(0, n, size=n)) for _ in range(n_boot)]
    ci = recentred_interval(vals, value, 0.05)
    return value, max(float(ci["ci_low"]), 0.0), float(ci["ci_high"])


@torch.no_grad()
def heldout_loss(
    module: Any,
    batch: dict[str, Any],
    first_index: int,
    timesteps: Sequence[int],
    seed: int = 0,
    *,
    given_reference: bool = False,
    reverse_frames: bool = False,
) -> torch.Tensor:
    """Denoising loss per clip ``(B,)`` of a batch of held-out clips, averaged over the fixed ``timesteps``.

    ``batch["video"]`` ``(B, T, 3, H, W)``; clip ``j`` is held-out clip ``first_index + j`` and its noise at timestep
    ``s`` is drawn from a generator seeded with ``(seed, first_index + j, s)``, so every model sees the same inputs.
    ``given_reference`` (reference-conditioned modules): the clip's own clean frame is given as the reference
    (:meth:`~ff_lightning.systems.reference_keyframes.ReferenceKeyframesModule.given_reference`); else none is.
    ``reverse_frames``: the clips played backwards, each frame keeping its own noise (so a model that treats frames
    independently gives exactly the loss of the clips in order).
    """
    video = batch["video"].to(module.device)
    if reverse_frames:
        video = video.flip(1)  # b t ... with t reversed
    b, t = video.shape[:2]
    x0 = module.encode_frames(rearrange(video, "b t c h w -> (b t) c h w"))  # (b t) 4 h w
    context, mask = module.text_condition(batch["caption"])  # b l c, b l
    strides = module.frame_strides(batch, b)
    total = torch.zeros(b, dtype=torch.float64)
    for s in timesteps:
        per_clip = [
            torch.randn(
                (t, *x0.shape[1:]),
                generator=torch.Generator().manual_seed(_mix(seed, first_index + j, int(s))),
                dtype=x0.dtype,
            )  # t 4 h w
            for j in range(b)
        ]
        if reverse_frames:  # the noise follows its frame
            per_clip = [n.flip(0) for n in per_clip]
        noise = torch.stack(per_clip).flatten(0, 1).to(x0.device)  # (b t) 4 h w
        steps = torch.full((b * t,), int(s), device=x0.device, dtype=torch.long)
        x_t = module.schedule.q_sample(x0, steps, noise)
        extras = module.given_reference(x0, b) if given_reference else {}
        out = module.unet(x_t, steps.to(x0.dtype), context, mask, num_frames=t, frame_stride=strides, **extras)
        target = module.schedule.target(module.m.prediction, x0, noise, steps)
        err = (out.float() - target.float()).square().mean(dim=(1, 2, 3)).double().cpu()  # (b t)
        total += err.view(b, t).mean(dim=1)
    return total / len(timesteps)


def _mix(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & (2**32 - 1) for p in parts]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------------- real clips
def _inception(device: torch.device) -> Any:
    from ff_lightning.metrics.inception import InceptionFeatures

    if not _INCEPTION:
        _INCEPTION.append(InceptionFeatures())
    return _INCEPTION[0].to(device)


@torch.no_grad()
def _features(videos: torch.Tensor, device: torch.device, chunk: int = 32) -> torch.Tensor:
    """Inception features of every frame: ``(B, T, 3, H, W)`` in [-1, 1] -> ``(B, T, 2048)`` float32 on the CPU."""
    net = _inception(device)
    frames = videos.flatten(0, 1)
    feats = [net(frames[i : i + chunk].to(device)).cpu() for i in range(0, frames.shape[0], chunk)]
    return torch.cat(feats).view(*videos.shape[:2], -1)


def _data_config(cfg: DictConfig, **changes: Any) -> DictConfig:
    return OmegaConf.merge(cfg.data, {"random_crop": False, "random_start": False, "shuffle": False, **changes})


def _load_clips(data: DictConfig, split: str, limit: int | None) -> dict[str, Any]:
    """The first ``limit`` clips of ``split`` in order: ``video`` ``(N, T, 3, H, W)``, ``caption``, ``meta``."""
    from torch.utils.data import DataLoader

    from ff_lightning.data import build_datamodule, collate_clips

    dm = build_datamodule(data)
    dm.prepare_data()
    ds = dm.dataset(split)
    n = len(ds) if limit is None else min(limit, len(ds))
    loader = DataLoader(torch.utils.data.Subset(ds, range(n)), batch_size=16, shuffle=False, collate_fn=collate_clips)
    videos, captions, metas = [], [], []
    for batch in loader:
        videos.append(batch["video"])
        captions += list(batch["caption"])
        metas += list(batch["meta"])
    return {"video": torch.cat(videos), "caption": captions, "meta": metas}


def _real_reference(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """Held-out clips (uint8), captions, frame steps, Inception features of every frame and their statistics."""
    from ff_lightning.io import atomic_torch_save
    from ff_lightning.metrics.distribution import psd_sqrt
    from ff_lightning.paths import cache_dir

    data = _data_config(cfg)
    ident = {"data": OmegaConf.to_container(data, resolve=True), "version": RECIPE_VERSION}
    for k in ("batch_size", "val_batch_size", "num_workers", "pin_memory", "persistent_workers", "max_samples"):
        ident["data"].pop(k, None)  # type: ignore[union-attr]
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if key in _REAL_CACHE:
        return _REAL_CACHE[key]
    path = cache_dir() / "eval" / f"keyframes-real-{key}.pt"
    if path.is_file():
        from ff_lightning.checkpoints import load_checkpoint

        ref = load_checkpoint(path)
        log.info("real reference: cached %s", path)
    else:
        t0 = time.time()
        held = _load_clips(data, "test", data.max_val_samples)
        feats = _features(held["video"], device)
        mu, sigma = feature_statistics(feats.flatten(0, 1))
        ref = {
            "video": ((held["video"].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8),
            "caption": held["caption"],
            "features": feats,
            "mu": mu,
            "sigma": sigma,
            "root": psd_sqrt(sigma),
            "fps": _clip_fps(held["meta"][0]) if held["meta"] else None,
            "meta": [{k: m.get(k) for k in ("stride", "fps", "source_fps")} for m in held["meta"]],
        }
        atomic_torch_save(ref, path)
        log.info("real reference: %d held-out clips in %.0fs -> %s", len(held["caption"]), time.time() - t0, path)
    _REAL_CACHE[key] = ref
    return ref


def _clip_fps(meta: dict[str, Any]) -> float | None:
    if meta.get("fps"):
        return float(meta["fps"])
    if meta.get("source_fps") and meta.get("stride"):
        return float(meta["source_fps"]) / float(meta["stride"])
    return None


def _unit_videos(u8: torch.Tensor) -> torch.Tensor:
    return u8.float() / 127.5 - 1.0


# ----------------------------------------------------------------------------------------------- unavailable ones
def _unavailable_reasons(t: int, h: int, w: int) -> dict[str, str]:
    from ff_lightning.metrics.weights import resolve_weights

    def missing(*names: str) -> str | None:
        """None when one of the weights ``names`` is found; else why the first is not (missing, bad hash, ...)."""
        errors = []
        for name in names:
            try:
                resolve_weights(name)
                return None
            except Exception as e:  # WeightsUnavailable, WeightsChecksumError, an unknown name
                errors.append(str(e).strip("'\""))
        return errors[0] if errors else None

    clip = missing("clip_vit_b32_openai", "clip_vit_b32_openai_hf")
    i3d = missing("i3d_torchscript", "i3d_kinetics400")
    c3d = missing("c3d_ucf101")
    shape = f"{t}-frame {h}x{w} clips"
    return {
        "clipsim": f"CLIPSIM not computed: {clip}"
        if clip
        else f"CLIPSIM not computed here (CLIP ViT-B/32 weights are present; `ff eval` computes it on its protocols' "
        f"prompts): CLIP on {shape} of procedural shapes says little",
        "is": "IS not computed: the C3D UCF-101 classifier's 101 action classes do not cover procedural shapes and it "
        f"takes 16-frame 112x112 clips (these are {shape})" + (f"; also {c3d}" if c3d else ""),
        "fvd": f"FVD not computed: its protocol uses 16-frame clips of a Kinetics I3D (these are {shape})"
        + (f"; {i3d}" if i3d else ""),
    }


def _caption_accuracy(
    out: dict[str, Any], cfg: DictConfig, videos: torch.Tensor, real: torch.Tensor, prompts: list[str], enabled: bool
) -> dict[str, float]:
    """``colour_acc`` / ``shape_acc`` / ``motion_acc`` of the generated clips ``(n, T, 3, H, W)`` into ``out``; returns
    the real clips' accuracies (the ceiling). Other data sources: reported unavailable."""
    from ff_lightning.evaluation.shapes_classifier import (
        ATTRIBUTES,
        attribute_hits,
        ensure_attribute_classifier,
        predicted_shares,
    )

    if not enabled or str(cfg.data.source) != "bundled_shapes" or cfg.data.get("fps"):
        reason = ("caption accuracy not computed (evaluate.caption_accuracy: false)" if not enabled else
                  "caption accuracy needs the bundled captioned shapes (data.source)")  # fmt: skip
        for k in ATTRIBUTES:
            out[f"{k}_acc"] = summarize(None, reason)
        return {}
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(data, dict)
    model = ensure_attribute_classifier(data, int(real.shape[1]), int(cfg.data.stride))
    hits, real_hits = attribute_hits(model, videos, prompts), attribute_hits(model, real, prompts)
    for k in ATTRIBUTES:
        out[f"{k}_acc"] = summarize(hits[k], proportion=True)
    extra = {f"real_{k}_acc": float(real_hits[k].mean()) for k in ATTRIBUTES}
    # which directions the generated clips show (a model that ignores the word shows its own favourite, whatever the
    # prompts ask): the share of generated clips classified as each direction
    extra.update({f"generated_moving_{d}": v for d, v in predicted_shares(model, videos, "motion").items()})
    return extra


def opposite_direction_caption(caption: str) -> str:
    """``"a red circle moving left slowly"`` -> ``"a red circle moving right slowly"`` (every direction word swapped)."""
    from ff_lightning.data.motion_words import REVERSE_SWAP, swap_words

    return swap_words(caption, REVERSE_SWAP)


# ------------------------------------------------------------------------------------------------------ evaluator
def _eval_device(cfg: DictConfig) -> torch.device:
    use_gpu = str(cfg.trainer.accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if use_gpu else "cpu")


@torch.no_grad()
def evaluate_keyframes(
    module: Any,
    cfg: DictConfig,
    *,
    options: dict[str, Any] | None = None,
    artifacts_dir: Path | None = None,
) -> dict[str, Any]:
    """Generate from held-out captions and measure a keyframe module (see the module docstring for the protocol)."""
    unknown = set(options or {}) - set(DEFAULTS)
    if unknown:
        from ff_lightning.config import ConfigError

        raise ConfigError(f"unknown keyframes evaluator option(s) {sorted(unknown)}; valid: {', '.join(DEFAULTS)}")
    o = {**DEFAULTS, **(options or {})}
    device = _eval_device(cfg)
    module.to(device).eval()
    params = module.trainable_parameters()
    ema = getattr(module, "ema", None)
    if ema is not None:
        ema.swap_in(params)
    try:
        return _evaluate(module, cfg, o, device, artifacts_dir)
    finally:
        if ema is not None:
            ema.swap_out(params)


def _evaluate(
    module: Any, cfg: DictConfig, o: dict[str, Any], device: torch.device, artifacts_dir: Path | None
) -> dict[str, Any]:
    n = int(o["num_samples"])
    ref = _real_reference(cfg, device)
    held_u8: torch.Tensor = ref["video"]
    n_held = held_u8.shape[0]
    idx = [i % n_held for i in range(n)]
    prompts = [ref["caption"][i] for i in idx]
    real = _unit_videos(held_u8[idx])  # (n, T, 3, H, W): the clips the prompts describe
    t, _, h, w = real.shape[1:]

    # --- samples: fixed prompts, fixed seeds per batch
    t0 = time.time()
    latent = module.encode_frames(real[:1, 0].to(device))
    bs = max(1, int(o["batch_size"]))
    chunks, references = [], []
    with_reference = bool(getattr(module, "reference_conditioned", False))  # reference_keyframes: image stage first
    for k, start in enumerate(range(0, n, bs)):
        v = module.generate(
            prompts[start : start + bs],
            tuple(latent.shape[-2:]),
            steps=o["sample_steps"],
            sampler=o["sampler"],
            guidance_weight=o["guidance_weight"],
            seed=int(o["seed"]) * 1000 + k,
            **({"return_reference": True} if with_reference else {}),
        )
        if with_reference:  # the reference latents the image stage made: decoded to compare with the keyframes
            v, r = v
            references.append(module.decode_latents(r).float().clamp(-1, 1).cpu())
        chunks.append(v.float().clamp(-1, 1).cpu())
    videos = torch.cat(chunks)
    u8 = ((videos + 1) * 127.5).round().to(torch.uint8)
    videos = _unit_videos(u8)  # what a saved sample holds
    sample_s = time.time() - t0
    if videos.shape[1:] != real.shape[1:]:
        raise ValueError(f"generated clips {tuple(videos.shape[1:])} differ from the data's {tuple(real.shape[1:])}")

    # --- frame FID and feature consistency
    feats = _features(videos, device)
    fid, lo, hi = fid_bootstrap(feats, ref["mu"], ref["sigma"], ref["root"], int(o["fid_bootstrap"]), int(o["seed"]))
    out: dict[str, Any] = {
        "fid_frames": {
            "value": fid,
            "ci_low": lo,
            "ci_high": hi,
            "n": n,
            "ci_method": f"{RECENTRED_METHOD} over generated clips, reference fixed",
        },
        "frame_consistency": summarize(frame_consistency(feats)),
    }

    # --- motion against the real clips of the same captions
    motion = motion_magnitude(videos)
    real_motion = motion_magnitude(real)
    out["motion"] = summarize(motion)
    out["motion_gap"] = summarize((motion - real_motion).abs())

    # --- does the clip show its caption? (captioned shapes: a held-out attribute classifier; the real clips' hits
    # are the ceiling, extra figures real_<attribute>_acc)
    caption_extra = _caption_accuracy(out, cfg, videos, real, prompts, bool(o["caption_accuracy"]))

    # --- held-out denoising loss at fixed timesteps and noise
    loss_n = n_held if o["loss_samples"] is None else min(int(o["loss_samples"]), n_held)
    losses, given, swapped, backwards = [], [], [], []
    with_reference = bool(getattr(module, "reference_conditioned", False))
    with_motion_words = str(cfg.data.source) == "bundled_shapes"  # captions that state a motion direction
    lb = max(1, int(o["batch_size"]))
    for start in range(0, loss_n, lb):
        stop = min(loss_n, start + lb)
        batch = {
            "video": _unit_videos(held_u8[start:stop]),
            "caption": ref["caption"][start:stop],
            "meta": ref["meta"][start:stop],  # the clips' frame steps (frame-rate conditioning)
        }
        losses.append(heldout_loss(module, batch, start, o["loss_timesteps"], int(o["loss_seed"])))
        if with_reference:  # the oracle: the clip's own frame given as the reference
            given.append(heldout_loss(module, batch, start, o["loss_timesteps"], int(o["loss_seed"]),
                                      given_reference=True))  # fmt: skip
        if with_motion_words:  # motion_word_gain / time_order_gain: the same clips, direction swapped / backwards
            other = {**batch, "caption": [opposite_direction_caption(c) for c in batch["caption"]]}
            swapped.append(heldout_loss(module, other, start, o["loss_timesteps"], int(o["loss_seed"])))
            backwards.append(heldout_loss(module, batch, start, o["loss_timesteps"], int(o["loss_seed"]),
                                          reverse_frames=True))  # fmt: skip
    own = torch.cat(losses)
    out["val_loss"] = summarize(own)
    reason = "needs the bundled captioned shapes (captions that state a motion direction)"
    for name, other_losses in (("motion_word_gain", swapped), ("time_order_gain", backwards)):
        out[name] = summarize(torch.cat(other_losses) - own) if other_losses else summarize(None, reason)

    for name, reason in _unavailable_reasons(t, h, w).items():
        out[name] = summarize(None, reason)

    extra: dict[str, float] = {
        "real_motion": float(motion_magnitude(_unit_videos(held_u8)).mean()),
        "real_frame_consistency": float(frame_consistency(ref["features"]).mean()),
        "generated_frames": float(n * t),
        "reference_frames": float(n_held * t),
        "sample_seconds": round(sample_s, 1),
    }
    extra.update(caption_extra)
    if given:
        extra["val_loss_given_reference"] = float(torch.cat(given).mean())
    if references:  # how closely the generated frames follow the reference image (pixels on [0, 1])
        per_frame = ((videos - torch.cat(references)[:, None]) / 2).square().mean(dim=(2, 3, 4))  # n t
        frame = int(module.m.sample_reference_frame) % t
        others = [i for i in range(t) if i != frame]
        extra["reference_frame_mse"] = float(per_frame[:, frame].mean())
        if others:
            extra["reference_other_frames_mse"] = float(per_frame[:, others].mean())
    if o["real_floor"] and n >= 2:  # the oracle: the described real clips themselves (their features are cached)
        extra["fid_frames_real_floor"] = fid_bootstrap(ref["features"][idx], ref["mu"], ref["sigma"], ref["root"], 0)[0]
    out["_extra"] = extra

    if artifacts_dir is not None:
        from ff_lightning.io import atomic_open

        fps = o["fps"] or ref.get("fps") or 4.0
        with atomic_open(Path(artifacts_dir) / "samples.npz", "wb") as f:
            np.savez_compressed(
                f,
                videos=u8.permute(0, 1, 3, 4, 2).contiguous().numpy(),
                reference=held_u8[idx].permute(0, 1, 3, 4, 2).contiguous().numpy(),
                prompts=np.array(prompts),
                fps=np.array(float(fps)),
            )
    log.info(
        "keyframes eval: FID %.1f [%.1f, %.1f], val_loss %.4f, motion %.4f (real %.4f), %.0fs sampling",
        fid, lo, hi, out["val_loss"]["value"], out["motion"]["value"], extra["real_motion"], sample_s,
    )  # fmt: skip
    return out


# -------------------------------------------------------------------------------------------------------- prepare
_T2I_MATCH = ("movq_ckpt", "movq_preset", "text_encoder", "text_encoder_path", "text_max_length", "prediction",
              "train_timesteps", "latent_scale")  # fmt: skip


def prepare_t2i(
    probe: DictConfig, experiment: Path | None, redo: bool, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Provide the text-to-image base model every keyframe row extends: ``{"module.t2i_ckpt": path}``.

    If the sweep sets ``module.t2i_ckpt`` (``t2i_ckpt=...``), the file must exist and is used as is (it must have been
    trained on the same MoVQ). Otherwise ``experiment`` (e.g. ``experiments/t2i/tiny.yaml``) is trained with the rows'
    data source and frame size, model preset, frozen MoVQ (``module.movq_ckpt``, from the previous prepare step) and
    text encoder, then ``overrides`` (the step's ``set``), and its weights (EMA included) and config are cached as
    ``$FF_CACHE_DIR/models/t2i-<preset>-<config hash>.ckpt``.
    """
    from ff_lightning.ablate import config_hash
    from ff_lightning.config import ConfigError, load_config
    from ff_lightning.io import atomic_torch_save
    from ff_lightning.paths import cache_dir
    from ff_lightning.systems.keyframes import CONVERSION_KEYS
    from ff_lightning.train import fit

    given = probe.module.t2i_ckpt
    if given:
        if not Path(given).expanduser().is_file():
            raise ConfigError(f"t2i_ckpt={given}: file not found (a t2i-system checkpoint, e.g. a run's last.ckpt)")
        return {}
    if experiment is None:
        raise ConfigError("the sweep sets neither t2i_ckpt nor an experiment for the t2i_base prepare step")
    if not probe.module.movq_ckpt:
        raise ConfigError("t2i_base needs module.movq_ckpt: put the movq_image step before it or pass movq_ckpt=...")
    items = []
    data = OmegaConf.to_container(probe.data, resolve=True)
    assert isinstance(data, dict)
    for k in ("source", "root", "annotations", "size", "seed", "cache_dir"):
        if data.get(k) is not None:
            items.append(f"data.{k}={json.dumps(data[k]) if isinstance(data[k], list) else data[k]}")
    for k in _T2I_MATCH:
        v = probe.module.get(k)
        items.append(f"module.{k}={'null' if v is None else v}")
    unet_over = {k: v for k, v in dict(probe.model.overrides).items() if k not in CONVERSION_KEYS}
    items += [f"model.preset={probe.model.preset}", f"model.overrides={json.dumps(unet_over)}",
              f"run.output_dir={probe.run.output_dir}", *overrides]  # fmt: skip
    cfg = load_config(experiment, items)
    key = config_hash(cfg)
    target = cache_dir() / "models" / f"t2i-{cfg.model.preset}-{key}.ckpt"
    if target.is_file() and not redo:
        log.info("t2i base: cached %s", target)
        return {"module.t2i_ckpt": str(target)}
    log.info("t2i base: training %s (%d steps) -> %s", experiment, cfg.trainer.max_steps, target)
    t0 = time.time()
    result = fit(cfg)
    if result.checkpoint is None or result.trainer.global_step < cfg.trainer.max_steps:
        raise RuntimeError(
            f"t2i base training stopped at step {result.trainer.global_step} of {cfg.trainer.max_steps} "
            f"({result.run_dir}); nothing cached"
        )
    from ff_lightning.checkpoints import load_checkpoint

    ckpt = load_checkpoint(result.checkpoint)
    slim = {k: ckpt[k] for k in ("state_dict", "ema_state_dict", "hyper_parameters") if k in ckpt}
    slim["ff_lightning"] = {"config_hash": key, "train_seconds": round(time.time() - t0, 1)}
    atomic_torch_save(slim, target)
    return {"module.t2i_ckpt": str(target)}
