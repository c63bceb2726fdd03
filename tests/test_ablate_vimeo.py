"""Table 3 on the real Vimeo-90k layout (issue 13): generated 7-frame septuplet folders (448x256 and another size) go
through the decoder sweep end to end at tiny size; train / test data from different sources; every pre-flight check
stops with one line and exit 2 before any work; make variables are checked; sweeps outside the yaml never write the
committed output; two runs on one cache share the work (lock); a code-needing checkpoint pickle is refused in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from ff_lightning import ablate
from ff_lightning.cli import main
from ff_lightning.data.septuplets import write_synthetic_septuplets

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vimeo")
    return {
        "448x256": write_synthetic_septuplets(root / "vimeo_septuplet", 3, 2, size=(256, 448)),
        "other": write_synthetic_septuplets(root / "vimeo_small", 2, 3, size=(72, 100), seed=1),
    }


def _write_sweep(root: Path, *, out: str = "committed/table3") -> Path:
    """A 2-row decoder sweep (image as is, 3x1x1 temporal for 1 step) at 16 px; its MoVQ trains 2 steps."""
    (root / "movq.yaml").write_text(
        yaml.safe_dump(
            {
                "base": str(REPO / "experiments" / "movq" / "tiny.yaml"),
                "data": {"batch_size": 2, "max_samples": 4},
                "trainer": {
                    "max_steps": 2,
                    "accelerator": "cpu",
                    "enable_progress_bar": False,
                    "limit_val_batches": 0.0,
                },
                "module": {"log_video_every_n_steps": 0},
            }
        )
    )
    sweep = {
        "name": "t3vimeo",
        "experiment": str(REPO / "experiments" / "decoder" / "base.yaml"),
        "evaluator": "decoder",
        "prepare": "movq_image",
        "prepare_experiment": "movq.yaml",
        "output": str(root / out),
        "cache_dir": str(root / "rows"),
        "metrics": ["psnr", "ssim", "mse", "lpips", "flicker"],
        "columns": ["model.variant", "module.policy"],
        "params_component": "decoder",
        "reference_row": "image",
        "aliases": {"steps": "trainer.max_steps", "movq_ckpt": "module.movq_ckpt", "preset": "model.preset"},
        "overrides": {
            "data.size": [16, 16],
            "trainer.accelerator": "cpu",
            "trainer.enable_progress_bar": False,
            "trainer.limit_val_batches": 0.0,
            "run.output_dir": str(root / "runs"),
            "module.log_video_every_n_steps": 0,
        },
        "rows": [
            {"name": "image", "set": {"model.variant": "image", "module.policy": "none", "trainer.max_steps": 0}},
            {
                "name": "c311",
                "set": {"model.variant": "conv3x1x1", "module.policy": "temporal", "trainer.max_steps": 1},
            },
        ],
    }
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("FF_WEIGHTS_DIR", raising=False)
    return tmp_path


def test_every_decoder_variant_decodes_7_frames() -> None:
    """Septuplets go through every variant whole: 7 frames in, 7 out, each video decoded on its own."""
    from ff_lightning import registry
    from ff_lightning.models.video_decoder import decode_video

    torch.manual_seed(0)
    movq = registry.build("movq", "movqgan", "tiny")
    latents = movq.encode(torch.randn(14, 3, 16, 16))
    latents = latents[0] if isinstance(latents, tuple) else latents
    for variant in registry.variants("decoder"):
        movq.decoder = registry.build("decoder", variant, "tiny")
        for p in movq.decoder.parameters():  # zero-initialised temporal parts made non-trivial
            if not p.any():
                p.data.normal_(0, 0.05)
        with torch.no_grad():
            both = decode_video(movq, latents, 7)
            first = decode_video(movq, latents[:7], 7)
        assert both.shape == (14, 3, 16, 16), variant
        torch.testing.assert_close(both[:7], first, atol=1e-5, rtol=1e-4, msg=variant)


@pytest.mark.parametrize("which", ["448x256", "other"])
def test_septuplet_folder_end_to_end(which: str, folders: dict[str, Path], work: Path) -> None:
    """`make ablate-decoder DATA=folder` (the Makefile's expansion): 7-frame clips, every test septuplet scored,
    the setup in the table header, the tables in their own folder (not the sweep's committed output)."""
    folder = folders[which]
    path = _write_sweep(work)
    argv = [
        "ablate",
        str(path),
        f"data.train.root={folder}",
        "data.train.num_frames=all",
        f"data.test.root={folder}",
        "data.test.num_frames=all",
    ]
    assert main(argv) == 0
    (md_path,) = (work / "runs" / "ablations").glob("t3vimeo-*/table3.md")
    assert not (work / "committed").exists()
    records = [json.loads(p.read_text()) for p in sorted((work / "rows").glob("*.json"))]
    n_test = len((folder / "sep_testlist.txt").read_text().split())
    for r in records:
        assert r["config"]["data"]["source"] == "vimeo_septuplet" and r["config"]["data"]["num_frames"] == 7
        assert r["eval_data"]["num_frames"] == 7 and r["eval_data"]["max_val_samples"] is None
        assert {m["n"] for k, m in r["metrics"].items() if k != "lpips"} == {n_test}  # every listed septuplet
    md = md_path.read_text()
    assert f"fine-tuned on vimeo_septuplet at .../{folder.parent.name}/{folder.name}, train split, 7-frame clips" in md
    assert f"tested on vimeo_septuplet at .../{folder.parent.name}/{folder.name}, test split, 7-frame clips" in md
    assert f"n = {n_test} sequences (every listed sequence)" in md and "crop 16x16 px" in md
    assert "image MoVQ $FF_CACHE_DIR/models/movq-tiny-" in md and "training steps 0 (image); 1 (c311)" in md
    assert str(work) not in md and str(work) not in md_path.with_suffix(".csv").read_text()


def test_paper_split_trains_on_8_frames_and_tests_on_septuplets(
    folders: dict[str, Path], work: Path, data_cache: Path
) -> None:
    """The paper's protocol: fine-tuned on 8-frame clips of one source (bundled footage), scored on all 7 frames of
    every septuplet of another (the Vimeo folder's test list); the CSV records both."""
    import csv

    folder = folders["448x256"]
    path = _write_sweep(work)
    records = ablate.run_sweep(
        path,
        [
            f"data.train.cache_dir={data_cache}",
            "data.train.max_samples=2",
            f"data.test.root={folder}",
            "data.test.num_frames=all",
            "output=t3/split",
        ],
    )
    trained = records[1]
    assert trained["config"]["data"]["source"] == "bundled_septuplet" and trained["config"]["data"]["num_frames"] == 8
    assert trained["eval_data"]["source"] == "vimeo_septuplet" and trained["eval_data"]["num_frames"] == 7
    assert trained["metrics"]["psnr"]["n"] == 2  # the training source's max_samples does not cap the test list
    rows = list(csv.DictReader(open(work / "t3" / "split.csv", newline="")))
    assert [(r["train_frames"], r["test_frames"], r["steps"]) for r in rows] == [("8", "7", "0"), ("8", "7", "1")]
    assert rows[1]["train_data"] == "bundled_septuplet (bundled), train split"
    assert rows[1]["test_data"].startswith("vimeo_septuplet at .../") and len(rows[1]["movq_sha256"]) == 64


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ff_lightning.data.bundled import build_all

    cache = tmp_path_factory.getbasetemp() / "ff_bundled_32"
    build_all(cache, reduced=True, size=32, progress=False, sets=["footage"])
    return cache


# ------------------------------------------------------------------------------------------ one-line pre-flight
def _fail_one_line(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """``ff`` exits 2 with one line on stderr, before any MoVQ or row is trained."""
    import ff_lightning.evaluation.decoder as ev
    import ff_lightning.train as train

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("no work expected before the pre-flight error")

    monkeypatch.setattr(ev, "prepare_movq", refuse)
    monkeypatch.setattr(train, "fit", refuse)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("ff ablate: error: ")
    return err


def test_preflight_wrong_frame_count(folders: dict[str, Path], work: Path, capsys, monkeypatch) -> None:
    path = _write_sweep(work)
    err = _fail_one_line(["ablate", str(path), f"data.train.root={folders['448x256']}"], capsys, monkeypatch)
    assert "clips of 8 frames" in err and "sequences have 7" in err and "TRAIN_FRAMES=7" in err
    train = [f"data.train.root={folders['448x256']}", "data.train.num_frames=all"]
    err = _fail_one_line(
        ["ablate", str(path), *train, f"data.test.root={folders['other']}", "data.test.num_frames=9"],
        capsys,
        monkeypatch,
    )
    assert "test data" in err and "TEST_FRAMES=7" in err


def test_preflight_empty_test_list(folders: dict[str, Path], work: Path, capsys, monkeypatch) -> None:
    import shutil

    empty = shutil.copytree(folders["other"], work / "emptylist")
    (empty / "sep_testlist.txt").write_text("")
    path = _write_sweep(work)
    err = _fail_one_line(
        [
            "ablate",
            str(path),
            f"data.train.root={folders['other']}",
            "data.train.num_frames=all",
            f"data.test.root={empty}",
            "data.test.num_frames=all",
        ],
        capsys,
        monkeypatch,
    )
    assert "no test samples" in err or "no samples" in err, err


def test_preflight_missing_or_unknown_data(work: Path, capsys, monkeypatch) -> None:
    path = _write_sweep(work)
    err = _fail_one_line(["ablate", str(path), f"data.test.root={work / 'nope'}"], capsys, monkeypatch)
    assert "TEST_DATA=" in err and "no such file or folder" in err
    (work / "plain").mkdir()
    err = _fail_one_line(["ablate", str(path), f"data.train.root={work / 'plain'}"], capsys, monkeypatch)
    assert "data.train.source=" in err


class _Payload:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {os.environ.get('FF_PAYLOAD_MARK', '/nonexistent/x')}",))


def test_code_needing_checkpoint_is_refused_in_one_line(work: Path, capsys, monkeypatch) -> None:
    mark = work / "payload_ran"
    monkeypatch.setenv("FF_PAYLOAD_MARK", str(mark))
    evil = work / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _Payload()}, evil)
    path = _write_sweep(work)
    err = _fail_one_line(["ablate", str(path), f"rows.c311.checkpoint={evil}"], capsys, monkeypatch)
    assert "refusing to load" in err and "weights_only" in err and not mark.exists()


# --------------------------------------------------------------------------------------------------- make
def _make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-n", "-s", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def _command(*args: str) -> str:
    """The command ``make -n`` would run, on one line."""
    return " ".join(_make(*args).stdout.replace("\\\n", " ").split())


@pytest.mark.parametrize("typo", ["MOVQ_CPKT=x.ckpt", "STEP=5", "TRAIN_DTA=/x"])
def test_unknown_make_variable_is_an_error(typo: str) -> None:
    proc = _make("ablate-decoder", typo)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert typo.split("=")[0] in err and "MOVQ_CKPT" in err and "STEPS" in err


def test_make_variables_reach_the_sweep() -> None:
    cmd = _command("ablate-decoder", "DATA=/d/vimeo", "STEPS=3", "ONLY=image,c311", "MAX_TEST=5")
    for part in (
        "data.train.root=/d/vimeo",
        "data.train.num_frames=all",
        "data.test.root=/d/vimeo",
        "data.test.num_frames=all",
        "steps=3",
        "--only image --only c311",
        "data.test.max_samples=5",
    ):
        assert part in cmd, (part, cmd)
    cmd = _command("ablate-decoder", "TRAIN_DATA=bundled", "TEST_DATA=/v", "TRAIN_FRAMES=8")
    assert "data.train.root=bundled data.train.num_frames=8 data.test.root=/v data.test.num_frames=all" in cmd


# ------------------------------------------------------------------------------------ output folder and lock
def test_flags_then_overrides_and_own_output(folders: dict[str, Path], work: Path) -> None:
    """`--only ROW key=value` parses; a run that is not the sweep as written never writes the yaml's output."""
    folder = folders["other"]
    path = _write_sweep(work)
    common = [f"data.train.root={folder}", "data.train.num_frames=all"]
    assert main(["ablate", str(path), "--only", "image", *common, "steps=0"]) == 0
    assert not (work / "committed").exists()
    (own,) = (work / "runs" / "ablations").glob("t3vimeo-*/table3.csv")
    assert [r.split(",")[0] for r in own.read_text().splitlines()[1:]] == ["image"]
    assert main(["ablate", str(path), "--only", "image", *common, "output=mine/t"]) == 0
    assert (work / "mine" / "t.csv").is_file() and not (work / "committed").exists()


def test_second_run_waits_for_the_lock_and_reuses_the_row(
    folders: dict[str, Path], work: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """While another run holds a row's lock, a second run waits (saying so) and then takes the row from the cache
    that run wrote, instead of computing it again."""
    import logging

    import ff_lightning.evaluation.decoder as ev
    from ff_lightning.ablate_preflight import file_lock

    path = _write_sweep(work)
    over = [f"data.train.root={folders['other']}", "data.train.num_frames=all", "output=o/t"]
    (first,) = ablate.run_sweep(path, over, only=["image"])
    (row_json,) = (work / "rows").glob("image-*.json")
    saved = row_json.read_text()
    row_json.unlink()  # the "other run" is still computing the row

    def no_eval(*a: Any, **k: Any) -> Any:
        raise AssertionError("the row was computed twice")

    monkeypatch.setattr(ev, "evaluate_decoder", no_eval)
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.setdefault("r", ablate.run_sweep(path, over, only=["image"])))
    caplog.set_level(logging.INFO, logger="ff_lightning.ablate_preflight")
    with file_lock(row_json.with_suffix(".lock"), "test"):
        worker.start()
        deadline = time.time() + 60
        while "waiting for another ff ablate run" not in caplog.text and time.time() < deadline:
            time.sleep(0.05)
        assert "waiting for another ff ablate run that is computing row image" in caplog.text
        assert worker.is_alive()
        row_json.write_text(saved)  # the other run finishes the row, then releases the lock
    worker.join(timeout=60)
    assert result["r"][0]["metrics"] == first["metrics"]


def test_tables_name_no_machine_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cache, working and home folders are written as $FF_CACHE_DIR, . and ~ (the LPIPS reason used to carry them)."""
    from ff_lightning.ablate_preflight import display_path, scrub_paths

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FF_CACHE_DIR", str(tmp_path / ".cache"))
    text = f"put it at {tmp_path}/.cache/weights/a.pth or {Path.home()}/x; run in {tmp_path}/runs and {tmp_path}"
    assert scrub_paths(text) == "put it at $FF_CACHE_DIR/weights/a.pth or ~/x; run in ./runs and ."
    assert display_path(tmp_path / ".cache" / "models" / "m.safetensors") == "$FF_CACHE_DIR/models/m.safetensors"
    assert display_path(tmp_path / "data" / "vimeo") == "./data/vimeo"
    assert display_path("/srv/a/b/vimeo_septuplet") == ".../b/vimeo_septuplet" and display_path(None) == "-"
