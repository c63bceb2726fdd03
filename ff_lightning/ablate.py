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
is injected into every row's config, so it is part of every row's cache key. ``prepare`` may also be a *chain*, a list
of steps run in order, each seeing what the earlier ones injected (e.g. the image MoVQ, then the text-to-image model
trained on its latents); a step is a name, or ``{step: name, experiment: yaml, set: {dotted.key: value}}`` whose
``set`` overrides go to the step's experiment (the step function then takes ``overrides=``).

Evaluating given checkpoints: a row with ``checkpoint: PATH`` is not trained. Its config is the checkpoint's own (the
``hyper_parameters.config`` a system saves; else the sweep's experiment), plus the sweep's ``overrides`` and the row's
``set``; prepare outputs are not injected into it; the checkpoint's ``state_dict`` is loaded into the built system
(strictly) and its ``on_load_checkpoint`` hook restores e.g. EMA weights. A row marked ``on_demand: true`` runs only
when named with ``--only`` or when it has a checkpoint; if any on-demand row has one (e.g. from the command line
through an alias ``a_ckpt: rows.a.checkpoint``), the sweep runs just the on-demand rows that have checkpoints, and the
prepare chain runs only if a selected row still needs training. The checkpoint's path, size and mtime are part of
the row's cache key.

Evaluator options and artifacts: the sweep's ``evaluate:`` mapping (also ``evaluate.KEY=VALUE`` on the command line)
is passed to evaluators that take an ``options`` argument and is part of every row's cache key. Evaluators that take
``artifacts_dir`` get a fresh folder next to the row's cached result; the files they write there are listed in the
record's ``artifacts`` (a cached row whose artifacts are gone is recomputed) and the renderer may use them (e.g. the
side-by-side samples of :func:`ff_lightning.reporting.render_tables`). An evaluator may return an ``"_extra"`` entry
(name -> number) that is stored as the record's ``extra`` (figures shown under the table, not columns).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ff_lightning.ablate_preflight import DATA_SIDES, eval_config, normalise_data_side
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
    checkpoint: str | None = None  # evaluate this trained checkpoint instead of training (see the module docstring)
    on_demand: bool = False  # run only when named with --only or given a checkpoint


@dataclass
class SweepConfig:
    name: str = "sweep"
    experiment: str = ""  # base experiment yaml, relative to the sweep file
    evaluator: str = ""  # registered evaluator name
    prepare: Any = None  # registered prepare step name, or a chain: a list of names / {step, experiment, set}
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
    # rows are also compared with this one, paired over the same held-out samples (a list: the first row present)
    reference_row: Any = None
    # further paired tables, one per [a, b] (b minus a, same held-out samples), e.g. [[layers, blocks]]
    pairs: list[Any] = field(default_factory=list)
    evaluate: dict[str, Any] = field(default_factory=dict)  # evaluator options (evaluators taking ``options``)
    # {"train": {data key: value}, "test": {...}}: where rows are fine-tuned / evaluated (ff_lightning.ablate_preflight)
    data: dict[str, Any] = field(default_factory=dict)
    rows: list[SweepRow] = field(default_factory=list)


