"""Where ff_lightning keeps what it builds: ``$FF_CACHE_DIR`` (default ``~/.cache/ff_lightning``).

Layout: ``data/`` (bundled datasets), ``models/`` (cached tiny models trained by make targets), ``weights/``
(evaluator weights you place there), ``ablations/`` (sweep row results keyed by config hash).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``override`` if given, else ``$FF_CACHE_DIR``, else ``~/.cache/ff_lightning``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("FF_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ff_lightning"
