"""Is the prompt's object visible in what ``ff generate`` writes with the tiny models (``make tiny-models``)?

Usage::

    python benchmarks/generate_quality.py [--keyframes CKPT] [--interpolation CKPT] [--decoder CKPT]
                                          [--prompts N] [--label NAME] [--out benchmarks/results/generate]

Every held-out caption of the bundled captioned shapes (test split) goes through the same code as ``ff generate``
(:func:`ff_lightning.pipeline.load_stages` + :func:`~ff_lightning.pipeline.generate_video`, seed = prompt index,
the models' own sampler settings), keyframes -> one interpolation pass -> video decoder. A held-out single-frame
attribute classifier (:func:`~ff_lightning.evaluation.shapes_classifier.ensure_attribute_classifier` with one frame:
trained on random frames of the train clips, never on generated frames) then reads every output frame and says
whether it finds the caption's colour and shape. Reported per frame kind (keyframes / interpolated frames / all),
as the mean over prompts of the per-prompt hit rate, with a 95% bootstrap interval over prompts, next to
the same classifier on the real test clips' frames (the ceiling) and chance (1/7 colour, 1/3 shape).

Without checkpoints the tiny ones (``$FF_CACHE_DIR/models/tiny_pipeline``) are used; a missing one names the make
target that trains it. Writes ``PREFIX.md``, ``PREFIX.csv`` (one line per frame kind) and ``PREFIX.png`` (real and
generated frames of the first prompts, keyframes marked).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, cpu_name, output_paths, timestamp, write_csv  # noqa: E402

from ff_lightning.checkpoints import sha256_file  # noqa: E402
from ff_lightning.io import atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = {"source": "bundled_shapes", "size": [32, 32]}
KINDS = ("keyframes", "interpolated", "all")
CHANCE = {"colour": 1 / 7, "shape": 1 / 3}
ATTRS = (*CHANCE, "both", "change")
CLIP_ATTRS = ("colour", "shape", "motion")  # the clip classifier's attributes (motion chance 1/4)


def bootstrap(values: np.ndarray) -> tuple[float, float, float]:
    """Mean of ``values`` (one per prompt) and its 95% interval over prompts: the project's studentized bootstrap
    (:func:`ff_lightning.metrics.bootstrap.bootstrap_ci`); the Wilson interval when every value is 0 or 1 (all
    prompts' frames alike), which does not collapse to a point when every prompt scores 1."""
    from ff_lightning.metrics.bootstrap import bootstrap_ci

    binary = bool(np.all((values == 0) | (values == 1)))
    ci = bootstrap_ci(values, n_boot=2000, seed=0, proportion=binary)
    return float(ci.mean), float(ci.low), float(ci.high)


def shown_path(path: str) -> str:
    """``path`` with the cache folder written as ``$FF_CACHE_DIR`` (the tables are read on other machines)."""
    from ff_lightning.paths import cache_dir

    root = str(cache_dir())
    return "$FF_CACHE_DIR" + path[len(root) :] if path.startswith(root + "/") else path


def test_clips(frames: int) -> tuple[list[str], torch.Tensor]:
    """Captions and the first ``frames`` frames ``(N, frames, 3, 32, 32)`` in [-1, 1] of the held-out clips."""
    from ff_lightning.data import DataConfig, build_dataset

    cfg = DataConfig(source="bundled_shapes", size=[32, 32], num_frames=max(frames, 16), stride=1, random_crop=False,
                     random_start=False, eval_start="first")  # fmt: skip
    ds = build_dataset(cfg, "test")
    items = [ds[i] for i in range(len(ds))]
    return [s["caption"] for s in items], torch.stack([s["video"][:frames] for s in items])


def _to32(frames: torch.Tensor) -> torch.Tensor:
    """Frames ``(T, 3, H, W)`` at the classifiers' 32x32 (unchanged when already that size)."""
    if frames.shape[-2:] != (32, 32):
        frames = torch.nn.functional.interpolate(frames, size=(32, 32), mode="bilinear", antialias=True)
    return frames


def frame_hits(model: Any, frames: torch.Tensor, caption: str) -> dict[str, np.ndarray]:
    """Per frame of ``frames`` ``(T, 3, H, W)``: does the one-frame classifier find the caption's colour / shape
    (``colour``, ``shape``, ``both``: 0 / 1), and ``change``: the mean absolute difference to the previous frame on
    [0, 1] pixel values (NaN for the first frame)."""
    from ff_lightning.evaluation.shapes_classifier import attribute_hits

    frames = _to32(frames)
    hits = attribute_hits(model, frames[:, None], [caption] * len(frames))
    out = {k: hits[k].numpy() for k in CHANCE}
    out["both"] = out["colour"] * out["shape"]
    change = (frames[1:] - frames[:-1]).abs().mean(dim=(1, 2, 3)).numpy() / 2  # on [0, 1] pixel values
    out["change"] = np.concatenate([[np.nan], change])  # frame j: its mean |difference| to frame j - 1
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keyframes", help="keyframes checkpoint (default: the tiny cached one)")
    p.add_argument("--interpolation", help="interpolation checkpoint (default: the tiny cached one)")
    p.add_argument("--decoder", help="video-decoder checkpoint (default: the tiny cached one)")
    p.add_argument("--prompts", type=int, default=0, help="first N held-out captions (default 0: all)")
    p.add_argument("--label", default="", help="names this run in the table (e.g. the interpolation recipe)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generate"), help="output prefix")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    from ff_lightning.evaluation.shapes_classifier import attribute_hits, ensure_attribute_classifier
    from ff_lightning.pipeline import GenerateOptions, generate_video, load_stages
    from ff_lightning.tiny_models import TARGETS, find_tiny_checkpoints, tiny_dir

    t_start = time.perf_counter()
    given = {"keyframes": args.keyframes, "interpolation": args.interpolation, "decoder": args.decoder}
    tiny = find_tiny_checkpoints() if None in given.values() else {}
    ckpts: dict[str, str] = {}
    for stage, path in given.items():
        path = path or (str(tiny[stage]) if tiny.get(stage) else None)
        if path is None:
            raise SystemExit(f"no {stage} checkpoint: pass --{stage} CKPT or run `{TARGETS[stage]}` first")
        ckpts[stage] = path
    stages = load_stages(ckpts["keyframes"], ckpts["interpolation"], ckpts["decoder"])
    classifier = ensure_attribute_classifier(DATA, frames=1, stride=1)
    kf = stages.keyframes
    step = getattr(kf, "default_frame_step", None) or kf.m.sample_frame_step or kf.cfg.data.stride  # plain / system
    k_frames, k_stride = int(kf.num_frames), max(1, round(float(step)))
    clip_classifier = ensure_attribute_classifier(DATA, frames=k_frames, stride=k_stride)  # make compare-temporal's

    captions, real_all = test_clips(max(16, (k_frames - 1) * k_stride + 1))
    clip_hits = {name: {a: [] for a in CLIP_ATTRS} for name in ("generated", "real", "movq")}
    if args.prompts > 0:
        captions = captions[: args.prompts]
    per_prompt: dict[str, dict[str, list[float]]] = {k: {a: [] for a in ATTRS} for k in KINDS}
    real_rate: dict[str, list[float]] = {a: [] for a in ATTRS}
    movq_rate: dict[str, list[float]] = {a: [] for a in ATTRS}
    shown: list[tuple[str, torch.Tensor, torch.Tensor, np.ndarray]] = []
    frames_per_video = 0
    for i, caption in enumerate(captions):
        result = generate_video(stages, caption, GenerateOptions(seed=i, progress=False))
        frames = result.frames  # (T, 3, H, W) in [-1, 1]
        t = frames.shape[0]
        frames_per_video = t
        step = (t - 1) // max(1, result.num_keyframes - 1)
        is_key = np.zeros(t, bool)
        is_key[::step] = True
        hits = frame_hits(classifier, frames, caption)
        for attr, h in hits.items():
            per_prompt["keyframes"][attr].append(float(np.nanmean(h[is_key])))
            if (~is_key).any():
                per_prompt["interpolated"][attr].append(float(np.nanmean(h[~is_key])))
            per_prompt["all"][attr].append(float(np.nanmean(h)))
        real_hits = frame_hits(classifier, real_all[i][:t], caption)
        with torch.no_grad():  # what the latent space can show: the real frames through the image MoVQ
            recon = kf.movq.decode(kf.movq.encode(real_all[i][:t]), num_frames=1).float().clamp(-1, 1)
        for attr, h in frame_hits(classifier, recon, caption).items():
            movq_rate[attr].append(float(np.nanmean(h)))
        for name, clip in (
            ("generated", frames[is_key]),
            ("real", real_all[i][: (k_frames - 1) * k_stride + 1 : k_stride]),
            ("movq", recon[: (k_frames - 1) * k_stride + 1 : k_stride]),
        ):
            if clip.shape[0] == k_frames:
                got = attribute_hits(clip_classifier, _to32(clip)[None], [caption])
                for attr in CLIP_ATTRS:
                    clip_hits[name][attr].append(float(got[attr][0]))
        for attr, h in real_hits.items():
            real_rate[attr].append(float(np.nanmean(h)))
        if len(shown) < 4:
            shown.append((caption, real_all[i][:t], frames, is_key))
        print(f"[{i + 1}/{len(captions)}] {caption}: colour {hits['colour'].mean():.2f} shape {hits['shape'].mean():.2f}"
              f" ({time.perf_counter() - t_start:.0f} s)", flush=True)  # fmt: skip

    rows: list[dict[str, Any]] = []
    named = {"real": "real held-out clip (ceiling)", "movq": "real clip through the image MoVQ (latent-space ceiling)"}
    for kind in (*KINDS, "real", "movq"):
        rates = {"real": real_rate, "movq": movq_rate}.get(kind) or per_prompt[kind]
        if not rates["colour"]:
            continue
        row: dict[str, Any] = {"label": args.label, "frames": named.get(kind, kind), "prompts": len(rates["colour"])}
        for attr in ATTRS:
            values = np.asarray(rates[attr])
            if np.isnan(values).all():
                continue
            m, lo, hi = bootstrap(values)
            row.update({f"{attr}_acc": m, f"{attr}_lo": lo, f"{attr}_hi": hi})
        rows.append(row)

    clip_rows: list[dict[str, Any]] = []
    for name, what in (("generated", f"keyframes as one clip ({k_frames} frames)"),
                       ("real", f"real held-out clip, {k_frames} frames {k_stride} apart (ceiling)"),
                       ("movq", "the same through the image MoVQ (latent-space ceiling)")):  # fmt: skip
        if clip_hits[name]["colour"]:
            row = {"label": args.label, "frames": what, "prompts": len(clip_hits[name]["colour"])}
            for attr in CLIP_ATTRS:
                m, lo, hi = bootstrap(np.asarray(clip_hits[name][attr]))
                row.update({f"{attr}_acc": m, f"{attr}_lo": lo, f"{attr}_hi": hi})
            clip_rows.append(row)

    paths = output_paths(args.out)
    paths["md"].parent.mkdir(parents=True, exist_ok=True)
    names = [*ATTRS, "motion"]
    columns = ["label", "frames", "prompts"] + [f"{a}_{s}" for a in names for s in ("acc", "lo", "hi")]
    write_csv(
        paths["csv"],
        columns,
        [*rows, *clip_rows],
        lambda v: "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)),
    )
    weights = "\n".join(f"- {s}: `{shown_path(p)}` (sha256 {sha256_file(p)[:12]})" for s, p in ckpts.items())
    manifest = tiny_dir() / "manifest.json"
    note = f"- tiny-model manifest: `{shown_path(str(manifest))}`\n" if manifest.is_file() else ""
    table = ["| frames | prompts | colour found | shape found | colour and shape found | change from the previous "
             "frame |", "|---|---:|---|---|---|---|"]  # fmt: skip
    for r in rows:
        cells = [f"{r[f'{a}_acc']:.3f} [{r[f'{a}_lo']:.3f}, {r[f'{a}_hi']:.3f}]" if f"{a}_acc" in r else "-"
                 for a in ATTRS]  # fmt: skip
        table.append(f"| {r['frames']} | {r['prompts']} | " + " | ".join(cells) + " |")
    clip_table = ["| clip | prompts | colour found | shape found | motion direction found |", "|---|---:|---|---|---|"]
    for r in clip_rows:
        cells = [f"{r[f'{a}_acc']:.3f} [{r[f'{a}_lo']:.3f}, {r[f'{a}_hi']:.3f}]" for a in CLIP_ATTRS]
        clip_table.append(f"| {r['frames']} | {r['prompts']} | " + " | ".join(cells) + " |")
    md = f"""# Is the prompt's object visible in `ff generate`'s output?

Command: `{command_line("benchmarks/generate_quality.py", argv)}`
Device {cpu_name()}, torch {torch.__version__}, {timestamp()}, total runtime {time.perf_counter() - t_start:.0f} s.

Data: the held-out (test split) captions of the bundled captioned shapes, 32x32 px; seed = prompt index; every
output video has {frames_per_video} frames (keyframes -> one interpolation pass -> video decoder, the models' own
sampler settings: what `ff generate PROMPT` writes). Weights:
{weights}
{note}
A single-frame attribute classifier (trained once on random frames of the train clips, cached under
`$FF_CACHE_DIR/models/shapes_attributes-*`) reads every frame; a cell is the mean over prompts of the fraction of
that prompt's frames in which it finds the caption's colour / shape / both, with a 95% interval over prompts
(studentized bootstrap; Wilson when every prompt scores 0 or 1). Chance: colour {CHANCE["colour"]:.3f}, shape {CHANCE["shape"]:.3f}. The last two rows are the same
classifier on the first {frames_per_video} frames of the real held-out clip each caption describes, then on those
frames encoded and decoded by the stages' image MoVQ (what its latent space can show at best). *Change from the
previous frame*: mean absolute difference of each frame to the one before it on [0, 1] pixel values (frames of that
kind, from the second frame on; the real clips move slowly, so much more than theirs is flicker or noise).

{chr(10).join(table)}

The keyframes alone, as the clip `make compare-temporal` scores: its clip attribute classifier ({k_frames} frames
{k_stride} source frames apart, the same cached classifier) on the {k_frames} generated keyframes (after the video
decoder) and on the real clip; each prompt scores 0 or 1, Wilson intervals. Chance: colour 0.143, shape 0.333,
motion direction 0.250.

{chr(10).join(clip_table)}

Samples (first prompts; top row real, bottom row generated, keyframes framed in red): [{paths["png"].name}]({paths["png"].name})

![samples]({paths["png"].name})
"""
    atomic_write_text(paths["md"], md)
    write_grid(paths["png"], shown)
    print(md)
    return paths


def write_grid(path: Path, shown: list[tuple[str, torch.Tensor, torch.Tensor, np.ndarray]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ff_lightning.io import atomic_open

    if not shown:
        return
    t = shown[0][2].shape[0]
    fig, axes = plt.subplots(2 * len(shown), t, figsize=(t * 0.9, 2 * len(shown) * 0.95), squeeze=False)
    for r, (caption, real, gen, is_key) in enumerate(shown):
        for row, video in ((2 * r, real), (2 * r + 1, gen)):
            for j in range(t):
                ax = axes[row, j]
                ax.axis("off")
                if j < video.shape[0]:
                    ax.imshow(((video[j].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1))
                if row == 2 * r + 1 and is_key[j]:
                    ax.add_patch(
                        plt.Rectangle((-0.5, -0.5), 32, 32, fill=False, edgecolor="red", linewidth=2, clip_on=False)
                    )
        axes[2 * r, 0].set_title(f"real: {caption}", loc="left", fontsize=7)
        axes[2 * r + 1, 0].set_title("ff generate (tiny models)", loc="left", fontsize=7)
    fig.tight_layout(pad=0.2)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