Evaluator = Callable[[Any, DictConfig], dict[str, dict[str, float]]]
Prepare = Callable[[DictConfig, Path | None, bool], dict[str, Any]]
_EVALUATORS: dict[str, tuple[str, str]] = {
    "decoder": ("ff_lightning.evaluation.decoder", "evaluate_decoder"),
    "keyframes": ("ff_lightning.evaluation.keyframes", "evaluate_keyframes"),
}
_PREPARES: dict[str, tuple[str, str]] = {
    "movq_image": ("ff_lightning.evaluation.decoder", "prepare_movq"),
    "t2i_base": ("ff_lightning.evaluation.keyframes", "prepare_t2i"),
}


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
        key = sw.aliases.get(key, key) if sw.aliases.get(key, "").startswith(_ROW_PREFIX) else key
        side = key.split(".")[1] if key.startswith("data.") and key.count(".") >= 2 else None
        if side in DATA_SIDES:
            sw.data.setdefault(side, {})[key.split(".", 2)[2]] = parsed
        elif key.startswith(_ROW_PREFIX):
            _set_row_field(sw, key, parsed, path)
        elif key.startswith(_EVALUATE_PREFIX):
            sw.evaluate[key[len(_EVALUATE_PREFIX) :]] = parsed
        elif key in sw.aliases:
            sw.overrides[sw.aliases[key]] = parsed
        elif key in _SWEEP_KEYS:
            setattr(sw, key, None if parsed is None else str(parsed))
        elif "." in key:
            sw.overrides[key] = parsed
        else:
            valid = sorted(
                [
                    *sw.aliases,
                    *_SWEEP_KEYS,
                    "<section>.<key> of the experiment config",
                    "evaluate.<option>",
                    "rows.<row>.checkpoint",
                    "data.train.<key>",
                    "data.test.<key>",
                ]
            )
            raise ConfigError(f"unknown sweep override {key!r}; valid: {', '.join(valid)}")
    sw.data = {side: normalise_data_side(side, values) for side, values in (sw.data or {}).items()}
    names = [r.name for r in sw.rows]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: duplicate row names in {names}")
    for pair in sw.pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ConfigError(f"{path}: pairs takes [a, b] lists of two row names, got {pair!r}")
        for name in pair:
            if name not in names:
                raise UnknownChoiceError("row in pairs", str(name), names)
    _prepare_steps(sw, path)  # validates the prepare chain's shape
    return sw, path


_ROW_PREFIX = "rows."
_EVALUATE_PREFIX = "evaluate."
_ROW_FIELDS = ("checkpoint", "label")  # row fields the command line may set (rows.<row>.<field>=value)
_STEP_KEYS = {"step", "experiment", "set"}  # keys of a prepare-chain entry


def _set_row_field(sw: SweepConfig, key: str, value: Any, path: Path) -> None:
    """``rows.<row>.<field>=value`` (directly or through an alias) sets a field of one row."""
    parts = key.split(".")
    if len(parts) != 3 or parts[2] not in _ROW_FIELDS:
        raise ConfigError(f"{key!r}: row overrides are rows.<row>.<field> with field one of {', '.join(_ROW_FIELDS)}")
    row = next((r for r in sw.rows if r.name == parts[1]), None)
    if row is None:
        raise ConfigError(f"{key!r}: {path.name} has no row {parts[1]!r}; rows: {', '.join(r.name for r in sw.rows)}")
    setattr(row, parts[2], None if value is None or value == "" else str(value))


@dataclass
class PrepareStep:
    """One step of a sweep's prepare chain: a registered name, its experiment yaml and overrides for it."""

    name: str
    experiment: Path | None = None
    overrides: list[str] = field(default_factory=list)


def _prepare_steps(sw: SweepConfig, sweep_path: Path) -> list[PrepareStep]:
    """The prepare chain in order (``prepare`` a name, or a list of names / ``{step, experiment, set}`` mappings)."""
    if not sw.prepare:
        return []
    entries = sw.prepare if isinstance(sw.prepare, list) else [sw.prepare]
    steps = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            exp = sw.prepare_experiment if not isinstance(sw.prepare, list) else None
            steps.append(PrepareStep(entry, sweep_path.parent / exp if exp else None))
        elif isinstance(entry, dict) and isinstance(entry.get("step"), str) and set(entry) <= _STEP_KEYS:
            exp, over = entry.get("experiment"), entry.get("set") or {}
            items = [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else _fmt(v)}" for k, v in over.items()]
            steps.append(PrepareStep(entry["step"], sweep_path.parent / exp if exp else None, items))
        else:
            raise ConfigError(
                f"{sweep_path.name}: prepare entry {i} ({entry!r}) must be a step name or a mapping with 'step' and "
                "optionally 'experiment' and 'set'"
            )
    return steps


def _row_config(sw: SweepConfig, sweep_path: Path, row: SweepRow, injected: dict[str, Any]) -> DictConfig:
    if row.checkpoint:  # the checkpoint's own config; it brings its own prepared inputs (nothing injected)
        stored = _checkpoint_config(row.checkpoint)
        base = OmegaConf.create(stored) if stored is not None else _read_yaml(sweep_path.parent / sw.experiment)
        injected = {}
    else:
        base = _read_yaml(sweep_path.parent / sw.experiment)
    train = {f"data.{k}": v for k, v in (sw.data.get("train") or {}).items()}
    dotted = {**sw.overrides, **train, **row.set, **injected}
    items = [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else _fmt(v)}" for k, v in dotted.items()]
    items.append(f"run.name={sw.name}/{row.name}")
    return compose(base, items, source=f"{sweep_path.name} row {row.name!r}")


