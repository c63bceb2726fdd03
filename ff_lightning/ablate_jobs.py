"""Run the rows of an ``ff ablate`` sweep in parallel worker processes (``ff ablate --jobs N``, ``make ... JOBS=N``).

Each row trains and evaluates on its own (its own seed, run folder ``<sweep>/<row>``, cache file and lock), so the
rows of a sweep are independent: ``N`` rows at a time in ``N`` fresh (spawned) processes give the same records as one
after the other, in the sweep's order. On a CPU machine that runs each row single-threaded (the make targets set
``OMP_NUM_THREADS=1``: small models scale poorly across threads) the other cores are otherwise idle, so ``--jobs`` set
to the number of cores cuts the rows' wall time by about that factor. Prepare steps run before, in the calling
process (every row needs their output).

A worker that fails does not stop the others (their rows are cached when they finish); the first failure is raised
after all have ended, naming its row. Ctrl-C cancels the rows not yet started.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["default_jobs", "run_rows"]


def default_jobs() -> int:
    """The number of CPUs this process may use (``os.sched_getaffinity``), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _init_worker(level: int, threads: int | None) -> None:
    """In each worker: the CLI's log format and level, and the intra-op threads of its share of the CPUs."""
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    if threads:
        import torch

        torch.set_num_threads(threads)


def _worker_threads(workers: int) -> int | None:
    """Intra-op threads per worker: unset (torch's own choice) when ``OMP_NUM_THREADS`` says how many, else the
    CPUs divided among the workers, so ``workers`` processes do not each take every core."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, default_jobs() // workers)


def run_rows(
    fn: Callable[..., dict[str, Any]], calls: Sequence[tuple[Any, ...]], jobs: int, names: Sequence[str]
) -> list[dict[str, Any]]:
    """``[fn(*args) for args in calls]``, with up to ``jobs`` calls at a time in spawned processes (``jobs <= 1`` or a
    single call: in this process). ``fn`` and its arguments must be picklable (a module-level function, configs,
    paths); ``names``: the row of each call, for the error message. Results come back in the order of ``calls``."""
    if len(names) != len(calls):
        raise ValueError(f"{len(calls)} calls but {len(names)} names")
    if jobs <= 1 or len(calls) <= 1:
        return [fn(*args) for args in calls]
    workers = min(jobs, len(calls))
    threads = _worker_threads(workers)
    log.info(
        "running %d rows, %d at a time in worker processes (%s intra-op thread(s) each)",
        len(calls), workers, threads or os.environ.get("OMP_NUM_THREADS"),
    )  # fmt: skip
    init_args = (logging.getLogger().getEffectiveLevel(), threads)
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=init_args
    ) as pool:
        futures: list[Future] = [pool.submit(fn, *args) for args in calls]
        try:
            wait(futures)
        except KeyboardInterrupt:
            for f in futures:
                f.cancel()
            raise
    failed = [(name, f.exception()) for name, f in zip(names, futures, strict=True) if f.exception() is not None]
    for name, err in failed[1:]:
        log.error("row %s failed too: %s: %s", name, type(err).__name__, err)
    if failed:
        name, err = failed[0]
        log.error("row %s failed in its worker process", name)
        raise err
    return [f.result() for f in futures]
