"""State-dict manifests of the released models (``<name>.json``), shipped with the package.

Each manifest holds ``config`` (the released constructor arguments), ``num_parameters`` and ``state_dict``: every
entry as ``[key, shape]`` in the released order. They were read off the public reference implementations; tests
compare our modules against them (parameter counts, keys, shapes, order).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["manifest", "manifest_entries", "available_manifests"]


def available_manifests() -> list[str]:
    """Names of the shipped manifests (file names without ``.json``)."""
    return sorted(p.name[: -len(".json")] for p in resources.files(__name__).iterdir() if p.name.endswith(".json"))


@cache
def _read(name: str) -> str:
    path = resources.files(__name__) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest {name!r}; shipped: {', '.join(available_manifests())}")
    return path.read_text()


def manifest(name: str) -> dict[str, Any]:
    """The parsed manifest ``name`` (e.g. ``"movqgan_270m"``, ``"video_movq_decoder_conv3x1x1"``)."""
    return json.loads(_read(name))


def manifest_entries(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """The manifest's state-dict entries as ``(key, shape)`` pairs, in order."""
    return [(key, tuple(shape)) for key, shape in manifest(name)["state_dict"]]