def _fmt(v: Any) -> str:
    return "null" if v is None else str(v)


def _read_checkpoint(path: str | Path) -> Any:
    """A row checkpoint through :func:`ff_lightning.checkpoints.load_checkpoint` (weights only: a pickle that needs
    code is refused with ``UnsafeCheckpointError``), memory-mapped when possible."""
    from ff_lightning.checkpoints import load_checkpoint

    if not Path(path).expanduser().is_file():
        raise ConfigError(f"row checkpoint {path}: file not found; fix: give the path of a .ckpt written by ff train")
    return load_checkpoint(path, "cpu", mmap=True)


def _checkpoint_config(path: str | Path) -> dict[str, Any] | None:
    """The experiment config saved in a checkpoint (``hyper_parameters.config``), None when it has none."""
    obj = _read_checkpoint(path)
    hp = obj.get("hyper_parameters") if isinstance(obj, dict) else None
    config = hp.get("config") if isinstance(hp, dict) else None
    return dict(config) if isinstance(config, dict) else None


def _row_key(sw: SweepConfig, cfg: DictConfig, row: SweepRow) -> str:
    """The row's cache key: its config hash, mixed with the evaluator options and the checkpoint's identity when the
    sweep has them (so sweeps without either keep their keys)."""
    key = config_hash(cfg)
    extra: dict[str, Any] = {}
    if sw.evaluate:
        extra["evaluate"] = sw.evaluate
    if row.checkpoint:
        p = Path(row.checkpoint).expanduser().resolve()
        st = p.stat()
        extra["checkpoint"] = [str(p), st.st_size, st.st_mtime_ns]
    if sw.data.get("test"):  # evaluated on other data than its own held-out split
        extra["test_data"] = OmegaConf.to_container(eval_config(cfg, sw.data["test"]).data, resolve=True)
    if not extra:
        return key
    return hashlib.sha256(json.dumps({"config": key, **extra}, sort_keys=True, default=str).encode()).hexdigest()[:16]


_RESULT_NEUTRAL_TRAINER_KEYS = ("enable_progress_bar", "gradient_checkpointing")
#: schema fields added after cached results existed: left out of the key while at these defaults (which behave as
#: before the field existed), so the cached rows, MoVQ and T2I bases of earlier runs keep their keys
_ADDED_AT_DEFAULT: dict[str, dict[str, Any]] = {
    "data": {"motion_augment": "none"},
    "module": {"motion_loss_weight": 0.0},
}


def config_hash(cfg: DictConfig) -> str:
    """Cache key of a row: the resolved config, minus where its outputs go and switches that trade compute for memory
    or display without changing results (gradient checkpointing: gradients bit-equal, tests/test_scaling.py)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    c["run"] = {k: v for k, v in c["run"].items() if k not in ("output_dir", "resume")}
    c["trainer"] = {k: v for k, v in c["trainer"].items() if k not in _RESULT_NEUTRAL_TRAINER_KEYS}
    for section, defaults in _ADDED_AT_DEFAULT.items():
        if isinstance(c.get(section), dict):
            c[section] = {k: v for k, v in c[section].items() if not (k in defaults and v == defaults[k])}
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


def _load_checkpoint(cfg: DictConfig, path: str | Path) -> Any:
    """Build the row's system and load a checkpoint's weights into it (strict; then its ``on_load_checkpoint``)."""
    from ff_lightning.train import build_system

    module = build_system(cfg)
    obj = _read_checkpoint(path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    module.load_state_dict(state)
    if isinstance(obj, dict) and "state_dict" in obj:
        module.on_load_checkpoint(obj)
    log.info("loaded %s", path)
    return module


def _evaluator_kwargs(sw: SweepConfig) -> set[str]:
    """Which optional arguments (``options``, ``artifacts_dir``) the sweep's evaluator takes."""
    params = inspect.signature(_lookup(_EVALUATORS, "evaluator", sw.evaluator)).parameters
    return {k for k in ("options", "artifacts_dir") if k in params}


def _artifacts_present(record: dict[str, Any]) -> bool:
    return all(Path(p).is_file() for p in (record.get("artifacts") or {}).values())


