"""Interpolation benchmark: FusionFrames vs masked-frame interpolation, speed (time, FLOPs) and quality, in one run.

Usage (defaults sized for a run of a few minutes on 2 CPU cores; ``make bench-interpolation`` runs it as is)::

    python benchmarks/interpolation_speed.py [--preset tiny] [--keyframes K] [--speed-size P] [--steps N]
        [--guidance W] [--repeats R] [--base trained|random] [--source SRC] [--train-steps S] [--batch-size B]
        [--lr LR] [--train-size H] [--train-keyframes K] [--max-skip S] [--eval-skip S] [--eval-hop H]
        [--max-eval N] [--threads T] [--workers J]
        [--paper-flops | --no-paper-flops] [--seed S] [--cache DIR] [--out PREFIX]

Both models are built from the same image UNet by the two conversions of the project
(:func:`~ff_lightning.models.interpolation.interpolation_unet_from_t2i`,
:func:`~ff_lightning.models.masked_interpolation.masked_interpolation_unet_from_t2i`, through
:class:`~ff_lightning.systems.interpolation.InterpolationModule`): equal width and depth, the same temporal convs, the
same conditioning; they differ in the frame layout only (see :mod:`ff_lightning.models.interpolation_pipeline`). With
``--base trained`` (default) that UNet is the text-to-image base of ``make compare-temporal`` / ``make tiny-models``
(their prepare chain and cache keys: a cached MoVQ and base are reused, missing ones are trained first, which takes
long on a CPU), and the diffusion runs in the latent space of its frozen image MoVQ, scaled by the base's recorded
latent scale. ``--base random`` (tests only) uses a seeded random UNet over a random MoVQ.

1. **Training, equal budgets.** ``--train-steps`` AdamW steps of batch ``--batch-size`` for each model, on the *same*
   batches (one loader feeds both, encoded once): interpolation samples of ``--train-keyframes`` keyframes (``4K - 3``
   frames) from the train split of ``--source`` (default the bundled captioned shapes, objects moving several pixels
   per frame) at ``--train-size`` pixels, skip ``s`` in ``1..--max-skip``, the project's augmentations; the paper's
   objective (v-prediction, keyframe perturbation ``tp`` in 0..250, unconditional videos with probability 0.1).
   Wall and CPU time per step are recorded per model.
2. **Quality.** Held-out clips of the test split: windows of ``4K - 3`` frames at step ``--eval-skip`` every
   ``--eval-hop`` source frames, centre crop. From the encoded keyframes each model generates the other latents
   (``--steps`` DDIM steps, guidance ``--guidance``, ``tp = 0``), decoded by the MoVQ; PSNR and SSIM of the decoded
   middle frames against the real ones, one value per sequence, mean and 95% bootstrap interval
   (:func:`ff_lightning.evaluation.decoder.summarize`), and the paired PSNR gain over a linear blend of the
   neighbouring keyframes. Reference rows: the linear blend, a copy of the left keyframe (how much the footage
   moves), the MoVQ reconstruction of the real frames (the ceiling of a model in this latent space) and the linear
   blend of the keyframe latents, decoded (the same blend in the model's space); LPIPS when its weights are
   installed. ``--pixel-correction`` adds a row per model: the pixel blend plus the model's decoded change to the
   decoded latent blend (static content then keeps the pixel blend instead of the MoVQ's reconstruction).
3. **Speed.** Both trained models interpolate the same ``--keyframes`` random keyframes of ``--speed-size`` pixels
   latents into ``4K - 3`` frames (one pass, batch 1, the same ``--steps`` sampling steps and guidance, both branches
   batched): one warm-up each (which also counts the FLOPs), then ``--repeats`` rounds timing each once (order
   alternating). Reported: median wall and CPU (process) time, the per-round ratio masked / FusionFrames (median),
   and FLOPs of one interpolation from ``torch.utils.flop_counter.FlopCounterMode``. ``--paper-flops`` also counts one denoising step at the paper size
   (9 keyframes, 32x32 latents) on the meta device, where nothing is computed.

Outputs: ``PREFIX.md`` (tables), ``PREFIX.csv`` (one row per measurement), ``PREFIX.png`` (time and FLOP ratios,
training curves, quality), written atomically; default prefix ``benchmarks/results/interpolation``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import rearrange

from ff_lightning.data import DataConfig, collate_clips, read_video_frames
from ff_lightning.data.bundled import build_set
from ff_lightning.data.interpolation import InterpolationDataOptions, InterpolationSequenceDataset, sequence_length
from ff_lightning.data.registry import build_dataset
from ff_lightning.data.transforms import frames_to_clip
from ff_lightning.data.video_io import probe_video
from ff_lightning.diffusion import NoiseSchedule, SamplingSchedule
from ff_lightning.io import atomic_open, atomic_write_text
from ff_lightning.metrics.functional import ssim, to_unit
from ff_lightning.models.interpolation import interpolation_unet_from_t2i
from ff_lightning.models.interpolation_pipeline import (
    FusionFramesMethod,
    InterpolationMethod,
    MaskedFrameMethod,
    SamplingOptions,
    interpolate,
    keyframe_mask,
    output_frames,
)
from ff_lightning.models.masked_interpolation import masked_interpolation_unet_from_t2i
from ff_lightning.models.unet import UNET_PRESETS, KandinskyUNet
from ff_lightning.registry import build
from ff_lightning.systems.ema import EMA

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # run as a script or loaded by file path: the shared helpers sit next to it
    sys.path.insert(0, str(_HERE))
from _common import command_line, cpu_name, output_paths, timestamp, write_csv  # noqa: E402

#: the quality recipe (both models): steps and learning rate, chosen by the probes in experiments/interpolation;
#: the objective (blend residual x3, training steps shifted towards high noise) and the 1-step sampler by the side
#: runs listed in benchmarks/README.md. The paper's objective: --no-blend-residual --timestep-shift 1 --steps 10
TRAIN_STEPS = 4000
LR = 5e-4
AUGMENT = True
EMA_DECAY = 0.0
BLEND_RESIDUAL = True
RESIDUAL_SCALE = 3.0
TIMESTEP_SHIFT = 4.0
SAMPLING_STEPS = 1
METHOD_LABELS = {
    "fusionframes": "FusionFrames",
    "masked": "masked frames",
    "fusionframes_pixel_correction": "FusionFrames, change decoded onto the pixel blend",
    "masked_pixel_correction": "masked frames, change decoded onto the pixel blend",
    "flow_pixel": "flow (Farneback, pixels)",
    "flow_latent": "flow (Farneback, latent grid)",
}
FLOW_ARMS = ("flow_pixel", "flow_latent")  # training-free arms (ff_lightning.models.flow_interpolation)
CSV_COLUMNS = (
    "section", "method", "keyframes", "frames_out", "size", "steps", "rows_per_step", "params_m", "gflops",
    "flop_ratio_vs_fusionframes", "time_median_s", "time_min_s", "time_max_s", "cpu_median_s",
    "time_ratio_vs_fusionframes", "cpu_ratio_vs_fusionframes", "train_s_per_step", "train_cpu_s_per_step",
    "final_train_loss", "psnr", "psnr_ci_low", "psnr_ci_high", "ssim", "ssim_ci_low", "ssim_ci_high", "lpips",
    "psnr_gain_vs_blend", "gain_ci_low", "gain_ci_high", "eval_sequences",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- models
@dataclass
class Setup:
    """Both interpolation models, the null embedding and the frozen MoVQ they share (``encode`` / ``decode``)."""

    methods: dict[str, InterpolationMethod]
    null: torch.Tensor
    codec: Any  # an InterpolationModule: video_latents (B, T, 3, H, W) -> (B, T, c, h, w), decode_latents
    base: dict[str, Any]  # what the models start from: movq_ckpt, t2i_ckpt, latent_scale (files named, no paths)


def build_setup(args: argparse.Namespace) -> Setup:
    """Both models converted from one image UNet of ``--preset``: the trained t2i base (``--base trained``, with its
    MoVQ and recorded latent scale) or a seeded random one over a random MoVQ (``--base random``: tests only)."""
    from ff_lightning.config import load_config
    from ff_lightning.systems.interpolation import InterpolationModule
    from ff_lightning.tiny_models import _base_latent_scale, compare_temporal_base, latent_scale_of

    if args.base == "trained":
        base = compare_temporal_base()
        movq, t2i = base["module.movq_ckpt"], base["module.t2i_ckpt"]
        scale = _base_latent_scale(t2i) or latent_scale_of(movq)
        items = [f"module.movq_ckpt={movq}", f"module.t2i_ckpt={t2i}", f"module.latent_scale={scale}"]
    else:
        movq = t2i = None
        scale = 1.0
        items = ["module.allow_random_movq=true", "module.allow_random_t2i=true", "module.train_null_embedding=true"]
    methods, null, codec = {}, None, None
    for name, variant in (("fusionframes", "kandinsky_video"), ("masked", "masked_frame")):
        torch.manual_seed(args.seed)  # the same random image UNet (and MoVQ) for both with --base random
        cfg = load_config(
            _HERE.parent / "experiments" / "interpolation" / "base.yaml",
            [*items, f"module.method={name}", f"model.variant={variant}", f"model.preset={args.preset}",
             f"data.size=[{args.train_size},{args.train_size}]"],
        )  # fmt: skip
        module = InterpolationModule(cfg)
        methods[name] = module.method
        if codec is None:
            codec, null = module, module.null_embedding.embedding.detach().clone()
    base_info = {
        "movq": Path(movq).name if movq else "random (tests)",
        "t2i": Path(t2i).name if t2i else "random (tests)",
        "latent_scale": scale,
    }
    return Setup(methods, null, codec, base_info)


@torch.no_grad()
def encode(setup: Setup, video: torch.Tensor) -> torch.Tensor:
    """Frames ``(B, T, 3, H, W)`` in [-1, 1] -> scaled latents ``(B, T, c, h, w)`` of the frozen MoVQ."""
    return setup.codec.video_latents(video)


@torch.no_grad()
def decode(setup: Setup, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents ``(B, T, c, h, w)`` -> frames ``(B, T, 3, H, W)`` (each frame decoded alone)."""
    b = latents.shape[0]
    frames = setup.codec.decode_latents(rearrange(latents, "b t c h w -> (b t) c h w"))  # frames folded
    return rearrange(frames, "(b t) c h w -> b t c h w", b=b).clamp(-1, 1)


