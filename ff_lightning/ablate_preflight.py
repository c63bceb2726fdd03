"""What ``ff ablate`` checks and decides before any training: train / test data, one sample of each, output folder,
locks, and the description of a row's setup that the tables print.

Train and test data (``data:`` of a sweep yaml, or ``data.train.KEY=`` / ``data.test.KEY=`` on the command line):
``data.train`` holds ``data.*`` keys of every row's experiment config (where the decoder is fine-tuned);
``data.test`` holds the keys that differ for evaluation (e.g. Vimeo-90k septuplets while training on 8-frame clips of
another source; empty: rows are evaluated on the held-out split of their training data). ``root`` without ``source``
is recognised from the folder (``sep_trainlist.txt`` / ``sep_testlist.txt``: ``vimeo_septuplet``; a ``.csv`` file:
``webvid``); ``root: bundled`` means the bundled footage. ``num_frames: all`` is every frame of a sequence (7 for
septuplets), read from the first listed sequence.

Pre-flight (:func:`preflight`): every data config a sweep will read is opened and one sample loaded, so a missing
folder, an empty list or clips longer than the sequences stop the sweep in a second, as one line naming the fix,
instead of after the image MoVQ has trained.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ff_lightning.config import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "DATA_SIDES",
    "normalise_data_side",
    "eval_config",
    "resolve_all_frames",
    "preflight",
    "own_output",
    "file_lock",
    "display_path",
    "scrub_paths",
    "describe_setup",
]

DATA_SIDES = ("train", "test")
#: make variables that set each side (named in error messages next to the sweep keys)
_MAKE_VARS = {"train": ("TRAIN_DATA", "TRAIN_FRAMES"), "test": ("TEST_DATA", "TEST_FRAMES")}
#: keys that belong to one source's layout: reset when data.test names another source or root
_SOURCE_KEYS = ("annotations", "val_annotations", "video_dir", "path_column", "frames_per_sequence")
_VIMEO_LISTS = ("sep_trainlist.txt", "sep_testlist.txt", "tri_trainlist.txt", "tri_testlist.txt")
ALL_FRAMES = "all"


def _detect(side: str, root: str) -> dict[str, Any]:
    """``{"source", "root", ...}`` for a ``root`` given without a source (see the module docstring)."""
    if root == "bundled":
        return {"root": None}
    p = Path(root).expanduser()
    var = _MAKE_VARS[side][0]
    if p.is_file() and p.suffix.lower() == ".csv":
        return {"source": "webvid", "root": str(p.parent), "annotations": str(p)}
    if p.is_dir() and any((p / n).is_file() for n in _VIMEO_LISTS):
        return {"source": "vimeo_septuplet", "root": str(p)}
    if not p.exists():
        raise ConfigError(f"data.{side}.root / {var}={root}: no such file or folder; fix: give the dataset's path")
    raise ConfigError(
        f"data.{side}.root / {var}={root}: neither a Vimeo-90k folder (sep_trainlist.txt / sep_testlist.txt) nor a "
        f"WebVid-style CSV; fix: name its layout too, data.{side}.source=<webvid|vimeo_septuplet|...>"
    )


def normalise_data_side(side: str, values: dict[str, Any]) -> dict[str, Any]:
    """One side of a sweep's ``data:`` with its source recognised from ``root`` where none is given."""
    if side not in DATA_SIDES:
        raise ConfigError(f"data.{side}: a sweep's data has the sides {', '.join(DATA_SIDES)} (data.train.KEY=...)")
    out = dict(values or {})
    if out.get("root") is not None and not out.get("source"):
        out.update(_detect(side, str(out["root"])))
    elif out.get("root") == "bundled":
        out["root"] = None
    return out


def _items(values: dict[str, Any]) -> list[str]:
    return [
        f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else 'null' if v is None else v}" for k, v in values.items()
    ]


