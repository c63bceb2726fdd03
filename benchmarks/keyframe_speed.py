"""Keyframe-UNet benchmark: parameters, training-step time and peak memory per temporal variant, relative to the image
UNet on the same frames, and step time versus the number of frames.

Usage (defaults sized for a 2-4 minute CPU run on 2 cores; ``make bench-keyframes`` may run it with no arguments)::

    python benchmarks/keyframe_speed.py [--preset tiny|small|paper] [--latent H] [--videos B] [--frames T ...]
        [--main-frames T] [--variants ...] [--repeats R] [--device cpu|cuda] [--threads N] [--jobs J]
        [--memory process|inline] [--seed S] [--out PREFIX]

What it does (see ``benchmarks/README.md`` for how to read the output):

- **Models.** ``image``: the Kandinsky 3 image UNet of ``--preset`` (registry ``t2i_unet``), every parameter trained
  (the text-to-image stage). Each keyframe variant (registry ``keyframe_unet``: ``layers``, ``blocks_conv1d_attn1d``,
  ...): the same image UNet converted by :func:`~ff_lightning.models.keyframes.keyframe_unet_from_t2i`, spatial
  weights frozen, only the temporal parts (and the frame-position MLP) trained, as in keyframe training.
- **One training step** on ``B = --videos`` clips of ``T`` frames of ``H x H`` random latents (``(B T, 4, H, H)``),
  one timestep and random text context per clip, ``C`` tokens: forward, MSE to a random target, backward, AdamW step
  (``fused=True``: one fused kernel instead of about ten small ops per parameter tensor),
  gradients freed. The image UNet gets the same ``B T`` frames folded as a batch of images (the caption repeated per
  frame), so every ratio compares the same amount of data.
- **Step time** for every ``T`` in ``--frames``: all models are built once, each is warmed up with 2 steps at that
  ``T``, then ``--repeats`` round-robin rounds time one step of every model (load drift on a shared machine hits all
  models in the same round). Reported: median wall time, the ratio ``time(variant) / time(image)`` as the median over
  rounds (same round), and on CPU the same ratio from process CPU time.
- **Peak memory** at ``T = --main-frames``: the growth during one training step (after 2 warm-up steps, so AdamW's
  state already exists) over what was resident right before it. CUDA: ``max_memory_allocated - memory_allocated``.
  CPU: every measurement runs in a fresh process (this script with a hidden ``--_child``) with
  ``MALLOC_MMAP_THRESHOLD_=65536``; it resets the RSS high-water mark (``/proc/self/clear_refs``) and reports
  ``VmHWM - VmRSS``: activations, gradients and temporaries of the step (weights and optimizer state excluded).
  ``--memory inline`` measures in the benchmark process instead (quick checks only).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ff_lightning.io import atomic_open, atomic_write_text
from ff_lightning.models.keyframes import KEYFRAME_DESIGNS
from ff_lightning.registry import build, param_counts, presets

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # run as a script or loaded by file path: the shared helpers sit next to it
    sys.path.insert(0, str(_HERE))
from _common import (  # noqa: E402
    command_line,
    device_name,
    output_paths,
    proc_status_kib,
    reset_peak_rss,
    run_child,
    timestamp,
    write_csv,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "keyframe_speed"
IMAGE = "image"
IMAGE_FROZEN = "image_frozen"  # the image UNet with every weight frozen: backward to the input only
CSV_COLUMNS = (
    "section",  # "variant" (parameters, time and memory at --main-frames) or "frames" (time versus T)
    "variant",
    "frames",
    "videos",
    "latent",
    "preset",
    "device",
    "threads",
    "params_total",
    "params_trainable",
    "trainable_frac",
    "repeats",
    "time_median_s",
    "time_min_s",
    "time_max_s",
    "time_ratio_vs_image",  # median over rounds of time(variant) / time(image) in the same round (> 1: slower)
    "cpu_time_median_s",
    "cpu_ratio_vs_image",
    "ms_per_frame",
    "peak_mem_mib",
    "mem_ratio_vs_image",
    "gflop_per_step",  # FLOPs of one step (torch.utils.flop_counter: matmuls / convs / attention, fwd + bwd)
    "gflops",  # gflop_per_step / median step time
    "matmul_peak_gflops",  # median over rounds of the best of 3 fp32 1024^3 matmuls timed in that round
    "frac_of_matmul_peak",  # median over rounds of (FLOPs / step time) / matmul peak, both from the same round
    "conv_peak_gflops",  # median over rounds of the best of 3 fp32 3x3 convs (16 x 128 x 32 x 32) timed in that round
    "frac_of_dense_peak",  # the same fraction of max(matmul rate, conv rate) of the round
)
_MIB = 2.0**20


# ----------------------------------------------------------------------------------------------------------- models
def make_model(preset: str, variant: str, *, seed: int, device: str) -> nn.Module:
    """``image``: the image UNet, all trainable; ``image_frozen``: the same, all frozen; otherwise the keyframe UNet
    ``variant`` (temporal parts trainable, spatial frozen)."""
    torch.manual_seed(seed)
    with torch.device(device):
        if variant in (IMAGE, IMAGE_FROZEN):
            model = build("t2i_unet", "kandinsky3", preset).requires_grad_(variant == IMAGE)
        else:
            model = build("keyframe_unet", variant, preset)  # spatial frozen by the conversion
    return model.train()


def make_batch(model: nn.Module, videos: int, frames: int, latent: int, tokens: int, *, seed: int, device: str):
    """Random inputs of one step: latents and target ``(B T, 4, H, H)``, time ``(B,)``, context ``(B, C, D)``, mask."""
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    rows = videos * frames
    x = torch.randn(rows, cfg["num_channels"], latent, latent, generator=gen)
    target = torch.randn(rows, cfg["out_channels"], latent, latent, generator=gen)
    time_ = torch.randint(0, 1000, (videos,), generator=gen).float()
    context = torch.randn(videos, tokens, cfg["context_dim"], generator=gen)
    mask = torch.ones(videos, tokens, dtype=torch.bool)
    return [t.to(device) for t in (x, target, time_, context, mask)]


def train_step(model: nn.Module, opt: torch.optim.Optimizer | None, batch: list[torch.Tensor], frames: int) -> None:
    """Forward, MSE, backward, AdamW step, gradients freed (``set_to_none``). Without an optimizer (nothing trains)
    the backward pass goes to the input latents: the cost of back-propagating through frozen layers."""
    x, target, time_, context, mask = batch
    if opt is None:
        x = x.detach().requires_grad_(True)
    if getattr(model, "num_frames", None) is None:  # the image UNet: frames folded as images, caption per frame
        rep = x.shape[0] // time_.shape[0]
        out = model(x, time_.repeat_interleave(rep), context.repeat_interleave(rep, 0), mask.repeat_interleave(rep, 0))
    else:
        out = model(x, time_, context, mask, num_frames=frames)
    loss = F.mse_loss(out, target)
    loss.backward()
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)


def _optimizer(model: nn.Module) -> torch.optim.Optimizer | None:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return None
    # the fused kernel (one pass over each parameter; CPU for-loop AdamW launches ~10 small ops per tensor)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(params, lr=1e-4, fused=fused)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -------------------------------------------------------------------------------------------------------- step time
def matmul_gflops(device: str, n: int = 1024, tries: int = 3) -> float:
    """This machine's fp32 matmul rate now: the best of ``tries`` ``n x n @ n x n`` products, in GFLOP/s."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device) for _ in range(2))
    a @ b  # noqa: B018 (warm-up)
    best = math.inf
    for _ in range(tries):
        _sync(device)
        t0 = time.perf_counter()
        a @ b  # noqa: B018
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def conv_gflops(device: str, batch: int = 16, channels: int = 128, size: int = 32, tries: int = 3) -> float:
    """This machine's fp32 3x3 convolution rate now (``batch x channels x size x size``, "same", ``channels`` out):
    the best of ``tries`` forward calls, in GFLOP/s. CPU convolutions run in oneDNN, matmuls in the BLAS (MKL), and
    the two need not reach the same rate on a given CPU (on an AMD EPYC here some conv shapes ran above the 1024^3
    matmul rate): the larger of the two rates is the fairer yardstick for a step made mostly of convolutions."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen).to(device)
    w = torch.randn(channels, channels, 3, 3, generator=gen).to(device)
    F.conv2d(x, w, padding=1)  # warm-up (kernel selection)
    best = math.inf
    for _ in range(tries):
        _sync(device)
        t0 = time.perf_counter()
        F.conv2d(x, w, padding=1)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * batch * channels * channels * 9 * size * size / best / 1e9


def measure_times(args: argparse.Namespace) -> dict[tuple[str, int], dict[str, Any]]:
    """Median step time per (model, T) and its ratio to the image UNet's in the same round."""
    models = {v: make_model(args.preset, v, seed=args.seed, device=args.device) for v in args.variants}
    opts = {v: _optimizer(m) for v, m in models.items()}
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for t in args.frames:
        batches = {
            v: make_batch(m, args.videos, t, args.latent, args.tokens, seed=args.seed + 1, device=args.device)
            for v, m in models.items()
        }
        flops: dict[str, int] = {}
        for v in args.variants:  # warm-up: kernels, allocator growth, AdamW state; the second step counts FLOPs
            train_step(models[v], opts[v], batches[v], t)
            with FlopCounterMode(display=False) as counter:
                train_step(models[v], opts[v], batches[v], t)
            flops[v] = counter.get_total_flops()
        _sync(args.device)
        times: dict[str, list[float]] = {v: [] for v in args.variants}
        cpu: dict[str, list[float]] = {v: [] for v in args.variants}
        peaks: list[float] = []
        conv_peaks: list[float] = []
        for _ in range(args.repeats):
            peaks.append(matmul_gflops(args.device))
            conv_peaks.append(conv_gflops(args.device))
            for v in args.variants:
                _sync(args.device)
                t0, c0 = time.perf_counter(), time.process_time()
                train_step(models[v], opts[v], batches[v], t)
                _sync(args.device)
                times[v].append(time.perf_counter() - t0)
                cpu[v].append(time.process_time() - c0)
        for v in args.variants:
            med = statistics.median(times[v])
            row = dict(
                time_median_s=med,
                time_min_s=min(times[v]),
                time_max_s=max(times[v]),
                time_ratio_vs_image=statistics.median(a / b for a, b in zip(times[v], times[IMAGE], strict=True)),
                ms_per_frame=1000 * med / (args.videos * t),
                gflop_per_step=flops[v] / 1e9,
                gflops=flops[v] / 1e9 / med,
                matmul_peak_gflops=statistics.median(peaks),
                frac_of_matmul_peak=statistics.median(
                    flops[v] / 1e9 / tv / p for tv, p in zip(times[v], peaks, strict=True)
                ),
                conv_peak_gflops=statistics.median(conv_peaks),
                frac_of_dense_peak=statistics.median(
                    flops[v] / 1e9 / tv / max(p, q) for tv, p, q in zip(times[v], peaks, conv_peaks, strict=True)
                ),
            )
            if args.device == "cpu":
                row["cpu_time_median_s"] = statistics.median(cpu[v])
                row["cpu_ratio_vs_image"] = statistics.median(a / b for a, b in zip(cpu[v], cpu[IMAGE], strict=True))
            out[(v, t)] = row
        print(
            f"  T={t:<3} " + ", ".join(f"{v} {1000 * out[(v, t)]['time_median_s']:.0f}ms" for v in args.variants),
            flush=True,
        )
    return out