def _run_row(sw: SweepConfig, cfg: DictConfig, row: SweepRow, out_json: Path) -> dict[str, Any]:
    from ff_lightning.train import build_system, fit

    ecfg = eval_config(cfg, sw.data.get("test") or {})
    t0 = time.time()
    if row.checkpoint:
        module = _load_checkpoint(cfg, row.checkpoint)
        run_dir = None
    elif cfg.trainer.max_steps == 0:
        module = build_system(cfg)
        run_dir = None
    else:
        result = fit(cfg)
        module, run_dir = result.module, result.run_dir
    wanted = _evaluator_kwargs(sw)
    kwargs: dict[str, Any] = {}
    art_dir = out_json.with_suffix("")  # <cache>/<row>-<key>/
    if "options" in wanted:
        kwargs["options"] = dict(sw.evaluate)
    if "artifacts_dir" in wanted:
        if art_dir.exists():
            shutil.rmtree(art_dir)  # left by an interrupted run
        art_dir.mkdir(parents=True)
        kwargs["artifacts_dir"] = art_dir
    metrics = dict(_lookup(_EVALUATORS, "evaluator", sw.evaluator)(module, ecfg, **kwargs))
    extra = metrics.pop("_extra", None)
    artifacts = {p.name: str(p) for p in sorted(art_dir.iterdir()) if p.is_file()} if "artifacts_dir" in wanted else {}
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
    if row.checkpoint:
        record["checkpoint"] = str(row.checkpoint)
    if ecfg is not cfg:
        record["eval_data"] = OmegaConf.to_container(ecfg.data, resolve=True)
    if artifacts:
        record["artifacts"] = artifacts
    if extra:
        record["extra"] = dict(extra)
    atomic_write_json(out_json, record)
    return record


def _resolve_all_frames(sw: SweepConfig, sweep_path: Path, rows: list[SweepRow]) -> None:
    """``num_frames: all`` of ``data.train`` / ``data.test`` -> the images per sequence of that data (in place)."""
    from ff_lightning.ablate_preflight import resolve_all_frames

    for side in DATA_SIDES:
        values = sw.data.get(side) or {}
        if str(values.get("num_frames")).lower() != "all" or not rows:
            continue
        values["num_frames"] = 1  # a probe config; the real count replaces it
        probe = _row_config(sw, sweep_path, rows[0], {})
        if side == "test":
            probe = eval_config(probe, values)
        values["num_frames"] = resolve_all_frames(side, probe)
        log.info("data.%s.num_frames=all: %d frames per sequence", side, values["num_frames"])


def _selected_rows(sw: SweepConfig, only: Sequence[str] | None) -> list[SweepRow]:
    if only:
        rows = [r for r in sw.rows if r.name in only]
        if len(rows) != len(set(only)):
            missing = ",".join(sorted(set(only) - {r.name for r in rows}))
            raise UnknownChoiceError("sweep row", missing, [r.name for r in sw.rows])
        return rows
    # on-demand rows with a checkpoint replace the regular rows; on-demand rows without one never run
    return [r for r in sw.rows if r.on_demand and r.checkpoint] or [r for r in sw.rows if not r.on_demand]


