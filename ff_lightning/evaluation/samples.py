"""Batched, resumable generation into a sample folder.

Layout of a sample folder::

    <folder>/plan.json        what made the samples: protocol, generator identity, seed, batch size, generation spec
    <folder>/manifest.jsonl   one JSON line per written batch: {"batch", "seed", "samples": [{index, prompt, id}]}
    <folder>/<index:06d>.npz  one video: ``video`` uint8 (T, H, W, 3), ``prompt``, ``index``, ``seed``

The protocol's samples are cut into a fixed grid of batches, batch ``k`` holding samples ``[k B, (k + 1) B)``, and
batch ``k`` is generated with the seed :func:`batch_seed` ``(seed, k)``. A batch is generated only when one of its
samples is missing (no file, or no manifest entry with the same prompt and seed); its videos are written atomically
(temporary file + rename), then its manifest line is appended. After an interruption, rerunning reuses every complete
batch and calls the generator only for the others, producing the same videos a single run would have (for a
deterministic generator). A folder made with another generator, seed, batch size or generation spec is refused
(``resume=False`` clears it first).

Videos are stored as 8-bit RGB, the quantisation any saved video goes through; every metric reads them back from the
folder.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ff_lightning.evaluation.generators import NamedGenerator
from ff_lightning.io import atomic_open, atomic_write_json

__all__ = ["GenerationReport", "SampleStore", "SampleStoreMismatch", "batch_seed", "generate_samples"]

log = logging.getLogger(__name__)


class SampleStoreMismatch(RuntimeError):
    """The sample folder holds samples made differently from what is asked now."""


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch ``batch`` of a run seeded ``seed`` (a 31-bit integer derived with ``SeedSequence``)."""
    return int(np.random.SeedSequence([int(seed) & (2**64 - 1), int(batch)]).generate_state(1)[0] & 0x7FFFFFFF)


def to_uint8(videos: torch.Tensor) -> tuple[np.ndarray, float]:
    """``(B, T, 3, H, W)`` in [-1, 1] -> ``(B, T, H, W, 3)`` uint8 and the fraction of values outside [-1, 1]."""
    x = videos.detach().float().cpu()
    outside = float(((x < -1) | (x > 1)).float().mean()) if x.numel() else 0.0
    u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return u8.permute(0, 1, 3, 4, 2).contiguous().numpy(), outside


