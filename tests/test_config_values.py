"""Config validation reports every problem at once, out-of-range values included, before a run folder exists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ff_lightning.config import ConfigError, load_config
from ff_lightning.data.config import DataConfig

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "experiments" / "decoder" / "base.yaml"

# (override, what the message must say): each of these passed validation before and crashed later, or was accepted
BAD_VALUES = [
    ("trainer.max_steps=-5", "trainer.max_steps must be >= 0"),
    ("optim.lr=-1", "optim.lr must be positive, got -1.0"),
    ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
    ("data.size=[32]", "data.size must be [H, W] with two positive values, got [32]"),
    ("data.num_frames=0", "data.num_frames must be >= 1, got 0"),
    ("data.stride=-1", "data.stride must be >= 1, got -1"),
    ("data.val_fraction=2.5", "data.val_fraction must be a fraction in [0, 1], got 2.5"),
]


@pytest.mark.parametrize("override, fragment", BAD_VALUES)
def test_out_of_range_value_is_refused(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(BASE, [override])
    assert fragment in str(e.value)


def test_every_problem_listed_at_once_unknown_key_does_not_hide_the_rest() -> None:
    overrides = [o for o, _ in BAD_VALUES] + [
        "trainer.max_stepz=3",  # unknown key: used to stop validation before anything else was checked
        "model.variant=conv9x9x9",  # unknown variant
        "trainer.log_every_n_steps=abc",  # wrong type
        "module.l1_weight=heavy",  # wrong type in the system's own section
    ]
    with pytest.raises(ConfigError) as e:
        load_config(BASE, overrides)
    text = str(e.value)
    lines = text.splitlines()
    for _, fragment in BAD_VALUES:
        assert fragment in text
    for fragment in (
        "unknown key 'trainer.max_stepz'",
        "unknown model.variant 'conv9x9x9'",
        "invalid value for 'trainer.log_every_n_steps'",
        "invalid value for 'module.l1_weight'",
    ):
        assert fragment in text
    assert len(lines) == 1 + len(BAD_VALUES) + 4  # the header and one line per problem, no omegaconf detail lines


def test_data_config_dataclass_lists_all_its_problems() -> None:
    with pytest.raises(ValueError) as e:
        DataConfig(size=[32], stride=-1, val_fraction=2.5, batch_size=0, num_workers=-1)
    for key in ("data.size", "data.stride", "data.val_fraction", "data.batch_size", "data.num_workers"):
        assert key in str(e.value)
    DataConfig(val_fraction=1.0, max_samples=None)  # the edges stay valid


def test_ff_train_reports_all_problems_and_creates_no_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "ff_lightning.cli", "train", str(BASE), f"run.output_dir={out}", "trainer.max_stepz=1"]
    proc = subprocess.run(
        [*cmd, *(o for o, _ in BAD_VALUES)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert all(fragment in proc.stderr for _, fragment in BAD_VALUES) and "trainer.max_stepz" in proc.stderr
    assert not out.exists()


def test_system_build_error_leaves_no_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The decoder system refuses a missing movq_ckpt when it is built: that now happens before the run folder."""
    from ff_lightning.cli import main

    out = tmp_path / "runs"
    assert main(["train", str(BASE), f"run.output_dir={out}", "module.movq_ckpt=null"]) == 2
    assert "module.movq_ckpt is not set" in capsys.readouterr().err
    assert not out.exists()
