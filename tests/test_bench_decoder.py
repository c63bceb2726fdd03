"""Smoke test of ``benchmarks/decoder_speed.py``: smallest settings on the tiny preset, output files and columns.

No timing assertions (the numbers depend on the machine); only that the script runs end to end, writes the md / csv /
png it promises, and fills the columns a reader and the notebooks rely on.
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("decoder_speed")


def test_main_writes_md_csv_png(bench: ModuleType, tmp_path: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    try:
        paths = bench.main(
            [
                "--preset", "tiny", "--size", "16", "--throughput-frames", "4", "--frames", "4", "--device", "cpu",
                "--variants", "conv3x1x1",  # "image" (the ratio reference) is added automatically
                "--sweep-variants", "conv3x1x1", "--chunk-frames", "2", "--repeats", "1",
                "--ref-variants", "conv3x1x1", "--ref-frames", "3", "--chunk-time-frames", "4",
                "--jobs", "2", "--out", str(tmp_path / "ds"),
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert set(paths) == {"md", "csv", "png"}
    for path in paths.values():
        assert path.exists() and path.stat().st_size > 0
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with open(paths["csv"], newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == bench.CSV_COLUMNS
        rows = list(reader)
    per_variant = {r["variant"]: r for r in rows if r["section"] == "variant"}
    assert list(per_variant) == ["image", "conv3x1x1"]
    for r in per_variant.values():
        assert float(r["fps"]) > 0 and float(r["peak_mem_mib"]) >= 0
        assert r["preset"] == "tiny" and r["frames"] == "4" and r["device"] == "cpu"
    assert float(per_variant["image"]["fps_ratio_vs_image"]) == pytest.approx(1.0)
    sweep = {r["mode"]: r for r in rows if r["section"] == "length"}
    assert set(sweep) == {"full", "chunked"}
    assert sweep["chunked"]["chunk_frames"] == "2"
    # chunks of 2 with 4 context frames see the whole 4-frame video: equal to the full decode up to rounding
    assert float(sweep["chunked"]["max_abs_diff_vs_full"]) < 1e-4

    ref = [r for r in rows if r["section"] == "reference"]
    assert [(r["variant"], r["frames"]) for r in ref] == [("conv3x1x1", "3")]
    assert float(ref[0]["speedup_vs_reference"]) > 0 and float(ref[0]["ref_peak_mem_mib"]) >= 0
    assert float(ref[0]["max_abs_diff_vs_reference"]) < 1e-4  # the same weights decode the same frames
    chunk_time = [r for r in rows if r["section"] == "chunk_time"]
    assert [r["variant"] for r in chunk_time] == ["conv3x1x1"] and float(
        chunk_time[0]["time_ratio_chunked_vs_full"]
    ) > 0
    md = paths["md"].read_text()
    assert "| variant | params (M) |" in md and "| conv3x1x1 | 4 |" in md
    assert "## Versus the frame-by-frame reference decode" in md and "## Chunked versus whole decode time" in md
