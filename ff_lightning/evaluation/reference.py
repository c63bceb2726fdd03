"""Real-clip feature statistics for the Fréchet distances, computed once and cached on disk (resumable).

The cache folder ``$FF_CACHE_DIR/eval/real_stats/<key>/`` is keyed by the SHA-256 of:

- the dataset root (resolved path) and a fingerprint of its clip list (paths in order);
- the protocol's ``real`` section (dataset, split, frames, stride/fps, size, start, subset) and the metric's
  evaluator settings (kind, frames, size, feature layer) — the content that decides the features, so protocol
  variants that only differ elsewhere (e.g. 2048 vs 10k samples) share statistics;
- the evaluator weights' SHA-256 (and the evaluator entry actually used).

Features are extracted in chunks of ``real.chunk_size`` videos, each saved as ``chunk_NNNNN.npy`` (atomically) as soon
as it is done; an interrupted run resumes at the first missing chunk. ``stats.npz`` (``mu``, ``sigma``, ``n``) is
written last, with ``meta.json`` recording the key's content, the clips skipped as unreadable and timings. A clip
that cannot be read is skipped (listed), never replaced by another clip (which would count a video twice).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ff_lightning.data.base import ClipDataset, NoUsableSamplesError
from ff_lightning.data.config import DataConfig
from ff_lightning.evaluation.evaluators import Evaluator
from ff_lightning.io import atomic_open, atomic_write_json
from ff_lightning.metrics.distribution import feature_statistics
from ff_lightning.paths import cache_dir

__all__ = ["RealClips", "RealStats", "open_real_clips", "real_statistics"]

log = logging.getLogger(__name__)


@dataclass
class RealStats:
    """Mean ``(D,)``, covariance ``(D, D)``, number of feature rows and where they are cached."""

    mu: torch.Tensor
    sigma: torch.Tensor
    n_videos: int
    n_rows: int
    key: str
    folder: Path
    skipped: list[str]
    reused: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "folder": str(self.folder),
            "n_videos": self.n_videos,
            "n_feature_rows": self.n_rows,
            "feature_dim": int(self.mu.numel()),
            "skipped": self.skipped,
            "reused_cache": self.reused,
        }


@dataclass
class RealClips:
    """The real datasets (one per list) and their combined clip order."""

    root: Path
    datasets: list[ClipDataset]
    order: list[tuple[int, int]]  # (dataset, record index)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for d, i in self.order:
            rec = self.datasets[d].records[i]
            h.update(f"{Path(rec.path).relative_to(self.root) if self._under(rec.path) else rec.path}\n".encode())
        return h.hexdigest()

    def _under(self, p: str) -> bool:
        try:
            Path(p).relative_to(self.root)
            return True
        except ValueError:
            return False

    def __len__(self) -> int:
        return len(self.order)


UCF101_OBTAIN = (
    "UCF101.rar (the 13,320 videos in 101 class folders) and UCF101TrainTestSplits-RecognitionTask.zip "
    "(ucfTrainTestlist/) from https://www.crcv.ucf.edu/data/UCF101.php; never downloaded here"
)


def real_data_problem(spec: Any, root: str | Path | None) -> str | None:
    """Why the real clips of a protocol's ``real`` section cannot be read from ``root`` (None: they can be tried).

    UCF-101 needs a root holding ``ucfTrainTestlist/classInd.txt`` (the message names the missing path and where the
    dataset comes from); the bundled datasets default to the cache and are built on first use.
    """
    if spec.dataset != "ucf101":
        return None
    if root is None:
        return (
            "the UCF-101 root is required for FVD's real statistics: pass --data-root UCF101_ROOT (the folder "
            f"holding ucfTrainTestlist/ and the class folders of UCF-101 videos: {UCF101_OBTAIN})"
        )
    index = Path(root).expanduser() / "ucfTrainTestlist" / "classInd.txt"
    if not index.is_file():
        return (
            f"the UCF-101 root {root} has no {index.relative_to(Path(root).expanduser())} ({index} not found): "
            f"FVD's real statistics read the split lists and videos there ({UCF101_OBTAIN})"
        )
    return None


def open_real_clips(spec: Any, root: str | Path | None) -> RealClips:
    """The real clips of a protocol's ``real`` section (``root`` None: the bundled cache for bundled datasets)."""
    from ff_lightning.data.registry import build_dataset

    problem = real_data_problem(spec, root)
    if problem is not None:
        raise FileNotFoundError(problem)
    cfg = DataConfig(
        source=spec.dataset,
        root=str(root) if root is not None else None,
        split_index=spec.split_index,
        num_frames=spec.num_frames,
        stride=spec.stride,
        fps=spec.fps,
        size=list(spec.size),
        random_crop=False,
        random_start=False,
        eval_start=spec.start,
        val_split="test",
        shuffle=False,
        max_attempts=1,
    )
    splits = ["train", "test"] if spec.split == "all" else [spec.split]
    datasets = [build_dataset(cfg, s) for s in splits]
    order = [(d, i) for d, ds in enumerate(datasets) for i in range(len(ds))]
    if spec.max_videos is not None and spec.max_videos < len(order):
        picks = np.unique(np.linspace(0, len(order) - 1, spec.max_videos).round().astype(np.int64))
        order = [order[int(i)] for i in picks]
    return RealClips(root=Path(datasets[0].root).resolve(), datasets=datasets, order=order)


