"""``ff ablate``: a tiny end-to-end decoder sweep (prepare an image MoVQ, train/evaluate rows, tables, row cache), the
fail-before-work validation, and the shipped Table 3 sweep (every row composes; paper-preset parameter counts)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from ff_lightning import ablate
from ff_lightning.config import ConfigError
from ff_lightning.registry import UnknownChoiceError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "experiments" / "ablations" / "decoder.yaml"
METRICS = ["psnr", "ssim", "mse", "lpips", "flicker"]
PAPER_IMAGE = {"psnr": 32.9677, "ssim": 0.9056, "mse": 0.0008, "lpips": 0.0049, "params": "161M"}
PAPER_C311_T = {"psnr": 32.2544, "ssim": 0.893, "mse": 0.0009, "lpips": 0.006, "params": "203M"}
PAPER_C311A_D = {"psnr": 33.7343, "ssim": 0.9129, "mse": 0.0007, "lpips": 0.0043, "params": "220M"}
# Table 3 variants -> parameters of the released decoders (ff_lightning/reference manifests)
MANIFEST_PARAMS = {
    "image": 161_118_211,
    "conv3x1x1": 203_210_271,
    "conv3x3x3": 539_803_167,
    "conv3x1x1_attn": 220_053_023,
    "conv3x3x3_attn": 556_645_919,
    "resblock_attn": 220_268_035,
    "2d_to_3d": 419_461_123,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Reduced bundled footage at 32 px, shared by this session's system/ablation tests (the build is idempotent)."""
    from ff_lightning.data.bundled import build_all

    cache = tmp_path_factory.getbasetemp() / "ff_bundled_32"
    build_all(cache, reduced=True, size=32, progress=False, sets=["footage"])
    return cache


def _write_sweep(root: Path, cache: Path, *, image_set: dict[str, Any] | None = None, file: str = "sweep.yaml") -> Path:
    """A 3-row decoder sweep whose prepare step trains a tiny MoVQ for 2 steps; outputs and caches under ``root``."""
    movq = {
        "base": str(REPO / "experiments" / "movq" / "tiny.yaml"),
        "data": {"batch_size": 2, "max_samples": 4, "max_val_samples": 2},
        "trainer": {
            "max_steps": 2,
            "accelerator": "cpu",
            "devices": "1",
            "enable_progress_bar": False,
            "limit_val_batches": 0.0,
            "log_every_n_steps": 1,
        },
        "module": {"log_video_every_n_steps": 0},
    }
    (root / "movq.yaml").write_text(yaml.safe_dump(movq))
    sweep = {
        "name": "tiny_table3",
        "experiment": str(REPO / "experiments" / "decoder" / "base.yaml"),
        "evaluator": "decoder",
        "prepare": "movq_image",
        "prepare_experiment": "movq.yaml",
        "output": str(root / "out" / "table"),
        "cache_dir": str(root / "rows"),
        "metrics": METRICS,
        "higher_is_better": {"psnr": True, "ssim": True, "mse": False, "lpips": False, "flicker": False},
        "columns": ["model.variant", "module.policy"],
        "params_component": "decoder",
        "plot_metric": "psnr",
        "aliases": {"preset": "model.preset", "movq_ckpt": "module.movq_ckpt", "steps": "trainer.max_steps"},
        "overrides": {
            "data.cache_dir": str(cache),
            "data.num_frames": 3,
            "data.size": [32, 32],
            "data.batch_size": 1,
            "data.max_samples": 2,
            "data.max_val_samples": 2,
            "trainer.accelerator": "cpu",
            "trainer.devices": "1",
            "trainer.enable_progress_bar": False,
            "trainer.limit_val_batches": 0.0,
            "run.output_dir": str(root / "runs"),
            "module.log_video_every_n_steps": 0,
        },
        "rows": [
            {
                "name": "image",
                "label": "Image decoder (as is)",
                "paper": PAPER_IMAGE,
                "set": {"model.variant": "image", "module.policy": "none", "trainer.max_steps": 0, **(image_set or {})},
            },
            {
                "name": "c311_temporal",
                "label": "3x1x1 conv, finetune temporal",
                "paper": PAPER_C311_T,
                "set": {"model.variant": "conv3x1x1", "module.policy": "temporal", "trainer.max_steps": 1},
            },
            {
                "name": "c311_attn_decoder",
                "label": "3x1x1 conv + attn, finetune decoder",
                "paper": PAPER_C311A_D,
                "set": {"model.variant": "conv3x1x1_attn", "module.policy": "decoder", "trainer.max_steps": 2},
            },
        ],
    }
    path = root / file
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


