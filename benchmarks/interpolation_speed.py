"""Interpolation benchmark: FusionFrames vs masked-frame interpolation, speed (time, FLOPs) and quality, in one run.

Usage (defaults sized for a run of a few minutes on 2 CPU cores; ``make bench-interpolation`` runs it as is)::

    python benchmarks/interpolation_speed.py [--preset tiny] [--keyframes K] [--speed-size P] [--steps N]
        [--guidance W] [--repeats R] [--train-steps S] [--batch-size B] [--lr LR] [--train-size H]
        [--train-keyframes K] [--max-skip S] [--eval-skip S] [--eval-hop H] [--threads T] [--workers J]
        [--paper-flops | --no-paper-flops] [--seed S] [--cache DIR] [--out PREFIX]

Both models are built from the same seeded image UNet (``--preset``) by the two conversions of the project
(:func:`~ff_lightning.models.interpolation.interpolation_unet_from_t2i`,
:func:`~ff_lightning.models.masked_interpolation.masked_interpolation_unet_from_t2i`): equal width and depth, the
same temporal convs, the same conditioning; they differ in the frame layout only (see
:mod:`ff_lightning.models.interpolation_pipeline`). The diffusion runs in pixel space on 3-channel frames, which
stands in for the 4-channel MoVQ latent space (the UNet's cost differs by its first and last conv only), so quality
is measured against real frames without a trained autoencoder.

1. **Training, equal budgets.** ``--train-steps`` AdamW steps of batch ``--batch-size`` for each model, on the *same*
   batches (one loader feeds both): interpolation samples of ``--train-keyframes`` keyframes (``4K - 3`` frames) from
   the train split of ``bundled_footage_long`` at ``--train-size`` pixels, skip ``s`` in ``1..--max-skip``, the
   project's augmentations; the paper's objective (v-prediction, keyframe perturbation ``tp`` in 0..250,
   unconditional videos with probability 0.1). Wall and CPU time per step are recorded per model.
2. **Quality.** Held-out sequences of the test split (later in time than every training frame): windows of
   ``4K - 3`` frames at step ``--eval-skip`` every ``--eval-hop`` source frames, centre crop. From the keyframes each
   model generates the other frames (``--steps`` DDIM steps, guidance ``--guidance``, ``tp = 0``); PSNR and SSIM of
   the generated frames against the real ones (LPIPS when its weights are installed), with a linear blend of the
   neighbouring keyframes and a copy of the left keyframe as reference points. At this training budget the numbers
   are indicative only.
3. **Speed.** Both trained models interpolate the same ``--keyframes`` random keyframes of ``--speed-size`` pixels
   into ``4K - 3`` frames (one pass, batch 1, the same ``--steps`` sampling steps and guidance, both branches
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
from ff_lightning.metrics.functional import psnr, ssim, to_unit
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

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # run as a script or loaded by file path: the shared helpers sit next to it
    sys.path.insert(0, str(_HERE))
from _common import command_line, cpu_name, output_paths, timestamp, write_csv  # noqa: E402

METHOD_LABELS = {
    "fusionframes": "FusionFrames",
    "masked": "masked frames",
    "flow_pixel": "flow (Farneback, pixels)",
    "flow_latent": "flow (Farneback, latent grid)",
}
FLOW_ARMS = ("flow_pixel", "flow_latent")  # training-free arms (ff_lightning.models.flow_interpolation)
CSV_COLUMNS = (
    "section", "method", "keyframes", "frames_out", "size", "steps", "rows_per_step", "params_m", "gflops",
    "flop_ratio_vs_fusionframes", "time_median_s", "time_min_s", "time_max_s", "cpu_median_s",
    "time_ratio_vs_fusionframes", "cpu_ratio_vs_fusionframes", "train_s_per_step", "train_cpu_s_per_step",
    "final_train_loss", "psnr", "psnr_sem", "ssim", "ssim_sem", "lpips", "eval_sequences",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- models
def make_methods(preset: str, seed: int, channels: int = 3) -> dict[str, InterpolationMethod]:
    """Both interpolation models from one seeded image UNet of ``preset`` with ``channels`` in/out channels."""
    torch.manual_seed(seed)
    image = KandinskyUNet(**{**UNET_PRESETS[preset], "num_channels": channels, "out_channels": channels})
    return {
        "fusionframes": FusionFramesMethod(interpolation_unet_from_t2i(image)),
        "masked": MaskedFrameMethod(masked_interpolation_unet_from_t2i(image)),
    }


def null_vector(method: InterpolationMethod, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 17)
    return torch.randn(int(method.unet.config["context_dim"]), generator=g) * 0.02


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
        source="bundled_footage_long", num_frames=sequence_length(args.train_keyframes),
        size=[args.train_size, args.train_size], seed=args.seed, cache_dir=str(cache),
    )  # fmt: skip
    ds = InterpolationSequenceDataset.from_config(cfg, "train", InterpolationDataOptions(max_skip=args.max_skip))
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
    cfg = DataConfig(source="bundled_footage_long", num_frames=5, size=[size, size], cache_dir=str(cache))
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
    if not out:
        raise RuntimeError(
            f"no test video has {span} frames for {args.train_keyframes} keyframes at s={args.eval_skip}"
        )
    return torch.stack(out)


# -------------------------------------------------------------------------------------------------- training
def train(
    args: argparse.Namespace, methods: dict[str, InterpolationMethod], null: torch.Tensor, cache: Path
) -> dict[str, dict[str, Any]]:
    """Equal budgets on the same batches; returns per-method timing, loss curve and final loss."""
    schedule = NoiseSchedule.cosine(1000)
    opts, gens, stats = {}, {}, {}
    for name, method in methods.items():
        method.unet.train()
        params = [p for p in method.unet.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=0.0)
        warmup = max(1, args.train_steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step, w=warmup: min(1.0, (step + 1) / w))
        opts[name] = (opt, sched, params)
        gens[name] = torch.Generator().manual_seed(args.seed + 5)
        stats[name] = {"wall": [], "cpu": [], "loss": []}
    t0 = time.perf_counter()
    for step, batch in enumerate(train_batches(args, cache)):
        seq = batch["video"]  # b t 3 H W in [-1, 1]: pixel space stands in for latents
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
        tail = s["loss"][-max(1, len(s["loss"]) // 5) :]
        out[name] = {
            "train_s_per_step": statistics.median(s["wall"]),
            "train_cpu_s_per_step": statistics.median(s["cpu"]),
            "final_train_loss": statistics.mean(tail),  # mean of the last 20 % of the steps
            "losses": s["loss"],
        }
    return out


# --------------------------------------------------------------------------------------------------- quality
def _sem(values: torch.Tensor) -> float:
    return float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else float("nan")


def score(pred: torch.Tensor, real: torch.Tensor) -> dict[str, Any]:
    """PSNR / SSIM (and LPIPS when available) of the generated positions; sequences ``(N, L, 3, H, W)``."""
    unknown = ~keyframe_mask(real.shape[1])
    p, r = to_unit(pred[:, unknown].float()), to_unit(real[:, unknown].float())
    ps, ss = psnr(p, r, reduction="none"), ssim(p, r, reduction="none")
    out: dict[str, Any] = {
        "psnr": float(ps.mean()),
        "psnr_sem": _sem(ps),
        "ssim": float(ss.mean()),
        "ssim_sem": _sem(ss),
    }
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
    methods: dict[str, InterpolationMethod],
    null: torch.Tensor,
    seqs: torch.Tensor,
    arms: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> dict[str, dict[str, Any]]:
    sampling = SamplingOptions(SamplingSchedule.subsample(NoiseSchedule.cosine(1000), args.steps), "ddim")
    out = {}
    for name, method in methods.items():
        preds = []
        for i in range(0, seqs.shape[0], 8):
            keys = seqs[i : i + 8, ::4]
            gen = torch.Generator().manual_seed(args.seed + 1000 + i)
            preds.append(
                interpolate(
                    method,
                    keys,
                    null,
                    sampling,
                    skip_frames=args.eval_skip,
                    guidance_weight=args.guidance,
                    generator=gen,
                )  # fmt: skip
            )
        out[name] = score(torch.cat(preds), seqs)
        print(f"  quality {name}: PSNR {out[name]['psnr']:.2f} dB, SSIM {out[name]['ssim']:.3f}", flush=True)
    for name, arm in (arms or {}).items():  # the same keyframes, the same output frames
        pred = arm(seqs[:, ::4])
        assert pred.shape == seqs.shape
        out[name] = score(pred, seqs)
        print(f"  quality {name}: PSNR {out[name]['psnr']:.2f} dB, SSIM {out[name]['ssim']:.3f}", flush=True)
    for name, pred in reference_interpolations(seqs).items():
        out[name] = score(pred, seqs)
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
        frames = arm(keys).shape[1]
        assert frames == output_frames(k)
        runs[name] = lambda arm=arm: arm(keys)
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


def _pm(value: float | None, sem: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    return (
        f"{value:.{digits}f} ± {sem:.{digits}f}" if sem is not None and not math.isnan(sem) else f"{value:.{digits}f}"
    )


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
        f"Batch of 1 video, {args.speed_size}x{args.speed_size} (pixel-space stand-in for latents), both guidance "
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
        f"## Quality after equal training budgets ({args.train_steps} steps of batch {args.batch_size}) — indicative only",
        "",
        f"{res['eval_sequences']} held-out sequences of the test split of `bundled_footage_long` ({args.train_keyframes} "
        f"keyframes -> {sequence_length(args.train_keyframes)} frames, s = {args.eval_skip}, {args.train_size}x"
        f"{args.train_size}); metrics on the generated frames only, mean ± standard error over sequences. "
        f"Training: same batches for both (s in 1..{args.max_skip}, augmentations on), AdamW lr {args.lr}. "
        "The budget is tiny and the UNet starts from a random image model, so these numbers say little about the "
        "methods at scale; the two reference rows (no training) show what the scale of the numbers means.",
        "",
        "| method | PSNR (dB) | SSIM | LPIPS | train s/step | train CPU s/step | final train loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, q in quality.items():
        t = training.get(name, {})
        label = METHOD_LABELS.get(name, f"*{name}*")
        lines.append(
            f"| {label} | {_pm(q['psnr'], q['psnr_sem'], 2)} | {_pm(q['ssim'], q['ssim_sem'], 3)} | "
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
    ax3.barh(range(len(names)), [quality[n]["psnr"] for n in names], xerr=[quality[n]["psnr_sem"] for n in names])
    ax3.set_yticks(range(len(names)), [METHOD_LABELS.get(n, n) for n in names])
    ax3.invert_yaxis()
    ax3.set_xlabel("PSNR of the generated frames (dB, held-out)")
    ax3.set_title("Quality (indicative: tiny budget)")
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
                     "eval_sequences": res["eval_sequences"], **q,
                     **{k: v for k, v in t.items() if k in CSV_COLUMNS}})  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=sorted(UNET_PRESETS), help="UNet size preset (default tiny)")
    p.add_argument("--keyframes", type=int, default=5, help="speed: keyframes in (4K - 3 frames out; default 5)")
    p.add_argument("--speed-size", type=int, default=32, help="speed: frame side in pixels (default 32)")
    p.add_argument("--steps", type=int, default=10, help="sampling steps for speed and quality (default 10)")
    p.add_argument("--guidance", type=float, default=0.25, help="context guidance weight w (default 0.25)")
    p.add_argument("--repeats", type=int, default=5, help="speed: timed rounds (default 5)")
    p.add_argument("--train-steps", type=int, default=200, help="optimiser steps per model (default 200)")
    p.add_argument("--batch-size", type=int, default=8, help="training batch (default 8)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3, 10%% warm-up)")
    p.add_argument("--train-size", type=int, default=16, help="training/eval frame side in pixels (default 16)")
    p.add_argument("--train-keyframes", type=int, default=3, help="keyframes per training sample (default 3)")
    p.add_argument("--max-skip", type=int, default=4, help="training skip s in 1..max (default 4)")
    p.add_argument("--eval-skip", type=int, default=2, help="held-out sequences: skip s (default 2)")
    p.add_argument("--eval-hop", type=int, default=8, help="held-out sequences: source frames between starts")
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
    build_set("footage_long", cache, progress=False)
    methods = make_methods(args.preset, args.seed)
    null = null_vector(methods["fusionframes"], args.seed)
    print(f"training both models for {args.train_steps} steps of batch {args.batch_size}", flush=True)
    res: dict[str, Any] = {"train": train(args, methods, null, cache)}
    seqs = eval_sequences(args, cache)
    res["eval_sequences"] = int(seqs.shape[0])
    print(f"quality on {seqs.shape[0]} held-out sequences", flush=True)
    arms = make_flow_arms() if args.flow else {}
    res["quality"] = evaluate(args, methods, null, seqs, arms)
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
        "Quality is indicative only: a few hundred CPU steps of a tiny UNet from a random image model, pixel space at "
        "16 px; at this budget neither model comes near the training-free reference rows. Per step the masked model "
        "also gets about 4x the UNet compute (one row per frame) and, at this width, 3x the full-resolution "
        "channels per generated frame (FusionFrames carries 3 frames through one row of the same width; the paper's "
        "UNet has 192 channels there for 12 latent channels, this one 16 for 9), so equal steps favour it here. "
        "The paper's Table 2 (UCF-101, after 2 interpolation steps): masked frame interpolation IS 23.371 / FVD "
        "550.932 vs FusionFrames IS 24.325 / FVD 433.054; those need trained paper-size models and are not "
        "reproduced here.",
        "Diffusion runs in pixel space (3 channels) as a stand-in for the 4-channel MoVQ latents; both models see the "
        "same batches, timesteps drawn from the same seed, and are sampled with the same schedule (steps subsampled "
        "from the 1000-step cosine training schedule), guidance and seeds.",
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