def eval_config(cfg: DictConfig, test: dict[str, Any]) -> DictConfig:
    """The config a row is evaluated with: its own, with ``data`` replaced by ``data.test`` merged over the row's
    data (layout keys of the training source are dropped when the test names another source or root; the test set
    is capped only by the test's own ``max_samples`` / ``max_val_samples``: every listed sequence by default)."""
    from ff_lightning.config import compose

    if not test:
        return cfg
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(data, dict)
    new = dict(test)
    if any(k in new and new[k] != data.get(k) for k in ("source", "root")):
        new = {**{k: None for k in _SOURCE_KEYS}, **new}
    cap = new.pop("max_samples", None) or new.get("max_val_samples")
    new["max_samples"], new["max_val_samples"], new["val_split"] = None, cap, "test"
    base = OmegaConf.to_container(cfg, resolve=True)
    return compose(base, [f"data.{k}" for k in _items(new)], source="data.test")


def resolve_all_frames(side: str, cfg: DictConfig) -> int:
    """Images per sequence of the data ``cfg.data`` names (the split ``side`` reads): what ``num_frames: all`` is."""
    from ff_lightning.data import build_dataset

    data = OmegaConf.merge(cfg.data, {"num_frames": 1})
    try:
        ds = build_dataset(data, "train" if side == "train" else "test")
    except Exception as e:
        raise ConfigError(f"pre-flight, {side} data ({_describe(cfg.data)}): {_first_line(e)}") from None
    n = getattr(ds, "frames_per_sequence", None)
    if not n:
        raise ConfigError(
            f"data.{side}.num_frames=all needs frame sequences (the Vimeo-90k layout), not {cfg.data.source}; "
            f"fix: give a number, {_MAKE_VARS[side][1]}=8"
        )
    return int(n)


def _first_line(e: BaseException) -> str:
    from ff_lightning.cli_errors import known_error_message

    text = known_error_message(e) or f"{type(e).__name__}: {e}"
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def _describe(data: Any) -> str:
    root = getattr(data, "root", None)
    return f"{data.source}" + (f" at {display_path(root)}" if root else " (bundled)")


def _open_one(side: str, data: DictConfig, split: str, purpose: str) -> None:
    """Build ``split`` of ``data`` and load its first sample; ConfigError (one line, with the fix) otherwise."""
    from ff_lightning.data import build_dataset
    from ff_lightning.data.sampling import frames_needed

    where = f"pre-flight, {purpose} ({_describe(data)}, {split} split)"
    frames_var = _MAKE_VARS[side][1]
    try:
        ds = build_dataset(data, split)
        have = getattr(ds, "frames_per_sequence", None)
        need = frames_needed(int(data.num_frames), stride=int(data.stride), fps=data.fps, source_fps=30.0)
        if have and data.fps is None and need > have:
            raise ConfigError(
                f"{where}: clips of {data.num_frames} frames (stride {data.stride}) need {need} images but its "
                f"sequences have {have}; fix: {frames_var}={have} (or all), i.e. data.{side}.num_frames={have}"
            )
        if len(ds) == 0:
            raise ConfigError(f"{where}: no samples; fix: check the list / annotation file is not empty")
        item = ds[0]
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{where}: {_first_line(e)}") from None
    got = int(item["video"].shape[0])
    if got != int(data.num_frames):
        raise ConfigError(f"{where}: a sample has {got} frames, not {data.num_frames}; fix: {frames_var}={got}")