class _Counter:
    """Wraps a function and counts its calls (or refuses to run when ``fail``)."""

    def __init__(self, fn: Any, fail: str | None = None) -> None:
        self.fn, self.fail, self.calls = fn, fail, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.fail:
            raise AssertionError(self.fail)
        return self.fn(*args, **kwargs)


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory: pytest.TempPathFactory, data_cache: Path):
    root = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FF_CACHE_DIR", str(root / "ffcache"))  # prepared MoVQ goes here; no LPIPS backbone to be found
        mp.setenv("TORCH_HOME", str(root / "torch"))
        mp.delenv("FF_WEIGHTS_DIR", raising=False)
        path = _write_sweep(root, data_cache)
        records = ablate.run_sweep(path)
    return root, path, records


@pytest.fixture()
def env(sweep_run, monkeypatch: pytest.MonkeyPatch):
    root, path, records = sweep_run
    monkeypatch.setenv("FF_CACHE_DIR", str(root / "ffcache"))
    monkeypatch.setenv("TORCH_HOME", str(root / "torch"))
    monkeypatch.delenv("FF_WEIGHTS_DIR", raising=False)
    return sweep_run


def _read_csv(root: Path) -> list[dict[str, str]]:
    with open(root / "out" / "table.csv", newline="") as f:
        return list(csv.DictReader(f))


def _counters(monkeypatch: pytest.MonkeyPatch, *, fail: bool) -> dict[str, _Counter]:
    import ff_lightning.evaluation.decoder as ev
    import ff_lightning.train as train

    msg = "no work expected" if fail else None
    counters = {
        "fit": _Counter(train.fit, msg),
        "build_system": _Counter(train.build_system, msg),
        "evaluate": _Counter(ev.evaluate_decoder, msg),
    }
    monkeypatch.setattr(train, "fit", counters["fit"])
    monkeypatch.setattr(train, "build_system", counters["build_system"])
    monkeypatch.setattr(ev, "evaluate_decoder", counters["evaluate"])
    return counters


