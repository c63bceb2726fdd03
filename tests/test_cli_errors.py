"""``ff`` error handling: known error classes print one line with the fix and exit 2 (no traceback); log lines are
printed once; ``ff --help`` imports no torch."""

from __future__ import annotations

import argparse
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ff_lightning import cli
from ff_lightning.cli import main
from ff_lightning.cli_errors import known_error_message

ROOT = Path(__file__).resolve().parents[1]
FF = [sys.executable, "-m", "ff_lightning.cli"]

_NO_TORCH = """
import sys
from ff_lightning.cli import build_parser
parser = build_parser()
parser.format_help()
for argv in (["train", "--help"], ["eval", "--help"], ["generate", "--help"], ["export", "--help"]):
    try:
        parser.parse_args(argv)
    except SystemExit:
        pass
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "lightning", "torchvision"))
assert not heavy, heavy[:5]
print("torch-free")
"""


def test_help_imports_no_torch() -> None:
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "torch-free" in proc.stdout, proc.stderr[-2000:]


def _err_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ff {command}: error: "), err
    return lines[0]


def test_truncated_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(64)}}, whole)
    cut = tmp_path / "last.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert main(["export", str(cut), "--out", str(tmp_path / "out")]) == 2
    line = _err_line(capsys, "export")
    assert f"{cut} is truncated or not a PyTorch checkpoint" in line and "fix:" in line
    cut.write_bytes(b"")  # empty: torch.load raises EOFError
    assert main(["export", str(cut), "--out", str(tmp_path / "out")]) == 2
    assert f"{cut} is truncated" in _err_line(capsys, "export")


def test_pickle_refusal_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "extra": argparse.Namespace(a=1)}, evil)  # needs a class: refused
    assert main(["export", str(evil), "--out", str(tmp_path / "out")]) == 2
    line = _err_line(capsys, "export")
    assert f"refusing to load {evil}" in line and "re-save" in line


@pytest.mark.parametrize(
    "exc, fragments",
    [
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/full/disk/last.ckpt"),
         ["no space left on device writing /full/disk/last.ckpt", "fix: free disk space"]),
        ("weights_checksum", ["sha256 mismatch", "fix: replace the file"]),
        ("no_samples", ["webvid: no usable train sample", "fix: point data.root"]),
    ],
)  # fmt: skip
def test_known_errors_raised_by_a_command_are_one_line(
    exc: object, fragments: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if exc == "weights_checksum":
        from ff_lightning.metrics.weights import WeightsChecksumError

        exc = WeightsChecksumError("weights 'i3d' at /w/i3d.pt: sha256 mismatch, expected ab (pinned), got cd")
    elif exc == "no_samples":
        from ff_lightning.data.base import NoUsableSamplesError

        exc = NoUsableSamplesError("webvid: no usable train sample under /d after 16 attempts")

    def fail(args: argparse.Namespace) -> int:
        raise exc  # type: ignore[misc]

    monkeypatch.setattr(cli, "_cmd_params", fail)
    assert main(["params", "--list"]) == 2
    line = _err_line(capsys, "params")
    assert all(f in line for f in fragments), line


def test_unknown_errors_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_cmd_params", fail)
    with pytest.raises(ZeroDivisionError):
        main(["params", "--list"])
    assert known_error_message(RuntimeError("not from torch.load")) is None


def test_dataloader_worker_reraise_is_reduced_to_the_original_message() -> None:
    from ff_lightning.data.base import NoUsableSamplesError

    wrapped = NoUsableSamplesError(
        "Caught NoUsableSamplesError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nff_lightning.data.base.NoUsableSamplesError: webvid: no usable train sample\n'
    )
    message = known_error_message(wrapped)
    assert message is not None and message.startswith("webvid: no usable train sample; fix:")


def test_no_usable_samples_in_training_one_line_and_log_lines_once(tmp_path: Path) -> None:
    """Real path: every listed clip is missing, so the first training batch fails inside Lightning's fit."""
    data = tmp_path / "webvid"
    data.mkdir()
    (data / "results_2M_train.csv").write_text(
        "videoid,contentUrl,duration,page_dir,name\n"
        + "".join(f"{i},https://example.invalid/{i}.mp4,PT00H00M10S,000001_000050,clip {i}\n" for i in range(4))
    )
    cmd = [
        *FF, "train", str(ROOT / "experiments/movq/tiny.yaml"), f"run.output_dir={tmp_path / 'runs'}",
        "data.source=webvid", f"data.root={data}", "data.val_split=train", "data.max_attempts=2",
        "data.batch_size=2", "trainer.max_steps=1", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ff train: error:")]
    assert len(errors) == 1 and "no usable train sample" in errors[0] and "fix:" in errors[0]
    assert proc.stderr.count("Seed set to 0") == 1  # Lightning's handler and ours printed it twice before


def test_disk_full_seen_through_torch_save_runtime_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a full tmpfs, torch.save's zip writer raises RuntimeError("... unexpected pos ...") while handling the
    write's ENOSPC OSError (seen in a real `ff train` on a 200 KiB tmpfs): still the disk-full message, naming the
    file of the atomic write."""
    target = tmp_path / "checkpoints" / "last.ckpt"

    def atomic_torch_save(obj: object, path: Path) -> None:  # the shape of ff_lightning.io.atomic_torch_save
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 174016 vs 173904") from None

    def fail(args: argparse.Namespace) -> int:
        atomic_torch_save({}, target)
        return 0

    monkeypatch.setattr(cli, "_cmd_params", fail)
    assert main(["params", "--list"]) == 2
    line = _err_line(capsys, "params")
    assert f"no space left on device writing {target}" in line and "fix: free disk space" in line


def test_every_known_error_name_is_a_class_defined_there() -> None:
    """The table matches by name (no imports): a class moved to another module must be renamed in the table."""
    import importlib

    from ff_lightning.cli_errors import KNOWN_ERRORS

    for qualname in KNOWN_ERRORS:
        module, _, name = qualname.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        assert isinstance(cls, type) and issubclass(cls, Exception), qualname
        assert f"{cls.__module__}.{cls.__qualname__}" == qualname  # defined there, not re-exported