def _to_latent(frames: torch.Tensor) -> torch.Tensor:
    """Latent stand-in: ``(B, T, 3, H, W)`` -> ``(B, T, 12, H/2, W/2)`` by 2x2 space-to-depth (exactly invertible)."""
    b = frames.shape[0]
    z = torch.nn.functional.pixel_unshuffle(rearrange(frames, "b t c h w -> (b t) c h w"), 2)  # frames folded
    return rearrange(z, "(b t) c h w -> b t c h w", b=b)


def _decode(latents: torch.Tensor) -> torch.Tensor:
    """The stand-in's decoder, ``(N, 12, h, w)`` -> ``(N, 3, 2h, 2w)`` (depth-to-space)."""
    return torch.nn.functional.pixel_shuffle(latents, 2)


def make_flow_arms() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The flow arms as ``keyframes (B, K, 3, H, W) -> frames (B, 4K - 3, 3, H, W)`` in pixel space.

    ``flow_pixel``: ``interpolation_arm/flow_farneback`` on the frames. ``flow_latent``:
    ``interpolation_arm/flow_farneback_latent`` on a 2x2 space-to-depth latent stand-in (12 channels at half
    resolution, no training, decodes exactly): flow on the decoded keyframes, resized to the latent grid, latents
    warped and blended there, then decoded; it differs from ``flow_pixel`` only by warping on the coarser grid.
    """
    pixel = build("interpolation_arm", "flow_farneback")
    latent = build("interpolation_arm", "flow_farneback_latent")

    def run_latent(keys: torch.Tensor) -> torch.Tensor:
        seq = latent(_to_latent(keys), decode=_decode)  # b t 12 h w
        frames = _decode(rearrange(seq, "b t c h w -> (b t) c h w"))  # frames folded
        return rearrange(frames, "(b t) c h w -> b t c h w", b=keys.shape[0])

    return {"flow_pixel": lambda keys: pixel(keys), "flow_latent": run_latent}


# ------------------------------------------------------------------------------------------------------ data
def train_batches(args: argparse.Namespace, cache: Path) -> torch.utils.data.DataLoader:
    """Interpolation samples of the train split for ``--train-steps`` batches (epochs of shuffled records)."""
    cfg = DataConfig(
        source=args.source, num_frames=sequence_length(args.train_keyframes),
        size=[args.train_size, args.train_size], seed=args.seed, cache_dir=str(cache),
    )  # fmt: skip
    options = InterpolationDataOptions(max_skip=args.max_skip, augment=args.augment)
    ds = InterpolationSequenceDataset.from_config(cfg, "train", options)
    n = len(ds)
    keys: list[tuple[int, int]] = []
    epoch = 0
    while len(keys) < args.train_steps * args.batch_size:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 1000 + epoch)).tolist()
        keys += [(epoch, i) for i in order]
        epoch += 1
    batches = [keys[i : i + args.batch_size] for i in range(0, args.train_steps * args.batch_size, args.batch_size)]
    return torch.utils.data.DataLoader(
        ds, batch_sampler=batches, collate_fn=collate_clips, num_workers=args.workers,
        persistent_workers=False,
    )  # fmt: skip


def eval_sequences(args: argparse.Namespace, cache: Path) -> torch.Tensor:
    """Held-out windows ``(N, 4K - 3, 3, H, W)`` in [-1, 1] from the test split (see the module docstring)."""
    size = args.train_size
    load = max(size, round(size * InterpolationDataOptions().crop_scale))
    cfg = DataConfig(source=args.source, num_frames=5, size=[size, size], cache_dir=str(cache))
    length = sequence_length(args.train_keyframes)
    span = (length - 1) * args.eval_skip + 1
    out = []
    for record in build_dataset(cfg, "test").records:
        n = probe_video(record.path).num_frames
        if n < span:
            continue
        clip, _ = frames_to_clip(read_video_frames(record.path, range(n)), (load, load))
        off = (load - size) // 2
        clip = clip[..., off : off + size, off : off + size]  # centre crop, as outside training
        for start in range(0, n - span + 1, args.eval_hop):
            out.append(clip[start : start + span : args.eval_skip])
        if args.max_eval and len(out) >= args.max_eval:
            break
    if not out:
        raise RuntimeError(
            f"no test video has {span} frames for {args.train_keyframes} keyframes at s={args.eval_skip}"
        )
    return torch.stack(out[: args.max_eval or None])


# -------------------------------------------------------------------------------------------------- training
def train(args: argparse.Namespace, setup: Setup, cache: Path) -> dict[str, dict[str, Any]]:
    """Equal budgets on the same batches (encoded once); returns per-method timing, loss curve and final loss."""
    methods, null = setup.methods, setup.null
    schedule = NoiseSchedule.cosine(1000)
    opts, gens, stats, emas = {}, {}, {}, {}
    for name, method in methods.items():
        method.unet.train()
        params = [p for p in method.unet.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=0.0)
        warmup = max(1, args.train_steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step, w=warmup: min(1.0, (step + 1) / w))
        opts[name] = (opt, sched, params)
        if args.ema_decay > 0:
            emas[name] = EMA(params, args.ema_decay)
        gens[name] = torch.Generator().manual_seed(args.seed + 5)
        stats[name] = {"wall": [], "cpu": [], "loss": []}
    t0 = time.perf_counter()
    for step, batch in enumerate(train_batches(args, cache)):
        seq = encode(setup, batch["video"])  # b t c h w: scaled MoVQ latents of frames in [-1, 1]
        skip = torch.tensor([int(m["skip_frames"]) for m in batch["meta"]])
        for name, method in methods.items():
            opt, sched, params = opts[name]
            w0, c0 = time.perf_counter(), time.process_time()
            loss = method.loss(seq, skip, schedule, null, max_perturbation=250, uncond_prob=0.1, generator=gens[name])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            if name in emas:
                emas[name].update(params)
            stats[name]["wall"].append(time.perf_counter() - w0)
            stats[name]["cpu"].append(time.process_time() - c0)
            stats[name]["loss"].append(float(loss.detach()))
        if step % 25 == 0 or step == args.train_steps - 1:
            losses = ", ".join(f"{n} {stats[n]['loss'][-1]:.4f}" for n in methods)
            print(
                f"  train step {step + 1}/{args.train_steps} ({time.perf_counter() - t0:.0f} s): {losses}", flush=True
            )
    out = {}
    for name, s in stats.items():
        methods[name].unet.eval()
        if name in emas:  # evaluate (and time) the averaged weights from here on
            emas[name].swap_in(opts[name][2])
        tail = s["loss"][-max(1, len(s["loss"]) // 5) :]
        out[name] = {
            "train_s_per_step": statistics.median(s["wall"]),
            "train_cpu_s_per_step": statistics.median(s["cpu"]),
            "final_train_loss": statistics.mean(tail),  # mean of the last 20 % of the steps
            "losses": s["loss"],
        }
    return out


# --------------------------------------------------------------------------------------------------- quality
def score(pred: torch.Tensor, real: torch.Tensor) -> dict[str, Any]:
    """PSNR / SSIM of the generated (middle) positions of sequences ``(N, L, 3, H, W)`` in [-1, 1], one value per
    sequence (PSNR of the MSE over its middle frames, SSIM their mean), mean and 95% bootstrap interval over the
    sequences (:func:`ff_lightning.evaluation.decoder.summarize`); LPIPS when its weights are installed."""
    from ff_lightning.evaluation.decoder import summarize

    unknown = ~keyframe_mask(real.shape[1])
    p, r = to_unit(pred[:, unknown].double()), to_unit(real[:, unknown].double())
    seq_mse = (p - r).square().flatten(1).mean(1).clamp_min(1e-10)
    ps = 10 * torch.log10(1 / seq_mse)
    ss = ssim(p.float(), r.float(), reduction="none").reshape(p.shape[0], -1).double().mean(1)
    out: dict[str, Any] = {}
    for key, values in (("psnr", ps), ("ssim", ss)):
        sm = summarize(values)
        out[key], out[f"{key}_ci_low"], out[f"{key}_ci_high"] = sm["value"], sm["ci_low"], sm["ci_high"]
    out["per_sequence_psnr"] = ps
    try:
        from ff_lightning.metrics.functional import lpips

        out["lpips"] = float(lpips(pred[:, unknown].float().clamp(-1, 1), real[:, unknown].float()))
    except Exception as e:  # no LPIPS weights installed (or frames too small for its network)
        out["lpips"] = None
        out["lpips_note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return out


def reference_interpolations(seq: torch.Tensor) -> dict[str, torch.Tensor]:
    """Training-free references: linear blend of the neighbouring keyframes, and a copy of the left keyframe."""
    blend, copy = seq.clone(), seq.clone()
    for j in range(seq.shape[1]):
        g, r = divmod(j, 4)
        if r:
            left, right = seq[:, 4 * g], seq[:, 4 * g + 4]
            blend[:, j] = (1 - r / 4) * left + (r / 4) * right
            copy[:, j] = left
    return {"linear blend of keyframes": blend, "copy left keyframe": copy}


def evaluate(
    args: argparse.Namespace,
    setup: Setup,
    seqs: torch.Tensor,
    arms: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every row's middle frames of ``seqs`` ``(N, L, 3, H, W)`` scored against the real ones (see :func:`score`)."""
    sampling = SamplingOptions(SamplingSchedule.subsample(NoiseSchedule.cosine(1000), args.steps), "ddim")
    latents = torch.cat([encode(setup, seqs[i : i + 8]) for i in range(0, seqs.shape[0], 8)])
    refs = reference_interpolations(seqs)
    # the blend a latent model starts from (--blend-residual): the same blend in the MoVQ latent space, decoded
    latent_blend = reference_interpolations(latents)["linear blend of keyframes"]
    latent_blend_px = torch.cat([decode(setup, latent_blend[i : i + 8]) for i in range(0, latent_blend.shape[0], 8)])
    out = {}
    for name, method in setup.methods.items():
        preds = []
        for i in range(0, seqs.shape[0], 8):
            gen = torch.Generator().manual_seed(args.seed + 1000 + i)
            with torch.no_grad():
                z = interpolate(
                    method, latents[i : i + 8, ::4], setup.null, sampling, skip_frames=args.eval_skip,
                    guidance_weight=args.guidance, generator=gen,
                )  # fmt: skip
            preds.append(decode(setup, z))
        pred = torch.cat(preds)
        out[name] = score(pred, seqs)
        print(f"  quality {name}: PSNR {out[name]['psnr']:.2f} dB, SSIM {out[name]['ssim']:.3f}", flush=True)
        if args.pixel_correction:  # the model's change to the latent blend, decoded, added to the pixel blend
            corrected = (refs["linear blend of keyframes"] + pred - latent_blend_px).clamp(-1, 1)
            out[f"{name}_pixel_correction"] = score(corrected, seqs)
            print(f"  quality {name} (pixel correction): PSNR {out[f'{name}_pixel_correction']['psnr']:.2f} dB")
    for name, arm in (arms or {}).items():  # the same keyframes, the same output frames
        pred = arm(seqs[:, ::4])
        assert pred.shape == seqs.shape
        out[name] = score(pred, seqs)
        print(f"  quality {name}: PSNR {out[name]['psnr']:.2f} dB, SSIM {out[name]['ssim']:.3f}", flush=True)
    refs["MoVQ reconstruction of the real frames"] = decode(setup, latents)  # the ceiling of any latent model
    refs["linear blend of keyframe latents, decoded"] = latent_blend_px
    for name, pred in refs.items():
        out[name] = score(pred, seqs)
        print(f"  quality {name}: PSNR {out[name]['psnr']:.2f} dB", flush=True)
    from ff_lightning.evaluation.decoder import summarize

    blend = out["linear blend of keyframes"]["per_sequence_psnr"]
    for q in out.values():  # paired per sequence: the same keyframes and targets
        sm = summarize(q.pop("per_sequence_psnr") - blend)
        q["psnr_gain_vs_blend"], q["gain_ci_low"], q["gain_ci_high"] = sm["value"], sm["ci_low"], sm["ci_high"]
    return out


