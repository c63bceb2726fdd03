"""The bundled-data cache: where it lives, completion markers, and atomic, locked (re)builds of one data set.

A set is built into a temporary sibling folder; its marker file (``.ff_complete.json``: version and build parameters)
is written last, atomically, and the folder is then renamed into place. An exclusive file lock serialises builders
(parallel test processes, several ranks), so a reader never sees a half-written set.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["default_cache_dir", "data_dir", "read_marker", "write_json_atomic", "build_atomically", "MARKER"]

MARKER = ".ff_complete.json"


def default_cache_dir() -> Path:
    """``$FF_CACHE_DIR`` if set, else ``~/.cache/ff_lightning``."""
    env = os.environ.get("FF_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ff_lightning"


def data_dir(cache_dir: str | Path | None = None) -> Path:
    """``<cache>/data``."""
    return (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "data"


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a completed set in ``folder``, or None (absent or unreadable)."""
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_atomically(
    folder: Path, marker: dict[str, Any], writer: Callable[[Path], dict[str, Any]], *, force: bool = False
) -> Path:
    """Ensure ``folder`` holds a complete set whose marker equals ``marker`` (rebuild with ``writer`` otherwise).

    ``writer(tmp_folder)`` fills a fresh folder and returns extra facts (counts, sizes) stored in the marker under
    ``"info"``; only ``version`` and ``params`` are compared.
    """
    marker = json.loads(json.dumps(marker))  # tuples -> lists, as read back
    with _locked(folder.parent / f".{folder.name}.lock"):
        old = read_marker(folder)
        if not force and old is not None and _same(old, marker):
            return folder
        tmp = folder.parent / f".{folder.name}.building-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            info = writer(tmp)
            write_json_atomic(tmp / MARKER, {**marker, "info": info})
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("version") == b.get("version") and a.get("params") == b.get("params")