def _key(clips: RealClips, spec: Any, metric: Any, evaluator: Evaluator) -> tuple[str, dict[str, Any]]:
    content = {
        "root": str(clips.root),
        "clips": len(clips),
        "clip_list_sha256": clips.fingerprint(),
        "real": asdict(spec),
        "metric": {
            "kind": metric.kind,
            "num_frames": metric.num_frames,
            "frame_indices": metric.frame_indices,
            "size": list(metric.size),
            "features": metric.features,
        },
        "evaluator": evaluator.evaluator,
        "evaluator_sha256": [w["sha256"] for w in evaluator.weights],
        "details": evaluator.details,
    }
    content["real"].pop("batch_size", None)  # how work is batched does not change the features
    content["real"].pop("num_workers", None)
    content["real"].pop("chunk_size", None)
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:24], content


def _features_of_chunk(
    clips: RealClips, positions: Sequence[int], evaluator: Evaluator, batch_size: int
) -> tuple[np.ndarray, list[str]]:
    feats: list[torch.Tensor] = []
    skipped: list[str] = []
    batch: list[torch.Tensor] = []

    def flush() -> None:
        if batch:
            out = evaluator.fn(torch.stack(batch), [""] * len(batch))
            feats.append(out.reshape(len(batch), -1, out.shape[-1]))
            batch.clear()

    for pos in positions:
        d, i = clips.order[pos]
        ds = clips.datasets[d]
        try:
            sample = ds[i]  # max_attempts=1: an unreadable clip raises instead of being replaced
        except NoUsableSamplesError:
            skipped.append(ds.records[i].path)
            continue
        if sample["skipped"]:  # the dataset fell back to another clip: drop it instead of counting a video twice
            skipped.extend(sample["skipped"])
            continue
        batch.append(sample["video"])
        if len(batch) == batch_size:
            flush()
    flush()
    if not feats:
        return np.zeros((0, 1, 1), np.float32), skipped
    return torch.cat(feats).numpy().astype(np.float32), skipped


def real_statistics(
    spec: Any,
    metric: Any,
    evaluator: Evaluator,
    root: str | Path | None,
    *,
    cache: str | Path | None = None,
    progress: bool = True,
) -> RealStats:
    """Feature statistics of the protocol's real clips under ``evaluator`` (cached; see the module docstring)."""
    clips = open_real_clips(spec, root)
    key, content = _key(clips, spec, metric, evaluator)
    folder = (Path(cache) if cache is not None else cache_dir() / "eval" / "real_stats") / key
    folder.mkdir(parents=True, exist_ok=True)
    stats_path, meta_path = folder / "stats.npz", folder / "meta.json"
    if stats_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        with np.load(stats_path) as z:
            return RealStats(
                torch.from_numpy(z["mu"]),
                torch.from_numpy(z["sigma"]),
                int(meta["n_videos"]),
                int(z["n"]),
                key,
                folder,
                list(meta.get("skipped", [])),
                True,
            )
    atomic_write_json(folder / "key.json", content)
    n = len(clips)
    chunks = [list(range(s, min(n, s + spec.chunk_size))) for s in range(0, n, spec.chunk_size)]
    t0 = time.perf_counter()
    skipped: list[str] = []
    parts = []
    for c, positions in enumerate(
        tqdm(chunks, desc=f"real features ({metric.kind})", unit="chunk", disable=not progress)
    ):
        path = folder / f"chunk_{c:05d}.npy"
        skip_path = folder / f"chunk_{c:05d}.skipped.json"
        if path.is_file() and skip_path.is_file():
            parts.append(np.load(path))
            skipped += json.loads(skip_path.read_text())
            continue
        arr, sk = _features_of_chunk(clips, positions, evaluator, spec.batch_size)
        with atomic_open(path, "wb") as f:
            np.save(f, arr)
        atomic_write_json(skip_path, sk)
        parts.append(arr)
        skipped += sk
    feats = np.concatenate([p for p in parts if p.shape[0]], axis=0) if any(p.shape[0] for p in parts) else None
    if feats is None or feats.shape[0] < 2:
        raise RuntimeError(f"fewer than 2 readable real clips under {clips.root} ({len(skipped)} skipped)")
    rows = torch.from_numpy(feats.reshape(-1, feats.shape[-1]).astype(np.float64))
    mu, sigma = feature_statistics(rows)
    with atomic_open(stats_path, "wb") as f:
        np.savez(f, mu=mu.numpy(), sigma=sigma.numpy(), n=np.int64(rows.shape[0]))
    atomic_write_json(
        meta_path,
        {
            **content,
            "n_videos": int(feats.shape[0]),
            "n_feature_rows": int(rows.shape[0]),
            "skipped": skipped,
            "seconds": round(time.perf_counter() - t0, 3),
        },
    )
    if skipped:
        log.warning("real clips: %d unreadable clips skipped (listed in %s)", len(skipped), meta_path)
    return RealStats(mu, sigma, int(feats.shape[0]), int(rows.shape[0]), key, folder, skipped, False)