@dataclass
class GenerationReport:
    """What a generation pass did."""

    requested: int
    reused: int
    generated: int
    calls: int
    seconds: float
    clamped_fraction: float = 0.0
    shapes: list[list[int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "reused": self.reused,
            "generated": self.generated,
            "generator_calls": self.calls,
            "seconds": round(self.seconds, 3),
            "clamped_fraction": self.clamped_fraction,
            "video_shape": self.shapes[0] if self.shapes else None,
        }


class SampleStore:
    """A sample folder (see the module docstring)."""

    PLAN = "plan.json"
    MANIFEST = "manifest.jsonl"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, index: int) -> Path:
        return self.folder / f"{index:06d}.npz"

    def clear(self) -> int:
        """Delete this store's own files (plan, manifest, ``NNNNNN.npz``); returns how many samples were removed."""
        n = 0
        if self.folder.is_dir():
            for p in self.folder.glob("[0-9]" * 6 + ".npz"):
                p.unlink()
                n += 1
            for name in (self.PLAN, self.MANIFEST):
                (self.folder / name).unlink(missing_ok=True)
        return n

    def read_plan(self) -> dict[str, Any] | None:
        p = self.folder / self.PLAN
        return json.loads(p.read_text()) if p.is_file() else None

    def entries(self) -> dict[int, dict[str, Any]]:
        """``index -> {prompt, seed, id}`` from the manifest, for samples whose file exists (later lines win)."""
        out: dict[int, dict[str, Any]] = {}
        p = self.folder / self.MANIFEST
        if not p.is_file():
            return out
        for line in p.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interruption
                continue
            for s in rec.get("samples", []):
                out[int(s["index"])] = {"prompt": s["prompt"], "seed": int(rec["seed"]), "id": s.get("id")}
        return {i: e for i, e in out.items() if self.path(i).is_file()}

    def prepare(self, header: dict[str, Any], resume: bool) -> None:
        """Check (or write) the plan header; ``resume=False`` clears the folder first."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not resume:
            removed = self.clear()
            if removed:
                log.info("--no-resume: removed %d earlier samples from %s", removed, self.folder)
        old = self.read_plan()
        if old is not None:
            diff = sorted(k for k in set(old) | set(header) if old.get(k) != header.get(k))
            if diff:
                raise SampleStoreMismatch(
                    f"sample folder {self.folder} was made with different {', '.join(diff)} "
                    f"(folder: {json.dumps({k: old.get(k) for k in diff}, default=str)}; now: "
                    f"{json.dumps({k: header.get(k) for k in diff}, default=str)}). Use --no-resume to replace its "
                    "samples, or another --out / --run-name."
                )
            return
        atomic_write_json(self.folder / self.PLAN, header)

    def write_batch(
        self,
        batch: int,
        seed: int,
        indices: Sequence[int],
        prompts: Sequence[str],
        ids: Sequence[str],
        videos: np.ndarray,
    ) -> None:
        """Write ``videos`` ``(B, T, H, W, 3)`` uint8 atomically, then append the batch's manifest line."""
        for j, i in enumerate(indices):
            buf = io.BytesIO()
            np.savez_compressed(
                buf, video=videos[j], prompt=np.array(prompts[j]), index=np.int64(i), seed=np.int64(seed)
            )
            with atomic_open(self.path(i), "wb") as f:
                f.write(buf.getvalue())
        line = {
            "batch": batch,
            "seed": seed,
            "time": time.time(),
            "samples": [{"index": int(i), "prompt": p, "id": d} for i, p, d in zip(indices, prompts, ids)],
        }
        with open(self.folder / self.MANIFEST, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def load(self, indices: Sequence[int]) -> torch.Tensor:
        """Videos ``(B, T, 3, H, W)`` float32 in [-1, 1] (8-bit values mapped back: ``u / 127.5 - 1``)."""
        vids = []
        for i in indices:
            with np.load(self.path(i), allow_pickle=False) as z:
                vids.append(torch.from_numpy(z["video"]))
        shapes = {tuple(v.shape) for v in vids}
        if len(shapes) > 1:
            raise ValueError(f"samples in {self.folder} differ in shape: {sorted(shapes)}")
        return torch.stack(vids).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0

    def iter_batches(self, num: int, batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
        """``(indices, videos)`` over samples ``0 .. num - 1`` in order."""
        for start in range(0, num, batch_size):
            idx = list(range(start, min(num, start + batch_size)))
            yield idx, self.load(idx)


def generate_samples(
    store: SampleStore,
    generator: NamedGenerator,
    prompts: Sequence[str],
    ids: Sequence[str],
    *,
    seed: int,
    batch_size: int,
    header: dict[str, Any],
    resume: bool = True,
    progress: bool = True,
) -> GenerationReport:
    """Generate every missing sample of ``prompts`` into ``store`` (see the module docstring)."""
    if len(prompts) != len(ids):
        raise ValueError(f"{len(prompts)} prompts but {len(ids)} ids")
    full_header = {**header, "generator": generator.identity, "seed": seed, "batch_size": batch_size}
    store.prepare(full_header, resume)
    have = store.entries()
    n = len(prompts)
    num_batches = (n + batch_size - 1) // batch_size
    todo = []
    for k in range(num_batches):
        idx = list(range(k * batch_size, min(n, (k + 1) * batch_size)))
        s = batch_seed(seed, k)
        if any(i not in have or have[i]["prompt"] != prompts[i] or have[i]["seed"] != s for i in idx):
            todo.append((k, s, idx))
    report = GenerationReport(requested=n, reused=n - sum(len(t[2]) for t in todo), generated=0, calls=0, seconds=0.0)
    if report.reused:
        log.info("reusing %d samples from %s", report.reused, store.folder)
    t0 = time.perf_counter()
    clamped: list[float] = []
    for k, s, idx in tqdm(todo, desc=f"generate ({generator.name})", unit="batch", disable=not progress):
        batch_prompts = [prompts[i] for i in idx]
        videos = generator(batch_prompts, s)
        ok = isinstance(videos, torch.Tensor) and videos.ndim == 5
        if not ok or videos.shape[0] != len(idx) or videos.shape[2] != 3:
            got = tuple(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
            raise ValueError(f"generator {generator.name!r} must return (B={len(idx)}, T, 3, H, W), got {got}")
        if not torch.isfinite(videos).all():
            raise ValueError(f"generator {generator.name!r} returned non-finite values (batch {k})")
        u8, outside = to_uint8(videos)
        clamped.append(outside)
        store.write_batch(k, s, idx, batch_prompts, [ids[i] for i in idx], u8)
        report.calls += 1
        report.generated += len(idx)
    report.seconds = time.perf_counter() - t0
    report.clamped_fraction = float(np.mean(clamped)) if clamped else 0.0
    if n:
        report.shapes = [list(store.load([0]).shape[1:])]
    return report
