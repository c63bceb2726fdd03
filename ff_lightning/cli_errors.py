"""One place that turns the project's known error classes into one-line ``ff`` messages (exit status 2).

:func:`known_error_message` recognises an exception by the qualified names of the classes along its MRO, so this
module imports none of the modules that define them (``ff --help`` stays free of torch): an exception of one of those
classes can only exist once its module was imported. Anything not recognised returns ``None`` and keeps its traceback
(a bug to report, not a usage problem).
"""

from __future__ import annotations

import errno
import pickle
from pathlib import Path
from types import TracebackType

__all__ = ["known_error_message", "KNOWN_ERRORS"]

#: qualified class name (where the class is defined: tests/test_cli_errors.py checks each one exists) -> the fix
#: appended to the exception's own message ("" when the message already says it)
KNOWN_ERRORS: dict[str, str] = {
    "ff_lightning.config.ConfigError": "",
    "ff_lightning.registry.UnknownChoiceError": "",
    # CheckpointError covers UnsafeCheckpointError (pickle refusal) and unreadable safetensors files
    "ff_lightning.checkpoints.CheckpointError": "",
    "ff_lightning.data.base.NoUsableSamplesError": (
        "fix: point data.root / data.annotations at the dataset (see `ff train CONFIG --print-config`) or replace "
        "the unusable files"
    ),
    "ff_lightning.data.annotations.AnnotationError": "",
    "ff_lightning.metrics.weights.WeightsChecksumError": (
        "fix: replace the file with the released one named by Source (or pass the right file's path)"
    ),
    "ff_lightning.metrics.weights.WeightsUnavailable": "",
    "ff_lightning.evaluation.protocol.ProtocolError": "",
    "ff_lightning.evaluation.generators.GeneratorUnavailable": "",
    "ff_lightning.evaluation.samples.SampleStoreMismatch": "",
}

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _qualnames(exc: BaseException) -> list[str]:
    return [f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__]


def _one_line(text: str) -> str:
    """``text`` without a DataLoader worker's re-raised traceback (its last line is the original message)."""
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        head, sep, rest = last.partition(": ")
        return rest if sep and "." in head and " " not in head else last
    return text.strip()


def _no_space(exc: BaseException) -> OSError | None:
    """The disk-full ``OSError`` of ``exc`` or of the exceptions it was raised from or while handling (torch.save
    reports a full disk as a RuntimeError raised while handling the writer's ``OSError``)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _NO_SPACE:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def _torch_frame_file(exc: BaseException, function: str) -> str | None:
    """The file that ``torch.<function>`` (``load`` / ``save`` of torch/serialization.py) was given, when ``exc`` was
    raised inside it; else None."""
    tb: TracebackType | None = exc.__traceback__
    found = None
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == function and Path(code.co_filename).parts[-2:] == ("torch", "serialization.py"):
            f = tb.tb_frame.f_locals.get("f")
            name = f if isinstance(f, (str, Path)) else getattr(f, "name", None)
            found = str(name) if isinstance(name, (str, Path)) else _atomic_target(exc) or "a checkpoint file"
        tb = tb.tb_next
    return found


def _atomic_target(exc: BaseException) -> str | None:
    """The final path of an atomic write (``ff_lightning.io.atomic_*``, which writes a temporary file descriptor)."""
    tb: TracebackType | None = exc.__traceback__
    found = None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name.startswith("atomic_") and isinstance(frame.f_locals.get("path"), (str, Path)):
            found = str(frame.f_locals["path"])
        tb = tb.tb_next
    return found


def _torch_load_file(exc: BaseException) -> str | None:
    """The file ``torch.load`` was reading when ``exc`` was raised (a truncated or corrupt checkpoint), else None."""
    if not isinstance(exc, (RuntimeError, EOFError, pickle.UnpicklingError)):
        return None
    return _torch_frame_file(exc, "load")


def known_error_message(exc: BaseException) -> str | None:
    """The message to print for ``exc`` (without the ``ff CMD: error:`` prefix), or ``None`` if it is not known.

    Known: the classes of :data:`KNOWN_ERRORS` (and their subclasses), ``FileNotFoundError``, ``OSError`` with
    errno ``ENOSPC`` / ``EDQUOT`` (disk full; also when it is the cause or context of ``exc``), and the errors ``torch.load`` raises on a truncated or corrupt file
    (recognised by its frame in the traceback, which also names the file). A config error may list several problems, one per line.
    """
    full = _no_space(exc)
    if full is not None:
        filename = full.filename or _torch_frame_file(exc, "save") or _atomic_target(exc)
        where = f" writing {filename}" if filename else ""
        return (
            f"no space left on device{where} ({full.strerror or full}); fix: free disk space or point run.output_dir / "
            "FF_CACHE_DIR at a disk with room, then rerun (resume=auto continues from the last checkpoint)"
        )
    ckpt = _torch_load_file(exc)
    if ckpt is not None:
        detail = (str(exc).strip().splitlines() or [""])[0].split(". ")[0] or type(exc).__name__
        return (
            f"{ckpt} is truncated or not a PyTorch checkpoint ({detail}); fix: use an intact copy of the file (for "
            "`ff train resume=auto`, delete the broken checkpoint so the newest intact one is used)"
        )
    for name in _qualnames(exc):
        if name in KNOWN_ERRORS:
            message = _one_line(str(exc))
            fix = KNOWN_ERRORS[name]
            return f"{message}; {fix}" if fix else message
    if isinstance(exc, FileNotFoundError):
        return _one_line(str(exc))
    return None