def run_sweep(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    redo: bool = False,
    only: Sequence[str] | None = None,
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Run (or reuse) every row of a sweep and render its tables; returns the row records in sweep order.

    Before any work: every row's config is composed and checked, ``num_frames: all`` resolved, and one sample of
    every train / test data opened (:func:`ff_lightning.ablate_preflight.preflight`). A run that is not the sweep as
    written (``--only``, overrides, checkpoint rows) writes its tables to its own folder unless ``output=`` is given.
    Rows and prepare steps are computed under a file lock, so two runs on one cache do the work once. ``jobs``: rows
    that need work run that many at a time in worker processes (:mod:`ff_lightning.ablate_jobs`), after the prepare
    steps; the records are the same as one after the other.
    """
    from ff_lightning.ablate_preflight import describe_setup, file_lock, own_output, preflight
    from ff_lightning.paths import cache_dir
    from ff_lightning.reporting import render_tables

    sw, sweep_path = load_sweep(path, overrides)
    rows = _selected_rows(sw, only)
    if sw.evaluate and "options" not in _evaluator_kwargs(sw):
        raise ConfigError(f"evaluator {sw.evaluator!r} takes no options: remove 'evaluate:' from {sweep_path.name}")
    _resolve_all_frames(sw, sweep_path, rows)
    # validate every row before any work starts (no prepare output yet: injected keys are validated after prepare)
    checks = []
    for row in rows:
        cfg = _row_config(sw, sweep_path, row, {})
        _check_row(cfg, f"{sweep_path.name} row {row.name!r}")
        checks.append((cfg, eval_config(cfg, sw.data.get("test") or {}), not row.checkpoint and cfg.trainer.max_steps))
    preflight(checks)
    own = own_output(sw, overrides, only, rows)
    if own:
        log.info("tables go to %s (not %s: this run is not the sweep as written; output=PATH chooses)", own, sw.output)
        sw.output = own
    cdir = Path(sw.cache_dir) if sw.cache_dir else cache_dir() / "ablations" / sw.name
    injected: dict[str, Any] = {}
    to_train = [r for r in rows if not r.checkpoint]
    for step in _prepare_steps(sw, sweep_path) if to_train else []:
        probe = _row_config(sw, sweep_path, to_train[0], injected)
        fn = _lookup(_PREPARES, "prepare step", step.name)
        if step.overrides and "overrides" not in inspect.signature(fn).parameters:
            raise ConfigError(f"prepare step {step.name!r} takes no 'set' overrides")
        kwargs = {"overrides": step.overrides} if step.overrides else {}
        log.info("prepare: %s", step.name)
        what = json.dumps([step.name, str(step.experiment), step.overrides, config_hash(probe)])
        lock = cache_dir() / "locks" / f"prepare-{step.name}-{hashlib.sha256(what.encode()).hexdigest()[:12]}.lock"
        with file_lock(lock, f"prepare step {step.name}"):  # per prepared thing: other runs' prepares go on
            injected.update(fn(probe, step.experiment, redo, **kwargs))
    from ff_lightning.ablate_jobs import run_rows

    records: list[dict[str, Any] | None] = []
    pending: list[tuple[int, tuple[Any, ...]]] = []
    for i, row in enumerate(rows, 1):
        cfg = _row_config(sw, sweep_path, row, injected)
        key = _row_key(sw, cfg, row)
        out_json = cdir / f"{row.name}-{key}.json"
        tag = f"[{i}/{len(rows)}] {row.name}"
        records.append(None if redo else _cached(out_json, tag))
        if records[-1] is None:
            pending.append((i - 1, (sw, cfg, row, out_json, redo, tag)))
    done = run_rows(_compute_row, [args for _, args in pending], jobs, [rows[i].name for i, _ in pending])
    for (i, _), record in zip(pending, done, strict=True):
        records[i] = record
    memo: dict[str, str | None] = {}
    for record in records:
        record["setup"] = describe_setup(record, memo)
    written = render_tables(sw, records)
    for p in written:
        log.info("wrote %s", p)
    return records


def _compute_row(
    sw: SweepConfig, cfg: DictConfig, row: SweepRow, out_json: Path, redo: bool, tag: str
) -> dict[str, Any]:
    """Train / evaluate one row under its lock and store its record at ``out_json`` (unless another run stored it
    while this one waited for the lock). Module level: :func:`ff_lightning.ablate_jobs.run_rows` may run it in a
    worker process."""
    from ff_lightning.ablate_preflight import file_lock

    with file_lock(out_json.with_suffix(".lock"), f"row {row.name}"):
        record = None if redo else _cached(out_json, tag)
        if record is None:
            what = "evaluating checkpoint" if row.checkpoint else "training and evaluating"
            log.info("%s: %s (config %s)", tag, what, out_json.stem.rsplit("-", 1)[-1])
            save_config(cfg, out_json.with_suffix(".yaml"))
            record = _run_row(sw, cfg, row, out_json)
            log.info("%s: done in %.0fs", tag, record["seconds"])
    return record


def _cached(out_json: Path, what: str) -> dict[str, Any] | None:
    """The row record stored at ``out_json`` if it is there with all its artifacts."""
    if not out_json.is_file():
        return None
    cached = json.loads(out_json.read_text())
    if _artifacts_present(cached):
        log.info("%s: cached (%s)", what, out_json)
        return cached
    log.info("%s: cached result lacks its artifacts, recomputing", what)
    return None