# ----------------------------------------------------------------------------------------------------------- memory
def measure_point(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak memory growth of one training step in *this* process (after 2 warm-up steps)."""
    device = spec["device"]
    if spec["threads"] > 0:
        torch.set_num_threads(spec["threads"])
    model = make_model(spec["preset"], spec["variant"], seed=spec["seed"], device=device)
    opt = _optimizer(model)
    batch = make_batch(
        model, spec["videos"], spec["frames"], spec["latent"], spec["tokens"], seed=spec["seed"] + 1, device=device
    )
    for _ in range(2):
        train_step(model, opt, batch, spec["frames"])
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        train_step(model, opt, batch, spec["frames"])
        torch.cuda.synchronize()
        return {"peak_mem_mib": (torch.cuda.max_memory_allocated() - base) / _MIB, "peak_reset": True}
    reset = reset_peak_rss()
    before = proc_status_kib()
    train_step(model, opt, batch, spec["frames"])
    after = proc_status_kib()
    return {"peak_mem_mib": max(after["VmHWM"] - before["VmRSS"], 0) / 1024, "peak_reset": reset}


def measure_memory(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    specs = [
        dict(preset=args.preset, variant=v, frames=args.main_frames, videos=args.videos, latent=args.latent,
             tokens=args.tokens, seed=args.seed, device=args.device, threads=args.threads)
        for v in args.variants
    ]  # fmt: skip

    inline = args.device.startswith("cuda") or args.memory == "inline"

    def one(spec: dict[str, Any]) -> dict[str, Any]:
        res = measure_point(spec) if inline else run_child(__file__, spec)
        print(f"  {spec['variant']:<22} peak +{res['peak_mem_mib']:8.1f} MiB", flush=True)
        return res

    if inline or args.jobs <= 1:
        results = [one(s) for s in specs]
    else:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # threads only wait on child processes
            results = list(pool.map(one, specs))
    return dict(zip(args.variants, results, strict=True))


# ---------------------------------------------------------------------------------------------------------- outputs
def _fmt(value: Any, digits: int = 6) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def write_markdown(path: Path, args: argparse.Namespace, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    var_rows = [r for r in rows if r["section"] == "variant"]
    by_t = {(r["variant"], r["frames"]): r for r in rows if r["section"] == "frames"}
    on_cpu = args.device == "cpu"
    mem_what = (
        "torch.cuda.max_memory_allocated growth over the allocation before the step"
        if args.device.startswith("cuda")
        else "peak RSS growth during one step in a fresh process after 2 warm-up steps (VmHWM - VmRSS before)"
    )
    lines = [
        "# Keyframe UNet: training-step time and memory per temporal variant",
        "",
        f"Command: `{meta['command']}`  ",
        f"Preset `{args.preset}`, {args.videos} clip(s) of T frames of {args.latent}x{args.latent} latents, "
        f"{args.tokens} text tokens, device `{meta['device_name']}`, {meta['threads']} intra-op thread(s), torch "
        f"{torch.__version__}, {meta['date']}, total runtime {meta['runtime_s']:.0f} s.  ",
        "Reference `image`: the image UNet with every parameter trained on the same frames folded as images "
        "(the text-to-image stage); the keyframe variants train only their temporal parts (spatial weights frozen). "
        "`image_frozen`: the image UNet with nothing trained, back-propagating to the input latents (what the frozen "
        "spatial layers alone cost a keyframe step; a variant's time over it is the cost of its temporal parts).",
        "",
        f"## Per variant at T = {args.main_frames}",
        "",
        f"Step = forward + MSE + backward + AdamW step; median of {args.repeats} round-robin rounds after 2 warm-up "
        "steps. *x image* = median over rounds of time(variant) / time(image) in the same round (> 1: slower)"
        + ("; *x image (CPU)*: the same from process CPU time (less sensitive to other load)." if on_cpu else ".")
        + f" Peak memory = {mem_what}.",
        "",
        "*GFLOP/step*: FLOPs of one step counted by torch.utils.flop_counter (matmuls, convolutions, attention; "
        "forward and backward); *GFLOP/s* = that / median step time; *% of matmul peak* = median over rounds of "
        "(GFLOP/step / step time) / (the best of 3 fp32 1024x1024 matmuls timed in the same round)"
        + (f", whose median was {var_rows[0]['matmul_peak_gflops']:.1f} GFLOP/s." if var_rows else ".")
        + " *% of dense peak*: the same against the larger of that matmul rate and the best of 3 fp32 3x3 convs "
        "(16 x 128 x 32 x 32, 128 outputs) timed in the same round"
        + (f" (median conv rate {var_rows[0]['conv_peak_gflops']:.1f} GFLOP/s)" if var_rows else "")
        + ": where the convolution library outruns the BLAS, the matmul peak flatters the step.",
        "",
        "| variant | params total | trainable | trainable % | step ms | x image | "
        + ("x image (CPU) | " if on_cpu else "")
        + "peak MiB | mem x image | GFLOP/step | GFLOP/s | % of matmul peak | % of dense peak |",
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if on_cpu else "") + "---:|---:|---:|---:|---:|---:|",
    ]
    for r in var_rows:
        lines.append(
            f"| {r['variant']} | {r['params_total']:,} | {r['params_trainable']:,} | {100 * r['trainable_frac']:.1f} | "
            f"{1000 * r['time_median_s']:.1f} | {r['time_ratio_vs_image']:.2f} | "
            + (f"{r['cpu_ratio_vs_image']:.2f} | " if on_cpu else "")
            + f"{r['peak_mem_mib']:.1f} | {r['mem_ratio_vs_image']:.2f} | {r['gflop_per_step']:.2f} | "
            f"{r['gflops']:.1f} | {100 * r['frac_of_matmul_peak']:.0f} | {100 * r['frac_of_dense_peak']:.0f} |"
        )
    ts = args.frames
    lines += [
        "",
        "## Step time versus the number of frames",
        "",
        "Median step time in ms (x image at the same T in brackets); *growth* = time(T max) / time(T min), to compare "
        f"with the {ts[-1] // ts[0]}x growth of the data (linear scaling).",
        "",
        "| variant | " + " | ".join(f"T={t}" for t in ts) + f" | growth {ts[0]}->{ts[-1]} |",
        "|---|" + "---:|" * (len(ts) + 1),
    ]
    for v in args.variants:
        cells = [f"{1000 * by_t[(v, t)]['time_median_s']:.1f} ({by_t[(v, t)]['time_ratio_vs_image']:.2f})" for t in ts]
        growth = by_t[(v, ts[-1])]["time_median_s"] / by_t[(v, ts[0])]["time_median_s"]
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {growth:.2f} |")
    lines += ["", "## Notes", ""]
    lines += [f"- {n}" for n in meta["notes"]]
    lines.append("")
    atomic_write_text(path, "\n".join(lines))


def write_plot(path: Path, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    var_rows = [r for r in rows if r["section"] == "variant"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = [r["variant"] for r in var_rows]
    ypos = list(range(len(names)))
    series = [("time_ratio_vs_image", "step time", "tab:blue"), ("mem_ratio_vs_image", "peak memory", "tab:green")]
    if args.device == "cpu":
        series.insert(1, ("cpu_ratio_vs_image", "step CPU time", "tab:orange"))
    height = 0.8 / len(series)
    for j, (key, label, color) in enumerate(series):
        offs = [y - 0.4 + height * (j + 0.5) for y in ypos]
        ax1.barh(offs, [r[key] for r in var_rows], height=height, color=color, label=label)
    ax1.set_yticks(ypos, names)
    ax1.axvline(1.0, color="k", lw=0.8, ls=":")
    ax1.invert_yaxis()
    ax1.set_xlabel("relative to the image UNet on the same frames (1 = image)")
    ax1.legend(fontsize=8, loc="lower right")
    ax1.set_title(f"Training step, {args.preset} preset, T={args.main_frames}, {args.device}")
    for v in args.variants:
        pts = sorted((r["frames"], r["time_median_s"]) for r in rows if r["section"] == "frames" and r["variant"] == v)
        style = "k--o" if v == IMAGE else "-o"
        ax2.plot([p[0] for p in pts], [1000 * p[1] for p in pts], style, label=v, ms=4)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xticks(args.frames, [str(t) for t in args.frames])
    ax2.set_xlabel("frames per clip T")
    ax2.set_ylabel("training step time (ms)")
    ax2.set_title("Step time versus the number of frames")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=presets("keyframe_unet"), help="UNet size preset (tiny)")
    p.add_argument("--latent", type=int, default=16, help="latent height = width (default 16: 32x32 tiny-MoVQ frames)")
    p.add_argument("--videos", type=int, default=2, help="clips per step B (default 2)")
    p.add_argument("--frames", type=int, nargs="+", default=[2, 4, 8, 16], help="frame counts T (default 2 4 8 16)")
    p.add_argument("--main-frames", type=int, default=8, help="T of the per-variant table and memory (default 8)")
    p.add_argument("--tokens", type=int, default=8, help="text tokens per clip (default 8)")
    p.add_argument(
        "--variants",
        nargs="+",
        default=[IMAGE_FROZEN, *KEYFRAME_DESIGNS],
        help=f"keyframe variants and/or {IMAGE_FROZEN} (default: {IMAGE_FROZEN} and every keyframe variant)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed round-robin rounds per T (default 5)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (default 1; 0 = torch's default)")
    p.add_argument("--jobs", type=int, default=2, help="CPU memory measurements run in parallel (default 2)")
    p.add_argument(
        "--memory",
        default="process",
        choices=("process", "inline"),
        help="CPU peak memory: a fresh process per measurement (default; exact) or in this process (quick checks:\n"
        "allocator reuse of earlier steps can hide part of the peak)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output prefix (.md, .csv, .png are written)")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child is None:
        unknown = [v for v in args.variants if v not in KEYFRAME_DESIGNS and v not in (IMAGE, IMAGE_FROZEN)]
        if unknown:
            p.error(f"unknown variant(s) {unknown}; valid: {', '.join(KEYFRAME_DESIGNS)}")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            p.error("--device cuda but CUDA is not available")
        if min(args.repeats, args.videos, args.latent, args.tokens, args.main_frames, *args.frames) < 1:
            p.error("--repeats, --videos, --latent, --tokens and the frame counts must be >= 1")
        args.variants = list(dict.fromkeys([IMAGE, *args.variants]))  # the image UNet: reference of every ratio
        args.frames = sorted({*args.frames, args.main_frames})
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Run the benchmark; returns the written paths ``{"md": ..., "csv": ..., "png": ...}``."""
    args = parse_args(argv)
    if args._child is not None:  # hidden: one memory measurement in this fresh process
        print(json.dumps(measure_point(json.loads(args._child))))
        return {}
    start = time.perf_counter()
    threads = args.threads if args.threads > 0 else torch.get_num_threads()
    if args.device == "cpu":
        torch.set_num_threads(threads)
    args.threads = threads
    machine = device_name(args.device)
    print(
        f"keyframe_speed: preset={args.preset} latent={args.latent} videos={args.videos} T={args.frames} "
        f"device={args.device} threads={threads} variants={args.variants}",
        flush=True,
    )
    print(f"[1/2] step time, {args.repeats} rounds per T after 2 warm-up steps", flush=True)
    times = measure_times(args)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"[2/2] peak memory at T={args.main_frames}" + (" (fresh process each)" if args.device == "cpu" else ""))
    mem = measure_memory(args)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)

    common = dict(preset=args.preset, device=args.device, threads=threads, videos=args.videos, latent=args.latent,
                  repeats=args.repeats)  # fmt: skip
    counts = {v: param_counts(make_model(args.preset, v, seed=args.seed, device="meta")) for v in args.variants}
    rows: list[dict[str, Any]] = []
    image_mem = mem[IMAGE]["peak_mem_mib"]
    for v in args.variants:
        c = counts[v]
        rows.append(
            dict(
                section="variant", variant=v, frames=args.main_frames, **common, **times[(v, args.main_frames)],
                params_total=c["total"], params_trainable=c["trainable"], trainable_frac=c["trainable"] / c["total"],
                peak_mem_mib=mem[v]["peak_mem_mib"],
                mem_ratio_vs_image=mem[v]["peak_mem_mib"] / image_mem if image_mem > 0 else float("nan"),
            )
        )  # fmt: skip
    for v in args.variants:
        for t in args.frames:
            rows.append(dict(section="frames", variant=v, frames=t, **common, **times[(v, t)]))
    runtime = time.perf_counter() - start
    notes = [
        "Random weights and inputs: time and memory do not depend on values. The temporal parts start at their "
        "identity initialisation (zero convs / merges), which changes no amount of compute.",
        "The image UNet trains all its parameters (its optimizer updates many more weights); the keyframe variants "
        "back-propagate through the frozen spatial layers too (activation gradients), without their weight gradients.",
        "Ratios are measured in the same run (same machine, same load) and are what to compare across machines; "
        "absolute ms and MiB depend on the machine, threads and load.",
    ]
    if args.device == "cpu":
        notes.append(
            f"CPU: {threads} intra-op thread(s); memory children run with MALLOC_MMAP_THRESHOLD_=65536 ({args.jobs} at "
            "a time) and count everything the step makes resident (tensors, oneDNN scratch, per-shape caches)."
        )
        if args.memory == "inline":
            notes.append(
                "Memory measured in the benchmark process (--memory inline): freed blocks of earlier steps "
                "may be reused, so peaks can be underestimated; use the default fresh processes."
            )
        if not all(m.get("peak_reset", True) for m in mem.values()):
            notes.append("WARNING: the RSS high-water mark could not be reset; peaks are upper bounds.")
    meta = dict(
        command=command_line("benchmarks/keyframe_speed.py", argv),
        device_name=machine,
        threads=threads,
        date=timestamp(),
        runtime_s=runtime,
        notes=notes,
    )
    out = Path(args.out)
    paths = output_paths(out)
    write_csv(paths["csv"], CSV_COLUMNS, rows, _fmt)
    write_markdown(paths["md"], args, rows, meta)
    write_plot(paths["png"], args, rows)
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {runtime:.0f} s", flush=True)
    return paths


if __name__ == "__main__":
    main()
