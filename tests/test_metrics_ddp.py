"""Two real gloo processes: the metric classes' DDP reductions give the single-process results."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ff_lightning.metrics import FrechetDistance, InceptionScore, VideoPSNR, VideoSSIM

WORLD = 2


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(6, 3, 3, 12, 12, generator=g) * 2 - 1
    return {
        "pred": (target + 0.2 * torch.randn(target.shape, generator=g)).clamp(-1, 1),
        "target": target,
        "real": torch.randn(20, 5, generator=g),
        "fake": torch.randn(14, 5, generator=g) + 0.5,
        "logits": torch.randn(16, 7, generator=g) * 2,
    }


def _run(metrics: dict, d: dict[str, torch.Tensor], rows: slice | None = None) -> dict:
    """Update every metric with (a shard of) the data and compute. ``rows`` picks this rank's shard."""

    def part(x: torch.Tensor, shard: slice | None) -> torch.Tensor:
        return x if shard is None else x[shard]

    metrics["psnr"].update(part(d["pred"], rows), part(d["target"], rows))
    metrics["ssim"].update(part(d["pred"], rows), part(d["target"], rows))
    metrics["fd"].update(part(d["real"], rows), real=True)
    metrics["fd"].update(part(d["fake"], rows), real=False)
    metrics["is"].update(part(d["logits"], rows))
    return {k: {kk: vv for kk, vv in m.compute().items() if kk != "weights"} for k, m in metrics.items()}


def _metrics() -> dict:
    return {
        "psnr": VideoPSNR(),
        "ssim": VideoSSIM(kernel_size=7, sigma=1.0),
        "fd": FrechetDistance(num_features=5),
        "is": InceptionScore(splits=1),
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = _run(_metrics(), _data(), rows=slice(rank, None, WORLD))  # interleaved shards, uneven sizes
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_process_gloo_matches_single_process(tmp_path: Path) -> None:
    # fork: the children inherit the imported modules (spawn re-imports torch and costs ~10x more on 2 cores)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method=method)
    single = _run(_metrics(), _data())
    for rank in range(WORLD):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got.keys() == single.keys()
        for name, want in single.items():
            for key, value in want.items():
                assert got[name][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (rank, name, key)
