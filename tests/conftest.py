"""Shared fixtures. The bundled datasets are built once per session into $FF_CACHE_DIR (make sets it to .cache/)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` by file path (``benchmarks`` is no package; the scripts find ``_common``
    through their own folder)."""
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def bundled_cache() -> Path:
    """Build (or reuse) the bundled offline datasets; returns the cache root."""
    from ff_lightning.data.bundled import build_all
    from ff_lightning.paths import cache_dir

    build_all(cache_dir())
    return cache_dir()
