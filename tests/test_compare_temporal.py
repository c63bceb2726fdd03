"""``make compare-temporal`` in miniature: the prepare chain (image MoVQ -> t2i base), two keyframe rows trained for
1-2 steps, the ``keyframes`` evaluator, tables + side-by-side samples (png / gif / mp4), the row cache, and the A/B mode
that evaluates two given checkpoints without training (same numbers as the rows that produced them)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from ff_lightning import ablate

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "experiments" / "ablations" / "temporal.yaml"
FRAMES = 2
METRICS = ["fid_frames", "val_loss", "motion_word_gain", "time_order_gain", "motion_gap", "motion", "frame_consistency",
           "clipsim", "is", "fvd"]  # fmt: skip
PER_SAMPLE = ["val_loss", "motion_word_gain", "time_order_gain", "motion_gap", "motion", "frame_consistency"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_sweep(root: Path, cache: Path) -> Path:
    """A 2-row temporal sweep (+ the on-demand A/B rows) whose prepare chain trains a MoVQ and a t2i base 2 steps."""
    quick = {"accelerator": "cpu", "devices": "1", "enable_progress_bar": False, "limit_val_batches": 0.0,
             "log_every_n_steps": 1}  # fmt: skip
    movq = {
        "base": str(REPO / "experiments" / "movq" / "tiny.yaml"),
        "data": {"batch_size": 2, "max_samples": 4, "max_val_samples": 2},
        "trainer": {"max_steps": 2, **quick},
        "module": {"log_video_every_n_steps": 0},
    }
    (root / "movq.yaml").write_text(yaml.safe_dump(movq))
    t2i_set = {"trainer.max_steps": 2, "trainer.accelerator": "cpu", "trainer.devices": "1",
               "trainer.enable_progress_bar": False, "trainer.limit_val_batches": 0, "data.batch_size": 2,
               "data.max_samples": 4, "optim.warmup_steps": 0, "optim.ema_decay": 0.9,
               "module.log_samples_every_n_steps": 0}  # fmt: skip
    sweep = yaml.safe_load(SHIPPED.read_text())
    sweep.update(
        experiment=str(REPO / "experiments" / "keyframes" / "base.yaml"),
        prepare=[
            {"step": "movq_image", "experiment": "movq.yaml"},
            {"step": "t2i_base", "experiment": str(REPO / "experiments" / "t2i" / "tiny.yaml"), "set": t2i_set},
        ],
        output=str(root / "out" / "temporal"),
        cache_dir=str(root / "rows"),
        reference_row=["layers", "a"],
        overrides={
            "data.cache_dir": str(cache),
            "data.num_frames": FRAMES,
            "data.batch_size": 2,
            "data.max_samples": 4,
            "data.max_val_samples": 4,
            "trainer.accelerator": "cpu",
            "trainer.devices": "1",
            "trainer.enable_progress_bar": False,
            "trainer.limit_val_batches": 0,
            "trainer.log_every_n_steps": 1,
            "optim.warmup_steps": 0,
            "optim.lr": 1e-3,
            "module.log_samples_every_n_steps": 0,
            "run.output_dir": str(root / "runs"),
        },  # fmt: skip
        evaluate={
            "num_samples": 3,
            "batch_size": 2,
            "sample_steps": 2,
            "loss_timesteps": [100, 900],
            "fid_bootstrap": 20,
            "caption_accuracy": False,
        },  # fmt: skip
    )
    rows = {r["name"]: r for r in sweep["rows"]}
    rows["layers"]["set"]["trainer.max_steps"] = 1
    rows["blocks"]["set"]["trainer.max_steps"] = 2
    rows["ref_blocks"]["set"]["trainer.max_steps"] = 1
    sweep["rows"] = [rows["layers"], rows["blocks"], rows["ref_blocks"], rows["a"], rows["b"]]
    kept = {r["name"] for r in sweep["rows"]}
    assert ["layers", "blocks"] in sweep["pairs"]  # the shipped sweep pairs blocks with layers directly
    sweep["pairs"] = [p for p in sweep["pairs"] if set(p) <= kept]  # the trial rows are left out here
    path = root / "temporal.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from ff_lightning.data.bundled import build_all

    root = tmp_path_factory.mktemp("temporal")
    cache = root / "data"
    build_all(cache, reduced=True, size=32, progress=False, sets=["shapes"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FF_CACHE_DIR", str(root / "ffcache"))  # prepared models and real features go here
        path = _write_sweep(root, cache)
        records = ablate.run_sweep(path)
        yield {"root": root, "path": path, "records": records}


def test_rows_trained_evaluated_and_rendered(sweep_run: dict[str, Any]) -> None:
    root, records = sweep_run["root"], sweep_run["records"]
    assert [r["row"] for r in records] == [
        "layers",
        "blocks",
        "ref_blocks",
    ]  # on-demand rows without checkpoints: not run
    models = sorted(p.name for p in (root / "ffcache" / "models").iterdir())
    assert [m.split("-")[0] for m in models] == ["movq", "t2i"]  # the prepare chain cached both
    for r in records:
        cfg = r["config"]
        assert cfg["module"]["t2i_ckpt"].endswith(".ckpt") and cfg["module"]["movq_ckpt"].endswith(".safetensors")
        m = r["metrics"]
        assert set(METRICS) <= set(m)
        assert m["fid_frames"]["value"] >= 0 and m["fid_frames"]["ci_low"] <= m["fid_frames"]["ci_high"]
        for k in PER_SAMPLE:
            assert len(m[k]["per_sample"]) == m[k]["n"] and m[k]["ci_low"] <= m[k]["value"] <= m[k]["ci_high"]
        assert m["val_loss"]["n"] == 4 and m["motion"]["n"] == 3  # held-out clips / generated clips
        assert m["motion_word_gain"]["n"] == m["time_order_gain"]["n"] == 4  # paired with val_loss, clip by clip
        for k in ("clipsim", "is", "fvd"):
            assert m[k]["value"] is None and m[k]["reason"]
        assert {"real_motion", "real_frame_consistency", "fid_frames_real_floor"} <= set(r["extra"])
        assert Path(r["artifacts"]["samples.npz"]).is_file()
        assert r["params"] and r["params_paper"] > 1e9
    # each row evaluated its own model: one model evaluated for every row (same data, same seeds) would give every
    # row the same per-sample losses and the same generated samples
    losses = [tuple(r["metrics"]["val_loss"]["per_sample"]) for r in records]
    assert len(set(losses)) == len(records), losses
    videos = []
    for r in records:
        with np.load(r["artifacts"]["samples.npz"]) as z:
            videos.append(z["videos"])
    assert all(not np.array_equal(videos[i], videos[j]) for i in range(3) for j in range(i + 1, 3))
    ref_extra = records[2]["extra"]  # the reference-guided row: oracle loss and reference fidelity figures
    assert records[2]["config"]["system"] == "reference_keyframes"
    assert {"val_loss_given_reference", "reference_frame_mse", "reference_other_frames_mse"} <= set(ref_extra)
    assert "val_loss_given_reference" not in records[1]["extra"]
    md = (root / "out" / "temporal.md").read_text()
    assert "temporal layers" in md and "temporal blocks" in md and "(paper)" not in md
    assert "- **fvd**: FVD not computed" in md and "Paired differences against **temporal layers" in md
    assert (
        "Paired differences **temporal blocks (3x1x1 ResNet blocks + attention blocks, release)** minus **temporal layers"
        in md
    )
    assert "[temporal_samples.gif](temporal_samples.gif)" in md
    with open(root / "out" / "temporal.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["row"] for r in rows] == ["layers", "blocks", "ref_blocks"] and float(rows[0]["fid_frames"]) >= 0
    png, gif, mp4 = (root / "out" / f"temporal_samples.{e}" for e in ("png", "gif", "mp4"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and mp4.stat().st_size > 0
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == FRAMES
    with Image.open(png) as im:  # 4 columns (real, layers, blocks, ref_blocks) of FRAMES frames, 3 prompts
        assert im.width > 4 * FRAMES * 32 * 2 and im.height > 3 * 32 * 2


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("nothing should be trained here")


def test_rerun_uses_the_caches(sweep_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ff_lightning.train.fit", _refuse)

    def no_eval(module: Any, cfg: Any, *, options: Any = None, artifacts_dir: Any = None) -> Any:
        raise AssertionError("nothing should be evaluated again")

    monkeypatch.setattr("ff_lightning.evaluation.keyframes.evaluate_keyframes", no_eval)
    again = ablate.run_sweep(sweep_run["path"])
    assert [json.dumps(r, sort_keys=True) for r in again] == [
        json.dumps(r, sort_keys=True) for r in sweep_run["records"]
    ]


def test_compare_two_checkpoints(sweep_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A/B mode: the rows' own checkpoints, evaluated without training or prepare, give the rows' numbers."""
    layers, _, blocks = sweep_run["records"]  # B: the reference-guided row's checkpoint (its own system)
    ckpts = [Path(r["run_dir"]) / "checkpoints" / "last.ckpt" for r in (layers, blocks)]
    assert all(p.is_file() for p in ckpts)
    monkeypatch.setattr("ff_lightning.train.fit", _refuse)  # neither the rows nor the prepare chain train
    out = sweep_run["root"] / "out" / "ab"
    records = ablate.run_sweep(sweep_run["path"], [f"a_ckpt={ckpts[0]}", f"b_ckpt={ckpts[1]}", f"output={out}"])
    assert [r["row"] for r in records] == ["a", "b"]
    for got, want in zip(records, (layers, blocks), strict=True):
        assert got["checkpoint"] and got["columns"]["model.variant"] == want["columns"]["model.variant"]
        for k in ("val_loss", "motion", "fid_frames"):
            assert got["metrics"][k]["value"] == pytest.approx(want["metrics"][k]["value"], rel=1e-4, abs=1e-6), k
    md = out.with_suffix(".md").read_text()
    assert "Paired differences against **checkpoint A**" in md and str(ckpts[1]) in md


