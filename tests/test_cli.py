"""The ``ff`` command line as a user runs it (subprocess for the console script, in-process where cheaper)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ff_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
FF = [sys.executable, "-m", "ff_lightning.cli"]


def test_help_lists_subcommands() -> None:
    out = subprocess.run([*FF, "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("train", "params", "data", "ablate"):
        assert cmd in out
    sub = subprocess.run([*FF, "params", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--preset" in sub and "meta device" in sub


def test_params_paper_decoder_matches_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "decoder", "conv3x3x3_attn", "--preset", "paper", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["total"] == 556_645_919
    assert row["trainable"] + row["frozen"] == row["total"]


def test_params_human_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "decoder", "image", "--preset", "paper"]) == 0
    assert "161,118,211" in capsys.readouterr().out


def test_params_unknown_variant_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "decoder", "conv5x5x5"]) == 2
    err = capsys.readouterr().err
    assert "valid choices" in err and "conv3x1x1" in err


def test_train_rejects_bad_config_before_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["train", str(ROOT / "experiments/decoder/base.yaml"), "trainer.max_stepz=1", f"run.output_dir={tmp_path}"]
    )
    assert code == 2
    assert "valid keys of trainer" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was written


def test_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(ROOT / "experiments/decoder/base.yaml"), "model.variant=2d_to_3d", "--print-config"]) == 0
    assert "variant: 2d_to_3d" in capsys.readouterr().out


@pytest.mark.slow
def test_train_fast_dev_run_on_bundled_data(tmp_path: Path, bundled_cache: Path) -> None:
    """`ff train` end to end (console-script path) on the bundled real footage with a tiny model."""
    cmd = [
        *FF,
        "train",
        str(ROOT / "experiments/movq/tiny.yaml"),
        "trainer.fast_dev_run=true",
        f"run.output_dir={tmp_path}",
        "data.batch_size=2",
        "trainer.enable_progress_bar=false",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(bundled_cache), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    configs = list(tmp_path.glob("movq_tiny/version_*/config.yaml"))
    assert len(configs) == 1 and "system: movq" in configs[0].read_text()


def _env(cache: Path) -> dict[str, str]:
    import os

    return {**os.environ, "FF_CACHE_DIR": str(cache)}


def test_params_tiny_variant_matches_a_real_build(capsys: pytest.CaptureFixture[str]) -> None:
    from ff_lightning import registry

    assert main(["params", "decoder", "conv3x1x1", "--json"]) == 0  # default preset: tiny
    row = json.loads(capsys.readouterr().out)
    real = registry.param_counts(registry.build("decoder", "conv3x1x1", "tiny"))
    assert row["preset"] == "tiny" and row["total"] == real["total"] > 0
