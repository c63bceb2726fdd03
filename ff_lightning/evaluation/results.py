"""Benchmark result files: what they hold, where they go, and side-by-side comparison.

A result is one JSON file (written atomically), by default ``benchmarks/results/eval/<protocol>_v<N>/<run>.json``::

    schema                 "ff_lightning.eval_result/1"
    benchmark, run_name    e.g. "ucf101", "test_shapes"
    protocol               name, version, path, overrides, released, content_sha256, resolved (the full protocol)
    comparable_to_paper    true only for an unmodified released protocol that says so
    notice                 what the numbers may be compared with
    generator              identity: name, kind, parameters; checkpoint path and sha256 for checkpoints
    seed, num_samples      as generated
    samples                sample folder and the generation report (reused / generated / calls / seconds)
    evaluators             per metric: kind, evaluator entry, WeightsInfo.as_dict() of every file (sha256, pinned,
                           changed), preprocessing details; or {"available": false, "reason": ...}
    weights_changed        true when any evaluator file changed since its first use (ledger)
    metrics                per metric: value, ci_low, ci_high, n, ci_method, ... (see :mod:`.uncertainty`);
                           unavailable metrics: value null with the reason
    per_sample             per-sample values of per-sample metrics: {"ids": [...], "values": [...]}
    reference              real-statistics cache records (FVD / FID)
    timestamps             started, finished (UTC ISO 8601), generation_s, evaluation_s
    package                ff_lightning version, git commit (read from .git), torch, python, platform
"""

from __future__ import annotations

import json
import math
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ff_lightning.io import atomic_write_json
from ff_lightning.metrics.bootstrap import bootstrap_ci
from ff_lightning.paths import portable_text

__all__ = [
    "RESULT_SCHEMA",
    "compare_results",
    "default_result_path",
    "intervals_overlap",
    "load_result",
    "now_iso",
    "package_info",
    "repo_root",
    "write_result",
]

RESULT_SCHEMA = "ff_lightning.eval_result/1"


def now_iso() -> str:
    """Current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def repo_root() -> Path:
    """The checkout holding this package (where ``benchmarks/`` lives), else the current directory."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "benchmarks").is_dir() else Path.cwd()


def default_result_path(protocol_full_name: str, run_name: str) -> Path:
    """``benchmarks/results/eval/<protocol>/<run>.json`` under :func:`repo_root`."""
    return repo_root() / "benchmarks" / "results" / "eval" / protocol_full_name / f"{run_name}.json"


def _git_commit(root: Path) -> str | None:
    """The checked-out commit, read from ``.git`` files (no git command is run)."""
    git = root / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(None, 1)[1]
        ref_file = git / ref
        if ref_file.is_file():
            return ref_file.read_text().strip()
        packed = git / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
    except OSError:
        return None
    return None


def package_info() -> dict[str, Any]:
    """Versions that produced a result."""
    import torch

    import ff_lightning

    try:
        from importlib.metadata import version

        dist = version("ff_lightning")
    except Exception:
        dist = None
    return {
        "ff_lightning": ff_lightning.__version__,
        "ff_lightning_dist": dist,
        "git_commit": _git_commit(Path(__file__).resolve().parents[2]),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf floats -> None, numpy scalars -> Python, paths -> str; machine folders in strings made
    portable (:func:`ff_lightning.paths.portable_text`: results are committed, files are identified by sha256)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (Path, str)):
        return portable_text(str(obj))
    return obj


def write_result(record: dict[str, Any], path: str | Path) -> Path:
    """Write a result atomically (temporary file + rename); returns the path."""
    return atomic_write_json(path, _clean(record))


def load_result(path: str | Path) -> dict[str, Any]:
    """Read a result file; raises ``ValueError`` for a file that is not one."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"result file not found: {p}")
    data = json.loads(p.read_text())
    if not isinstance(data, dict) or data.get("schema") != RESULT_SCHEMA:
        raise ValueError(f"{p} is not an ff_lightning evaluation result (schema {RESULT_SCHEMA})")
    data["_path"] = str(p)
    return data


def intervals_overlap(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool | None:
    """Whether two metric records' intervals overlap (None when either lacks an interval)."""
    if not a or not b:
        return None
    vals = [a.get("ci_low"), a.get("ci_high"), b.get("ci_low"), b.get("ci_high")]
    if any(v is None for v in vals):
        return None
    return bool(a["ci_low"] <= b["ci_high"] and b["ci_low"] <= a["ci_high"])


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    av = abs(float(v))
    if av != 0 and (av < 1e-3 or av >= 1e5):
        return f"{float(v):.3e}"
    return f"{float(v):.{digits}f}"


