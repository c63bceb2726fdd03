"""Table 1 of the paper (UCF-101 zero-shot IS / FVD, MSR-VTT CLIPSIM) with our results beside the paper's rows.

:func:`render_table1` writes ``<out>.md``, ``<out>.csv`` and ``<out>.png`` (one horizontal bar chart per metric, our
bars with their 95% intervals). The paper's rows are data (``experiments/eval/paper_table1.yaml``, source noted
there). Our rows come from result files: results sharing a run name are merged into one row (IS and FVD from the
``ucf101`` result, CLIPSIM from the ``msrvtt`` one). Each of our rows says whether it is comparable to the paper
(released protocol, unmodified, evaluators as specified); offline results are listed in a separate section, never in
the paper's table.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ff_lightning.evaluation.results import repo_root
from ff_lightning.io import atomic_open, atomic_write_text

__all__ = ["TABLE1_METRICS", "load_paper_table", "our_rows", "render_table1"]

TABLE1_METRICS: tuple[str, ...] = ("is", "fvd", "clipsim")


def load_paper_table(path: str | Path | None = None) -> dict[str, Any]:
    """The paper's Table 1 rows and metric labels (default ``experiments/eval/paper_table1.yaml``)."""
    p = Path(path) if path is not None else repo_root() / "experiments" / "eval" / "paper_table1.yaml"
    data = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
    assert isinstance(data, dict)
    for row in data["rows"]:
        for m in TABLE1_METRICS:
            row.setdefault(m, None)
    data["_path"] = str(p)
    return data