def test_shipped_sweep_composes() -> None:
    """Every row of the shipped sweep composes; A/B aliases select only the on-demand rows."""
    sw, path = ablate.load_sweep(SHIPPED)
    assert [s.name for s in ablate._prepare_steps(sw, path)] == ["movq_image", "t2i_base"]
    for row in sw.rows:
        ablate._check_row(ablate._row_config(sw, path, row, {}), row.name)
    assert [r.name for r in sw.rows if not r.on_demand] == ["t2i_framewise", "layers", "blocks", "ref_blocks"]
    ref = ablate._row_config(sw, path, next(r for r in sw.rows if r.name == "ref_blocks"), {})
    assert ref.system == "reference_keyframes" and ref.model.variant == "ref_blocks_conv1d_attn1d"
    sw2, _ = ablate.load_sweep(SHIPPED, ["a_ckpt=/x/a.ckpt", "b_ckpt=/x/b.ckpt", "evaluate.num_samples=4"])
    assert {r.name: r.checkpoint for r in sw2.rows if r.checkpoint} == {"a": "/x/a.ckpt", "b": "/x/b.ckpt"}
    assert sw2.evaluate["num_samples"] == 4


def test_fid_bootstrap_matches_frechet_distance() -> None:
    from ff_lightning.evaluation.keyframes import fid_bootstrap
    from ff_lightning.metrics.distribution import feature_statistics, frechet_distance, psd_sqrt

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(60, 16, generator=g, dtype=torch.float64)
    gen = torch.randn(10, 3, 16, generator=g, dtype=torch.float64) * 1.3 + 0.2
    mu, sigma = feature_statistics(ref)
    value, lo, hi = fid_bootstrap(gen, mu, sigma, psd_sqrt(sigma), n_boot=200)
    assert value == pytest.approx(frechet_distance(*feature_statistics(gen.reshape(30, 16)), mu, sigma))
    assert lo <= value <= hi
    # one resample equal to the data is the data's FID: the low-rank route agrees with the dense one
    from ff_lightning.evaluation import keyframes

    same = keyframes.fid_bootstrap(gen[:1].expand(2, -1, -1).contiguous(), mu, sigma, psd_sqrt(sigma), n_boot=1)
    assert same[1] == pytest.approx(same[0], rel=1e-6)
