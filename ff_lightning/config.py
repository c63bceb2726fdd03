"""Typed experiment configs: omegaconf yaml validated against dataclass schemas before any work starts.

An experiment yaml may name a ``base:`` yaml (path relative to itself) and state only what differs from it; bases
chain. ``key=value`` overrides (omegaconf dotlist syntax) apply last. Validation walks the merged tree against the
schema and reports, all at once:

- unknown keys, with the valid keys of that section;
- values of the wrong type, with the expected type;
- unknown registered names (system, model component / variant / preset, data source), with the valid choices.

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

from ff_lightning.data.config import DataConfig
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
    for key in ("num_nodes", "accumulate_grad_batches"):
        if int(t[key]) < 1:
            problems.append(f"trainer.{key} must be >= 1, got {t[key]}")


def compose(
    raw: DictConfig | dict[str, Any] | None = None, overrides: Sequence[str] = (), *, source: str = "<config>"
) -> DictConfig:
    """Merge ``raw`` and dotlist ``overrides`` over the schema, validate everything and return a typed config.

    Raises :class:`ConfigError` listing every problem (unknown keys with valid keys, wrong types, unknown names).
    """
    user = OmegaConf.create(raw or {})
    try:
        over = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {e}") from None
    user = OmegaConf.merge(user, over)
    problems: list[str] = []
    _check_keys(user, ExperimentConfig, "", problems)
    if problems:
        raise ConfigError(f"{source}: " + "\n  ".join(["invalid config:", *problems]))
    module_raw = user.pop("module", OmegaConf.create({}))
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), user)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: invalid value for {e.full_key!r}: {e.msg}") from None
    _check_choices(cfg, problems)
    _check_trainer(cfg, problems)
    if not problems:
        schema = _schema_for_system(cfg.system)
        _check_keys(module_raw, schema, "module.", problems)
        if not problems:
            try:
                module = OmegaConf.merge(OmegaConf.structured(schema), module_raw)
            except OmegaConfBaseException as e:
                raise ConfigError(f"{source}: invalid value for module.{e.full_key!r}: {e.msg}") from None
            OmegaConf.set_struct(cfg, False)
            cfg.module = module
            OmegaConf.set_struct(cfg, True)
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