# ------------------------------------------------------------------------------------------------------ end to end
def test_sweep_writes_tables_with_one_row_per_sweep_row(sweep_run) -> None:
    from ff_lightning import registry

    root, _, records = sweep_run
    assert [r["row"] for r in records] == ["image", "c311_temporal", "c311_attn_decoder"]
    for ext in ("md", "csv", "png"):
        assert (root / "out" / f"table.{ext}").is_file(), ext
    assert (root / "out" / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _read_csv(root)
    assert [r["row"] for r in rows] == ["image", "c311_temporal", "c311_attn_decoder"]
    from ff_lightning.reporting import SETUP_COLUMNS

    expected = {
        "row",
        "variant",
        "policy",
        "params",
        "params_paper_preset",
        "params_paper",
        "n",
        "preset",
        *SETUP_COLUMNS,
    }
    for m in METRICS:
        expected |= {m, f"{m}_ci_low", f"{m}_ci_high", f"{m}_paper"}
    assert set(rows[0]) == expected
    assert [(r["variant"], r["policy"]) for r in rows] == [
        ("image", "none"),
        ("conv3x1x1", "temporal"),
        ("conv3x1x1_attn", "decoder"),
    ]
    for r in rows:
        variant = r["variant"]
        for m in ("psnr", "ssim", "mse", "flicker"):
            v, lo, hi = float(r[m]), float(r[f"{m}_ci_low"]), float(r[f"{m}_ci_high"])
            assert math.isfinite(v) and lo <= v <= hi, (r["row"], m)
        assert r["lpips"] == "" and r["lpips_ci_low"] == ""  # no AlexNet file: not measured, never random
        assert int(r["params"]) == registry.param_counts(registry.build("decoder", variant, "tiny"))["total"]
        assert int(r["params_paper_preset"]) == MANIFEST_PARAMS[variant]
        assert r["n"] == "2" and r["preset"] == "tiny"
        assert (r["train_frames"], r["test_frames"], r["size"]) == ("3", "3", "32x32")
        assert r["train_data"] == r["test_data"].replace("test split", "train split") and r["test_cap"] == "2"
    assert [r["params_paper"] for r in rows] == ["161M", "203M", "220M"]
    assert float(rows[0]["psnr_paper"]) == pytest.approx(32.9677)
    md = (root / "out" / "table.md").read_text()
    assert "# tiny_table3" in md and "3x1x1 conv + attn, finetune decoder" in md
    assert "**lpips**" in md and "alexnet" in md.lower()  # the n/a column's reason
    # trained rows have a run dir; the max_steps=0 row was evaluated as built
    assert records[0]["run_dir"] is None and records[1]["run_dir"] and records[2]["run_dir"]
    assert all(r["config"]["module"]["movq_ckpt"] for r in records)  # the prepared MoVQ was injected


def test_rows_start_from_the_prepared_movq(sweep_run, data_cache: Path, tmp_path: Path) -> None:
    """The prepare step's safetensors and the Lightning checkpoint of its run load bit-exact into a DecoderModule."""
    from ff_lightning.interop.movq import read_state_dict
    from ff_lightning.systems.decoder import DecoderModule
    from ff_lightning.train import build_system

    root, _, records = sweep_run
    prepared = Path(records[0]["config"]["module"]["movq_ckpt"])
    assert prepared.is_file() and prepared.suffix == ".safetensors" and prepared.is_relative_to(root / "ffcache")
    lightning_ckpts = sorted((root / "runs").glob("movq_tiny/version_*/checkpoints/last.ckpt"))
    assert lightning_ckpts
    movq_cfg = yaml.safe_load((lightning_ckpts[0].parents[1] / "config.yaml").read_text())
    assert movq_cfg["system"] == "movq" and movq_cfg["trainer"]["max_steps"] == 2
    row_data = records[1]["config"]["data"]
    for key in ("source", "size", "cache_dir"):  # the image MoVQ saw the rows' data
        assert movq_cfg["data"][key] == row_data[key], key
    state = read_state_dict(prepared)
    from omegaconf import OmegaConf

    from ff_lightning.config import compose

    for ckpt in (prepared, lightning_ckpts[0]):
        cfg = compose(OmegaConf.create(records[1]["config"]), [f"module.movq_ckpt={ckpt}"])
        module = build_system(cfg)
        assert isinstance(module, DecoderModule)
        got = module.movq.state_dict()
        for k, v in state.items():
            if k.startswith(("encoder.", "quantize.", "quant_conv.", "post_quant_conv.")):
                assert torch.equal(got[k], v), (ckpt.name, k)


def test_second_run_reuses_cached_rows(env, monkeypatch: pytest.MonkeyPatch) -> None:
    root, path, records = env
    counters = _counters(monkeypatch, fail=True)
    (root / "out" / "table.csv").unlink()
    again = ablate.run_sweep(path)
    assert all(c.calls == 0 for c in counters.values())
    assert again == records
    assert len(_read_csv(root)) == 3  # tables re-rendered from the cache


def test_changed_row_setting_reruns_only_that_row(env, monkeypatch: pytest.MonkeyPatch, data_cache: Path) -> None:
    root, _, records = env
    path = _write_sweep(root, data_cache, image_set={"module.eval_chunk_frames": 2}, file="changed.yaml")
    counters = _counters(monkeypatch, fail=False)
    new = ablate.run_sweep(path)
    assert counters["fit"].calls == 0 and counters["evaluate"].calls == 1
    assert new[0]["config_hash"] != records[0]["config_hash"] and new[1:] == records[1:]
    assert new[0]["metrics"]["psnr"]["value"] == pytest.approx(records[0]["metrics"]["psnr"]["value"], rel=1e-5)
    assert len(list((root / "rows").glob("image-*.json"))) == 2


def test_redo_recomputes(env, monkeypatch: pytest.MonkeyPatch) -> None:
    root, path, records = env
    counters = _counters(monkeypatch, fail=False)
    new = ablate.run_sweep(path, [f"output={root / 'out' / 'table'}"], redo=True, only=["image"])
    assert counters["fit"].calls == 1  # the prepared image MoVQ is retrained (redo reaches the prepare step)
    assert counters["evaluate"].calls == 1
    assert [r["row"] for r in new] == ["image"] and new[0]["config_hash"] == records[0]["config_hash"]
    assert [r["row"] for r in _read_csv(root)] == ["image"]
    ablate.run_sweep(path)  # back to all three rows (cached)


def test_rows_in_worker_processes_equal_one_at_a_time(env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``jobs=2``: the rows run in spawned worker processes (this process never trains or evaluates one: its fit and
    evaluator are replaced by ones that fail) and give the records of the one-at-a-time run, in sweep order."""
    root, path, records = env
    sweep = yaml.safe_load(path.read_text())
    sweep.update(cache_dir=str(tmp_path / "rows"), output=str(tmp_path / "out" / "table"))  # rows not cached here
    (tmp_path / "movq.yaml").write_text((root / "movq.yaml").read_text())  # the prepare step's (cached) MoVQ
    parallel = tmp_path / "sweep.yaml"
    parallel.write_text(yaml.safe_dump(sweep, sort_keys=False))
    counters = _counters(monkeypatch, fail=True)
    got = ablate.run_sweep(parallel, jobs=2)
    assert all(c.calls == 0 for c in counters.values())
    assert [r["row"] for r in got] == [r["row"] for r in records]
    for new, old in zip(got, records, strict=True):
        assert new["config_hash"] == old["config_hash"] and new["params"] == old["params"]
        for name in ("psnr", "ssim", "mse", "flicker"):
            assert new["metrics"][name]["value"] == pytest.approx(old["metrics"][name]["value"], rel=1e-5), name
    assert [r["row"] for r in csv.DictReader(open(tmp_path / "out" / "table.csv", newline=""))] == ["image",
        "c311_temporal", "c311_attn_decoder"]  # fmt: skip


def test_failing_row_in_a_worker_is_raised_after_the_others_finish(tmp_path: Path) -> None:
    from ff_lightning.ablate_jobs import run_rows

    with pytest.raises(ZeroDivisionError):
        run_rows(_divide, [(1, 1), (1, 0), (4, 2)], 2, ["a", "b", "c"])
    assert run_rows(_divide, [(1, 1), (9, 3), (4, 2)], 2, ["a", "b", "c"]) == [1.0, 3.0, 2.0]


def _divide(a: int, b: int) -> float:
    return a / b


# ------------------------------------------------------------------------------------------------- cache keys
def test_cache_key_follows_row_settings_not_output_places(env) -> None:
    _, path, _ = env
    sw, sweep_path = ablate.load_sweep(path)
    row = sw.rows[1]
    key = ablate.config_hash(ablate._row_config(sw, sweep_path, row, {}))
    assert key == ablate.config_hash(ablate._row_config(sw, sweep_path, row, {}))
    changes = ({"optim.lr": 3e-4}, {"module.policy": "decoder"}, {"trainer.max_steps": 2}, {"data.seed": 1},
               {"data.motion_augment": "flip"})  # fmt: skip
    for change in changes:
        row.set = {**sw.rows[1].set, **change}
        assert ablate.config_hash(ablate._row_config(sw, sweep_path, row, {})) != key, change
    row.set = dict(yaml.safe_load(path.read_text())["rows"][1]["set"])
    assert ablate.config_hash(ablate._row_config(sw, sweep_path, row, {"module.movq_ckpt": "/x.safetensors"})) != key
    neutral = ["run.output_dir=/elsewhere", "trainer.enable_progress_bar=true", "trainer.gradient_checkpointing=true"]
    sw2, _ = ablate.load_sweep(path, neutral)
    assert ablate.config_hash(ablate._row_config(sw2, sweep_path, sw2.rows[1], {})) == key
    # a field added later, at its default, leaves the key as it was before the field existed
    cfg = ablate._row_config(sw, sweep_path, row, {})
    assert cfg.data.motion_augment == "none"
    without = OmegaConf.create(OmegaConf.to_container(cfg))
    del without.data["motion_augment"]
    assert ablate.config_hash(without) == key


# ---------------------------------------------------------------------------------------- fail before any work
@pytest.mark.parametrize(
    ("overrides", "only", "error", "listed"),
    [
        (["bogus=1"], None, ConfigError, ["movq_ckpt", "preset", "steps", "output", "cache_dir"]),
        (["model.bogus=1"], None, ConfigError, ["component", "overrides", "preset", "variant"]),
        (["preset=huge"], None, ConfigError, ["paper", "small", "tiny"]),
        ([], ["image", "nope"], UnknownChoiceError, ["c311_attn_decoder", "c311_temporal", "image"]),
    ],
)
def test_invalid_sweep_fails_before_any_work(
    env, monkeypatch: pytest.MonkeyPatch, overrides: list[str], only: list[str] | None, error: type, listed: list[str]
) -> None:
    _, path, _ = env
    counters = _counters(monkeypatch, fail=True)
    prepare = _Counter(None, "no prepare expected")
    monkeypatch.setattr(ablate, "_lookup", lambda table, what, name: prepare)
    with pytest.raises(error) as e:
        ablate.run_sweep(path, overrides, only=only)
    for name in listed:
        assert name in str(e.value), (name, str(e.value))
    assert prepare.calls == 0 and all(c.calls == 0 for c in counters.values())


@pytest.mark.parametrize(
    ("row_set", "listed"),
    [
        ({"model.variant": "conv9x9"}, ["conv3x1x1", "conv3x3x3_attn", "2d_to_3d", "resblock_attn"]),
        ({"module.policy": "everything"}, ["decoder", "temporal", "none"]),
        ({"module.polcy": "decoder"}, ["policy", "movq_ckpt", "gan_weight"]),
        ({"model.variant": "image", "module.policy": "temporal"}, ["policy=decoder", "none"]),
    ],
)
def test_invalid_row_config_fails_before_any_work(
    env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, row_set: dict[str, Any], listed: list[str]
) -> None:
    _, path, _ = env
    sweep = yaml.safe_load(path.read_text())
    sweep["rows"][2]["set"].update(row_set)  # the last row: the first two would have been trained otherwise
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(sweep))
    counters = _counters(monkeypatch, fail=True)
    prepare = _Counter(None, "no prepare expected")
    monkeypatch.setattr(ablate, "_lookup", lambda table, what, name: prepare)
    with pytest.raises(ConfigError) as e:
        ablate.run_sweep(bad)
    assert "row 'c311_attn_decoder'" in str(e.value)
    for name in listed:
        assert name in str(e.value), (name, str(e.value))
    assert prepare.calls == 0 and all(c.calls == 0 for c in counters.values())


def test_sweep_keys_can_be_overridden(env, tmp_path: Path) -> None:
    _, path, _ = env
    sw, _ = ablate.load_sweep(path, [f"output={tmp_path}/t3", f"cache_dir={tmp_path}/rows", "steps=5", "preset=small"])
    assert sw.output == f"{tmp_path}/t3" and sw.cache_dir == f"{tmp_path}/rows"
    assert sw.overrides["trainer.max_steps"] == 5 and sw.overrides["model.preset"] == "small"


# -------------------------------------------------------------------------------------------- the shipped sweep
def test_shipped_table3_sweep_rows_compose_with_manifest_param_counts() -> None:
    sw, sweep_path = ablate.load_sweep(SHIPPED)
    assert sw.evaluator == "decoder" and sw.prepare == "movq_image" and sw.params_component == "decoder"
    assert (sweep_path.parent / sw.experiment).is_file() and (sweep_path.parent / sw.prepare_experiment).is_file()
    seen = {}
    for row in sw.rows:
        cfg = ablate._row_config(sw, sweep_path, row, {})
        ablate._check_row(cfg)
        assert cfg.system == "decoder" and cfg.model.preset == "tiny"
        variant = cfg.model.variant
        paper_preset_params = ablate._params(sw, cfg, sw.paper_preset)
        assert paper_preset_params == MANIFEST_PARAMS[variant], row.name
        if row.paper:  # the Table 3 rows: the paper's "xxxM" is the manifest's count in whole millions
            assert set(row.paper) == {"psnr", "ssim", "mse", "lpips", "params"}, row.name
            assert int(str(row.paper["params"]).rstrip("M")) == MANIFEST_PARAMS[variant] // 1_000_000, row.name
        seen[row.name] = (variant, cfg.module.policy, cfg.trainer.max_steps)
    assert seen["image"] == ("image", "none", 0)
    assert len([r for r in sw.rows if r.paper]) == 9  # Table 3 of the paper
    assert {v for v, _, _ in seen.values()} == set(MANIFEST_PARAMS)
    # the aliases the Makefile uses reach every row
    sw, _ = ablate.load_sweep(SHIPPED, ["preset=paper", "movq_ckpt=/w/movqgan_270M.ckpt", "steps=7"])
    cfg = ablate._row_config(sw, sweep_path, sw.rows[2], {})
    assert (cfg.model.preset, cfg.module.movq_ckpt, cfg.trainer.max_steps) == ("paper", "/w/movqgan_270M.ckpt", 7)
    assert ablate._row_config(sw, sweep_path, sw.rows[0], {}).trainer.max_steps == 0  # the row's own setting wins


def test_record_json_is_what_the_tables_show(sweep_run) -> None:
    root, _, records = sweep_run
    files = sorted((root / "rows").glob("*.json"))
    assert {f.name.split("-")[0] for f in files} >= {"image", "c311_temporal", "c311_attn_decoder"}
    rec = json.loads(next(f for f in files if f.name.startswith("c311_temporal")).read_text())
    assert rec["columns"] == {"model.variant": "conv3x1x1", "module.policy": "temporal"}
    assert rec["params_paper"] == MANIFEST_PARAMS["conv3x1x1"] and rec["paper"] == PAPER_C311_T
    assert rec["metrics"]["lpips"]["value"] is None and "alexnet" in rec["metrics"]["lpips"]["reason"].lower()


def test_pairs_name_rows_of_the_sweep(env, tmp_path: Path) -> None:
    """``pairs: [[a, b]]`` adds a paired table b minus a; an unknown row name fails at load, naming the rows."""
    _, path, _ = env
    sweep = yaml.safe_load(path.read_text())
    names = [r["name"] for r in sweep["rows"]]
    sweep["pairs"] = [[names[0], names[1]]]
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(sweep))
    assert ablate.load_sweep(good)[0].pairs == [[names[0], names[1]]]
    for bad_pairs, error in (([[names[0], "nope"]], UnknownChoiceError), ([[names[0]]], ConfigError)):
        sweep["pairs"] = bad_pairs
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump(sweep))
        with pytest.raises(error) as e:
            ablate.load_sweep(bad)
        assert all(n in str(e.value) for n in names) if error is UnknownChoiceError else "[a, b]" in str(e.value)
