"""The benchmark runners end to end on tiny fake datasets, with tiny random-weight evaluators the test writes to disk
and loads through the real ``resolve_weights`` path (so their sha256 lands in the result)."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ff_lightning.data.fixtures import write_msrvtt_layout, write_ucf_layout
from ff_lightning.evaluation.cli import add_eval_parser
from ff_lightning.evaluation.msrvtt import evaluate_msrvtt
from ff_lightning.evaluation.results import compare_results, load_result
from ff_lightning.evaluation.runner import RunOptions
from ff_lightning.evaluation.tables import render_table1
from ff_lightning.evaluation.ucf101 import evaluate_ucf101
from ff_lightning.metrics.weights import WeightsChecksumError, WeightsUnavailable

SMALL = [
    "num_samples=4",
    "generation.size=[16,16]",
    "generation.batch_size=2",
    "uncertainty.n_boot=50",
    "uncertainty.n_boot_distribution=20",
    "uncertainty.repeats=2",
]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("FF_WEIGHTS_DIR", raising=False)


class TinyC3D(nn.Module):
    """Preprocessed clips (B, 3, 16, 112, 112) -> 5 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1) / 64.0)


class TinyI3D(nn.Module):
    """StyleGAN-V detector call convention: (B, 3, T, 224, 224) in [-1, 1] -> 6 features."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 6)

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = True
    ) -> torch.Tensor:
        return self.proj(torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1))


def _script(module: nn.Module, path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p)
    torch.jit.script(module).save(str(path))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pin_files(monkeypatch: pytest.MonkeyPatch, **files: Path) -> None:
    """Pin test TorchScript files (``name=path``) in ``$FF_WEIGHTS_PINS``: unpinned ones are refused (they run code)."""
    monkeypatch.setenv("FF_WEIGHTS_PINS", ",".join(f"{name}={_sha(p)}" for name, p in files.items()))


@pytest.fixture
def ucf_root(tmp_path: Path) -> Path:
    return write_ucf_layout(tmp_path / "ucf", classes=("ApplyEyeMakeup", "YoYo"), num_frames=16)


def test_ucf101_end_to_end_records_weights_and_flags_a_changed_file(
    tmp_path: Path, ucf_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c3d = _script(TinyC3D(), tmp_path / "c3d_tiny.pt", 0)
    i3d = _script(TinyI3D(), tmp_path / "i3d_tiny.pt", 1)
    # TorchScript files run code when loaded: refused until their hashes are pinned
    opts0 = RunOptions(
        out=tmp_path / "run0",
        data_root=str(ucf_root),
        progress=False,
        weights={"is_c3d": str(c3d), "fvd_i3d": str(i3d)},
    )
    with pytest.raises(WeightsChecksumError, match="FF_WEIGHTS_PINS=c3d_ucf101="):
        evaluate_ucf101("test_noise", overrides=SMALL, options=opts0)
    pin_files(monkeypatch, c3d_ucf101=c3d, i3d_torchscript=i3d)
    opts = RunOptions(
        out=tmp_path / "run", data_root=str(ucf_root), weights={"is_c3d": str(c3d), "fvd_i3d": str(i3d)}, progress=False
    )
    out = evaluate_ucf101("test_noise", overrides=SMALL, options=opts)
    assert out.path == tmp_path / "run" / "test_noise.json"
    r = load_result(out.path)
    assert r["protocol"]["name"] == "ucf101_zeroshot" and r["protocol"]["version"] == 1
    assert r["protocol"]["resolved"]["num_samples"] == 4 and r["protocol"]["overrides"] == SMALL
    assert r["protocol"]["resolved"]["metrics"]["fvd"]["size"] == [224, 224]
    assert r["seed"] == 0 and r["num_samples"] == 4 and r["generator"]["name"] == "test_noise"
    assert r["prompts"]["class_names"].endswith("classInd.txt")
    w_is, w_fvd = r["evaluators"]["is"]["weights"][0], r["evaluators"]["fvd"]["weights"][0]
    assert w_is["sha256"] == _sha(c3d) and w_is["pinned"] is True and w_is["changed"] is False
    assert w_fvd["sha256"] == _sha(i3d) and r["evaluators"]["fvd"]["evaluator"] == "i3d_torchscript"
    assert "approximation" in r["evaluators"]["is"]["details"]["mean"]  # no mean2.npz: per-channel mean, recorded
    for m in ("is", "fvd"):
        rec = r["metrics"][m]
        assert rec["value"] is not None and rec["ci_low"] <= rec["ci_high"] and rec["n"] == 4
        assert rec["repeats"]["k"] == 2 and "bootstrap" in rec["ci_method"]
    assert r["reference"]["fvd"]["n_videos"] == 6 and not r["reference"]["fvd"]["reused_cache"]
    assert not r["comparable_to_paper"] and "NOT COMPARABLE" in r["notice"]
    assert r["timestamps"]["started"] and r["timestamps"]["finished"] and r["package"]["ff_lightning"]
    assert r["samples"]["generated"] == 4 and r["samples"]["generator_calls"] == 2

    # the C3D file changes in place: refused under the old pin; re-pinned, the ledger flags it; samples and real
    # statistics are reused
    _script(TinyC3D(), c3d, 7)
    opts.run_name = "after_change"
    with pytest.raises(WeightsChecksumError, match="pinned in"):
        evaluate_ucf101("test_noise", overrides=SMALL, options=opts)
    pin_files(monkeypatch, c3d_ucf101=c3d, i3d_torchscript=i3d)
    with pytest.warns(UserWarning, match="changed since first use"):
        out2 = evaluate_ucf101("test_noise", overrides=SMALL, options=opts)
    r2 = json.loads(out2.path.read_text())
    assert r2["evaluators"]["is"]["weights"][0]["changed"] is True and r2["weights_changed"] is True
    assert r2["evaluators"]["is"]["weights"][0]["sha256"] == _sha(c3d) != w_is["sha256"]
    assert r2["samples"]["reused"] == 4 and r2["samples"]["generated"] == 0
    assert r2["reference"]["fvd"]["reused_cache"] and r2["metrics"]["fvd"]["value"] == r["metrics"]["fvd"]["value"]


def test_missing_weights_fail_before_generation_unless_optional(
    tmp_path: Path, ucf_root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    opts = RunOptions(out=tmp_path / "run", data_root=str(ucf_root), progress=False)
    with pytest.raises(WeightsUnavailable) as e:
        evaluate_ucf101("test_noise", overrides=SMALL, options=opts)
    msg = str(e.value)
    assert "conv3d_deepnetA_ucf.npz" in msg and "tgan2" in msg and "put it at" in msg
    assert not list((tmp_path / "run").glob("samples/*.npz"))

    # the same through the CLI: exit code 2 and the message
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "eval",
            "ucf101",
            "--generator",
            "test_noise",
            "--data-root",
            str(ucf_root),
            "--out",
            str(tmp_path / "cli"),
            "--quiet",
            *[f"--set={s}" for s in SMALL],
        ]
    )
    assert args.fn(args) == 2
    assert "conv3d_deepnetA_ucf.npz" in capsys.readouterr().err

    # optional evaluators: the metric is reported unavailable with the reason, the others are computed
    i3d = _script(TinyI3D(), tmp_path / "i3d.pt", 1)
    pin_files(monkeypatch, i3d_torchscript=i3d)
    opts.weights = {"fvd_i3d": str(i3d)}
    out = evaluate_ucf101("test_noise", overrides=[*SMALL, "metrics.is.optional=true"], options=opts)
    m = out.record["metrics"]
    assert m["is"]["value"] is None and "conv3d_deepnetA_ucf.npz" in m["is"]["reason"]
    assert m["fvd"]["value"] is not None and out.record["evaluators"]["is"]["available"] is False

    # FVD without the dataset root: a clear error
    with pytest.raises(FileNotFoundError, match="--data-root"):
        evaluate_ucf101(
            "test_noise",
            overrides=[*SMALL, "metrics.is.optional=true"],
            options=RunOptions(out=tmp_path / "r3", weights={"fvd_i3d": str(i3d)}, progress=False),
        )


class TinyClip:
    """CLIP stand-in: frame embedding = mean colour, text embedding from a hash of the text."""

    def __init__(self, info: object) -> None:
        self.info = info

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.cat([frames.mean(dim=(2, 3)), torch.ones(frames.shape[0], 1)], dim=1)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        rows = [torch.tensor(list(hashlib.sha256(t.encode()).digest()[:4]), dtype=torch.float32) - 128 for t in texts]
        return torch.stack(rows)


def test_msrvtt_clipsim_with_an_injected_clip(tmp_path: Path) -> None:
    root = write_msrvtt_layout(tmp_path / "msr", video_ids=(0, 1, 7010, 7011, 7012), captions_per_video=2, num_frames=4)
    clip_file = tmp_path / "open_clip_pytorch_model.bin"
    clip_file.write_bytes(b"stand-in weights")
    opts = RunOptions(
        out=tmp_path / "run",
        data_root=str(root),
        weights={"clipsim": str(clip_file)},
        hooks={"clipsim": TinyClip},
        progress=False,
    )
    with pytest.raises(ValueError, match="asks for 2990 captions"):
        evaluate_msrvtt("test_shapes", options=opts)
    out = evaluate_msrvtt("test_shapes", overrides=["num_samples=3", "generation.size=[16,16]"], options=opts)
    r = out.record
    assert r["per_sample"]["clipsim"]["ids"] == ["video7010", "video7011", "video7012"]
    assert r["metrics"]["clipsim"]["n"] == 3 and -1 <= r["metrics"]["clipsim"]["value"] <= 1
    ev = r["evaluators"]["clipsim"]
    assert ev["evaluator"] == "clip_vit_b32_openai_hf" and ev["weights"][0]["sha256"] == _sha(clip_file)
    samples = sorted((tmp_path / "run" / "samples").glob("*.npz"))
    import numpy as np

    with np.load(samples[0]) as z:
        assert str(z["prompt"]) == "video7010 caption 0"


class TinyFeatures(nn.Module):
    """Frame features (N, 3, H, W) -> (N, 8) standing in for InceptionV3."""

    def __init__(self, path: object = None) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3)), x[:, :2, ::4, ::4].flatten(1)[:, :2]], dim=1)


class TinyShapes(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0].mean(dim=(1, 2, 3)), x[:, 2].mean(dim=(1, 2, 3))], dim=1) * 10


def test_offline_cli_compare_and_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ff_lightning.evaluation.shapes_classifier as sc
    import ff_lightning.metrics.inception as inc

    root = write_ucf_layout(tmp_path / "shapes", classes=("CircleMovingLeft", "SquareMovingUp"), num_frames=16)
    monkeypatch.setattr(inc, "InceptionFeatures", TinyFeatures)  # the packaged file is still resolved and hashed
    monkeypatch.setattr(sc, "load_shapes_classifier", lambda path: TinyShapes())
    cls_file = tmp_path / "shapes_classifier.safetensors"
    cls_file.write_bytes(b"tiny")
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    results = []
    for gen in ("test_noise", "test_shapes"):
        args = parser.parse_args(
            [
                "eval",
                "offline",
                "--generator",
                gen,
                "--data-root",
                str(root),
                "--out",
                str(tmp_path / gen),
                "--shapes-classifier",
                str(cls_file),
                "--quiet",
                "--num-samples",
                "6",
                "--set",
                "uncertainty.n_boot_distribution=10",
            ]
        )
        assert args.fn(args) == 0
        results.append(tmp_path / gen / f"{gen}.json")
    printed = capsys.readouterr().out
    assert "NOT COMPARABLE TO THE PAPER" in printed and "fid" in printed
    a, b = load_result(results[0]), load_result(results[1])
    assert b["evaluators"]["fid"]["weights"][0]["pinned"] is True  # the packaged Inception, sha256 pinned
    assert b["metrics"]["is"]["value"] is None and "not measured" in b["metrics"]["is"]["reason"]
    assert "i3d_torchscript.pt" in b["metrics"]["fvd"]["reason"] and "ViT-B-32.pt" in b["metrics"]["clipsim"]["reason"]

    text = compare_results(a, b)
    assert "intervals overlap" in text and "paired B - A" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("shapes_acc"))
    assert "n=6" in line  # per-sample values pair up by sample id
    assert "n/a (no shared per-sample values)" in next(ln for ln in text.splitlines() if ln.startswith("fid"))
    args = parser.parse_args(["eval", "compare", str(results[0]), str(results[1])])
    assert args.fn(args) == 0 and "shapes_acc" in capsys.readouterr().out

    # Table 1: the paper's rows beside ours (a fake comparable UCF + MSR-VTT pair merged by run name)
    ucf = {
        "benchmark": "ucf101",
        "run_name": "mine",
        "comparable_to_paper": True,
        "num_samples": 2048,
        "protocol": {"full_name": "ucf101_zeroshot_v1"},
        "generator": {"name": "ckpt"},
        "metrics": {
            "is": {"value": 20.5, "ci_low": 20.0, "ci_high": 21.0},
            "fvd": {"value": None, "reason": "no I3D file"},
        },
    }
    msr = {
        "benchmark": "msrvtt",
        "run_name": "mine",
        "comparable_to_paper": True,
        "num_samples": 2990,
        "protocol": {"full_name": "msrvtt_clipsim_v1"},
        "generator": {"name": "ckpt"},
        "metrics": {"clipsim": {"value": 0.29, "ci_low": 0.288, "ci_high": 0.292}},
    }
    md, csv_path, png = render_table1([ucf, msr, b], tmp_path / "t1")
    text = md.read_text()
    assert "| Make-A-Video | 33.000 | 367.230 | 0.3049 | paper |" in text
    assert "| FusionFrames Conv1dAttn1dBlocks (220k) | 24.325 | 433.054 | 0.2976 | paper |" in text
    assert "ours: mine | 20.500 [20.000, 21.000] | unavailable | 0.2900 [0.2880, 0.2920]" in text
    assert "no I3D file" in text and "Offline (bundled data): NOT COMPARABLE" in text
    rows = csv_path.read_text().strip().splitlines()
    assert "| VideoGen (IS/CLIPSIM as quoted in issue 8) | 77.610 | – | 0.3127 | paper |" in text
    assert len(rows) == 1 + 16 + 1 and rows[0].startswith("method,group,source,comparable_to_paper,is,is_ci_low")
    assert png.stat().st_size > 1000


def test_real_statistics_resume_chunk_by_chunk(tmp_path: Path, ucf_root: Path) -> None:
    from ff_lightning.evaluation.evaluators import Evaluator
    from ff_lightning.evaluation.protocol import MetricSpec, RealSpec
    from ff_lightning.evaluation.reference import real_statistics

    calls: list[int] = []

    def fn(video: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if fail[0] and len(calls) >= 2:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(video.shape[0])
        return torch.cat([video.mean(dim=(1, 3, 4)), video.std(dim=(1, 3, 4))], dim=1)

    fail = [True]
    ev = Evaluator("fvd_i3d", "i3d_torchscript", fn, [{"sha256": "ab" * 32}], {})
    spec = RealSpec(dataset="ucf101", split="all", num_frames=16, size=[16, 16], batch_size=1, chunk_size=2)
    metric = MetricSpec(kind="fvd_i3d", num_frames=16, size=[16, 16])
    with pytest.raises(KeyboardInterrupt):
        real_statistics(spec, metric, ev, ucf_root, progress=False)
    assert calls == [1, 1]  # the first chunk (2 clips) is saved, the second was interrupted
    fail[0] = False
    calls.clear()
    stats = real_statistics(spec, metric, ev, ucf_root, progress=False)
    assert calls == [1] * 4 and stats.n_videos == 6 and not stats.reused  # only chunks 2 and 3 computed
    again = real_statistics(spec, metric, ev, ucf_root, progress=False)
    assert again.reused and again.key == stats.key and torch.equal(again.mu, stats.mu)
    other = Evaluator("fvd_i3d", "i3d_torchscript", fn, [{"sha256": "cd" * 32}], {})
    assert real_statistics(spec, metric, other, ucf_root, progress=False).key != stats.key  # keyed by evaluator hash
