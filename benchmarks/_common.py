"""Helpers shared by the benchmark scripts: machine metadata, output paths and CSV, peak RSS in a fresh process.

The scripts import it as ``from _common import ...`` after putting their own folder on ``sys.path`` (they run as
``python benchmarks/NAME.py`` and are loaded by file path in the smoke tests, so ``benchmarks`` is no package).

Peak memory on the CPU: a measurement runs in a fresh Python process (the script re-run with a hidden ``--_child
JSON`` flag, :func:`run_child`) with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc serves every tensor-sized block
with its own mmap and returns it on free; the child resets its RSS high-water mark (:func:`reset_peak_rss`, Linux
``/proc/self/clear_refs``) and reports ``VmHWM`` after the measured work minus ``VmRSS`` before it
(:func:`proc_status_kib`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ff_lightning.io import atomic_write_text

__all__ = [
    "CHILD_ENV",
    "cpu_name",
    "device_name",
    "command_line",
    "timestamp",
    "output_paths",
    "write_csv",
    "proc_status_kib",
    "reset_peak_rss",
    "run_child",
]

#: environment of a memory child: every tensor-sized block its own mmap (returned to the OS on free)
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


# ------------------------------------------------------------------------------------------------------ metadata
def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo with the CPU count, e.g. ``"AMD EPYC 7B13 (2 CPUs)"``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_name(device: str) -> str:
    """The GPU's name for a ``cuda`` device, else :func:`cpu_name`."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name()
    return cpu_name()


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """How to repeat this run: ``python <script> <args>`` (``argv`` as given to ``main``, else ``sys.argv[1:]``)."""
    return shlex.join(["python", script, *(sys.argv[1:] if argv is None else argv)])


def timestamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M")


# ------------------------------------------------------------------------------------------------------- outputs
def output_paths(prefix: str | os.PathLike[str]) -> dict[str, Path]:
    """``{"md": PREFIX.md, "csv": PREFIX.csv, "png": PREFIX.png}``."""
    p = Path(prefix)
    return {ext: p.with_name(f"{p.name}.{ext}") for ext in ("md", "csv", "png")}


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]], fmt: Callable[[Any], str]) -> None:
    """One line per row, the given ``columns`` (missing values empty), values through ``fmt``; written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: fmt(row.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


# -------------------------------------------------------------------------------------------------- peak memory
def proc_status_kib() -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of this process in KiB (from /proc/self/status)."""
    values: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_child(script: str | os.PathLike[str], spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``script --_child JSON(spec)`` in a fresh Python process with :data:`CHILD_ENV`; its last stdout line is
    the JSON result."""
    env = {**os.environ, **CHILD_ENV}
    cmd = [sys.executable, str(Path(script).resolve()), "--_child", json.dumps(spec)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement {spec} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
