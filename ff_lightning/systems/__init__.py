"""Lightning "systems": the LightningModules that train the plain ``nn.Module`` models of :mod:`ff_lightning.models`.

Systems are named (``decoder``, ``t2i``, ``keyframes``, ``interpolation``, ...). Each registers its LightningModule
class and the schema dataclass of its ``module:`` config section. Names map to this package's own modules only.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from ff_lightning.registry import UnknownChoiceError

# name -> (module, LightningModule class, schema dataclass)
_SYSTEMS: dict[str, tuple[str, str, str]] = {
    "decoder": ("ff_lightning.systems.decoder", "DecoderModule", "DecoderSystemConfig"),
    "movq": ("ff_lightning.systems.movq", "MoVQModule", "MoVQSystemConfig"),
    "t2i": ("ff_lightning.systems.t2i", "T2IModule", "T2ISystemConfig"),
    "keyframes": ("ff_lightning.systems.keyframes", "KeyframesModule", "KeyframesSystemConfig"),
    "reference_keyframes": (
        "ff_lightning.systems.reference_keyframes",
        "ReferenceKeyframesModule",
        "ReferenceKeyframesSystemConfig",
    ),
    "interpolation": ("ff_lightning.systems.interpolation", "InterpolationModule", "InterpolationSystemConfig"),
}


def register_system(name: str, module: str, cls: str, schema: str) -> None:
    _SYSTEMS[name] = (module, cls, schema)


def available_systems() -> list[str]:
    return sorted(n for n, (mod, _, _) in _SYSTEMS.items() if importlib.util.find_spec(mod) is not None)


def _entry(name: str) -> tuple[Any, Any]:
    if name not in available_systems():
        raise UnknownChoiceError("system", name, available_systems())
    mod, cls, schema = _SYSTEMS[name]
    m = importlib.import_module(mod)
    return getattr(m, cls), getattr(m, schema)


def system_class(name: str) -> Any:
    return _entry(name)[0]


def system_schema(name: str) -> type:
    return _entry(name)[1]
