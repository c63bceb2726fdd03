"""Named model variants and size presets (the DiT ``DiT_models`` idea).

A *component* is a kind of model (``decoder``, ``movq``, ``t2i_unet``, ``keyframe_unet``, ...). Each component has
size *presets* (``tiny``, ``small``, ``paper``: keyword arguments shared by all its variants) and *variants* (a builder
function plus fixed keyword arguments). ``build("decoder", "conv3x1x1", preset="paper")`` calls the variant's builder
with ``{**preset, **variant_defaults, **overrides}``.

Rules that keep old tables reproducible: a registered name is never redefined (``register_variant`` refuses a second
registration with different arguments); a changed design gets a new name. YAML files name variants; they never hold
import paths. Model modules register themselves when imported; :func:`_load_builtin` imports the project's own model
modules listed in ``_BUILTIN_MODULES`` so that lookups work without the caller importing them first.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "UnknownChoiceError",
    "Variant",
    "register_component",
    "register_variant",
    "components",
    "variants",
    "presets",
    "get_variant",
    "preset_config",
    "build",
    "param_counts",
]


class UnknownChoiceError(KeyError, ValueError):
    """A name that is not registered; the message lists the valid choices."""

    def __init__(self, what: str, name: str, choices: list[str]) -> None:
        self.what, self.name, self.choices = what, name, sorted(choices)
        super().__init__(f"unknown {what} {name!r}; valid choices: {', '.join(self.choices) or '(none registered)'}")

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]


@dataclass(frozen=True)
class Variant:
    component: str
    name: str
    builder: Callable[..., nn.Module]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass
class _Component:
    name: str
    presets: dict[str, dict[str, Any]]
    description: str
    variants: dict[str, Variant] = field(default_factory=dict)


_REGISTRY: dict[str, _Component] = {}

# The project's own modules that register components and variants on import (never user-supplied paths).
_BUILTIN_MODULES: tuple[str, ...] = (
    "ff_lightning.models.movq",
    "ff_lightning.models.video_decoder",
    "ff_lightning.models.unet",
    "ff_lightning.models.keyframes",
    "ff_lightning.models.kv11",
    "ff_lightning.models.interpolation",
    "ff_lightning.models.kv11_interpolation",
    "ff_lightning.models.masked_interpolation",
    "ff_lightning.models.flow_interpolation",
    "ff_lightning.models.tiny",
)
_loaded = False


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a module not written yet; any other import error propagates
            if e.name != mod:
                raise


def register_component(name: str, presets: Mapping[str, Mapping[str, Any]], description: str = "") -> None:
    """Declare a component and its size presets (idempotent for identical arguments)."""
    presets = {k: dict(v) for k, v in presets.items()}
    if name in _REGISTRY:
        if _REGISTRY[name].presets != presets:
            raise ValueError(f"component {name!r} is already registered with different presets")
        return
    _REGISTRY[name] = _Component(name, presets, description)


def register_variant(
    component: str,
    name: str,
    builder: Callable[..., nn.Module] | None = None,
    *,
    description: str = "",
    **defaults: Any,
) -> Any:
    """Register ``builder`` as ``component/name`` (usable as a decorator when ``builder`` is omitted)."""

    def _do(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if component not in _REGISTRY:
            raise UnknownChoiceError("component", component, list(_REGISTRY))
        comp = _REGISTRY[component]
        new = Variant(component, name, fn, dict(defaults), description)
        old = comp.variants.get(name)
        if old is not None and (old.builder is not fn or dict(old.defaults) != dict(defaults)):
            raise ValueError(
                f"variant {component}/{name} is already registered; registered variants are never changed in place, "
                "register the new design under a new name"
            )
        comp.variants[name] = new
        return fn

    return _do if builder is None else _do(builder)


def _component(name: str) -> _Component:
    _load_builtin()
    if name not in _REGISTRY:
        raise UnknownChoiceError("component", name, list(_REGISTRY))
    return _REGISTRY[name]


def components() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def variants(component: str) -> list[str]:
    return sorted(_component(component).variants)


def presets(component: str) -> list[str]:
    return list(_component(component).presets)


def get_variant(component: str, name: str) -> Variant:
    comp = _component(component)
    if name not in comp.variants:
        raise UnknownChoiceError(f"{component} variant", name, list(comp.variants))
    return comp.variants[name]


def preset_config(component: str, preset: str) -> dict[str, Any]:
    comp = _component(component)
    if preset not in comp.presets:
        raise UnknownChoiceError(f"{component} preset", preset, list(comp.presets))
    return dict(comp.presets[preset])


def build(
    component: str, variant: str, preset: str = "tiny", *, device: str | torch.device | None = None, **overrides: Any
) -> nn.Module:
    """Build a registered variant at a preset. ``device="meta"`` allocates nothing (paper-size models are free)."""
    v = get_variant(component, variant)
    kwargs = {**preset_config(component, preset), **dict(v.defaults), **overrides}
    ctx = torch.device(device) if device is not None else contextlib.nullcontext()
    with ctx:
        return v.builder(**kwargs)


def param_counts(model: nn.Module) -> dict[str, int]:
    """Total, trainable and frozen parameter counts (shared parameters counted once)."""
    seen: set[int] = set()
    total = trainable = 0
    for p in _unique_params(model, seen):
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def _unique_params(model: nn.Module, seen: set[int]) -> Iterator[nn.Parameter]:
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            yield p
