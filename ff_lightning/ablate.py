"""``ff ablate SWEEP.yaml``: run a grid of registered variants x settings through train + evaluate, render tables.

A sweep yaml names a base experiment config and a list of rows; each row states only the overrides that make it
differ (``set:``). For every row the runner

1. composes and validates the row's experiment config (all rows are validated before any work starts);
2. looks its result up in the cache, keyed by a hash of the resolved config (so a changed setting reruns the row,
   an unchanged one is reused unless ``--redo``);
3. trains it (``ff train`` semantics; rows with ``trainer.max_steps=0`` are evaluated as built), evaluates it with the
   sweep's registered evaluator, counts parameters at the run's preset and the paper preset, and writes the row's
   result JSON atomically;
4. renders ``<output>.md``, ``<output>.csv`` and ``<output>.png`` with the paper's numbers beside ours.

A sweep may name a *prepare* step (e.g. train or load the image MoVQ that every decoder row starts from); its result
is injected into every row's config, so it is part of every row's cache key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ff_lightning.config import ConfigError, _read_yaml, compose, save_config
from ff_lightning.io import atomic_write_json
from ff_lightning.registry import UnknownChoiceError

log = logging.getLogger(__name__)

__all__ = ["SweepRow", "SweepConfig", "load_sweep", "run_sweep", "register_evaluator", "register_prepare"]


@dataclass
class SweepRow:
    name: str
    label: str = ""
    set: dict[str, Any] = field(default_factory=dict)  # dotted experiment keys -> values
    paper: dict[str, Any] = field(default_factory=dict)  # the paper's numbers for this row (metric -> value)


@dataclass
class SweepConfig:
    name: str = "sweep"
    experiment: str = ""  # base experiment yaml, relative to the sweep file
    evaluator: str = ""  # registered evaluator name
    prepare: str | None = None  # registered prepare step name
    prepare_experiment: str | None = None  # experiment yaml the prepare step trains (relative to the sweep file)
    output: str = "benchmarks/results/sweep"  # prefix of the .md/.csv/.png tables (relative to the working dir)
    cache_dir: str | None = None  # row results (default $FF_CACHE_DIR/ablations/<name>)
    metrics: list[str] = field(default_factory=list)  # columns, in order
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)  # extra config columns, e.g. ["variant", "policy"]
    params_component: str | None = None  # count parameters of this component at the run and paper presets
    paper_preset: str = "paper"
    plot_metric: str | None = None  # y axis of the quality-vs-parameters plot
    aliases: dict[str, str] = field(default_factory=dict)  # short override names, e.g. preset -> model.preset
    overrides: dict[str, Any] = field(default_factory=dict)  # applied to every row
    paper_note: str = ""
    reference_row: str | None = None  # rows are also compared with this one, paired over the same held-out samples
    rows: list[SweepRow] = field(default_factory=list)


Evaluator = Callable[[Any, DictConfig], dict[str, dict[str, float]]]
Prepare = Callable[[DictConfig, Path | None, bool], dict[str, Any]]
_EVALUATORS: dict[str, tuple[str, str]] = {"decoder": ("ff_lightning.evaluation.decoder", "evaluate_decoder")}
_PREPARES: dict[str, tuple[str, str]] = {"movq_image": ("ff_lightning.evaluation.decoder", "prepare_movq")}


def register_evaluator(name: str, module: str, fn: str) -> None:
    _EVALUATORS[name] = (module, fn)


def register_prepare(name: str, module: str, fn: str) -> None:
    _PREPARES[name] = (module, fn)


def _lookup(table: dict[str, tuple[str, str]], what: str, name: str) -> Callable[..., Any]:
    import importlib

    if name not in table:
        raise UnknownChoiceError(what, name, list(table))
    mod, fn = table[name]
    return getattr(importlib.import_module(mod), fn)


# ------------------------------------------------------------------------------------------------------- composing
_SWEEP_KEYS = ("output", "cache_dir")  # sweep keys that may be overridden from the command line


def _check_row(cfg: DictConfig, where: str = "") -> None:
    """The system's own weight-free checks of a composed row config (e.g. a decoder policy), if it has any."""
    from ff_lightning.systems import system_class

    check = getattr(system_class(cfg.system), "check_config", None)
    if check is not None:
        try:
            check(cfg)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> tuple[SweepConfig, Path]:
    """Read and validate a sweep yaml; ``overrides`` (key=value) go to sweep keys, aliases or every row's config."""
    path = Path(path).resolve()
    raw = _read_yaml(path)
    try:
        sweep = OmegaConf.merge(OmegaConf.structured(SweepConfig), raw)
    except OmegaConfBaseException as e:
        valid = ", ".join(f.name for f in SweepConfig.__dataclass_fields__.values())
        raise ConfigError(f"{path}: invalid sweep ({e.msg}); valid keys: {valid}") from None
    sw: SweepConfig = OmegaConf.to_object(sweep)  # type: ignore[assignment]
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        parsed = OmegaConf.from_dotlist([f"v={value}"]).v
        if key in sw.aliases:
            sw.overrides[sw.aliases[key]] = parsed
        elif key in _SWEEP_KEYS:
            setattr(sw, key, None if parsed is None else str(parsed))
        elif "." in key:
            sw.overrides[key] = parsed
        else:
            valid = sorted([*sw.aliases, *_SWEEP_KEYS, "<section>.<key> of the experiment config"])
            raise ConfigError(f"unknown sweep override {key!r}; valid: {', '.join(valid)}")
    names = [r.name for r in sw.rows]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: duplicate row names in {names}")
    return sw, path


