"""Scaling: 2-process CPU DDP (gloo) reaches the weights of one process on the same global batch; gradient
accumulation equals the larger batch; UNet gradient checkpointing gives the same gradients; the sampler shards the
global order across ranks; strategy / precision names are validated with the valid choices.

``test_ddp_trains_the_decoder_system_like_one_process`` runs the project's own decoder system through ``fit`` (what
``ff train`` runs) under 2-process DDP and compares its checkpoint with one process on the same global batch.
The other DDP and accumulation runs train a tiny deterministic probe (a linear model, plain SGD, no BatchNorm) through the
real :class:`~ff_lightning.data.datamodule.VideoDataModule` on 32 px bundled footage, so what is compared includes our
sampler's sharding under Lightning's DDP (which must leave it unwrapped) and its epochs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ff_lightning import registry
from ff_lightning.config import ConfigError, load_config
from ff_lightning.data import build_datamodule
from ff_lightning.data.config import DataConfig
from ff_lightning.data.samplers import EpochSampler
from ff_lightning.train import build_system, enable_gradient_checkpointing

REPO = Path(__file__).resolve().parents[1]
SAMPLES, BATCH, STEPS = 8, 2, 4  # per-device batch 2 on 2 ranks = global batch 4: 2 steps an epoch, 2 epochs


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: forked DDP workers must not inherit a live OpenMP pool, and sums must match bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ff_lightning.data.bundled import build_all

    cache = tmp_path_factory.getbasetemp() / "ff_bundled_32"
    build_all(cache, reduced=True, size=32, progress=False, sets=["footage"])
    return cache


class Probe(L.LightningModule):
    """``loss = mean_b (w . pool(video_b) + c - 2 mean(video_b))^2``; logs the sample indices of every batch."""

    def __init__(self, log_dir: Path, out: Path | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3 * 4 * 4, 1)
        self.log_dir, self.out = str(log_dir), out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        video = batch["video"]  # b t c h w
        x = F.adaptive_avg_pool2d(video.mean(1), 4).flatten(1)  # b 48
        target = 2 * video.mean(dim=(1, 2, 3, 4))
        loss = (self.linear(x).squeeze(1) - target).square().mean()
        row = {
            "step": self.global_step,
            "rank": self.global_rank,
            "indices": [m["requested_index"] for m in batch["meta"]],
        }
        with open(Path(self.log_dir, f"rank{self.global_rank}.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        return loss

    def on_fit_end(self) -> None:
        if self.out is not None and self.global_rank == 0:
            torch.save({k: v.detach().clone() for k, v in self.state_dict().items()}, self.out)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _data(cache: Path, batch_size: int) -> DataConfig:
    return DataConfig(
        source="bundled_septuplet", cache_dir=str(cache), num_frames=2, size=[32, 32], batch_size=batch_size,
        max_samples=SAMPLES, seed=1,
    )  # fmt: skip


def _fit(cache: Path, log_dir: Path, batch_size: int, out: Path, **trainer: Any) -> dict[str, torch.Tensor]:
    log_dir.mkdir(parents=True, exist_ok=True)
    module = Probe(log_dir, out)
    kwargs: dict[str, Any] = dict(accelerator="cpu", devices=1, max_steps=STEPS, limit_val_batches=0)
    kwargs.update(trainer)
    L.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs
    ).fit(module, datamodule=build_datamodule(_data(cache, batch_size)))
    return torch.load(out, weights_only=True)


def _rows(log_dir: Path, rank: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (log_dir / f"rank{rank}.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(data_cache: Path, tmp_path: Path) -> None:
    single = _fit(data_cache, tmp_path / "single", 2 * BATCH, tmp_path / "single.pt")
    # ddp_fork: the workers inherit this process's imports (spawn would re-import torch and lightning in each)
    ddp = _fit(data_cache, tmp_path / "ddp", BATCH, tmp_path / "ddp.pt", strategy="ddp_fork", devices=2)
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], atol=1e-6, rtol=0)
    assert not torch.equal(single["linear.weight"], Probe(tmp_path).linear.weight.detach())  # it did train
    # every step, the two ranks together trained on exactly the single process's batch, and on different samples
    one = _rows(tmp_path / "single", 0)
    r0, r1 = _rows(tmp_path / "ddp", 0), _rows(tmp_path / "ddp", 1)
    assert len(one) == len(r0) == len(r1) == STEPS
    for s, a, b in zip(one, r0, r1, strict=True):
        assert sorted(a["indices"] + b["indices"]) == sorted(s["indices"])
        assert not set(a["indices"]) & set(b["indices"])
    assert one[0]["indices"] != one[2]["indices"]  # epoch 1 is shuffled differently from epoch 0 (set_epoch works)


def test_gradient_accumulation_equals_the_larger_batch(data_cache: Path, tmp_path: Path) -> None:
    big = _fit(data_cache, tmp_path / "big", 2 * BATCH, tmp_path / "big.pt", max_steps=2)
    acc = _fit(data_cache, tmp_path / "acc", BATCH, tmp_path / "acc.pt", max_steps=2, accumulate_grad_batches=2)
    for k in big:
        torch.testing.assert_close(acc[k], big[k], atol=1e-6, rtol=0)


def test_epoch_sampler_shards_cover_the_global_order() -> None:
    order = EpochSampler(10, seed=5).global_order()
    shards = []
    for rank in range(3):
        s = EpochSampler(10, seed=5, num_replicas=3, rank=rank)
        shards.append([i for _, i in s])
        assert len(shards[-1]) == len(s) == 4  # padded to 12 = 3 x 4
    padded = order + order[:2]
    assert [shards[r][k] for k in range(4) for r in range(3)] == padded  # rank r takes positions r, r + 3, ...
    unpadded = [[i for _, i in EpochSampler(10, seed=5, num_replicas=3, rank=r, pad=False)] for r in range(3)]
    assert sorted(sum(unpadded, [])) == list(range(10))
    with pytest.raises(ValueError):
        EpochSampler(10, num_replicas=2, rank=2)


# ---------------------------------------------------------------------------------------- gradient checkpointing
def _unet_grads(checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
    torch.manual_seed(0)
    unet = registry.build("t2i_unet", "kandinsky3", "tiny")
    unet.set_gradient_checkpointing(checkpointing)
    calls = []
    unet.down_samples[0].register_forward_pre_hook(lambda *a: calls.append(1))  # recompute may stop early
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 5, 32, generator=g)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    out = unet(x, torch.tensor([10.0, 500.0]), context, mask)
    out.square().mean().backward()
    return {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}, len(calls)


def test_unet_gradient_checkpointing_same_gradients() -> None:
    plain, plain_calls = _unet_grads(False)
    ckpt, ckpt_calls = _unet_grads(True)
    assert plain_calls == 1 and ckpt_calls == 2  # the level really was recomputed in the backward pass
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_config_flag_reaches_the_unet(tmp_path: Path) -> None:
    cfg = load_config(
        REPO / "experiments" / "t2i" / "tiny.yaml",
        ["module.allow_random_movq=true", "trainer.gradient_checkpointing=true", f"run.output_dir={tmp_path}"],
    )
    module = build_system(cfg)
    assert not module.unet.gradient_checkpointing
    assert enable_gradient_checkpointing(module) == 1 and module.unet.gradient_checkpointing


# ------------------------------------------------------------------------------------------------ config checks
@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.strategy=dpp", "unknown trainer.strategy 'dpp'; valid choices: auto, ddp,"),
        ("trainer.precision=bf16", "unknown trainer.precision 'bf16'; valid choices: 32-true, bf16-mixed, 16-mixed"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be >= 1"),
    ],
)
def test_bad_strategy_or_precision_lists_valid_choices(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "experiments" / "movq" / "tiny.yaml", [override])
    assert message in str(e.value)
    if "strategy" in override:
        assert "fsdp" in str(e.value) and "ddp_spawn" in str(e.value)


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp", "deepspeed"])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed", "bf16-true"])
def test_scaling_choices_validate(strategy: str, precision: str) -> None:
    cfg = load_config(
        REPO / "experiments" / "movq" / "tiny.yaml",
        [f"trainer.strategy={strategy}", f"trainer.precision={precision}", "trainer.devices=8", "trainer.num_nodes=4"],
    )
    assert (cfg.trainer.strategy, cfg.trainer.precision, cfg.trainer.num_nodes) == (strategy, precision, 4)


def _decoder_cfg(cache: Path, out: Path, batch_size: int, *extra: str) -> Any:
    """The project's decoder system (tiny, L1 only: a loss without random draws, so DDP can be compared exactly)."""
    return load_config(
        REPO / "experiments" / "decoder" / "base.yaml",
        [
            f"data.cache_dir={cache}", "data.num_frames=2", "data.size=[32,32]", f"data.batch_size={batch_size}",
            "data.max_samples=4", "trainer.accelerator=cpu", "trainer.max_steps=2", "trainer.enable_progress_bar=false",
            "trainer.limit_val_batches=0", "trainer.val_check_interval=null", "trainer.log_every_n_steps=1",
            "module.allow_random_movq=true", "module.log_video_every_n_steps=0", f"run.output_dir={out}", *extra,
        ],
    )  # fmt: skip


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_ddp_trains_the_decoder_system_like_one_process(
    data_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ff train``'s :func:`fit` on the real decoder system: 2 processes (gloo, batch 1 each) end with the weights
    of 1 process on the same global batch of 2, and only rank 0 writes the run folder and checkpoint."""
    from ff_lightning.checkpoints import load_checkpoint
    from ff_lightning.train import fit

    monkeypatch.setenv("FF_CACHE_DIR", str(tmp_path / "ffcache"))  # no LPIPS backbone anywhere: L1 only
    single = fit(_decoder_cfg(data_cache, tmp_path / "single", 2, "trainer.devices=1"))
    ddp = fit(_decoder_cfg(data_cache, tmp_path / "ddp", 1, "trainer.devices=2", "trainer.strategy=ddp_fork"))
    a, b = load_checkpoint(single.checkpoint), load_checkpoint(ddp.checkpoint)
    assert a["global_step"] == b["global_step"] == 2
    sa, sb = a["state_dict"], b["state_dict"]
    assert sa.keys() == sb.keys()
    trained = [k for k in sa if "temporal" in k or "alpha" in k]
    assert trained, "no temporal parameters in the decoder checkpoint"
    init = build_system(_decoder_cfg(data_cache, tmp_path / "init", 2, "trainer.devices=1")).state_dict()
    assert any(not torch.equal(sa[k], init[k]) for k in trained)  # it did train
    for k in sa:
        # equal up to float rounding of the gradient all-reduce, which AdamW can magnify for parameters whose
        # gradients are tiny (CPUs round differently: 3e-6 seen on a 1e-3 merge scalar, AMD EPYC): at most 1% of
        # how far the tensor moved from its initial value (a rank training on the wrong data moves it differently
        # by about a whole step, lr = 1e-3), plus 2e-6
        if not sa[k].is_floating_point():
            assert torch.equal(sb[k], sa[k]), k
            continue
        moved = (sa[k] - init[k]).abs().max().item() if k in init else 0.0
        diff = (sb[k] - sa[k]).abs().max().item()
        assert diff <= 0.01 * moved + 2e-6, f"{k}: DDP and one process differ by {diff:.3g} (moved {moved:.3g})"
    assert len(list((tmp_path / "ddp").rglob("*.ckpt"))) == len(list((tmp_path / "single").rglob("*.ckpt")))