# ----------------------------------------------------------------------------------------------------- speed
def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def measure_speed(
    args: argparse.Namespace,
    methods: dict[str, InterpolationMethod],
    null: torch.Tensor,
    arms: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> dict[str, dict[str, Any]]:
    k, p = args.keyframes, args.speed_size
    channels = int(methods["fusionframes"].unet.config["out_channels"]) // 3
    keys = torch.randn(1, k, channels, p, p, generator=torch.Generator().manual_seed(args.seed + 3))
    pixels = torch.randn(1, k, 3, p, p, generator=torch.Generator().manual_seed(args.seed + 4)).clamp(-1, 1)
    sampling = SamplingOptions(SamplingSchedule.subsample(NoiseSchedule.cosine(1000), args.steps), "ddim")

    def runner(method: InterpolationMethod) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            gen = torch.Generator().manual_seed(args.seed + 9)
            return interpolate(method, keys, null, sampling, guidance_weight=args.guidance, generator=gen)

        return run

    runs = {name: runner(m) for name, m in methods.items()}
    out: dict[str, dict[str, Any]] = {}
    for name, run in runs.items():
        holder: list[torch.Tensor] = []
        gflops = count_flops(lambda run=run, holder=holder: holder.append(run())) / 1e9  # doubles as the warm-up
        frames = holder[0].shape[1]
        assert frames == output_frames(k)
        rows = methods[name].rows_per_video(k) * (2 if args.guidance else 1)
        params = sum(p_.numel() for p_ in methods[name].unet.parameters()) / 1e6
        out[name] = {"wall": [], "cpu": [], "frames_out": frames, "rows_per_step": rows, "params_m": params}
        out[name]["gflops"] = gflops
    for name, arm in (arms or {}).items():  # warm-up; OpenCV's work is invisible to FlopCounterMode: no FLOPs
        frames = arm(pixels).shape[1]  # the flow arms work on 3-channel frames of the same grid
        assert frames == output_frames(k)
        runs[name] = lambda arm=arm: arm(pixels)
        out[name] = {"wall": [], "cpu": [], "frames_out": frames, "rows_per_step": None, "params_m": 0.0,
                     "gflops": None}  # fmt: skip
    names = list(runs)
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            w0, c0 = time.perf_counter(), time.process_time()
            runs[name]()
            out[name]["wall"].append(time.perf_counter() - w0)
            out[name]["cpu"].append(time.process_time() - c0)
    ref = out["fusionframes"]
    for name, o in out.items():
        o["time_median_s"] = statistics.median(o["wall"])
        o["time_min_s"], o["time_max_s"] = min(o["wall"]), max(o["wall"])
        o["cpu_median_s"] = statistics.median(o["cpu"])
        o["time_ratio_vs_fusionframes"] = statistics.median(a / b for a, b in zip(o["wall"], ref["wall"]))
        o["cpu_ratio_vs_fusionframes"] = statistics.median(a / b for a, b in zip(o["cpu"], ref["cpu"]))
        o["flop_ratio_vs_fusionframes"] = None if o["gflops"] is None else o["gflops"] / ref["gflops"]
        print(
            f"  speed {name}: {o['time_median_s']:.3f} s median, x{o['time_ratio_vs_fusionframes']:.3g} wall, "
            f"x{o['cpu_ratio_vs_fusionframes']:.3g} CPU"
            + ("" if o["gflops"] is None else f", {o['gflops']:.2f} GFLOPs"),
            flush=True,
        )
    return out


def paper_step_flops(guidance: bool, preset: str = "paper") -> dict[str, float]:
    """GFLOPs of one denoising step at the paper size (9 keyframes -> 33 frames, 32x32 latents, UNet ``preset``),
    counted on the meta device (shapes only: nothing is computed, though meta kernels still take seconds)."""
    with torch.device("meta"):
        image = KandinskyUNet(**UNET_PRESETS[preset])
        methods = {
            "fusionframes": FusionFramesMethod(interpolation_unet_from_t2i(image)),
            "masked": MaskedFrameMethod(masked_interpolation_unet_from_t2i(image)),
        }
        keys = torch.empty(1, 9, 4, 32, 32)
        null = torch.empty(int(image.config["context_dim"]))
        out = {}
        for name, method in methods.items():
            denoise = method.denoiser(keys, null, skip_frames=1, guidance_weight=0.25 if guidance else 0.0)
            shape = method.sample_shape(1, 9, (4, 32, 32))
            x, t = torch.empty(shape), torch.empty(shape[0])
            out[name] = count_flops(lambda d=denoise, x=x, t=t: d(x, t)) / 1e9
    return out


# ---------------------------------------------------------------------------------------------------- output
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _ci(value: float | None, low: float | None, high: float | None, digits: int) -> str:
    """``value [low, high]`` (the interval left out when unknown)."""
    if value is None:
        return "n/a"
    if low is None or high is None or math.isnan(low):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def write_markdown(path: Path, args: argparse.Namespace, res: dict[str, Any], meta: dict[str, Any]) -> None:
    speed, quality, training = res["speed"], res["quality"], res["train"]
    k, l_out = args.keyframes, output_frames(args.keyframes)
    lines = [
        "# Interpolation: FusionFrames vs masked-frame interpolation (and a training-free flow arm)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Preset `{args.preset}` (both models: same image UNet, same width and depth), device `{meta['device']}`, "
        f"{args.threads} intra-op thread(s), torch {torch.__version__}, {meta['date']}, total runtime "
        f"{meta['runtime_s']:.0f} s.",
        "",
        f"## Speed: {k} keyframes -> {l_out} frames, {args.steps} DDIM steps, guidance w = {args.guidance}",
        "",
        f"Batch of 1 video of {args.speed_size}x{args.speed_size} latents (random values: the cost does not depend "
        "on them), both guidance "
        f"branches batched. Median of {args.repeats} rounds after a warm-up; ratios are per round, masked / "
        "FusionFrames (> 1: FusionFrames is faster). FLOPs of one whole interpolation from FlopCounterMode. The flow "
        "arms (no training, no parameters) turn the same keyframes into the same frames; their FLOPs are n/a (OpenCV's "
        "Farneback runs outside torch).",
        "",
        "| method | UNet rows per step | params (M) | GFLOPs | FLOPs x | median s (min-max) | CPU s | time x | CPU x |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, o in speed.items():
        flops = "n/a | n/a" if o["gflops"] is None else f"{o['gflops']:.2f} | {o['flop_ratio_vs_fusionframes']:.2f}"
        lines.append(
            f"| {METHOD_LABELS[name]} | {o['rows_per_step'] or 'n/a'} | {o['params_m']:.3f} | {flops} | "
            f"{o['time_median_s']:.3f} ({o['time_min_s']:.3f}-{o['time_max_s']:.3f}) | {o['cpu_median_s']:.3f} | "
            f"{o['time_ratio_vs_fusionframes']:.3g} | "
            f"{o['cpu_ratio_vs_fusionframes']:.3g} |"
        )
    if res.get("paper_flops"):
        pf = res["paper_flops"]
        lines += [
            "",
            f"Paper size (counted on the meta device, nothing computed): one guided denoising step for 9 keyframes -> "
            f"33 frames at 32x32 latents: FusionFrames {pf['fusionframes']:.0f} GFLOPs, masked frames "
            f"{pf['masked']:.0f} GFLOPs, **x{pf['masked'] / pf['fusionframes']:.2f}**.",
        ]
    lines += [
        "",
        f"## Quality after equal training budgets ({args.train_steps} steps of batch {args.batch_size}) from "
        f"{'the trained text-to-image base' if args.base == 'trained' else 'a RANDOM image UNet (tests only)'}",
        "",
        f"{res['eval_sequences']} held-out sequences of the test split of `{args.source}` ({args.train_keyframes} "
        f"keyframes -> {sequence_length(args.train_keyframes)} frames, s = {args.eval_skip}: keyframes "
        f"{4 * args.eval_skip} source frames apart, {args.train_size}x{args.train_size} px, centre crop). Both models "
        f"start from the same image UNet (t2i `{res['base']['t2i']}`) in the latent space of the same frozen MoVQ "
        f"(`{res['base']['movq']}`, latents times {res['base']['latent_scale']:g}) and train on the same batches "
        f"(s in 1..{args.max_skip}, augmentations {'on' if args.augment else 'off'}), AdamW lr {args.lr}; sampling {args.steps} DDIM steps, "
        f"guidance w = {args.guidance}."
        + (
            f" Both models diffuse the difference to the linear blend of the keyframe latents, times "
            f"{args.residual_scale:g} (`--blend-residual`, module.blend_residual; not the paper's objective)."
            if args.blend_residual
            else ""
        )
        + (
            f" Training timesteps shifted towards high noise, u -> {args.timestep_shift:g} u / (1 + "
            f"{args.timestep_shift - 1:g} u) (`--timestep-shift`, module.timestep_shift)."
            if args.timestep_shift != 1
            else ""
        )
        + " Metrics on the decoded middle frames against the real ones, one value per "
        "sequence, mean [95% bootstrap interval]; gain = paired PSNR difference to the linear blend. The copy and "
        "blend rows show how much the footage moves between keyframes; the MoVQ row is the ceiling of any model "
        "in this latent space, and the decoded latent blend is where a latent model starts (the pixel blend is not "
        "capped by the MoVQ).",
        "",
        "| method | PSNR (dB) | PSNR gain vs linear blend (dB) | SSIM | LPIPS | train s/step | train CPU s/step "
        "| final train loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, q in quality.items():
        t = training.get(name, {})
        label = METHOD_LABELS.get(name, f"*{name}*")
        gain = _ci(q.get("psnr_gain_vs_blend"), q.get("gain_ci_low"), q.get("gain_ci_high"), 2)
        lines.append(
            f"| {label} | {_ci(q['psnr'], q['psnr_ci_low'], q['psnr_ci_high'], 2)} | {gain} | "
            f"{_ci(q['ssim'], q['ssim_ci_low'], q['ssim_ci_high'], 3)} | "
            f"{_fmt(q.get('lpips')) or 'n/a'} | {_fmt(t.get('train_s_per_step'))} | "
            f"{_fmt(t.get('train_cpu_s_per_step'))} | {_fmt(t.get('final_train_loss'), 4)} |"
        )
    lines += ["", "## Notes", ""] + [f"- {n}" for n in meta["notes"]] + [""]
    atomic_write_text(path, "\n".join(lines))


def write_plot(path: Path, args: argparse.Namespace, res: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed, quality, training = res["speed"], res["quality"], res["train"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.4))
    labels = ["masked\nwall time", "masked\nCPU time", "masked\nFLOPs"]
    keys = ["time_ratio_vs_fusionframes", "cpu_ratio_vs_fusionframes", "flop_ratio_vs_fusionframes"]
    vals = [speed["masked"][k_] for k_ in keys]
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for name in (n for n in FLOW_ARMS if n in speed):  # flow arms: wall time only (no FLOP count)
        labels.append(name.replace("_", "\n") + "\nwall time")
        vals.append(speed[name]["time_ratio_vs_fusionframes"])
        colors.append("tab:gray")
    ax1.bar(labels, vals, color=colors)
    for i, v in enumerate(vals):
        ax1.text(i, v, f"x{v:.3g}", ha="center", va="bottom", fontsize=8)
    ax1.axhline(1.0, color="k", lw=0.8, ls=":")
    ax1.axhline(3.0, color="tab:red", lw=0.8, ls="--", label="paper: > 3x")
    ax1.set_yscale("log")
    ax1.tick_params(axis="x", labelsize=7)
    ax1.set_ylabel("cost / FusionFrames (log)")
    ax1.set_title(f"Cost of {output_frames(args.keyframes)} frames from {args.keyframes} keyframes")
    ax1.legend(fontsize=8)
    for name, t in training.items():
        losses = torch.tensor(t["losses"])
        win = max(1, len(losses) // 20)
        smooth = torch.nn.functional.avg_pool1d(losses[None, None], win, stride=1)[0, 0]
        ax2.plot(range(win - 1, len(losses)), smooth, label=METHOD_LABELS[name])
    ax2.set_xlabel("training step")
    ax2.set_ylabel(f"v-prediction MSE (moving mean of {max(1, args.train_steps // 20)})")
    ax2.set_yscale("log")
    ax2.set_title("Training loss, same batches")
    ax2.legend(fontsize=8)
    names = list(quality)
    err = [[quality[n]["psnr"] - quality[n]["psnr_ci_low"] for n in names],
           [quality[n]["psnr_ci_high"] - quality[n]["psnr"] for n in names]]  # fmt: skip
    ax3.barh(range(len(names)), [quality[n]["psnr"] for n in names], xerr=err)
    ax3.set_yticks(range(len(names)), [METHOD_LABELS.get(n, n) for n in names])
    ax3.invert_yaxis()
    ax3.set_xlabel("PSNR of the decoded middle frames (dB, held-out, 95% CI)")
    ax3.set_title(f"Quality after {args.train_steps} steps from the {args.base} base")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def rows_for_csv(args: argparse.Namespace, res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, o in res["speed"].items():
        rows.append({"section": "speed", "method": name, "keyframes": args.keyframes, "size": args.speed_size,
                     "steps": args.steps, **{k: v for k, v in o.items() if k in CSV_COLUMNS}})  # fmt: skip
    for name, g in (res.get("paper_flops") or {}).items():
        ratio = g / res["paper_flops"]["fusionframes"]
        rows.append({"section": "paper_flops_per_step", "method": name, "keyframes": 9, "frames_out": 33, "size": 32,
                     "steps": 1, "gflops": g, "flop_ratio_vs_fusionframes": ratio})  # fmt: skip
    for name, q in res["quality"].items():
        t = res["train"].get(name, {})
        rows.append({"section": "quality", "method": name, "keyframes": args.train_keyframes,
                     "frames_out": sequence_length(args.train_keyframes), "size": args.train_size, "steps": args.steps,
                     "eval_sequences": res["eval_sequences"],
                     **{k: v for k, v in q.items() if k in CSV_COLUMNS},
                     **{k: v for k, v in t.items() if k in CSV_COLUMNS}})  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=sorted(UNET_PRESETS), help="UNet size preset (default tiny)")
    p.add_argument("--keyframes", type=int, default=5, help="speed: keyframes in (4K - 3 frames out; default 5)")
    p.add_argument("--speed-size", type=int, default=32, help="speed: frame side in pixels (default 32)")
    p.add_argument("--steps", type=int, default=SAMPLING_STEPS,
                   help=f"sampling steps for speed and quality (default {SAMPLING_STEPS})")  # fmt: skip
    p.add_argument("--guidance", type=float, default=0.25, help="context guidance weight w (default 0.25)")
    p.add_argument("--repeats", type=int, default=5, help="speed: timed rounds (default 5)")
    p.add_argument(
        "--base",
        default="trained",
        choices=["trained", "random"],
        help="starting image UNet: the trained t2i base of make compare-temporal (its MoVQ and latent "
        "scale; trained first when not cached) or a random one over a random MoVQ (tests only)",
    )
    p.add_argument("--source", default="bundled_shapes", help="footage (default bundled_shapes: moving objects)")
    p.add_argument("--train-steps", type=int, default=TRAIN_STEPS, help=f"optimiser steps per model ({TRAIN_STEPS})")
    p.add_argument("--batch-size", type=int, default=4, help="training batch (default 4)")
    p.add_argument(
        "--ema-decay",
        type=float,
        default=EMA_DECAY,
        help=f"EMA of the weights, used for evaluation (default {EMA_DECAY}; 0: off)",
    )
    p.add_argument("--lr", type=float, default=LR, help=f"AdamW learning rate (default {LR}, 10%% warm-up)")
    p.add_argument("--train-size", type=int, default=32, help="training/eval frame side in pixels (default 32)")
    p.add_argument("--train-keyframes", type=int, default=3, help="keyframes per training sample (default 3)")
    p.add_argument("--max-skip", type=int, default=1, help="training skip s in 1..max (default 1: 16-frame clips)")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=AUGMENT,
        help=f"the project's training augmentations (crops, pans, flips, keyframe blur; default {AUGMENT})",
    )
    p.add_argument(
        "--blend-residual",
        action=argparse.BooleanOptionalAction,
        default=BLEND_RESIDUAL,
        help="both models diffuse the difference to the linear blend of the keyframes (module.blend_residual; "
        f"default {BLEND_RESIDUAL})",
    )
    p.add_argument("--residual-scale", type=float, default=RESIDUAL_SCALE,
                   help=f"with --blend-residual: factor on the difference (about 1 / its std; default {RESIDUAL_SCALE:g})")  # fmt: skip
    p.add_argument("--timestep-shift", type=float, default=TIMESTEP_SHIFT,
                   help=f"training steps towards high noise: u -> s u / (1 + (s - 1) u) (default {TIMESTEP_SHIFT:g}; 1: uniform, the paper's)")  # fmt: skip
    p.add_argument("--pixel-correction", action=argparse.BooleanOptionalAction, default=False,
                   help="also score each model as the pixel blend of the keyframes plus its decoded change to the "
                   "decoded latent blend: decode(z) - decode(latent blend) + pixel blend (rows '<method>_pixel_correction')")  # fmt: skip
    p.add_argument("--eval-skip", type=int, default=1, help="held-out sequences: skip s (default 1)")
    p.add_argument("--eval-hop", type=int, default=7, help="held-out sequences: source frames between starts")
    p.add_argument("--max-eval", type=int, default=0, help="at most this many held-out sequences (0: all)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1; 0 = torch's default)")
    p.add_argument("--workers", type=int, default=1, help="data loader worker processes (default 1)")
    p.add_argument("--paper-flops", action=argparse.BooleanOptionalAction, default=True,
                   help="count one paper-size denoising step on the meta device (default on)")  # fmt: skip
    p.add_argument("--flow", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the training-free flow arms (Farneback, pixels and latent grid; default on)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="bundled-data cache (default $FF_CACHE_DIR or ~/.cache/ff_lightning)")
    p.add_argument("--out", default="benchmarks/results/interpolation", help="output prefix (md, csv, png)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    from ff_lightning.paths import cache_dir

    args = parse_args(argv)
    t_start = time.perf_counter()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cache = cache_dir(args.cache)
    build_set(args.source.removeprefix("bundled_"), cache, progress=False)
    setup = build_setup(args)
    methods, null = setup.methods, setup.null
    for method in methods.values():
        method.blend_residual, method.residual_scale = args.blend_residual, args.residual_scale
        method.timestep_shift = args.timestep_shift
    print(f"training both models for {args.train_steps} steps of batch {args.batch_size}", flush=True)
    res: dict[str, Any] = {"train": train(args, setup, cache), "base": setup.base}
    seqs = eval_sequences(args, cache)
    res["eval_sequences"] = int(seqs.shape[0])
    print(f"quality on {seqs.shape[0]} held-out sequences", flush=True)
    arms = make_flow_arms() if args.flow else {}
    res["quality"] = evaluate(args, setup, seqs, arms)
    print(f"speed: {args.keyframes} keyframes -> {output_frames(args.keyframes)} frames", flush=True)
    with torch.no_grad():
        res["speed"] = measure_speed(args, methods, null, arms)
        res["paper_flops"] = paper_step_flops(args.guidance != 0) if args.paper_flops else None
    runtime = time.perf_counter() - t_start
    lpips_note = next((q.get("lpips_note") for q in res["quality"].values() if q.get("lpips_note")), None)
    ratio = res["speed"]["masked"]["time_ratio_vs_fusionframes"]
    notes = [
        f"Speed: masked-frame interpolation takes x{ratio:.2f} the wall time of FusionFrames here (the paper: FusionFrames "
        "is more than 3x faster; it gives no absolute numbers). Per denoising step FusionFrames runs K - 1 UNet rows "
        "(one per keyframe pair, 5c in / 3c out channels) where the masked model runs 4K - 3 (one per output frame), "
        "so the expected ratio approaches (4K - 3) / (K - 1): 4.25 for K = 5, 4.13 for the paper's 9 keyframes.",
        "Quality: both models start from the trained text-to-image base of `make compare-temporal` (as the paper's "
        "interpolation model starts from its T2I model) and run in the latent space of its frozen MoVQ with the "
        "base's latent scale; the footage is the bundled captioned shapes, whose object moves several pixels per "
        "frame, so the copy of the left keyframe falls well below the linear blend, and the blend ghosts the object "
        "(it is what a model must beat). Equal steps and batch for both models: per step the masked model gets about "
        "(4K - 3) / (K - 1) times the UNet compute (one row per frame). The paper's Table 2 (UCF-101, after 2 "
        "interpolation steps): masked frame interpolation IS 23.371 / FVD 550.932 vs FusionFrames IS 24.325 / FVD "
        "433.054; those need trained paper-size models and are not reproduced here.",
        "Speed runs the same two trained UNets on random latents of the speed size (the cost does not depend on the "
        "values); both models see the same batches, timesteps drawn from the same seed, and are sampled with the same "
        "schedule (steps subsampled from the 1000-step cosine training schedule), guidance and seeds.",
        "Flow arms (ff_lightning.models.flow_interpolation; no training): OpenCV Farneback flow both ways between "
        "neighbouring keyframes, intermediate flows by linear scaling (F_t0 ~ -t F01, F_t1 ~ -(1 - t) F10), backward "
        "warping of both keyframes, blend weighted by (1 - t) and t times a forward-backward-consistency visibility. "
        "`flow (latent grid)` works on a 2x2 space-to-depth stand-in for latents (12 channels at half resolution, "
        "decoded exactly): the flow of the decoded keyframes is resized to the latent grid and the latents are warped "
        "before decoding; the gap to `flow (pixels)` is the cost of warping on the coarser grid (a learned MoVQ "
        "latent space would add its own, untested here). Time x for them is arm / FusionFrames in the same rounds.",
        "LPIPS: " + (f"not computed ({lpips_note})." if lpips_note else "computed with the installed AlexNet weights."),
        "Timings on a shared machine are noisy: compare the ratios (per round, median) rather than absolute seconds; "
        "the CPU-time ratio is less sensitive to other processes' load.",
    ]
    meta = {
        "command": command_line("benchmarks/interpolation_speed.py", argv),
        "device": cpu_name(),
        "date": timestamp(),
        "runtime_s": runtime,
        "notes": notes,
    }
    prefix = Path(args.out)
    paths = output_paths(prefix)
    write_csv(paths["csv"], CSV_COLUMNS, rows_for_csv(args, res), lambda v: _fmt(v, 6))
    write_markdown(paths["md"], args, res, meta)
    write_plot(paths["png"], args, res)
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {runtime:.0f} s", flush=True)
    return paths


if __name__ == "__main__":
    main()
