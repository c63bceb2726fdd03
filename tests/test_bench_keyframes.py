"""Smoke test of ``benchmarks/keyframe_speed.py``: smallest settings, output files and columns (no timing checks)."""

from __future__ import annotations

import csv
from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("keyframe_speed")


def test_main_writes_md_csv_png(bench: ModuleType, tmp_path: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    try:
        paths = bench.main(
            [
                "--preset", "tiny", "--latent", "8", "--videos", "1", "--frames", "2", "--main-frames", "4",
                "--variants", "layers", "blocks_conv1d_attn1d",  # "image" (the ratio reference) is added
                "--repeats", "1", "--memory", "inline", "--device", "cpu", "--out", str(tmp_path / "ks"),
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
    assert list(per_variant) == ["image", "layers", "blocks_conv1d_attn1d"]
    image = per_variant["image"]
    assert float(image["time_ratio_vs_image"]) == pytest.approx(1.0) and image["trainable_frac"] == "1"
    for name, r in per_variant.items():
        assert r["frames"] == "4" and float(r["time_median_s"]) > 0 and float(r["peak_mem_mib"]) >= 0
        assert int(r["params_total"]) >= int(r["params_trainable"]) > 0
        assert float(r["gflop_per_step"]) > 0 and float(r["matmul_peak_gflops"]) > 0
        assert float(r["gflops"]) == pytest.approx(float(r["gflop_per_step"]) / float(r["time_median_s"]), rel=1e-3)
        assert 0 < float(r["frac_of_matmul_peak"]) < 1.5  # a step cannot run far above the matmul rate
        assert float(r["conv_peak_gflops"]) > 0
        # against the larger of the two rates: never above the matmul-only fraction
        assert 0 < float(r["frac_of_dense_peak"]) <= float(r["frac_of_matmul_peak"]) + 1e-12
        if name != "image":  # spatial weights frozen: only the temporal parts train
            assert int(r["params_total"]) > int(image["params_total"]) > int(r["params_trainable"])
    frames = sorted((r["variant"], int(r["frames"])) for r in rows if r["section"] == "frames")
    assert frames == sorted((v, t) for v in per_variant for t in (2, 4))  # --main-frames joins the T sweep
    md = paths["md"].read_text()
    assert "## Step time versus the number of frames" in md and "| blocks_conv1d_attn1d |" in md
    assert "% of matmul peak" in md and "% of dense peak" in md


def test_memory_child_process(bench: ModuleType) -> None:
    """The default CPU memory path: one measurement in a fresh process (the script with --_child)."""
    spec = dict(preset="tiny", variant="layers", frames=2, videos=1, latent=8, tokens=4, seed=0, device="cpu",
                threads=1)  # fmt: skip
    res = bench.run_child(bench.__file__, spec)  # the shared helper of benchmarks/_common.py
    assert res["peak_mem_mib"] >= 0 and isinstance(res["peak_reset"], bool)
