"""Typed experiment configs: omegaconf yaml validated against dataclass schemas before any work starts.

An experiment yaml may name a ``base:`` yaml (path relative to itself) and state only what differs from it; bases
chain. ``key=value`` overrides (omegaconf dotlist syntax) apply last. Validation walks the merged tree against the
schema and reports, all at once:

- unknown keys, with the valid keys of that section;
- values of the wrong type, with the expected type;
- unknown registered names (system, model component / variant / preset, data source), with the valid choices;
- out-of-range values (sizes, counts, rates, fractions), with the allowed range (:func:`_check_values`,
  :func:`~ff_lightning.data.config.data_config_problems`).

A wrong key or type does not hide the other problems: it is reported and left out, and checking goes on.

The ``module`` section is system-specific: each system registers its own schema dataclass
(:mod:`ff_lightning.systems`), and that section is validated against it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ff_lightning.data.config import DataConfig, data_config_problems
from ff_lightning.io import atomic_write_text

__all__ = [
    "ConfigError",
    "ModelConfig",
    "OptimConfig",
    "TrainerConfig",
    "RunConfig",
    "ExperimentConfig",
    "load_config",
    "compose",
    "save_config",
    "to_yaml",
]


class ConfigError(ValueError):
    """A config that cannot run; the message lists every problem found and the valid choices."""


@dataclass
class ModelConfig:
    """Which registered model to build: ``registry.build(component, variant, preset, **overrides)``."""

    component: str = "decoder"
    variant: str = "image"
    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    ema_decay: float | None = None  # e.g. 0.9999; None disables EMA


@dataclass
class TrainerConfig:
    """Arguments passed to ``lightning.Trainer`` (a curated, typed subset)."""

    max_steps: int = 100
    max_epochs: int | None = None
    accelerator: str = "auto"
    devices: str = "auto"  # "auto", "1", "2", "0,1" ... (a string so that both forms validate)
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str | None = None  # "norm" or "value" (automatic-optimisation systems)
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    val_check_interval: int | float | None = None  # int: every N train batches, float: fraction of an epoch
    check_val_every_n_epoch: int | None = 1
    limit_train_batches: int | float | None = None  # int: batches, float: fraction
    limit_val_batches: int | float | None = None  # int: batches, float: fraction
    num_sanity_val_steps: int = 0
    fast_dev_run: bool = False
    deterministic: bool = False
    enable_progress_bar: bool = True
    # activation checkpointing of the UNet levels (recompute in the backward pass: less memory, ~30% more compute);
    # handled by ff_lightning.train, not passed to lightning.Trainer
    gradient_checkpointing: bool = False


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"  # TensorBoard logs, checkpoints and the resolved config go under output_dir/name/version_N
    seed: int = 0
    resume: str | None = None  # a checkpoint path, or "auto" for the newest checkpoint of this run name
    checkpoint_every_n_steps: int | None = None  # periodic checkpoints (last.ckpt is also written every epoch end)
    seed_every_step: bool = True  # reseed torch from (seed, rank, epoch, batch) before each training batch


@dataclass
class ExperimentConfig:
    system: str = "decoder"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    module: Any = field(default_factory=dict)  # validated by the system's own schema (ff_lightning.systems)


# ---------------------------------------------------------------------------------------------------------- loading
def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """Read ``path``, resolving a ``base:`` chain (child values win)."""
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in seen:
        raise ConfigError(f"config base chain loops: {' -> '.join(map(str, (*seen, path)))}")
    raw = OmegaConf.load(path)
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = raw.pop("base", None)
    if base is None:
        return raw
    bases = [base] if isinstance(base, str) else list(base)
    merged = OmegaConf.create()
    for b in bases:
        merged = OmegaConf.merge(merged, _read_yaml((path.parent / str(b)), (*seen, path)))
    return OmegaConf.merge(merged, raw)


def _schema_for_system(system: str) -> type:
    from ff_lightning.systems import system_schema

    return system_schema(system)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_keys(node: Any, schema: type, prefix: str, problems: list[str]) -> None:
    """Report keys of ``node`` that ``schema`` (a dataclass) does not define, recursively."""
    if not isinstance(node, DictConfig):
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in node.keys():
        name = f"{prefix}{key}"
        if key not in fields:
            valid = ", ".join(sorted(fields))
            problems.append(f"unknown key {name!r}; valid keys of {prefix.rstrip('.') or 'the top level'}: {valid}")
            continue
        ftype = fields[key].type
        sub = _dataclass_type(ftype)
        if sub is not None:
            _check_keys(node[key], sub, f"{name}.", problems)


def _dataclass_type(tp: Any) -> type | None:
    if isinstance(tp, str):  # postponed annotations: look the name up among this module's schemas
        tp = {c.__name__: c for c in (ModelConfig, OptimConfig, TrainerConfig, RunConfig, DataConfig)}.get(tp)
    return tp if dataclasses.is_dataclass(tp) else None


def _check_choices(cfg: DictConfig, problems: list[str]) -> None:
    from ff_lightning import registry
    from ff_lightning.data import dataset_names as available_sources
    from ff_lightning.systems import available_systems

    checks: list[tuple[str, Any, Any]] = [
        ("system", cfg.system, available_systems),
        ("data.source", cfg.data.source, available_sources),
        ("model.component", cfg.model.component, registry.components),
    ]
    for key, value, choices_fn in checks:
        choices = choices_fn()
        if value not in choices:
            problems.append(f"unknown {key} {value!r}; valid choices: {', '.join(sorted(choices))}")
    if cfg.model.component in registry.components():
        for key, value, choices in (
            ("model.variant", cfg.model.variant, registry.variants(cfg.model.component)),
            ("model.preset", cfg.model.preset, registry.presets(cfg.model.component)),
        ):
            if value not in choices:
                problems.append(
                    f"unknown {key} {value!r} for component {cfg.model.component!r}; valid choices: "
                    f"{', '.join(sorted(choices))}"
                )


#: ``trainer.precision`` values (Lightning's precision names)
PRECISIONS: tuple[str, ...] = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


def _strategies() -> list[str]:
    from lightning.pytorch.strategies import StrategyRegistry

    return ["auto", *StrategyRegistry.available_strategies()]


def _check_trainer(cfg: DictConfig, problems: list[str]) -> None:
    """Strategy and precision names, and the sizes that must be positive."""
    t = cfg.trainer
    if t.precision not in PRECISIONS:
        problems.append(f"unknown trainer.precision {t.precision!r}; valid choices: {', '.join(PRECISIONS)}")
    strategies = _strategies()
    if t.strategy not in strategies:
        problems.append(f"unknown trainer.strategy {t.strategy!r}; valid choices: {', '.join(strategies)}")


def _check_values(cfg: DictConfig, problems: list[str]) -> None:
    """Out-of-range values of the typed sections (each message names the key, the rule and the value given)."""

    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            problems.append(f"{key} must be {rule}, got {OmegaConf.select(cfg, key)!r}")

    def count_or_fraction(v: Any) -> bool:  # Lightning's limit_*_batches: an int count >= 0 or a fraction in [0, 1]
        return v is None or (isinstance(v, int) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0)

    t, o, r = cfg.trainer, cfg.optim, cfg.run
    need(t.max_steps >= -1, "trainer.max_steps", ">= 0 (0: validate the model as built) or -1 (no step limit)")
    need(t.max_epochs is None or t.max_epochs >= -1, "trainer.max_epochs", ">= 0, -1 (no limit) or null")
    for key in ("num_nodes", "accumulate_grad_batches", "log_every_n_steps"):
        need(int(t[key]) >= 1, f"trainer.{key}", ">= 1")
    need(t.check_val_every_n_epoch is None or t.check_val_every_n_epoch >= 1, "trainer.check_val_every_n_epoch",
         ">= 1 or null")  # fmt: skip
    v = t.val_check_interval
    need(v is None or (isinstance(v, int) and v >= 1) or (isinstance(v, float) and 0.0 < v <= 1.0),
         "trainer.val_check_interval", "a batch count >= 1, a fraction in (0, 1] or null")  # fmt: skip
    for key in ("limit_train_batches", "limit_val_batches"):
        need(count_or_fraction(t[key]), f"trainer.{key}", "a batch count >= 0, a fraction in [0, 1] or null")
    need(t.num_sanity_val_steps >= -1, "trainer.num_sanity_val_steps", ">= 0 or -1 (all)")
    need(t.gradient_clip_val is None or t.gradient_clip_val >= 0, "trainer.gradient_clip_val", ">= 0 or null")
    need(t.gradient_clip_algorithm in (None, "norm", "value"), "trainer.gradient_clip_algorithm",
         "'norm', 'value' or null")  # fmt: skip
    need(o.lr > 0, "optim.lr", "positive")
    need(len(o.betas) == 2 and all(0.0 <= b < 1.0 for b in o.betas), "optim.betas", "two values in [0, 1)")
    need(o.weight_decay >= 0, "optim.weight_decay", ">= 0")
    need(o.warmup_steps >= 0, "optim.warmup_steps", ">= 0")
    need(o.ema_decay is None or 0.0 < o.ema_decay < 1.0, "optim.ema_decay", "in (0, 1) or null")
    need(r.checkpoint_every_n_steps is None or r.checkpoint_every_n_steps >= 1, "run.checkpoint_every_n_steps",
         ">= 1 or null")  # fmt: skip
    need(bool(str(r.name).strip()), "run.name", "a non-empty name")
    problems.extend(data_config_problems(cfg.data))


def _drop_key(node: DictConfig, dotted: str) -> bool:
    """Delete ``dotted`` (``a.b.c``; a list index ``a.b[0]`` drops the list ``a.b``) from ``node``; False if absent."""
    parts = dotted.split("[", 1)[0].split(".")
    parent: Any = node
    for part in parts[:-1]:
        if not isinstance(parent, DictConfig) or part not in parent:
            return False
        parent = parent[part]
    if isinstance(parent, DictConfig) and parts[-1] in parent:
        del parent[parts[-1]]
        return True
    return False


def _merge_typed(schema: type, user: DictConfig, prefix: str, problems: list[str]) -> DictConfig | None:
    """``user`` merged over the structured ``schema``; each value of the wrong type is reported (and left at its
    default so the others can be checked). None if a problem cannot be attributed to a key."""
    user = user.copy()
    for _ in range(len(user) + 64):
        try:
            return OmegaConf.merge(OmegaConf.structured(schema), user)
        except OmegaConfBaseException as e:
            key = str(e.full_key or "")
            problems.append(f"invalid value for {prefix + key!r}: {str(e.msg).strip().splitlines()[0]}")
            if not key or not _drop_key(user, key):
                return None
    return None


def _drop_unknown(node: Any, schema: type) -> None:
    """Remove the keys of ``node`` that ``schema`` does not define, recursively (after they were reported)."""
    if not isinstance(node, DictConfig):
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in list(node.keys()):
        if key not in fields:
            del node[key]
        elif (sub := _dataclass_type(fields[key].type)) is not None:
            _drop_unknown(node[key], sub)


def compose(
    raw: DictConfig | dict[str, Any] | None = None, overrides: Sequence[str] = (), *, source: str = "<config>"
) -> DictConfig:
    """Merge ``raw`` and dotlist ``overrides`` over the schema, validate everything and return a typed config.
    ``raw`` may itself be a config this function returned (overrides applied over it, validated again).

    Raises :class:`ConfigError` listing every problem at once (unknown keys with valid keys, wrong types, unknown
    names, out-of-range values), one per line.
    """
    if isinstance(raw, DictConfig):  # also a typed config (struct mode) that compose returned: plain again
        raw = OmegaConf.to_container(raw, resolve=False, enum_to_str=True)  # type: ignore[assignment]
    user = OmegaConf.create(raw or {})
    try:
        over = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {e}") from None
    user = OmegaConf.merge(user, over)
    problems: list[str] = []
    _check_keys(user, ExperimentConfig, "", problems)
    _drop_unknown(user, ExperimentConfig)  # reported; the rest is still checked
    module_raw = user.pop("module", OmegaConf.create({}))
    cfg = _merge_typed(ExperimentConfig, user, "", problems)
    if cfg is None:
        raise ConfigError(f"{source}: " + "\n  ".join(["invalid config:", *problems]))
    _check_choices(cfg, problems)
    _check_trainer(cfg, problems)
    from ff_lightning.systems import available_systems

    if cfg.system in available_systems():
        schema = _schema_for_system(cfg.system)
        _check_keys(module_raw, schema, "module.", problems)
        if isinstance(module_raw, DictConfig):
            _drop_unknown(module_raw, schema)
            module = _merge_typed(schema, module_raw, "module.", problems)
            if module is not None:
                OmegaConf.set_struct(cfg, False)
                cfg.module = module
                OmegaConf.set_struct(cfg, True)
    try:  # after the module section is in: other sections may interpolate its values
        _check_values(cfg, problems)
    except OmegaConfBaseException as e:
        problems.append(f"cannot resolve {e.full_key!r}: {str(e.msg).strip().splitlines()[0]}")
    if problems:
        raise ConfigError(f"{source}: " + "\n  ".join(["invalid config:", *problems]))
    return cfg


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> DictConfig:
    """Load an experiment yaml (with its ``base:`` chain) plus ``key=value`` overrides, validated."""
    return compose(_read_yaml(Path(path)), overrides, source=str(path))


def to_yaml(cfg: DictConfig | ListConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as yaml, atomically."""
    return atomic_write_text(path, to_yaml(cfg))
