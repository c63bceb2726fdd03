"""Smoke test of ``benchmarks/interpolation_speed.py``: smallest settings, output files and the columns they promise.

No timing or quality thresholds (they depend on the machine and the budget): the script runs end to end, and the
markdown tables report exactly the figures of the CSV (method by method, column by column).
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("interpolation_speed")


def test_main_writes_md_csv_png(bench: ModuleType, bundled_cache: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        paths = bench.main(
            [
                "--keyframes", "3", "--speed-size", "16", "--steps", "2", "--repeats", "1", "--train-steps", "2",
                "--batch-size", "2", "--eval-hop", "64", "--max-eval", "4", "--workers", "0", "--no-paper-flops",
                "--base", "random", "--train-size", "16", "--blend-residual", "--pixel-correction",
                "--cache", str(bundled_cache), "--out", str(tmp_path / "interp"),
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert set(paths) == {"md", "csv", "png"}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(paths["csv"], newline="")))
    speed = {r["method"]: r for r in rows if r["section"] == "speed"}
    assert set(speed) == {"fusionframes", "masked", "flow_pixel", "flow_latent"}
    assert {r["frames_out"] for r in speed.values()} == {"9"}  # every arm: the same 4K - 3 frames from K = 3
    assert speed["flow_pixel"]["gflops"] == "" and float(speed["flow_pixel"]["params_m"]) == 0.0
    assert int(speed["fusionframes"]["rows_per_step"]) == 2 * 2 and int(speed["masked"]["rows_per_step"]) == 2 * 9
    assert float(speed["masked"]["flop_ratio_vs_fusionframes"]) > 2.0  # 9 frame rows vs 2 pair rows per video
    quality = {r["method"] for r in rows if r["section"] == "quality"}
    assert {"fusionframes", "masked", "flow_pixel", "flow_latent", "linear blend of keyframes", "copy left keyframe",
            "MoVQ reconstruction of the real frames", "linear blend of keyframe latents, decoded"} <= quality  # fmt: skip
    for r in (r for r in rows if r["section"] == "quality"):
        for key, low, high in (("psnr", "psnr_ci_low", "psnr_ci_high"), ("psnr_gain_vs_blend", "gain_ci_low",
                                                                            "gain_ci_high")):  # fmt: skip
            assert float(r[low]) <= float(r[key]) <= float(r[high]), (r["method"], key)
    assert {"fusionframes_pixel_correction", "masked_pixel_correction"} <= quality
    blend = next(r for r in rows if r["method"] == "linear blend of keyframes")
    assert float(blend["psnr_gain_vs_blend"]) == 0.0  # paired with itself
    copy = next(r for r in rows if r["method"] == "copy left keyframe")
    assert float(copy["psnr_gain_vs_blend"]) == pytest.approx(float(copy["psnr"]) - float(blend["psnr"]), abs=1e-3)
    text = paths["md"].read_text()
    assert "RANDOM image UNet (tests only)" in text
    md_speed = _md_rows(text, "| method | UNet rows per step")
    assert set(md_speed) == {bench.METHOD_LABELS[m] for m in speed}
    for method, r in speed.items():
        cells = md_speed[bench.METHOD_LABELS[method]]
        assert float(cells[6]) == pytest.approx(float(r["time_ratio_vs_fusionframes"]), rel=5e-3)  # "time x"
        assert float(cells[7]) == pytest.approx(float(r["cpu_ratio_vs_fusionframes"]), rel=5e-3)  # "CPU x"
        assert float(cells[4].split(" ")[0]) == pytest.approx(float(r["time_median_s"]), abs=1e-3)
        if r["gflops"]:
            assert float(cells[2]) == pytest.approx(float(r["gflops"]), abs=0.01)
            assert float(cells[3]) == pytest.approx(float(r["flop_ratio_vs_fusionframes"]), abs=0.01)
    md_quality = _md_rows(text, "| method | PSNR (dB)")
    for r in (r for r in rows if r["section"] == "quality"):
        cells = md_quality[bench.METHOD_LABELS.get(r["method"], f"*{r['method']}*")]
        assert float(cells[0].split(" [")[0]) == pytest.approx(float(r["psnr"]), abs=0.01)
        assert float(cells[1].split(" [")[0]) == pytest.approx(float(r["psnr_gain_vs_blend"]), abs=0.01)
        assert float(cells[2].split(" [")[0]) == pytest.approx(float(r["ssim"]), abs=0.001)


def _md_rows(text: str, header: str) -> dict[str, list[str]]:
    """Rows of the markdown table under ``header``: first cell (label) -> the other cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 2
    out = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return out


def test_paper_layout_flops_on_the_meta_device(bench: ModuleType) -> None:
    """The paper-size count runs on the meta device (shapes only); the tiny preset keeps the test fast."""
    flops = bench.paper_step_flops(guidance=True, preset="tiny")
    ratio = flops["masked"] / flops["fusionframes"]
    assert 3.5 < ratio < 4.5  # 33 frame rows vs 8 pair rows per video (the in/out convs differ a little)


def test_ema_weights_are_what_the_benchmark_evaluates(bench: ModuleType, bundled_cache: Path) -> None:
    """``--ema-decay d``: after training, the models hold the averaged weights. One step with d = 0.5 leaves
    ``0.5 * initial + 0.5 * trained``, where ``trained`` is what the same step without EMA leaves."""
    common = ["--base", "random", "--train-size", "16", "--train-steps", "1", "--batch-size", "2", "--workers", "0",
              "--cache", str(bundled_cache)]  # fmt: skip
    weights = {}
    for decay in ("0", "0.5"):
        args = bench.parse_args([*common, "--ema-decay", decay])
        setup = bench.build_setup(args)
        unet = setup.methods["fusionframes"].unet
        initial = {n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad}
        bench.train(args, setup, bundled_cache)
        weights[decay] = {n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad}
    trainable = list(initial)
    moved = [n for n in trainable if not torch.equal(weights["0"][n], initial[n])]
    assert moved  # the step changed the weights
    for n in trainable:
        torch.testing.assert_close(weights["0.5"][n], 0.5 * initial[n] + 0.5 * weights["0"][n], rtol=0, atol=1e-6)