def preflight(jobs: Sequence[tuple[DictConfig, DictConfig, bool]]) -> None:
    """Open one sample of every distinct data a sweep will read before any work.

    ``jobs``: per row ``(row config, its evaluation config, trains)``; a training row reads its train split (and,
    when the trainer validates, its validation split); every row reads the evaluation config's held-out split.
    """
    seen: set[str] = set()

    def once(side: str, data: DictConfig, split: str, purpose: str) -> None:
        key = json.dumps([split, OmegaConf.to_container(data, resolve=True)], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            _open_one(side, data, split, purpose)

    for cfg, ecfg, trains in jobs:  # train data first: its settings also make the test data when no data.test
        if trains:
            once("train", cfg.data, "train", "train data")
            if float(cfg.trainer.limit_val_batches or 0) > 0 and ecfg is not cfg:
                once("train", cfg.data, "val", "validation during training (trainer.limit_val_batches=0 skips it)")
    for cfg, ecfg, _ in jobs:
        once("test" if ecfg is not cfg else "train", ecfg.data, "val", "test data")


def own_output(sw: Any, overrides: Sequence[str], only: Sequence[str] | None, rows: Sequence[Any]) -> str | None:
    """Where a sweep run that is not the sweep as written goes (None: the yaml's ``output``).

    ``--only``, rows evaluated from checkpoints and any override but ``cache_dir`` make a different table: it goes to
    ``runs/ablations/<name>-<hash of the overrides>/<name>`` so committed tables are never overwritten by accident;
    ``output=PATH`` on the command line chooses the place explicitly.
    """
    keys = [o.split("=", 1)[0] for o in overrides]
    if "output" in keys:
        return None
    changed = [o for o, k in zip(overrides, keys) if k != "cache_dir"]
    if not (only or changed or any(r.checkpoint for r in rows)):
        return None
    tag = hashlib.sha256(json.dumps([sorted(changed), sorted(only or [])]).encode()).hexdigest()[:8]
    return str(Path("runs") / "ablations" / f"{sw.name}-{tag}" / Path(sw.output).name)


@contextlib.contextmanager
def file_lock(path: Path, what: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing) for the block: a second ``ff ablate`` on the same cache
    waits here (saying so) instead of computing the same thing; the lock goes with the process, never stale."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another ff ablate run that is computing %s (lock %s)", what, path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _anchors() -> list[tuple[str, str]]:
    from ff_lightning.paths import cache_dir

    pairs = [
        (str(cache_dir().resolve()), "$FF_CACHE_DIR"),
        (str(cache_dir()), "$FF_CACHE_DIR"),
        (str(Path.cwd().resolve()), "."),
        (str(Path.cwd()), "."),
        (str(Path.home()), "~"),
    ]
    return sorted({(a, b) for a, b in pairs if a not in ("/", "")}, key=lambda p: -len(p[0]))


def display_path(path: str | os.PathLike[str] | None) -> str:
    """``path`` without this machine's absolute prefix: ``$FF_CACHE_DIR/...``, ``./...`` (the working directory),
    ``~/...``; other absolute paths keep only their last two parts (``.../parent/name``)."""
    if path is None:
        return "-"
    s = str(Path(path).expanduser())
    for anchor, name in _anchors():
        if s == anchor or s.startswith(anchor + os.sep):
            rest = s[len(anchor) :].lstrip(os.sep)
            return name if not rest else f"{name}/{rest}"
    parts = Path(s).parts
    return s if not Path(s).is_absolute() or len(parts) <= 3 else ".../" + "/".join(parts[-2:])


def scrub_paths(text: str) -> str:
    """``text`` with this machine's cache, working and home folders written as ``$FF_CACHE_DIR``, ``.`` and ``~``."""
    for anchor, name in _anchors():
        text = text.replace(anchor + os.sep, name + "/").replace(anchor, name)
    return text


def describe_setup(record: dict[str, Any], sha_memo: dict[str, str | None]) -> dict[str, Any]:
    """What made a row's numbers, for the table header and CSV: train / test data and frames, size, steps, preset and
    the image MoVQ (file and sha256), with no absolute machine paths."""
    from ff_lightning.checkpoints import sha256_file

    cfg = record.get("config") or {}
    data = cfg.get("data") or {}
    test = record.get("eval_data") or data
    movq = (cfg.get("module") or {}).get("movq_ckpt")
    if movq and movq not in sha_memo:
        sha_memo[movq] = sha256_file(movq) if Path(movq).is_file() else None

    def src(d: dict[str, Any], split: str) -> str:
        where = f" at {display_path(d['root'])}" if d.get("root") else " (bundled)"
        return f"{d.get('source')}{where}, {split} split"

    return {
        "train_data": src(data, "train") if not record.get("checkpoint") else "checkpoint (not trained here)",
        "train_frames": data.get("num_frames"),
        "test_data": src(test, "test"),
        "test_frames": test.get("num_frames"),
        "test_sequences": next((m.get("n") for m in (record.get("metrics") or {}).values() if m and m.get("n")), None),
        "test_cap": test.get("max_val_samples") or test.get("max_samples"),
        "size": "x".join(str(v) for v in data.get("size") or []),
        "steps": (cfg.get("trainer") or {}).get("max_steps"),
        "movq": display_path(movq) if movq else "-",
        "movq_sha256": sha_memo.get(movq) if movq else None,
    }
