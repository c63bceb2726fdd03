"""Where ff_lightning keeps what it builds: ``$FF_CACHE_DIR`` (default ``~/.cache/ff_lightning``).

Layout: ``data/`` (bundled datasets), ``models/`` (cached tiny models trained by make targets), ``weights/``
(evaluator weights you place there), ``ablations/`` (sweep row results keyed by config hash).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "portable_text"]


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``override`` if given, else ``$FF_CACHE_DIR``, else ``~/.cache/ff_lightning``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get("FF_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ff_lightning"


def _repo_root() -> Path | None:
    """The source checkout holding this package (a folder with ``pyproject.toml``), or None when installed."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def portable_text(text: str) -> str:
    """``text`` with this machine's absolute folders replaced by portable names, for files meant to be committed:
    the cache root -> ``$FF_CACHE_DIR``, the source checkout -> a repository-relative path, the home folder -> ``~``
    (longest prefix first). Other paths are left as they are. E.g. ``/home/me/repo/experiments/x.yaml`` ->
    ``experiments/x.yaml``."""
    prefixes: list[tuple[str, str]] = []
    for folder, name in ((cache_dir(), "$FF_CACHE_DIR/"), (_repo_root(), ""), (Path.home(), "~/")):
        if folder is None:
            continue
        for form in {str(folder), str(Path(folder).resolve())}:
            if form not in ("", "/"):
                prefixes.append((form.rstrip("/") + "/", name))
    for prefix, name in sorted(prefixes, key=lambda p: -len(p[0])):
        text = text.replace(prefix, name)
    return text