def _row_config(sw: SweepConfig, sweep_path: Path, row: SweepRow, injected: dict[str, Any]) -> DictConfig:
    base = _read_yaml(sweep_path.parent / sw.experiment)
    dotted = {**sw.overrides, **row.set, **injected}
    items = [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else _fmt(v)}" for k, v in dotted.items()]
    items.append(f"run.name={sw.name}/{row.name}")
    return compose(base, items, source=f"{sweep_path.name} row {row.name!r}")


def _fmt(v: Any) -> str:
    return "null" if v is None else str(v)


def config_hash(cfg: DictConfig) -> str:
    """Cache key of a row: the resolved config, minus where its outputs go."""
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    c["run"] = {k: v for k, v in c["run"].items() if k not in ("output_dir", "resume")}
    c["trainer"] = {k: v for k, v in c["trainer"].items() if k not in ("enable_progress_bar",)}
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------- running
def _params(sw: SweepConfig, cfg: DictConfig, preset: str) -> int | None:
    if not sw.params_component:
        return None
    from ff_lightning import registry

    try:
        model = registry.build(sw.params_component, cfg.model.variant, preset, device="meta")
    except UnknownChoiceError:
        return None
    return registry.param_counts(model)["total"]


def _run_row(sw: SweepConfig, cfg: DictConfig, row: SweepRow, out_json: Path) -> dict[str, Any]:
    from ff_lightning.train import build_system, fit

    t0 = time.time()
    if cfg.trainer.max_steps == 0:
        module = build_system(cfg)
        run_dir = None
    else:
        result = fit(cfg)
        module, run_dir = result.module, result.run_dir
    metrics = _lookup(_EVALUATORS, "evaluator", sw.evaluator)(module, cfg)
    record = {
        "row": row.name,
        "label": row.label or row.name,
        "config_hash": out_json.stem.split("-")[-1],
        "columns": {c: OmegaConf.select(cfg, c) for c in sw.columns},
        "metrics": metrics,
        "params": _params(sw, cfg, cfg.model.preset),
        "params_paper": _params(sw, cfg, sw.paper_preset),
        "paper": dict(row.paper),
        "preset": cfg.model.preset,
        "run_dir": str(run_dir) if run_dir else None,
        "seconds": round(time.time() - t0, 1),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    atomic_write_json(out_json, record)
    return record


def run_sweep(
    path: str | Path, overrides: Sequence[str] = (), *, redo: bool = False, only: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Run (or reuse) every row of a sweep and render its tables; returns the row records in sweep order."""
    from ff_lightning.paths import cache_dir
    from ff_lightning.reporting import render_tables

    sw, sweep_path = load_sweep(path, overrides)
    rows = [r for r in sw.rows if not only or r.name in only]
    if only and len(rows) != len(set(only)):
        raise UnknownChoiceError("sweep row", ",".join(sorted(set(only) - {r.name for r in rows})), [r.name for r in sw.rows])
    # validate every row before any work starts (no prepare output yet: injected keys are validated after prepare)
    for row in rows:
        _check_row(_row_config(sw, sweep_path, row, {}), f"{sweep_path.name} row {row.name!r}")
    injected: dict[str, Any] = {}
    if sw.prepare:
        probe = _row_config(sw, sweep_path, rows[0], {})
        exp = sweep_path.parent / sw.prepare_experiment if sw.prepare_experiment else None
        injected = _lookup(_PREPARES, "prepare step", sw.prepare)(probe, exp, redo)
    cdir = Path(sw.cache_dir) if sw.cache_dir else cache_dir() / "ablations" / sw.name
    records = []
    for i, row in enumerate(rows, 1):
        cfg = _row_config(sw, sweep_path, row, injected)
        key = config_hash(cfg)
        out_json = cdir / f"{row.name}-{key}.json"
        if out_json.is_file() and not redo:
            log.info("[%d/%d] %s: cached (%s)", i, len(rows), row.name, out_json)
            records.append(json.loads(out_json.read_text()))
            continue
        log.info("[%d/%d] %s: training and evaluating (config %s)", i, len(rows), row.name, key)
        save_config(cfg, cdir / f"{row.name}-{key}.yaml")
        records.append(_run_row(sw, cfg, row, out_json))
        log.info("[%d/%d] %s: done in %.0fs", i, len(rows), row.name, records[-1]["seconds"])
    written = render_tables(sw, records)
    for p in written:
        log.info("wrote %s", p)
    return records
