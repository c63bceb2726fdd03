"""Video-decoder benchmark: decode throughput and peak memory per variant, and peak memory versus video length.

Usage (defaults sized for a 1-3 minute CPU run on 2 cores; ``make bench-decoder`` runs it with no arguments)::

    python benchmarks/decoder_speed.py [--preset tiny|small|paper] [--size H] [--throughput-frames T]
        [--frames T ...] [--variants ...] [--sweep-variants ...] [--chunk-frames N] [--context-frames C]
        [--chunk-method stream|window] [--ref-variants ...] [--ref-frames T ...] [--chunk-time-frames T]
        [--repeats R] [--device cpu|cuda] [--threads N] [--jobs J] [--seed S] [--out PREFIX]

What it does (see ``benchmarks/README.md`` for how to read the output):

1. **Throughput.** Every variant is an image MoVQ built at ``--preset`` (seeded), converted with
   :func:`~ff_lightning.models.video_decoder.video_decoder_from_image`, eval mode, no gradients. One video of
   ``T = --throughput-frames`` random latents (``H x H`` output frames) is decoded whole (one ``decode_video`` call
   without chunking). All models are warmed up once, then timed round-robin (``--repeats`` rounds; every round
   decodes each variant once, so load drift on a shared machine hits all variants alike). Reported: frames/s from
   the median wall time, and the ratio to the ``image`` variant as the median over rounds of ``time(image) /
   time(variant)`` measured in the same round; on CPU also the same ratio from process CPU time.
2. **Peak memory per variant** at ``T = --throughput-frames``, full decode.
3. **Peak memory versus video length** for ``--sweep-variants`` at every ``T`` in ``--frames``: the full decode
   versus ``decode_video(..., chunk_frames=--chunk-frames, context_frames=--context-frames,
   method=--chunk-method)``, plus the max absolute difference between the two outputs.
4. **Versus the frame-by-frame reference** (``--ref-variants`` x ``--ref-frames``): the whole decode against
   :func:`reference_decode` of the same model (the release's calling convention: every 2D op once per frame, the
   straightforward formulas), timed back to back per round (median ratio), peak memory of both in fresh processes.
5. **Chunked versus whole decode time** of one ``--chunk-time-frames`` video per ``--sweep-variants``.

Peak memory is the growth *during the decode*, over what is resident right before it (model weights and latents
excluded; the output tensor and every temporary included):

- CUDA: ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()``, after ``reset_peak_memory_stats``
  (tensors held by PyTorch's caching allocator; cuDNN workspaces allocated through it count too).
- CPU: every measurement runs in a fresh process (this script re-run with a hidden ``--_child`` flag). It builds the
  model and latents, decodes one frame (pages in library code and one-time caches, which would otherwise count),
  resets the kernel's RSS high-water mark (``echo 5 > /proc/self/clear_refs``), reads ``VmRSS``, decodes once, and
  reports ``VmHWM - VmRSS`` from ``/proc/self/status``: the peak growth of resident memory, whatever allocated it
  (tensors, oneDNN scratch buffers, per-shape kernel caches for the new batch size: a little above the pure tensor
  peak). The child
  runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so glibc serves every tensor-sized block with its own mmap and returns
  it on free; otherwise freed blocks can stay in the heap and be re-used, and RSS would measure glibc's heap policy
  as much as the decoder. If the high-water mark cannot be reset, the report says so (the value is then an upper
  bound that may include the model build).

The temporal layers of a converted decoder start as an exact identity (zero convs / merges), so a chunked decode
would match the full one trivially. To make the difference column meaningful the added temporal parameters are given
random non-zero values (merges ``a = 0.5``, weights ``N(0, (0.5 / sqrt(fan_in))^2)`` added); this changes no shape
and no amount of compute, so throughput and memory are unaffected.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ff_lightning.io import atomic_open, atomic_write_text
from ff_lightning.models import layers
from ff_lightning.models.layers import AttnBlock, SpatialNorm, Upsample
from ff_lightning.models.movq import Decoder, MoVQ
from ff_lightning.models.video_decoder import (
    VARIANTS,
    decode_video,
    temporal_parameter_names,
    temporal_receptive_radius,
    video_decoder_from_image,
)
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

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "decoder_speed"
DEFAULT_SWEEP = ("conv3x3x3_attn", "conv3x1x1")
CSV_COLUMNS = (
    "section",  # "variant" (throughput / memory per variant) or "length" (memory versus video length)
    "variant",
    "mode",  # "full" or "chunked"
    "frames",
    "chunk_frames",  # empty for a full decode
    "context_frames",  # context actually used: min(--context-frames, temporal radius); empty for a full decode
    "preset",
    "size",
    "device",
    "threads",
    "params_m",
    "weights_mib",
    "temporal_radius",
    "repeats",
    "time_median_s",
    "time_min_s",
    "time_max_s",
    "fps",
    "fps_ratio_vs_image",
    "cpu_time_median_s",  # process CPU time per decode (CPU device only)
    "cpu_ratio_vs_image",  # median over rounds of cpu_time(image) / cpu_time(variant) (CPU device only)
    "peak_mem_mib",
    "mem_ratio_vs_image",
    "max_abs_diff_vs_full",
    "max_abs_output",
    "ref_time_median_s",  # section "reference": the frame-by-frame reference decode of the same weights
    "speedup_vs_reference",  # median over rounds of time(reference) / time(decoder) in the same round
    "ref_peak_mem_mib",
    "mem_ratio_vs_reference",  # peak(decoder) / peak(reference)
    "max_abs_diff_vs_reference",
    "time_ratio_chunked_vs_full",  # section "chunk_time": median over rounds of time(chunked) / time(full)
)
_MIB = 2.0**20


# ----------------------------------------------------------------------------------------------------------- models
def make_model(preset: str, variant: str, *, seed: int, device: str) -> MoVQ:
    """The ``variant`` video MoVQ: a seeded image MoVQ at ``preset`` converted with ``video_decoder_from_image``.

    The added temporal parameters get random non-zero values (see :func:`activate_temporal`). Eval mode, frozen.
    """
    torch.manual_seed(seed)
    with torch.device(device):
        image = build("movq", "movqgan", preset)
    model = video_decoder_from_image(image, variant)
    del image
    activate_temporal(model, seed=seed + 1)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def activate_temporal(model: MoVQ, *, seed: int, strength: float = 0.5) -> None:
    """Give the identity-initialised temporal parameters random non-zero values so they really mix frames.

    Merge scalars ``a`` are set to ``strength``; every temporal weight (dim >= 2) gets ``N(0, (strength /
    sqrt(fan_in))^2)`` noise added (for ``2d_to_3d``: on top of the inflated 2D kernels); biases are unchanged.
    Deterministic for a given ``seed`` (noise drawn on the CPU).
    """
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.decoder.named_parameters())
    for name in temporal_parameter_names(model.decoder):
        p = params[name]
        if name.split(".")[-2].startswith("temporal_merge"):
            p.fill_(strength)
        elif p.dim() >= 2:
            noise = torch.randn(p.shape, generator=gen) * (strength / math.sqrt(p[0].numel()))
            p.add_(noise.to(device=p.device, dtype=p.dtype))


def make_latents(model: MoVQ, size: int, frames: int, *, seed: int, device: str) -> torch.Tensor:
    """Random latents of one video, ``(1 * frames) embed_dim (size / f) (size / f)``, ``f`` the decoder's factor."""
    factor = 2 ** (len(model.decoder.config["ch_mult"]) - 1)
    if size % factor:
        raise ValueError(f"--size {size} is not a multiple of the decoder's upsampling factor {factor}")
    channels = model.post_quant_conv.in_channels
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(frames, channels, size // factor, size // factor, generator=gen).to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _per_frame(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``fn`` applied to one row (frame) of its batch at a time; tensor arguments with as many rows are split too."""

    def run(x: torch.Tensor, *rest: Any) -> torch.Tensor:
        n = x.shape[0]
        outs = []
        for i in range(n):
            extra = [r[i : i + 1] if isinstance(r, torch.Tensor) and r.shape[0] == n else r for r in rest]
            outs.append(fn(x[i : i + 1], *extra))
        return torch.cat(outs)

    return run


@contextlib.contextmanager
def frame_by_frame(decoder: Decoder) -> Iterator[None]:
    """Within the context ``decoder`` decodes with the released Kandinsky Video calling convention: every 2D op
    (each Conv2d, SpatialNorm / GroupNorm, spatial attention, upsampling) runs once per frame, with the
    straightforward formulas (SpatialNorm interpolates ``zq`` then applies ``conv_y`` / ``conv_b``:
    :meth:`~ff_lightning.models.layers.SpatialNorm.forward_reference`; Upsample interpolates then convolves;
    temporal convs run as ``nn.Conv3d`` on
    ``b c t h w``); temporal ops see the whole video. Same weights, same outputs up to float rounding."""
    patched: list[nn.Module] = []
    for module in decoder.modules():
        if isinstance(module, (SpatialNorm, Upsample)):
            module.forward = _per_frame(module.forward_reference)
        elif isinstance(module, (AttnBlock, nn.Conv2d, nn.GroupNorm)):
            module.forward = _per_frame(module.forward)
        else:
            continue
        patched.append(module)
    fast_conv, pieces = layers._frame_conv, layers.PIECE_ELEMENTS
    layers._frame_conv = layers._frame_conv_reference
    layers.PIECE_ELEMENTS = 2**62  # whole-batch calls of the per-frame loops (no pieces), as released
    try:
        yield
    finally:
        layers._frame_conv, layers.PIECE_ELEMENTS = fast_conv, pieces
        for module in patched:
            del module.forward  # back to the class's forward


def reference_decode(model: MoVQ, latents: torch.Tensor, frames: int) -> torch.Tensor:
    """The whole video decoded under :func:`frame_by_frame` (no gradients). ``latents``: ``(b t) c h w``."""
    with torch.no_grad(), frame_by_frame(model.decoder):
        return model.decoder(_per_frame(model.post_quant_conv.forward)(latents), latents, num_frames=frames)


def _decode(
    model: MoVQ,
    latents: torch.Tensor,
    frames: int,
    chunk_frames: int | None,
    context: int,
    reference: bool = False,
    method: str = "stream",
) -> torch.Tensor:
    if reference:
        return reference_decode(model, latents, frames)
    return decode_video(model, latents, frames, chunk_frames=chunk_frames, context_frames=context, method=method)


# ------------------------------------------------------------------------------------------------------- throughput
def measure_throughput(args: argparse.Namespace, variants: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Warm up every variant once, then time ``args.repeats`` round-robin rounds of one full decode each."""
    frames = args.throughput_frames
    models: dict[str, MoVQ] = {}
    for v in variants:
        models[v] = make_model(args.preset, v, seed=args.seed, device=args.device)
    latents = make_latents(models[variants[0]], args.size, frames, seed=args.seed + 2, device=args.device)
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu_times: dict[str, list[float]] = {v: [] for v in variants}
    with torch.no_grad():
        for v in variants:  # warm-up (oneDNN / cuDNN algorithm selection, allocator growth)
            t0 = time.perf_counter()
            _decode(models[v], latents, frames, None, 0)
            _sync(args.device)
            print(f"  warm-up {v:<15} {time.perf_counter() - t0:7.2f} s", flush=True)
        for r in range(args.repeats):
            for v in variants:
                _sync(args.device)
                t0, c0 = time.perf_counter(), time.process_time()
                _decode(models[v], latents, frames, None, 0)
                _sync(args.device)
                times[v].append(time.perf_counter() - t0)
                cpu_times[v].append(time.process_time() - c0)
            print(
                f"  round {r + 1}/{args.repeats}: " + ", ".join(f"{v} {times[v][-1]:.2f}s" for v in variants),
                flush=True,
            )
    out: dict[str, dict[str, Any]] = {}
    for v in variants:
        med = statistics.median(times[v])
        ratios = [ti / tv for ti, tv in zip(times["image"], times[v], strict=True)]
        n_params = param_counts(models[v].decoder)["total"]
        out[v] = dict(
            params_m=n_params / 1e6,
            weights_mib=n_params * next(models[v].parameters()).element_size() / _MIB,
            temporal_radius=temporal_receptive_radius(models[v].decoder),
            time_median_s=med,
            time_min_s=min(times[v]),
            time_max_s=max(times[v]),
            fps=frames / med,
            fps_ratio_vs_image=statistics.median(ratios),
        )
        if args.device == "cpu":
            cpu_ratios = [ci / cv for ci, cv in zip(cpu_times["image"], cpu_times[v], strict=True)]
            out[v]["cpu_time_median_s"] = statistics.median(cpu_times[v])
            out[v]["cpu_ratio_vs_image"] = statistics.median(cpu_ratios)
    return out


def measure_vs_reference(args: argparse.Namespace) -> dict[tuple[str, int], dict[str, Any]]:
    """Whole decode versus :func:`reference_decode` (same model, same latents) for every ``--ref-variants`` x
    ``--ref-frames``: one warm-up each, then ``args.repeats`` rounds, each timing both back to back (the order
    alternating between rounds). Returns medians, the median per-round speed-up and the max output difference."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for v in args.ref_variants:
        model = make_model(args.preset, v, seed=args.seed, device=args.device)
        for frames in args.ref_frames:
            latents = make_latents(model, args.size, frames, seed=args.seed + 2, device=args.device)
            with torch.no_grad():
                fast, ref = _decode(model, latents, frames, None, 0), reference_decode(model, latents, frames)
            diff = (fast - ref).abs().max().item()
            del fast, ref
            times: dict[bool, list[float]] = {False: [], True: []}
            for r in range(args.repeats):
                for reference in (False, True) if r % 2 == 0 else (True, False):
                    _sync(args.device)
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        _decode(model, latents, frames, None, 0, reference)
                    _sync(args.device)
                    times[reference].append(time.perf_counter() - t0)
            speedups = [tr / tf for tf, tr in zip(times[False], times[True], strict=True)]
            out[(v, frames)] = dict(
                time_median_s=statistics.median(times[False]),
                ref_time_median_s=statistics.median(times[True]),
                speedup_vs_reference=statistics.median(speedups),
                max_abs_diff_vs_reference=diff,
            )
            print(f"  {v:<15} T={frames:<3} x{out[(v, frames)]['speedup_vs_reference']:.2f} vs reference", flush=True)
        del model
    return out


def measure_chunk_time(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Chunked (``--chunk-frames`` / ``--context-frames``) versus whole decode time of one ``--chunk-time-frames``
    video per ``--sweep-variants``: a warm-up, then ``args.repeats`` rounds, both back to back, order alternating."""
    frames = args.chunk_time_frames
    out: dict[str, dict[str, Any]] = {}
    for v in args.sweep_variants:
        model = make_model(args.preset, v, seed=args.seed, device=args.device)
        latents = make_latents(model, args.size, frames, seed=args.seed + 2, device=args.device)
        with torch.no_grad():
            full = _decode(model, latents, frames, None, 0)
            chunked = _decode(model, latents, frames, args.chunk_frames, args.context_frames, False, args.chunk_method)
        diff = (full - chunked).abs().max().item()
        del full, chunked
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.repeats):
            for is_chunked in (False, True) if r % 2 == 0 else (True, False):
                _sync(args.device)
                t0 = time.perf_counter()
                with torch.no_grad():
                    chunk = args.chunk_frames if is_chunked else None
                    _decode(model, latents, frames, chunk, args.context_frames, False, args.chunk_method)
                _sync(args.device)
                times[is_chunked].append(time.perf_counter() - t0)
        ratios = [tc / tf for tf, tc in zip(times[False], times[True], strict=True)]
        out[v] = dict(
            time_median_s=statistics.median(times[False]),
            chunked_time_median_s=statistics.median(times[True]),
            time_ratio_chunked_vs_full=statistics.median(ratios),
            max_abs_diff_vs_full=diff,
        )
        print(f"  {v:<15} T={frames} chunked / full time {out[v]['time_ratio_chunked_vs_full']:.2f}", flush=True)
        del model
    return out


# ----------------------------------------------------------------------------------------------------------- memory
def measure_point(spec: dict[str, Any]) -> dict[str, Any]:
    """One memory measurement in *this* process: build, decode once, report peak growth; save the output.

    ``spec``: preset, variant, size, frames, chunk_frames (None: full), context_frames, seed, device, threads,
    output (path for the decoded frames, ``torch.save``; may be None).
    """
    device = spec["device"]
    if spec["threads"] > 0:
        torch.set_num_threads(spec["threads"])
    model = make_model(spec["preset"], spec["variant"], seed=spec["seed"], device=device)
    latents = make_latents(model, spec["size"], spec["frames"], seed=spec["seed"] + 2, device=device)
    chunk, context = spec["chunk_frames"], spec["context_frames"]
    result: dict[str, Any] = {}
    with torch.no_grad():
        # warm-up on one frame: pages in library code, loads kernels and one-time caches, which would otherwise count
        reference = bool(spec.get("reference", False))
        method = spec.get("method", "stream")
        _decode(model, latents[:1], 1, None, 0, reference)
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            out = _decode(model, latents, spec["frames"], chunk, context, reference, method)
            torch.cuda.synchronize()
            result["peak_mem_mib"] = (torch.cuda.max_memory_allocated() - base) / _MIB
            result["peak_reset"] = True
        else:
            result["peak_reset"] = reset_peak_rss()
            before = proc_status_kib()
            out = _decode(model, latents, spec["frames"], chunk, context, reference, method)
            after = proc_status_kib()
            result["peak_mem_mib"] = max(after["VmHWM"] - before["VmRSS"], 0) / 1024
            result["rss_before_mib"] = before["VmRSS"] / 1024
    if spec.get("output"):
        torch.save(out.float().cpu(), spec["output"])
    return result


def measure_memory(specs: list[dict[str, Any]], device: str, jobs: int) -> list[dict[str, Any]]:
    """Measure every spec (CPU: one fresh process each, ``jobs`` at a time; CUDA: in this process, one by one)."""

    def one(i_spec: tuple[int, dict[str, Any]]) -> dict[str, Any]:
        i, spec = i_spec
        t0 = time.perf_counter()
        res = measure_point(spec) if device.startswith("cuda") else run_child(__file__, spec)
        mode = "full" if spec["chunk_frames"] is None else f"chunk {spec['chunk_frames']}"
        print(
            f"  [{i + 1}/{len(specs)}] {spec['variant']:<15} T={spec['frames']:<3} {mode:<9} "
            f"peak +{res['peak_mem_mib']:8.1f} MiB  ({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
        return res

    if device.startswith("cuda") or jobs <= 1:
        return [one(x) for x in enumerate(specs)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads only wait on child processes
        return list(pool.map(one, enumerate(specs)))


# ---------------------------------------------------------------------------------------------------------- outputs
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def write_markdown(path: Path, args: argparse.Namespace, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    var_rows = [r for r in rows if r["section"] == "variant"]
    len_rows = [r for r in rows if r["section"] == "length"]
    mem_what = (
        "torch.cuda.max_memory_allocated growth over the allocation before the decode"
        if args.device.startswith("cuda")
        else "peak RSS growth during one decode in a fresh process, after a 1-frame warm-up (VmHWM - VmRSS before)"
    )
    on_cpu = args.device == "cpu"
    lines = [
        "# Video-decoder speed and memory",
        "",
        f"Command: `{meta['command']}`  ",
        f"Preset `{args.preset}`, {args.size}x{args.size} output frames, one video per decode, device "
        f"`{meta['device_name']}`, {meta['threads']} intra-op thread(s), torch {torch.__version__}, "
        f"{meta['date']}, total runtime {meta['runtime_s']:.0f} s.  ",
        f"Peak memory = {mem_what}; weights and latents excluded, output included.",
        "",
        f"## Throughput and peak memory per variant (T = {args.throughput_frames} frames, full decode)",
        "",
        f"Frames/s (wall clock) from the median of {args.repeats} timed rounds after one warm-up; *x image* = median "
        "over rounds of time(image) / time(variant) in the same round (< 1: slower than the image decoder)"
        + (
            "; *x image (CPU)* is the same ratio from process CPU time, which other processes' load affects less "
            "(the more trustworthy ratio on a shared machine)."
            if on_cpu
            else "."
        ),
        "Peak MiB = growth during the decode (weights excluded; *weights MiB* lists them).",
        "",
        "| variant | params (M) | weights MiB | temporal radius | frames/s | x image | "
        + ("x image (CPU) | " if on_cpu else "")
        + "median s/video (min-max) | peak MiB | mem x image |",
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if on_cpu else "") + "---:|---:|---:|",
    ]
    for r in var_rows:
        lines.append(
            f"| {r['variant']} | {r['params_m']:.2f} | {r['weights_mib']:.1f} | {_fmt(r['temporal_radius'])} | "
            f"{r['fps']:.2f} | {r['fps_ratio_vs_image']:.2f} | "
            + (f"{r['cpu_ratio_vs_image']:.2f} | " if on_cpu else "")
            + f"{r['time_median_s']:.3f} ({r['time_min_s']:.3f}-{r['time_max_s']:.3f}) "
            f"| {r['peak_mem_mib']:.1f} | {r['mem_ratio_vs_image']:.2f} |"
        )
    lines += [
        "",
        f"## Peak memory versus video length (full decode vs `decode_video(chunk_frames={args.chunk_frames}, "
        f"context_frames={args.context_frames}, method={args.chunk_method!r})`)",
        "",
        (
            "method 'stream': exact for every variant (each temporal conv holds the frames it still needs between "
            "chunks; the stages up to the last temporal attention run on the whole video at the latent resolution); "
            "*context used* does not apply. "
            if args.chunk_method == "stream"
            else "Context used = min(context_frames, temporal radius). Chunked output equals the full decode only "
            "when the context covers the temporal radius; otherwise (and always with temporal attention) it is an "
            "approximation. "
        )
        + "The difference is measured here with random non-zero temporal weights (see Notes).",
        "",
        "| variant | T | full MiB | chunked MiB | chunked / full | context used | max abs diff | max abs output |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["variant"], r["frames"], r["mode"]): r for r in len_rows}
    for v in args.sweep_variants:
        for t in args.frames:
            full, chunked = by_key[(v, t, "full")], by_key[(v, t, "chunked")]
            ratio = chunked["peak_mem_mib"] / full["peak_mem_mib"] if full["peak_mem_mib"] > 0 else float("nan")
            lines.append(
                f"| {v} | {t} | {full['peak_mem_mib']:.1f} | {chunked['peak_mem_mib']:.1f} | {ratio:.2f} | "
                f"{_fmt(chunked.get('context_frames'))} | {_fmt(chunked['max_abs_diff_vs_full'])} | "
                f"{_fmt(chunked['max_abs_output'])} |"
            )
    ref_rows = [r for r in rows if r["section"] == "reference"]
    if ref_rows:
        lines += [
            "",
            "## Versus the frame-by-frame reference decode (same weights)",
            "",
            "Reference = `reference_decode` in this script: the release's calling convention, every 2D op (conv, "
            "norm, spatial attention, upsampling) once per frame with the straightforward formulas (SpatialNorm "
            "interpolates zq then two 1x1 convs; interpolate-then-conv upsampling; temporal convs as nn.Conv3d), "
            "temporal ops over the whole video. *speed-up* = median over rounds of time(reference) / time(decoder), "
            "both timed back to back in each round; *mem ratio* = peak(decoder) / peak(reference), each in a fresh "
            "process.",
            "",
            "| variant | T | decoder s | reference s | speed-up | decoder peak MiB | reference peak MiB | mem ratio "
            "| max abs diff |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in ref_rows:
            lines.append(
                f"| {r['variant']} | {r['frames']} | {r['time_median_s']:.3f} | {r['ref_time_median_s']:.3f} | "
                f"{r['speedup_vs_reference']:.2f} | {r['peak_mem_mib']:.1f} | {r['ref_peak_mem_mib']:.1f} | "
                f"{r['mem_ratio_vs_reference']:.2f} | {_fmt(r['max_abs_diff_vs_reference'])} |"
            )
    ct_rows = [r for r in rows if r["section"] == "chunk_time"]
    if ct_rows:
        lines += [
            "",
            f"## Chunked versus whole decode time (T = {args.chunk_time_frames})",
            "",
            f"`decode_video(chunk_frames={args.chunk_frames}, context_frames={args.context_frames}, "
            f"method={args.chunk_method!r})` against one "
            "whole decode; median over rounds of time(chunked) / time(whole), both back to back in each round.",
            "",
            "| variant | T | whole s | chunked / whole time | context used | max abs diff |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in ct_rows:
            lines.append(
                f"| {r['variant']} | {r['frames']} | {r['time_median_s']:.3f} | "
                f"{r['time_ratio_chunked_vs_full']:.2f} | {_fmt(r.get('context_frames'))} | "
                f"{_fmt(r['max_abs_diff_vs_full'])} |"
            )
    lines += ["", "## Notes", ""]
    lines += [f"- {n}" for n in meta["notes"]]
    lines.append("")
    atomic_write_text(path, "\n".join(lines))


def write_plot(path: Path, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    var_rows = [r for r in rows if r["section"] == "variant"]
    len_rows = [r for r in rows if r["section"] == "length"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = [r["variant"] for r in var_rows]
    ypos = list(range(len(names)))
    series = [("fps_ratio_vs_image", "wall clock", "tab:blue")]
    if args.device == "cpu":
        series.append(("cpu_ratio_vs_image", "CPU time", "tab:orange"))
    height = 0.8 / len(series)
    for j, (key, label, color) in enumerate(series):
        offs = [y - 0.4 + height * (j + 0.5) for y in ypos]
        ax1.barh(offs, [r[key] for r in var_rows], height=height, color=color, label=label)
    for y, r in zip(ypos, var_rows, strict=True):
        top = max(r[key] for key, _, _ in series)
        ax1.text(top, y, f" {r['fps']:.2f} f/s", va="center", fontsize=8)
    ax1.set_yticks(ypos, names)
    ax1.axvline(1.0, color="k", lw=0.8, ls=":")
    ax1.invert_yaxis()
    ax1.set_xlabel("throughput relative to the image decoder (1 = image; higher is faster)")
    ax1.set_xlim(0, max(r[key] for r in var_rows for key, _, _ in series) * 1.35)
    ax1.legend(fontsize=8, loc="lower right")
    ax1.set_title(f"Decode throughput, {args.preset} preset, {args.size}px, T={args.throughput_frames}, {args.device}")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, v in enumerate(args.sweep_variants):
        for mode, style in (("full", "-o"), ("chunked", "--s")):
            pts = sorted((r["frames"], r["peak_mem_mib"]) for r in len_rows if r["variant"] == v and r["mode"] == mode)
            label = f"{v} {mode}" + (f" ({args.chunk_frames})" if mode == "chunked" else "")
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colors[i % len(colors)], label=label)
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(args.frames, [str(t) for t in args.frames])
    ax2.set_xlabel("video length T (frames)")
    ax2.set_ylabel("peak memory growth during decode (MiB)")
    ax2.set_title("Peak memory vs video length: full vs chunked decode")
    ax2.grid(alpha=0.3)
    if args.sweep_variants:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="small", choices=presets("movq"), help="MoVQ size preset (default small)")
    p.add_argument("--size", type=int, default=32, help="output frame height = width in pixels (default 32)")
    p.add_argument(
        "--frames",
        type=int,
        nargs="+",
        default=[16, 64, 225],
        help="video lengths T of the memory-versus-length sweep (default 16 64 225)",
    )
    p.add_argument(
        "--throughput-frames",
        type=int,
        default=16,
        help="video length T for throughput and the per-variant memory table (default 16: at 32 px the same CPU\n"
        "Conv3d dispatch as 8 frames at 64 px, see benchmarks/README.md)",
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help="variants for throughput (default: all 8)")
    p.add_argument(
        "--sweep-variants",
        nargs="*",
        default=list(DEFAULT_SWEEP),
        help=f"variants for memory vs length (default {' '.join(DEFAULT_SWEEP)}; none: skip)",
    )
    p.add_argument(
        "--ref-variants",
        nargs="*",
        default=["image", "conv3x1x1", "conv3x3x3_attn", "resblock_attn"],
        help="variants timed against the frame-by-frame reference decode (default image conv3x1x1\n"
        "conv3x3x3_attn resblock_attn; none: skip)",
    )
    p.add_argument(
        "--ref-frames", type=int, nargs="+", default=[8, 16], help="video lengths of the reference comparison"
    )
    p.add_argument(
        "--chunk-time-frames", type=int, default=32, help="video length of the chunked-vs-whole timing (default 32)"
    )
    p.add_argument("--chunk-frames", type=int, default=8, help="chunk size for the chunked decode (default 8)")
    p.add_argument("--context-frames", type=int, default=4, help="decode_video context_frames (default 4)")
    p.add_argument(
        "--chunk-method",
        default="stream",
        choices=("stream", "window"),
        help="decode_video method of the chunked decodes (default stream: exact)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed rounds after the warm-up (default 5)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads on CPU (default 1; 0 = torch's default)"
    )
    p.add_argument("--jobs", type=int, default=2, help="CPU memory measurements run in parallel (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output prefix (.md, .csv, .png are written)")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child is None:
        unknown = [v for v in [*args.variants, *args.sweep_variants, *args.ref_variants] if v not in VARIANTS]
        if unknown:
            p.error(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            p.error("--device cuda but CUDA is not available")
        if (
            args.repeats < 1
            or args.chunk_frames < 1
            or args.context_frames < 0
            or min(*args.frames, args.throughput_frames) < 1
        ):
            p.error("--repeats, --chunk-frames and the frame counts must be >= 1, --context-frames >= 0")
        if "image" not in args.variants:  # the reference of every ratio
            args.variants.insert(0, "image")
        args.variants = list(dict.fromkeys(args.variants))
        args.sweep_variants = list(dict.fromkeys(args.sweep_variants))
        args.frames = sorted(set(args.frames))
    return args


def _point(
    args: argparse.Namespace, variant: str, frames: int, chunk: int | None, output: str | None, reference: bool = False
) -> dict:
    if chunk is not None and chunk >= frames:
        chunk = None  # decode_video decodes the whole video in one call: the same measurement as the full decode
    return dict(
        preset=args.preset,
        variant=variant,
        size=args.size,
        frames=frames,
        chunk_frames=chunk,
        context_frames=args.context_frames,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        output=output,
        reference=reference,
        method=args.chunk_method,
    )


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
    machine = device_name(args.device)
    print(
        f"decoder_speed: preset={args.preset} size={args.size} T={args.throughput_frames} (sweep {args.frames}) "
        f"device={args.device} "
        f"threads={threads} variants={args.variants}",
        flush=True,
    )

    print(f"[1/3] throughput, T={args.throughput_frames}, {args.repeats} rounds after a warm-up", flush=True)
    tput = measure_throughput(args, args.variants)
    print(f"[1b] whole decode vs the frame-by-frame reference, T={args.ref_frames}", flush=True)
    vs_ref = measure_vs_reference(args)
    print(f"[1c] chunked vs whole decode time, T={args.chunk_time_frames}", flush=True)
    chunk_time = measure_chunk_time(args)

    print("[2/3] peak memory per variant" + (" (one fresh process each)" if args.device == "cpu" else ""), flush=True)
    with tempfile.TemporaryDirectory(prefix="ff_decoder_speed_") as tmp:
        var_specs = [_point(args, v, args.throughput_frames, None, None) for v in args.variants]
        ref_specs = {
            (v, t, reference): _point(args, v, t, None, None, reference)
            for v in args.ref_variants
            for t in args.ref_frames
            for reference in (False, True)
        }
        sweep: list[tuple[str, int, str, dict]] = []
        for v in args.sweep_variants:
            for t in args.frames:
                for mode, chunk in (("full", None), ("chunked", args.chunk_frames)):
                    sweep.append((v, t, mode, _point(args, v, t, chunk, str(Path(tmp) / f"{v}_{t}_{mode}.pt"))))
        # identical measurements (chunk >= T is the full decode) run once
        unique: dict[str, dict] = {}
        for spec in [*var_specs, *ref_specs.values(), *(s for *_, s in sweep)]:
            key = json.dumps({k: v for k, v in spec.items() if k != "output"}, sort_keys=True)
            if key not in unique or (spec["output"] and not unique[key]["output"]):
                unique[key] = spec
        keys = list(unique)
        var_keys = {json.dumps({k: v for k, v in s.items() if k != "output"}, sort_keys=True) for s in var_specs}
        first = [k for k in keys if k in var_keys]
        rest = [k for k in keys if k not in var_keys]
        res_first = measure_memory([unique[k] for k in first], args.device, args.jobs)
        if rest:
            print(f"[3/3] peak memory vs video length: {args.sweep_variants}, T={args.frames}", flush=True)
        res_rest = measure_memory([unique[k] for k in rest], args.device, args.jobs)
        results = dict(zip(first + rest, res_first + res_rest, strict=True))

        def result_of(spec: dict) -> dict:
            return results[json.dumps({k: v for k, v in spec.items() if k != "output"}, sort_keys=True)]

        def output_of(spec: dict) -> torch.Tensor:
            key = json.dumps({k: v for k, v in spec.items() if k != "output"}, sort_keys=True)
            return torch.load(unique[key]["output"])

        common = dict(preset=args.preset, size=args.size, device=args.device, threads=threads)
        image_mem = result_of(var_specs[0])["peak_mem_mib"]
        rows: list[dict[str, Any]] = []
        for v, spec in zip(args.variants, var_specs, strict=True):
            mem = result_of(spec)["peak_mem_mib"]
            rows.append(
                dict(
                    section="variant",
                    variant=v,
                    mode="full",
                    frames=args.throughput_frames,
                    repeats=args.repeats,
                    **common,
                    **tput[v],
                    peak_mem_mib=mem,
                    mem_ratio_vs_image=mem / image_mem if image_mem > 0 else float("nan"),
                )
            )
        peak_reset = all(r.get("peak_reset", True) for r in results.values())
        radius: dict[str, float] = {}
        for v, t, mode, spec in sweep:
            if v not in radius:
                radius[v] = temporal_receptive_radius(build("decoder", v, args.preset, device="meta"))
            row = dict(section="length", variant=v, mode=mode, frames=t, **common, temporal_radius=radius[v])
            row["peak_mem_mib"] = result_of(spec)["peak_mem_mib"]
            if mode == "chunked":
                row["chunk_frames"] = args.chunk_frames
                if args.chunk_method == "window":
                    row["context_frames"] = int(min(args.context_frames, radius[v])) if args.chunk_frames < t else 0
                full_spec = next(s for v2, t2, m2, s in sweep if (v2, t2, m2) == (v, t, "full"))
                full_out, chunk_out = output_of(full_spec), output_of(spec)
                row["max_abs_diff_vs_full"] = (chunk_out - full_out).abs().max().item()
                row["max_abs_output"] = full_out.abs().max().item()
            rows.append(row)
        for (v, t), res in vs_ref.items():
            mem, ref_mem = (result_of(ref_specs[(v, t, r)])["peak_mem_mib"] for r in (False, True))
            rows.append(
                dict(
                    section="reference",
                    variant=v,
                    mode="full",
                    frames=t,
                    repeats=args.repeats,
                    **common,
                    **res,
                    peak_mem_mib=mem,
                    ref_peak_mem_mib=ref_mem,
                    mem_ratio_vs_reference=mem / ref_mem if ref_mem > 0 else float("nan"),
                )
            )
        for v, res in chunk_time.items():
            rows.append(
                dict(
                    section="chunk_time",
                    variant=v,
                    mode="chunked",
                    frames=args.chunk_time_frames,
                    chunk_frames=args.chunk_frames,
                    context_frames=(
                        int(min(args.context_frames, radius.get(v, 0))) if args.chunk_method == "window" else None
                    ),
                    repeats=args.repeats,
                    **common,
                    time_median_s=res["time_median_s"],
                    time_ratio_chunked_vs_full=res["time_ratio_chunked_vs_full"],
                    max_abs_diff_vs_full=res["max_abs_diff_vs_full"],
                )
            )

    runtime = time.perf_counter() - start
    notes = [
        "Throughput and memory do not depend on weight values; random MoVQ weights and random N(0, 1) latents.",
        "Temporal layers are given random non-zero parameters (merges a = 0.5, noise on temporal weights) so the "
        "chunked-vs-full difference is not trivially 0 as it is at the identity initialisation; the difference is "
        "therefore an illustration of how far chunking can drift, not a number for trained weights.",
        (
            f"Chunked decodes stream pieces of {args.chunk_frames} frames through the decoder (each temporal conv "
            "holds the frames it still needs; every frame is computed once); the stages up to the last temporal "
            "attention run on the whole video."
            if args.chunk_method == "stream"
            else f"A chunk of {args.chunk_frames} frames is decoded with up to min(context_frames, radius) real "
            "neighbouring frames on each side, so the decoder holds at most chunk + 2 * context frames at once."
        ),
        "Ratios (x image, chunked / full) are measured in the same run and are what to compare across machines; "
        "absolute frames/s and MiB depend on the machine, threads and load.",
    ]
    if args.device == "cpu":
        notes.append(
            f"CPU: {threads} intra-op thread(s) (on a small shared machine more threads than free cores slow every "
            "variant down and add noise). Memory children run with MALLOC_MMAP_THRESHOLD_=65536 "
            f"({args.jobs} at a time; parallel children do not affect each other's peak RSS) and decode one frame "
            "before the measured decode; per-shape allocations of the measured batch size (oneDNN primitives, "
            "scratch buffers) still count."
        )
        if not peak_reset:
            notes.append(
                "WARNING: /proc/self/clear_refs could not reset the RSS high-water mark; peaks are upper bounds."
            )
    meta = dict(
        command=command_line("benchmarks/decoder_speed.py", argv),
        device_name=machine,
        threads=threads,
        date=timestamp(),
        runtime_s=runtime,
        notes=notes,
    )
    out = Path(args.out)
    paths = output_paths(out)
    write_csv(paths["csv"], CSV_COLUMNS, rows, lambda v: _fmt(v, 6))
    write_markdown(paths["md"], args, rows, meta)
    write_plot(paths["png"], args, rows)
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {runtime:.0f} s", flush=True)
    return paths


if __name__ == "__main__":
    main()
