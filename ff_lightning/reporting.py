"""Render sweep results as markdown, CSV and a quality-vs-parameters plot, with the paper's numbers beside ours.

Each metric of a row record is ``{"value": v, "ci_low": lo, "ci_high": hi, "n": n}`` (``value`` None when the metric
could not be measured, with a ``reason``). Markdown shows ``v [lo, hi]``; CSV has separate columns.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from ff_lightning.io import atomic_open, atomic_write_text

__all__ = ["render_tables", "format_metric"]


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
    w.writerow(header)
    for r in records:
        line: list[Any] = [r["row"], *[r["columns"].get(c) for c in cols]]
        n = None
        for m in metrics:
            mm = r["metrics"].get(m) or {}
            n = n or mm.get("n")
            line += [mm.get("value"), mm.get("ci_low"), mm.get("ci_high"), r["paper"].get(m)]
        line += [r.get("params"), r.get("params_paper"), r["paper"].get("params"), n, r.get("preset")]
        w.writerow(line)
    csv_path = out.with_suffix(".csv")
    atomic_write_text(csv_path, buf.getvalue())

    # Markdown
    lines = [f"# {sw.name}", ""]
    presets = sorted({r.get("preset") for r in records})
    lines.append(f"Ours: preset {', '.join(map(str, presets))}; values are means over held-out samples with bootstrap "
                 "95% confidence intervals in brackets. Paper: the published numbers (different data, weights and "
                 "scale: compare the ordering of rows, not absolute values).")
    if sw.paper_note:
        lines += ["", sw.paper_note.strip()]
    lines.append("")
    head = ["row", *short, *[f"{m} (ours)" for m in metrics], *[f"{m} (paper)" for m in metrics],
            "params (ours)", "params (paper preset)", "params (paper)"]
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
        cells += [_num(r["paper"].get(m)) for m in metrics]
        paper_params = r["paper"].get("params")
        cells += [_millions(r.get("params")), _millions(r.get("params_paper")),
                  str(paper_params) if paper_params is not None else "n/a"]
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
    md_path = out.with_suffix(".md")
    atomic_write_text(md_path, "\n".join(lines) + "\n")

    written = [md_path, csv_path]
    png = _plot(sw, records, out.with_suffix(".png"))
    if png:
        written.append(png)
    return written


def paired_difference(a: list[float], b: list[float], seed: int = 0) -> dict[str, float] | None:
    """Mean of ``a - b`` over the same samples with a percentile-bootstrap 95% interval (None if not paired)."""
    if not a or len(a) != len(b):
        return None
    from ff_lightning.metrics.functional import bootstrap_ci

    ci = bootstrap_ci([x - y for x, y in zip(a, b)], seed=seed)
    return {"value": ci.mean, "ci_low": ci.low, "ci_high": ci.high, "n": len(a)}


def _paired_section(sw: Any, records: list[dict[str, Any]]) -> list[str]:
    """Markdown table of each row minus the reference row, paired over the same held-out samples."""
    ref_name = getattr(sw, "reference_row", None)
    ref = next((r for r in records if r["row"] == ref_name), None)
    if ref is None:
        return []
    metrics = [m for m in sw.metrics if (ref["metrics"].get(m) or {}).get("per_sample")]
    if not metrics:
        return []
    better = getattr(sw, "higher_is_better", {}) or {}
    out = ["", f"Paired differences against **{ref['label']}** (same held-out samples; bootstrap 95% interval; "
           "an interval that excludes 0 is a difference these samples resolve):", ""]
    out.append("| row | " + " | ".join(f"Δ{m}" + (" (higher better)" if better.get(m) else " (lower better)"
                                            if m in better else "") for m in metrics) + " |")
    out.append("|" + "---|" * (len(metrics) + 1))
    for r in records:
        if r is ref:
            continue
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

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, use_paper in zip(axes, (False, True)):
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
    fig.suptitle(sw.name)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path
