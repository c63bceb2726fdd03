"""Render sweep results as markdown, CSV and a quality-vs-parameters plot, with the paper's numbers beside ours.

Each metric of a row record is ``{"value": v, "ci_low": lo, "ci_high": hi, "n": n}`` (``value`` None when the metric
could not be measured, with a ``reason``). Markdown shows ``v [lo, hi]``; CSV has separate columns.

Video samples: when row records list an artifact ``samples.npz`` (written by an evaluator into its artifacts folder:
``videos`` uint8 ``(N, T, H, W, 3)`` one clip per prompt, ``prompts`` ``(N,)`` str, optionally ``reference`` uint8
``(N, T, H, W, 3)``, the real clips the prompts describe, and ``fps``), the first prompts are also rendered side by side
(a column per row, the real clips first): ``<output>_samples.png`` (every frame of each clip in a strip),
``<output>_samples.gif`` and ``<output>_samples.mp4`` (the grid animated), linked from the markdown.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from ff_lightning.io import atomic_open, atomic_write_text

__all__ = ["render_tables", "format_metric", "render_samples"]

SAMPLES_ARTIFACT = "samples.npz"
SAMPLE_ROWS = 4  # prompts shown in the side-by-side samples
SAMPLE_SCALE = 2  # pixel upscaling of the sample grid


#: CSV columns describing what made each row (a record's ``setup``, ff_lightning.ablate_preflight.describe_setup)
SETUP_COLUMNS = (
    "steps",
    "train_data",
    "train_frames",
    "test_data",
    "test_frames",
    "test_cap",
    "size",
    "movq",
    "movq_sha256",
)


def _scrub(text: str) -> str:
    from ff_lightning.ablate_preflight import scrub_paths

    return scrub_paths(text)


def _distinct_setups(records: list[dict[str, Any]]) -> list[tuple[list[str], dict[str, Any]]]:
    """Rows grouped by their setup without the steps: ``[(row labels, setup), ...]``, in first-seen order."""
    groups: list[tuple[list[str], dict[str, Any]]] = []
    for r in records:
        s = {k: v for k, v in (r.get("setup") or {}).items() if k != "steps"}
        if not s:
            continue
        for names, seen in groups:
            if seen == s:
                names.append(r["label"])
                break
        else:
            groups.append(([r["label"]], s))
    return groups


def _setup_sentence(s: dict[str, Any], short: bool = False) -> str:
    sha = (s.get("movq_sha256") or "")[:12]
    movq = f"image MoVQ {s.get('movq')}" + (f" (sha256 {sha})" if sha else "")
    if short:
        return (
            f"train {s.get('train_data')} ({s.get('train_frames')} frames); test {s.get('test_data')} "
            f"({s.get('test_frames')} frames); {s.get('size')} px; {movq}"
        )
    cap = f"capped at {s['test_cap']} by max_samples" if s.get("test_cap") else "every listed sequence"
    return (
        f"fine-tuned on {s.get('train_data')}, {s.get('train_frames')}-frame clips; tested on "
        f"{s.get('test_data')}, {s.get('test_frames')}-frame clips, n = {s.get('test_sequences')} sequences "
        f"({cap}); crop {s.get('size')} px; {movq}"
    )


def setup_lines(records: list[dict[str, Any]]) -> list[str]:
    """Markdown lines saying what made the rows: data (train / test source and frame counts), size, preset, steps
    and the image MoVQ (see :data:`SETUP_COLUMNS`); empty when records carry no ``setup``."""
    groups = _distinct_setups(records)
    if not groups:
        return []
    steps: dict[Any, list[str]] = {}
    for r in records:
        steps.setdefault((r.get("setup") or {}).get("steps"), []).append(r["label"])
    step_text = "; ".join(
        str(k) if len(steps) == 1 else f"{k} ({v[0] if len(v) == 1 else f'{len(v)} rows'})" for k, v in steps.items()
    )
    presets = ", ".join(sorted({str(r.get("preset")) for r in records}))
    lines = ["", f"Setup: preset {presets}; training steps {step_text}."]
    for names, s in groups:
        who = "" if len(groups) == 1 else f" ({', '.join(names)})"
        lines.append(f"- Data and weights{who}: {_setup_sentence(s)}.")
    return lines


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return f"{v:,}"
    av = abs(float(v))
    if av != 0 and (av < 1e-3 or av >= 1e4):
        return f"{float(v):.3e}"
    return f"{float(v):.{digits}f}"


def format_metric(m: dict[str, Any] | None) -> str:
    if not m or m.get("value") is None:
        return "n/a"
    s = _num(m["value"])
    if m.get("ci_low") is not None and m.get("ci_high") is not None:
        s += f" [{_num(m['ci_low'])}, {_num(m['ci_high'])}]"
    return s


def _millions(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def render_tables(sw: Any, records: list[dict[str, Any]]) -> list[Path]:
    """Write ``<sw.output>.md``, ``.csv`` and ``.png``; returns the paths written."""
    out = Path(sw.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    metrics = list(sw.metrics)
    cols = list(sw.columns)
    short = [c.split(".")[-1] for c in cols]

    # CSV: one row per sweep row; ours, CI bounds, paper value per metric; params at the run and paper presets
    buf = io.StringIO()
    w = csv.writer(buf)
    header = ["row", *short]
    for m in metrics:
        header += [m, f"{m}_ci_low", f"{m}_ci_high", f"{m}_paper"]
    header += ["params", "params_paper_preset", "params_paper", "n", "preset"]
    setup_cols = list(SETUP_COLUMNS) if any(r.get("setup") for r in records) else []
    header += setup_cols
    w.writerow(header)
    for r in records:
        line: list[Any] = [r["row"], *[r["columns"].get(c) for c in cols]]
        n = None
        for m in metrics:
            mm = r["metrics"].get(m) or {}
            n = n or mm.get("n")
            line += [mm.get("value"), mm.get("ci_low"), mm.get("ci_high"), r["paper"].get(m)]
        line += [r.get("params"), r.get("params_paper"), r["paper"].get("params"), n, r.get("preset")]
        line += [(r.get("setup") or {}).get(c) for c in setup_cols]
        w.writerow(line)
    csv_path = out.with_suffix(".csv")
    atomic_write_text(csv_path, _scrub(buf.getvalue()))

    # Markdown
    lines = [f"# {sw.name}", ""]
    presets = sorted({r.get("preset") for r in records})
    lines.append(
        f"Ours: preset {', '.join(map(str, presets))}; values are means over held-out samples with bootstrap "
        "95% confidence intervals in brackets. Paper: the published numbers (different data, weights and "
        "scale: compare the ordering of rows, not absolute values)."
    )
    lines += setup_lines(records)
    if sw.paper_note:
        lines += ["", sw.paper_note.strip()]
    lines.append("")
    has_paper = any(r.get("paper") for r in records)  # no paper numbers at all: no paper columns
    head = [
        "row",
        *short,
        *[f"{m} (ours)" for m in metrics],
        *[f"{m} (paper)" for m in metrics if has_paper],
        "params (ours)",
        "params (paper preset)",
        *(["params (paper)"] if has_paper else []),
    ]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    reasons: dict[str, str] = {}
    for r in records:
        cells = [r["label"], *[str(r["columns"].get(c)) for c in cols]]
        for m in metrics:
            mm = r["metrics"].get(m)
            cells.append(format_metric(mm))
            if mm and mm.get("value") is None and mm.get("reason"):
                reasons[m] = mm["reason"]
        cells += [_num(r["paper"].get(m)) for m in metrics if has_paper]
        paper_params = r["paper"].get("params")
        cells += [_millions(r.get("params")), _millions(r.get("params_paper"))]
        cells += [str(paper_params) if paper_params is not None else "n/a"] if has_paper else []
        lines.append("| " + " | ".join(cells) + " |")
    if reasons:
        lines += ["", "Columns reported as n/a:"]
        lines += [f"- **{m}**: {why}" for m, why in reasons.items()]
    lines += _paired_section(sw, records)
    extra = [r for r in records if r.get("extra")]
    if extra:
        lines += ["", "Extra figures:"]
        for r in extra:
            lines.append(f"- {r['label']}: " + ", ".join(f"{k} {_num(v)}" for k, v in r["extra"].items()))
    given = [r for r in records if r.get("checkpoint")]
    if given:
        lines += ["", "Rows evaluated from given checkpoints (not trained here):"]
        lines += [f"- {r['label']}: `{r['checkpoint']}`" for r in given]
    samples = render_samples(records, out.with_name(out.name + "_samples"))
    if samples:
        lines += [
            "",
            f"Samples side by side (first prompts, fixed seeds; columns: {', '.join(samples['columns'])}): "
            + ", ".join(f"[{p.name}]({p.name})" for p in samples["paths"]),
            "",
            f"![samples]({samples['paths'][0].name})",
        ]
    md_path = out.with_suffix(".md")
    atomic_write_text(md_path, _scrub("\n".join(lines) + "\n"))

    written = [md_path, csv_path, *(samples["paths"] if samples else [])]
    png = _plot(sw, records, out.with_suffix(".png"))
    if png:
        written.append(png)
    return written


def _load_samples(record: dict[str, Any]) -> dict[str, Any] | None:
    path = (record.get("artifacts") or {}).get(SAMPLES_ARTIFACT)
    if not path or not Path(path).is_file():
        return None
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _fit_clips(clips: list[Any], n: int) -> list[Any]:
    """Clips ``(N_i, T_i, H_i, W_i, 3)`` uint8 -> the first ``n`` of each at a common size and length
    ``(n, T, H, W, 3)`` (nearest-neighbour resize; shorter clips hold their last frame)."""
    import numpy as np
    from PIL import Image

    h = max(c.shape[2] for c in clips)
    w = max(c.shape[3] for c in clips)
    t = max(c.shape[1] for c in clips)
    out = []
    for c in clips:
        c = c[:n]
        if c.shape[2:4] != (h, w):
            c = np.stack(
                [np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.NEAREST)) for f in v]) for v in c]
            )
        if c.shape[1] < t:
            c = np.concatenate([c, np.repeat(c[:, -1:], t - c.shape[1], axis=1)], axis=1)
        out.append(c)
    return out


def render_samples(records: list[dict[str, Any]], prefix: Path) -> dict[str, Any] | None:
    """Side-by-side samples of the rows that have a ``samples.npz`` artifact (see the module docstring).

    Writes ``<prefix>.png`` (rows: prompts; columns: the real clips, then one per row record; each cell the clip's
    frames left to right), ``<prefix>.gif`` and ``<prefix>.mp4`` (the same grid, one clip frame per video frame).
    Returns ``{"paths": [...], "columns": [...]}``, or None when no record has samples.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    loaded = [(r, _load_samples(r)) for r in records]
    loaded = [(r, s) for r, s in loaded if s is not None and s.get("videos") is not None and len(s["videos"])]
    if not loaded:
        return None
    n = min(SAMPLE_ROWS, *(len(s["videos"]) for _, s in loaded))
    prompts = [str(p) for p in loaded[0][1].get("prompts", [""] * n)[:n]]
    columns, clips = [], []
    ref = next((s["reference"] for _, s in loaded if s.get("reference") is not None and len(s["reference"]) >= n), None)
    if ref is not None:
        columns.append("real (held-out)")
        clips.append(ref)
    for r, s in loaded:
        columns.append(str(r["row"]))  # short: the markdown names the rows
        clips.append(s["videos"])
    clips = _fit_clips(clips, n)  # each (n, T, H, W, 3)
    fps = float(next((s["fps"] for _, s in loaded if s.get("fps") is not None), 4.0))
    t, h, w = clips[0].shape[1:4]
    k = SAMPLE_SCALE
    pad, head, label_h = 4, 14, 12

    def text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], s: str, width: int) -> None:
        max_chars = max(4, width // 6)
        draw.text(xy, s if len(s) <= max_chars else s[: max_chars - 1] + "~", fill=(0, 0, 0))

    def grid(frames: list[int]) -> Image.Image:
        """Rows = prompts; columns = clips; each cell shows ``frames`` of the clip left to right."""
        cell_w, cell_h = len(frames) * w * k, h * k
        width = pad + len(clips) * (cell_w + pad)
        height = head + n * (label_h + cell_h + pad) + pad
        img = Image.new("RGB", (width, height), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        for j, name in enumerate(columns):
            text(draw, (pad + j * (cell_w + pad), 2), name, cell_w)
        for i in range(n):
            y = head + i * (label_h + cell_h + pad)
            text(draw, (pad, y), prompts[i], width - 2 * pad)
            for j, c in enumerate(clips):
                strip = np.concatenate([c[i, f] for f in frames], axis=1)  # H (F W) 3
                tile = Image.fromarray(strip).resize((strip.shape[1] * k, strip.shape[0] * k), Image.NEAREST)
                img.paste(tile, (pad + j * (cell_w + pad), y + label_h))
        return img

    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = [prefix.with_name(prefix.name + ext) for ext in (".png", ".gif", ".mp4")]
    with atomic_open(paths[0], "wb") as f:
        grid(list(range(t))).save(f, format="PNG")
    frames = [grid([f]) for f in range(t)]
    with atomic_open(paths[1], "wb") as f:
        frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    from ff_lightning.data.video_io import write_video

    video = np.stack([np.asarray(fr) for fr in frames])
    video = np.pad(video, ((0, 0), (0, video.shape[1] % 2), (0, video.shape[2] % 2), (0, 0)), constant_values=255)
    tmp = paths[2].with_name(f".{paths[2].name}.tmp.mp4")
    try:
        write_video(tmp, video, fps)
        tmp.replace(paths[2])
    finally:
        tmp.unlink(missing_ok=True)
    return {"paths": paths, "columns": columns}


def paired_difference(a: list[float], b: list[float], seed: int = 0) -> dict[str, float] | None:
    """Mean of ``a - b`` over the same samples with a percentile-bootstrap 95% interval (None if not paired)."""
    if not a or len(a) != len(b):
        return None
    from ff_lightning.metrics.functional import bootstrap_ci

    ci = bootstrap_ci([x - y for x, y in zip(a, b)], seed=seed)
    return {"value": ci.mean, "ci_low": ci.low, "ci_high": ci.high, "n": len(a)}


def _paired_section(sw: Any, records: list[dict[str, Any]]) -> list[str]:
    """Markdown tables of each row minus the reference row, then of each listed pair ``[a, b]`` (``b - a``), paired
    over the same held-out samples."""
    ref_names = getattr(sw, "reference_row", None)
    ref_names = [ref_names] if isinstance(ref_names, str) else list(ref_names or [])
    ref = next((r for name in ref_names for r in records if r["row"] == name), None)  # the first one present
    out: list[str] = []
    if ref is not None:
        out += _paired_table(
            sw,
            ref,
            [r for r in records if r is not ref],
            f"Paired differences against **{ref['label']}** (same held-out samples; bootstrap 95% interval; "
            "an interval that excludes 0 is a difference these samples resolve):",
        )
    by_name = {r["row"]: r for r in records}
    for a, b in [tuple(p) for p in getattr(sw, "pairs", None) or []]:
        if a in by_name and b in by_name:
            out += _paired_table(
                sw,
                by_name[a],
                [by_name[b]],
                f"Paired differences **{by_name[b]['label']}** minus **{by_name[a]['label']}** (same held-out "
                "samples; bootstrap 95% interval; an interval that excludes 0 is a difference these samples resolve):",
            )
    return out


def _paired_table(sw: Any, ref: dict[str, Any], others: list[dict[str, Any]], title: str) -> list[str]:
    """One paired table: a line per row of ``others``, each metric minus ``ref``'s on the same samples."""
    metrics = [m for m in sw.metrics if (ref["metrics"].get(m) or {}).get("per_sample")]
    if not metrics or not others:
        return []
    better = getattr(sw, "higher_is_better", {}) or {}
    out = ["", title, ""]
    out.append(
        "| row | "
        + " | ".join(
            f"Δ{m}" + (" (higher better)" if better.get(m) else " (lower better)" if m in better else "")
            for m in metrics
        )
        + " |"
    )
    out.append("|" + "---|" * (len(metrics) + 1))
    for r in others:
        cells = []
        for m in metrics:
            d = paired_difference((r["metrics"].get(m) or {}).get("per_sample") or [], ref["metrics"][m]["per_sample"])
            cells.append(format_metric(d) if d else "n/a")
        out.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return out


def _plot(sw: Any, records: list[dict[str, Any]], path: Path) -> Path | None:
    metric = sw.plot_metric or (sw.metrics[0] if sw.metrics else None)
    pts = [r for r in records if (r["metrics"].get(metric) or {}).get("value") is not None]
    if not metric or not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (False, True) if any(r["paper"].get(metric) is not None for r in pts) else (False,)  # no paper: ours
    fig, axes = plt.subplots(1, len(panels), figsize=(12 if len(panels) > 1 else 9, 4.5), squeeze=False)
    for ax, use_paper in zip(axes[0], panels):
        for r in pts:
            m = r["metrics"][metric]
            x = (r.get("params_paper") if use_paper else r.get("params")) or 0
            y = r["paper"].get(metric) if use_paper else m["value"]
            if y is None:
                continue
            yerr = None
            if not use_paper and m.get("ci_low") is not None:
                yerr = [[m["value"] - m["ci_low"]], [m["ci_high"] - m["value"]]]
            ax.errorbar([x / 1e6], [y], yerr=yerr, fmt="o", capsize=3)
            ax.annotate(r["label"], (x / 1e6, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("parameters (M)" + (" at the paper preset" if use_paper else " (ours)"))
        ax.set_ylabel(metric)
        ax.set_title(f"{'paper' if use_paper else 'ours'}: {metric} vs parameters")
        ax.grid(alpha=0.3)
    setups = _distinct_setups(records)
    import textwrap

    sub = textwrap.fill(_setup_sentence(setups[0][1], short=True), 150) if len(setups) == 1 else ""
    fig.suptitle(sw.name + (f"\n{sub}" if sub else ""), fontsize=9)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path
