"""render_tables on hand-made row records: markdown (CI brackets, n/a with the reason), CSV columns, PNG plot."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ff_lightning.reporting import format_metric, render_tables

REASON = "LPIPS not computed: AlexNet backbone file alexnet-owt-7be5be79.pth not found"


def _m(value: float | None, lo: float | None = None, hi: float | None = None, n: int = 4, **kw: Any) -> dict[str, Any]:
    return {"value": value, "ci_low": lo, "ci_high": hi, "n": n, **kw}


def _sweep(out: Path, **kw: Any) -> SimpleNamespace:
    base = dict(
        name="Table 3 (test)",
        output=str(out),
        metrics=["psnr", "mse", "lpips"],
        columns=["model.variant", "module.policy"],
        plot_metric="psnr",
        paper_note="Paper: other data.",
    )
    return SimpleNamespace(**{**base, **kw})


def _records() -> list[dict[str, Any]]:
    no_lpips = _m(None, n=0, reason=REASON)
    return [
        {
            "row": "image",
            "label": "Image decoder",
            "columns": {"model.variant": "image", "module.policy": "none"},
            "metrics": {"psnr": _m(25.5, 24.25, 26.75), "mse": _m(0.00042, 0.0003, 0.0005), "lpips": no_lpips},
            "params": 444_547,
            "params_paper": 161_118_211,
            "paper": {"psnr": 32.9677, "mse": 0.0008, "lpips": 0.0049, "params": "161M"},
            "preset": "tiny",
        },
        {
            "row": "c311",
            "label": "3x1x1 conv, finetune decoder",
            "columns": {"model.variant": "conv3x1x1", "module.policy": "decoder"},
            "metrics": {"psnr": _m(26.0, 25.0, 27.0), "mse": _m(0.0004, 0.00035, 0.00045), "lpips": no_lpips},
            "params": 555_791,
            "params_paper": 203_210_271,
            "paper": {},
            "preset": "tiny",
            "extra": {"decode_seconds": 1.5},
        },
    ]


def test_markdown_has_ci_brackets_na_and_reason(tmp_path: Path) -> None:
    written = render_tables(_sweep(tmp_path / "sub" / "t3"), _records())
    md_path = tmp_path / "sub" / "t3.md"
    assert md_path in written
    md = md_path.read_text()
    lines = md.splitlines()
    assert lines[0] == "# Table 3 (test)" and "Paper: other data." in md
    header = next(line for line in lines if line.startswith("| row"))
    assert header.split(" | ")[1:3] == ["variant", "policy"]
    assert "psnr (ours)" in header and "psnr (paper)" in header and "params (paper preset)" in header
    image = next(line for line in lines if line.startswith("| Image decoder"))
    cells = [c.strip() for c in image.strip("|").split("|")]
    assert cells[:3] == ["Image decoder", "image", "none"]
    assert cells[3] == "25.5000 [24.2500, 26.7500]"
    assert cells[4] == "4.200e-04 [3.000e-04, 5.000e-04]"
    assert cells[5] == "n/a"  # lpips (ours)
    assert cells[6:9] == ["32.9677", "8.000e-04", "0.0049"]
    assert cells[9:] == ["444.5k", "161.1M", "161M"]
    c311 = next(line for line in lines if line.startswith("| 3x1x1 conv"))
    assert [c.strip() for c in c311.strip("|").split("|")][6:] == ["n/a"] * 3 + ["555.8k", "203.2M", "n/a"]
    assert f"- **lpips**: {REASON}" in md  # the footnote says why the column is empty
    assert "3x1x1 conv, finetune decoder: decode_seconds 1.5000" in md


def test_csv_columns_parse(tmp_path: Path) -> None:
    render_tables(_sweep(tmp_path / "t3"), _records())
    with open(tmp_path / "t3.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert list(rows[0]) == [
        "row", "variant", "policy",
        "psnr", "psnr_ci_low", "psnr_ci_high", "psnr_paper",
        "mse", "mse_ci_low", "mse_ci_high", "mse_paper",
        "lpips", "lpips_ci_low", "lpips_ci_high", "lpips_paper",
        "params", "params_paper_preset", "params_paper", "n", "preset",
    ]  # fmt: skip
    r = rows[0]
    assert (r["row"], r["variant"], r["policy"]) == ("image", "image", "none")
    assert (float(r["psnr"]), float(r["psnr_ci_low"]), float(r["psnr_ci_high"])) == (25.5, 24.25, 26.75)
    assert float(r["mse"]) == pytest.approx(0.00042) and float(r["psnr_paper"]) == pytest.approx(32.9677)
    assert r["lpips"] == "" and r["lpips_ci_low"] == "" and float(r["lpips_paper"]) == pytest.approx(0.0049)
    assert (int(r["params"]), int(r["params_paper_preset"]), r["params_paper"]) == (444_547, 161_118_211, "161M")
    assert (r["n"], r["preset"]) == ("4", "tiny")
    assert rows[1]["psnr_paper"] == "" and rows[1]["params_paper"] == ""


def test_png_plot_written(tmp_path: Path) -> None:
    written = render_tables(_sweep(tmp_path / "t3"), _records())
    png = tmp_path / "t3.png"
    assert written == [tmp_path / "t3.md", tmp_path / "t3.csv", png]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_no_plot_without_measured_points(tmp_path: Path) -> None:
    """A metric nobody could measure gives no plot (and still the tables)."""
    written = render_tables(_sweep(tmp_path / "t3", plot_metric="lpips"), _records())
    assert written == [tmp_path / "t3.md", tmp_path / "t3.csv"] and not (tmp_path / "t3.png").exists()


@pytest.mark.parametrize(
    ("metric", "text"),
    [
        (None, "n/a"),
        (_m(None, reason="x"), "n/a"),
        (_m(0.5), "0.5000"),
        (_m(0.5, 0.25, 0.75), "0.5000 [0.2500, 0.7500]"),
        (_m(23456.0, 12000.0, 31000.0), "2.346e+04 [1.200e+04, 3.100e+04]"),
        (_m(float("nan")), "n/a"),
    ],
)
def test_format_metric(metric: dict[str, Any] | None, text: str) -> None:
    assert format_metric(metric) == text


def test_paired_difference_against_reference_row(tmp_path) -> None:
    from types import SimpleNamespace

    from ff_lightning.reporting import paired_difference, render_tables

    base = [20.0, 25.0, 30.0, 22.0]
    better = [v + 0.5 for v in base]  # +0.5 dB on every sample: unresolvable unpaired, exact paired
    d = paired_difference(better, base)
    assert d is not None and abs(d["value"] - 0.5) < 1e-12 and abs(d["ci_low"] - 0.5) < 1e-12
    assert paired_difference([1.0], [1.0, 2.0]) is None  # not paired

    def rec(name: str, vals: list[float]) -> dict:
        m = {
            "value": sum(vals) / len(vals),
            "ci_low": min(vals),
            "ci_high": max(vals),
            "n": len(vals),
            "per_sample": vals,
        }
        return {
            "row": name,
            "label": name,
            "columns": {},
            "metrics": {"psnr": m},
            "paper": {},
            "params": 1,
            "params_paper": 2,
            "preset": "tiny",
        }

    sw = SimpleNamespace(
        name="t",
        output=str(tmp_path / "t"),
        metrics=["psnr"],
        columns=[],
        paper_note="",
        plot_metric="psnr",
        reference_row="ref",
        higher_is_better={"psnr": True},
    )
    md_path = render_tables(sw, [rec("ref", base), rec("new", better)])[0]
    md = md_path.read_text()
    assert "Paired differences against **ref**" in md
    assert "| new | 0.5000 [0.5000, 0.5000] |" in md
    # a listed pair gets its own table, b minus a, also when neither is the reference row
    sw.reference_row, sw.pairs = None, [["new", "ref"], ["new", "absent"]]
    md = render_tables(sw, [rec("ref", base), rec("new", better)])[0].read_text()
    assert "against **" not in md and md.count("Paired differences **") == 1
    assert "Paired differences **ref** minus **new**" in md and "| ref | -0.5000 [-0.5000, -0.5000] |" in md
