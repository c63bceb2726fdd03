"""Fault tolerance: a training process killed (SIGKILL) mid-epoch and resumed with ``resume=auto`` ends with the same
weights, EMA and optimiser state, having seen the same data in the same order, as an uninterrupted run; a non-finite
loss stops the run with a checkpoint and a message naming step and batch; checkpoint files are written atomically.

The kill-and-resume run is the tiny text-to-image system (random noise and timesteps, AdamW, warmup schedule, EMA)
on 32 px frames of the bundled real footage with a random MoVQ: 8 steps over 6 samples (3 batches an epoch), a
checkpoint every 2 steps, killed when step 5 starts (after the step-4 checkpoint, in the middle of epoch 1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from ff_lightning import cli
from ff_lightning import train as train_mod
from ff_lightning.callbacks import NONFINITE_PREFIX, AtomicCheckpointIO
from ff_lightning.checkpoints import load_checkpoint
from ff_lightning.config import load_config
from ff_lightning.data.samplers import EpochSampler
from ff_lightning.train import find_last_checkpoint

REPO = Path(__file__).resolve().parents[1]
T2I = REPO / "experiments" / "t2i" / "tiny.yaml"
MOVQ = REPO / "experiments" / "movq" / "tiny.yaml"
KILL_AT = 5


# ------------------------------------------------------------------------------------------- helper callbacks
class OrderLog(L.Callback):
    """Appends ``{"step", "epoch", "indices"}`` of every trained batch to a JSON-lines file (flushed each line, so a
    killed process keeps what it wrote)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        row = {
            "step": trainer.global_step,
            "epoch": [m["epoch"] for m in batch["meta"]],
            "indices": [m["requested_index"] for m in batch["meta"]],
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()


class KillAt(L.Callback):
    """SIGKILLs its own process when training step ``step`` starts (no cleanup, no exception handlers)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonBatch(L.Callback):
    """Turns the video of training batch ``batch_idx`` (first epoch) into NaNs."""

    def __init__(self, batch_idx: int) -> None:
        self.batch_idx = batch_idx
        self.module: Any = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.module = pl_module
        if trainer.current_epoch == 0 and batch_idx == self.batch_idx:
            batch["video"].fill_(float("nan"))


# A script that is `ff train` with the two callbacks above added (the test runs it in a subprocess and kills it)
_SCRIPT = """
import functools, sys
sys.path.insert(0, {tests!r})
from test_fault_tolerance import KillAt, OrderLog
import ff_lightning.train as train
train.fit = functools.partial(train.fit, extra_callbacks=[OrderLog({log!r}), KillAt({kill})])
from ff_lightning.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread here as in the subprocess (OMP_NUM_THREADS=1): bit-equality needs the same reductions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Reduced bundled footage at 32 px (shared with other tests of the session; the build is idempotent)."""
    from ff_lightning.data.bundled import build_all

    cache = tmp_path_factory.getbasetemp() / "ff_bundled_32"
    build_all(cache, reduced=True, size=32, progress=False, sets=["footage"])
    return cache


def _t2i_overrides(cache: Path, out: Path) -> list[str]:
    return [
        "data.source=bundled_septuplet",
        f"data.cache_dir={cache}",
        "data.batch_size=2",
        "data.max_samples=6",
        "trainer.max_steps=8",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.enable_progress_bar=false",
        "trainer.limit_val_batches=0",
        "trainer.val_check_interval=null",
        "trainer.log_every_n_steps=1",
        "optim.warmup_steps=4",
        "optim.ema_decay=0.9",
        "module.allow_random_movq=true",
        "module.log_samples_every_n_steps=0",
        f"run.output_dir={out}",
        "run.checkpoint_every_n_steps=2",
    ]


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert a["ema_state_dict"].keys() == b["ema_state_dict"].keys()
    for k in a["ema_state_dict"]:
        assert torch.equal(a["ema_state_dict"][k], b["ema_state_dict"][k]), f"ema {k}"
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[k][name], sb[k][name]), f"optimizer state {k} {name}"
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_kill_mid_epoch_and_resume_auto_matches_uninterrupted(
    data_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    over = _t2i_overrides(data_cache, tmp_path / "straight")
    # 1. uninterrupted, in this process
    straight_log = tmp_path / "straight.jsonl"
    straight = train_mod.fit(load_config(T2I, over), extra_callbacks=[OrderLog(straight_log)])
    assert straight.checkpoint is not None

    # 2. `ff train` in a subprocess, SIGKILLed when step 5 starts
    out = tmp_path / "killed"
    killed_log = tmp_path / "killed.jsonl"
    script = tmp_path / "ff_train_killed.py"
    script.write_text(_SCRIPT.format(tests=str(Path(__file__).parent), log=str(killed_log), kill=KILL_AT))
    argv = [sys.executable, str(script), "train", str(T2I), *_t2i_overrides(data_cache, out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ckpts = sorted(p.name for p in (out / "t2i_tiny" / "version_0" / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and not [n for n in ckpts if n.endswith(".tmp")], ckpts
    assert load_checkpoint(out / "t2i_tiny" / "version_0" / "checkpoints" / "last.ckpt")["global_step"] == 4

    # 3. `ff train ... resume=auto` (the CLI shorthand) continues from the step-4 checkpoint
    resumed_log = tmp_path / "resumed.jsonl"
    monkeypatch.setattr(train_mod, "fit", _with_callbacks(train_mod.fit, [OrderLog(resumed_log)]))
    assert cli.main(["train", str(T2I), *_t2i_overrides(data_cache, out), "resume=auto"]) == 0
    resumed_ckpt = out / "t2i_tiny" / "version_1" / "checkpoints" / "last.ckpt"

    # the same batches in the same order: steps 1..4 before the kill (step 5 ran after the last checkpoint and is
    # redone by the resumed run), 5..8 after
    want = _rows(straight_log)
    before = [r for r in _rows(killed_log) if r["step"] <= 4]
    after = _rows(resumed_log)
    assert [r["step"] for r in after] == [5, 6, 7, 8]
    assert before + after == want
    assert [r["epoch"][0] for r in want] == [0, 0, 0, 1, 1, 1, 2, 2]  # the checkpoint (step 4) is inside epoch 1
    # bit-equal weights, EMA, optimiser moments and scheduler
    _assert_same_state(load_checkpoint(straight.checkpoint), load_checkpoint(resumed_ckpt))


def _with_callbacks(fn: Any, callbacks: list[Any]) -> Any:
    def wrapped(cfg: Any, *, extra_callbacks: list[Any] | None = None) -> Any:
        return fn(cfg, extra_callbacks=[*(extra_callbacks or []), *callbacks])

    return wrapped


# ----------------------------------------------------------------------------------------------- non-finite loss
def test_nonfinite_loss_stops_with_checkpoint_step_and_batch(
    data_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    poison = PoisonBatch(batch_idx=2)
    monkeypatch.setattr(train_mod, "fit", _with_callbacks(train_mod.fit, [poison]))
    over = [
        f"data.cache_dir={data_cache}",
        "data.batch_size=2",
        "data.max_samples=8",
        "trainer.max_steps=6",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.enable_progress_bar=false",
        "trainer.limit_val_batches=0",
        "module.log_video_every_n_steps=0",
        f"run.output_dir={tmp_path}",
        "run.checkpoint_every_n_steps=1",
    ]
    assert cli.main(["train", str(MOVQ), *over]) == 1
    err = capsys.readouterr().err
    ckpt_dir = tmp_path / "movq_tiny" / "version_0" / "checkpoints"
    saved = ckpt_dir / f"{NONFINITE_PREFIX}step=2-batch=2.ckpt"
    assert "non-finite loss" in err and "global step 2" in err and "batch 2" in err and str(saved) in err, err
    ckpt = load_checkpoint(saved)
    assert ckpt["global_step"] == 2
    # the state before the bad step: finite, and the weights the module still holds (the step never ran)
    module_state = poison.module.state_dict()
    for k, v in ckpt["state_dict"].items():
        assert torch.isfinite(v).all(), k
        assert torch.equal(v, module_state[k]), k
    # resume=auto continues from the last good checkpoint, never from the non-finite one
    assert find_last_checkpoint(tmp_path, "movq_tiny") == ckpt_dir / "last.ckpt"


# ------------------------------------------------------------------------------------------------ resume pieces
def test_find_last_checkpoint_newest_and_not_nonfinite(tmp_path: Path) -> None:
    assert find_last_checkpoint(tmp_path, "run") is None
    files = {
        "version_0/checkpoints/last.ckpt": 100,
        "version_1/checkpoints/epoch=0-step=6.ckpt": 300,
        "version_1/checkpoints/last.ckpt": 300,
        "version_1/checkpoints/nonfinite-step=7-batch=0.ckpt": 400,
        "version_2/config.yaml": 500,
    }
    for rel, t in files.items():
        p = tmp_path / "run" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        os.utime(p, ns=(t * 10**9, t * 10**9))
    assert find_last_checkpoint(tmp_path, "run") == tmp_path / "run" / "version_1" / "checkpoints" / "last.ckpt"


def test_epoch_sampler_state_skips_consumed_samples() -> None:
    s = EpochSampler(10, shuffle=True, seed=3)
    s.set_epoch(2)
    full = list(s)
    assert sorted(i for _, i in full) == list(range(10)) and {e for e, _ in full} == {2}
    s.advance(4)
    state = s.state_dict()
    assert state == {"epoch": 2, "consumed": 4}
    fresh = EpochSampler(10, shuffle=True, seed=3)
    fresh.set_epoch(2)
    fresh.load_state_dict(state)
    assert list(fresh) == full[4:]
    assert list(fresh) == full  # the skip applies to one iteration only
    # under DDP every rank takes as many samples as rank 0, whose state the checkpoint holds: each skips its own
    ranks = [EpochSampler(10, seed=3, num_replicas=2, rank=r) for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
        r.load_state_dict({"epoch": 2, "consumed": 2})
    assert [i for r in ranks for _, i in r] == [i for r in range(2) for i in [j for _, j in full][r::2][2:]]
    other = EpochSampler(10, shuffle=True, seed=3)
    other.load_state_dict(state)
    other.set_epoch(3)  # a saved position of another epoch is not applied
    assert len(list(other)) == 10


def test_atomic_checkpoint_io_keeps_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    assert load_checkpoint(path)["global_step"] == 1

    def broken_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["global_step"] == 1  # the previous checkpoint, intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left
    assert io.load_checkpoint(path)["state_dict"]["w"].sum() == 3