def our_rows(results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(table rows, offline results)``: paper-benchmark results merged by run name; offline ones apart."""
    rows: dict[str, dict[str, Any]] = {}
    offline = []
    for r in results:
        if r.get("benchmark") == "offline":
            offline.append(r)
            continue
        name = r.get("run_name") or (r.get("generator") or {}).get("name") or "run"
        row = rows.setdefault(
            name,
            {
                "method": f"ours: {name}",
                "group": "ours",
                "metrics": {},
                "sources": [],
                "comparable": True,
                "notices": [],
            },
        )
        for m in TABLE1_METRICS:
            if m in r.get("metrics", {}):
                row["metrics"][m] = r["metrics"][m]
        row["sources"].append(
            f"{r.get('protocol', {}).get('full_name')} n={r.get('num_samples')} "
            f"({(r.get('generator') or {}).get('name')})"
        )
        row["comparable"] = row["comparable"] and bool(r.get("comparable_to_paper"))
        if not r.get("comparable_to_paper") and r.get("notice"):
            row["notices"].append(r["notice"])
    return list(rows.values()), offline


def _num(v: Any, digits: int) -> str:
    return "–" if v is None else f"{float(v):.{digits}f}"


_DIGITS = {"is": 3, "fvd": 3, "clipsim": 4}


def _ours_cell(m: dict[str, Any] | None, digits: int) -> str:
    if not m:
        return "–"
    if m.get("value") is None:
        return "unavailable"
    s = _num(m["value"], digits)
    if m.get("ci_low") is not None:
        s += f" [{_num(m['ci_low'], digits)}, {_num(m['ci_high'], digits)}]"
    return s


def render_table1(
    results: list[dict[str, Any]], out: str | Path | None = None, paper: dict[str, Any] | None = None
) -> list[Path]:
    """Write Table 1 as markdown, CSV and PNG (default ``benchmarks/results/eval/table1.*``); returns the paths."""
    paper = paper or load_paper_table()
    out = Path(out) if out is not None else repo_root() / "benchmarks" / "results" / "eval" / "table1"
    out.parent.mkdir(parents=True, exist_ok=True)
    labels = {m: paper["metrics"][m]["label"] for m in TABLE1_METRICS}
    arrows = {m: "↑" if paper["metrics"][m]["higher_is_better"] else "↓" for m in TABLE1_METRICS}
    ours, offline = our_rows(results)

    # markdown
    lines = [
        "# Table 1: text-to-video, UCF-101 zero-shot (IS, FVD) and MSR-VTT zero-shot (CLIPSIM)",
        "",
        f"Paper rows: {paper['source']}. Ours: value on all samples with its 95% interval in brackets "
        "(percentile bootstrap; see each result file for the method).",
        "",
    ]
    head = ["method", *[f"{labels[m]} {arrows[m]}" for m in TABLE1_METRICS], "source"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in paper["rows"]:
        note = f" ({row['note']})" if row.get("note") else ""
        cells = [row["method"] + note, *[_num(row.get(m), _DIGITS[m]) for m in TABLE1_METRICS], "paper"]
        lines.append("| " + " | ".join(cells) + " |")
    for row in ours:
        flag = "" if row["comparable"] else " (not comparable)"
        cells = [
            row["method"] + flag,
            *[_ours_cell(row["metrics"].get(m), _DIGITS[m]) for m in TABLE1_METRICS],
            "; ".join(row["sources"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    reasons = [
        (row["method"], m, row["metrics"][m]["reason"])
        for row in ours
        for m in TABLE1_METRICS
        if row["metrics"].get(m) and row["metrics"][m].get("value") is None
    ]
    if reasons:
        lines += ["", "Unavailable:"] + [f"- {who}, {m}: {why}" for who, m, why in reasons]
    notices = sorted({n for row in ours for n in row["notices"]})
    if notices:
        lines += ["", *[f"- {n}" for n in notices]]
    if offline:
        lines += ["", "## Offline (bundled data): NOT COMPARABLE TO THE PAPER", ""]
        for r in offline:
            ms = ", ".join(f"{k} {_ours_cell(v, 4)}" for k, v in r["metrics"].items())
            lines.append(f"- {r.get('run_name')} ({r['protocol']['full_name']}, n={r.get('num_samples')}): {ms}")
    md = out.with_suffix(".md")
    atomic_write_text(md, "\n".join(lines) + "\n")

    # csv
    buf = io.StringIO()
    w = csv.writer(buf)
    header = ["method", "group", "source", "comparable_to_paper"]
    for m in TABLE1_METRICS:
        header += [m, f"{m}_ci_low", f"{m}_ci_high"]
    w.writerow(header)
    for row in paper["rows"]:
        line: list[Any] = [row["method"], row.get("group"), "paper", True]
        for m in TABLE1_METRICS:
            line += [row.get(m), None, None]
        w.writerow(line)
    for row in ours:
        line = [row["method"], "ours", "; ".join(row["sources"]), row["comparable"]]
        for m in TABLE1_METRICS:
            mm = row["metrics"].get(m) or {}
            line += [mm.get("value"), mm.get("ci_low"), mm.get("ci_high")]
        w.writerow(line)
    csv_path = out.with_suffix(".csv")
    atomic_write_text(csv_path, buf.getvalue())
    return [md, csv_path, _plot(paper, ours, labels, arrows, out.with_suffix(".png"))]


def _plot(
    paper: dict[str, Any], ours: list[dict[str, Any]], labels: dict[str, str], arrows: dict[str, str], path: Path
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TABLE1_METRICS), figsize=(6 * len(TABLE1_METRICS), 0.4 * 20 + 1.5))
    colours = {"other": "#9e9e9e", "fusionframes": "#1f77b4", "ours": "#ff7f0e"}
    for ax, m in zip(axes, TABLE1_METRICS):
        names, vals, errs, cols = [], [], [], []
        for row in paper["rows"]:
            if row.get(m) is not None:
                names.append(row["method"])
                vals.append(float(row[m]))
                errs.append((0.0, 0.0))
                cols.append(colours.get(row.get("group"), "#9e9e9e"))
        for row in ours:
            mm = row["metrics"].get(m)
            if mm and mm.get("value") is not None:
                v = float(mm["value"])
                lo = v - float(mm["ci_low"]) if mm.get("ci_low") is not None else 0.0
                hi = float(mm["ci_high"]) - v if mm.get("ci_high") is not None else 0.0
                names.append(row["method"] + ("" if row["comparable"] else " *"))
                vals.append(v)
                errs.append((max(lo, 0.0), max(hi, 0.0)))
                cols.append(colours["ours"])
        y = list(range(len(names)))
        ax.barh(y, vals, color=cols)
        ours_y = [i for i, e in enumerate(errs) if e != (0.0, 0.0)]
        if ours_y:
            ax.errorbar(
                [vals[i] for i in ours_y],
                ours_y,
                xerr=[[errs[i][0] for i in ours_y], [errs[i][1] for i in ours_y]],
                fmt="none",
                ecolor="black",
                capsize=3,
            )
        ax.set_yticks(y, names, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{labels[m]} {arrows[m]}")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        "Table 1: paper (grey: other methods, blue: FusionFrames) and ours (orange, 95% intervals; * not comparable)",
        fontsize=9,
    )
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path