def _cell(m: dict[str, Any] | None) -> str:
    if not m:
        return "-"
    if m.get("value") is None:
        return "unavailable"
    s = _fmt(m["value"])
    if m.get("ci_low") is not None:
        s += f" [{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]"
    rep = m.get("repeats")
    if rep:
        s += f" ({_fmt(rep['mean'])}±{_fmt(rep['std'])} over {rep['k']})"
    return s


def paired_difference(
    a: dict[str, Any], b: dict[str, Any], metric: str, *, alpha: float = 0.05, n_boot: int = 1000
) -> dict[str, Any] | None:
    """Mean of ``b - a`` over samples present in both results' per-sample values (matched by id), bootstrap CI."""
    pa, pb = (a.get("per_sample") or {}).get(metric), (b.get("per_sample") or {}).get(metric)
    if not pa or not pb:
        return None
    va = dict(zip(pa["ids"], pa["values"]))
    common = [(i, v) for i, v in zip(pb["ids"], pb["values"]) if i in va]
    if len(common) < 2:
        return None
    diffs = np.array([v - va[i] for i, v in common], dtype=np.float64)
    ci = bootstrap_ci(diffs, n_boot=n_boot, alpha=alpha, seed=0)
    return {
        "mean": ci.mean,
        "ci_low": ci.low,
        "ci_high": ci.high,
        "n": len(common),
        "excludes_zero": bool(ci.low > 0 or ci.high < 0),
    }


def _label(r: dict[str, Any]) -> str:
    gen = r.get("generator") or {}
    proto = r.get("protocol", {}).get("full_name")
    who = [] if gen.get("name") == r.get("run_name") else [str(gen.get("name"))]
    if gen.get("checkpoint_sha256"):
        who.append(f"checkpoint sha256 {gen['checkpoint_sha256'][:12]}")
    n = f"n={r.get('num_samples')}"
    return f"{r.get('run_name')} ({', '.join([*who, str(proto), n])})"


def compare_results(a: dict[str, Any], b: dict[str, Any]) -> str:
    """A side-by-side text table of two results: values with intervals, overlap, paired differences, caveats."""
    lines = [f"A: {a.get('_path', '')}  {_label(a)}", f"B: {b.get('_path', '')}  {_label(b)}", ""]
    pa, pb = a.get("protocol", {}), b.get("protocol", {})
    if pa.get("content_sha256") != pb.get("content_sha256"):
        lines.append(
            f"warning: different protocols ({pa.get('full_name')} overrides {pa.get('overrides')} vs "
            f"{pb.get('full_name')} overrides {pb.get('overrides')}): the numbers are not directly comparable"
        )
    for tag, r in (("A", a), ("B", b)):
        if r.get("weights_changed"):
            lines.append(f"warning: {tag} used an evaluator file that changed since its first use (see evaluators)")
    ea, eb = a.get("evaluators", {}), b.get("evaluators", {})
    for m in sorted(set(ea) & set(eb)):
        ha = [w.get("sha256") for w in ea[m].get("weights", [])]
        hb = [w.get("sha256") for w in eb[m].get("weights", [])]
        if ha and hb and ha != hb:
            lines.append(f"warning: {m} evaluated with different weight files (sha256 {ha} vs {hb})")
    if lines[-1] != "":
        lines.append("")
    metrics = list(dict.fromkeys([*a.get("metrics", {}), *b.get("metrics", {})]))
    rows = [("metric", "A", "B", "intervals overlap", "paired B - A")]
    for m in metrics:
        ma, mb = a.get("metrics", {}).get(m), b.get("metrics", {}).get(m)
        ov = intervals_overlap(ma, mb)
        pdiff = paired_difference(a, b, m)
        if pdiff is None:
            ptxt = "n/a (no shared per-sample values)"
        else:
            verdict = "differs" if pdiff["excludes_zero"] else "CI includes 0"
            ptxt = f"{pdiff['mean']:+.4f} [{pdiff['ci_low']:+.4f}, {pdiff['ci_high']:+.4f}] n={pdiff['n']} ({verdict})"
        rows.append((m, _cell(ma), _cell(mb), "n/a" if ov is None else ("yes" if ov else "no"), ptxt))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    reasons = [
        (tag, m, r["metrics"][m].get("reason"))
        for tag, r in (("A", a), ("B", b))
        for m in r.get("metrics", {})
        if r["metrics"][m].get("value") is None
    ]
    if reasons:
        lines.append("")
        lines += [f"{tag} {m} unavailable: {why}" for tag, m, why in reasons]
    if not (a.get("comparable_to_paper") and b.get("comparable_to_paper")):
        notes = {r.get("notice") for r in (a, b) if not r.get("comparable_to_paper") and r.get("notice")}
        lines += ["", *sorted(notes)]
    return "\n".join(lines)
