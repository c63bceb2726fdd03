"""Shared fixtures. The bundled datasets are built once per session into $FF_CACHE_DIR (make sets it to .cache/)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def bundled_cache() -> Path:
    """Build (or reuse) the bundled offline datasets; returns the cache root."""
    from ff_lightning.data.bundled import build_all
    from ff_lightning.paths import cache_dir

    build_all(cache_dir())
    return cache_dir()
