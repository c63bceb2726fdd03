"""The interpolation system: tiny fits of both methods through ``ff_lightning.train.fit`` on the bundled long footage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from ff_lightning.config import ConfigError, load_config
from ff_lightning.data.interpolation import InterpolationSequenceDataset
from ff_lightning.train import build_system, fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ff_lightning.data.bundled import build_set

    root = tmp_path_factory.mktemp("ffcache")
    build_set("footage_long", root, reduced=True, progress=False)
    return root


def _overrides(cache: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"data.cache_dir={cache}", "data.batch_size=2", "data.size=[32,32]", "data.num_frames=9",
        "trainer.max_steps=3", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        "trainer.val_check_interval=null", "trainer.check_val_every_n_epoch=3",  # 1 train clip: 1 batch an epoch
        "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
        "optim.warmup_steps=0", "optim.lr=1e-3", "optim.ema_decay=0.9", "module.allow_random_movq=true",
        "module.allow_random_t2i=true", "module.sample_steps=2", "module.num_log_samples=1",
        "module.log_samples_every_n_steps=0", f"run.output_dir={out}", *extra,
    ]  # fmt: skip


class Snapshot(L.Callback):
    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


@pytest.mark.parametrize("config", ["base", "masked"])
def test_tiny_fit_of_both_methods(cache: Path, tmp_path: Path, config: str) -> None:
    cfg = load_config(ROOT / f"experiments/interpolation/{config}.yaml", _overrides(cache, tmp_path))
    snap = Snapshot()
    result = fit(cfg, extra_callbacks=[snap])
    module = result.module
    assert module.method.name == {"base": "fusionframes", "masked": "masked"}[config]
    assert {"train/loss", "val/loss", "val/psnr", "val/ssim"} <= set(result.metrics)
    assert all(torch.isfinite(torch.tensor(result.metrics[k])) for k in ("train/loss", "val/loss", "val/psnr"))
    after = dict(module.named_parameters())
    changed = [n for n, p in snap.before.items() if n.startswith("unet.") and not torch.equal(p, after[n])]
    assert len(changed) > 10  # the whole UNet trains
    assert all(torch.equal(p, after[n]) for n, p in snap.before.items() if n.startswith("movq."))
    datasets = result.trainer.datamodule.datasets
    assert isinstance(datasets["train"], InterpolationSequenceDataset)  # installed by the system's setup
    ckpt = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert not any(k.startswith("movq.") for k in ckpt["state_dict"]) and "ema_state_dict" in ckpt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(result.run_dir), size_guidance={"images": 0})
    acc.Reload()
    assert "val/samples" in acc.Tags()["images"]
    assert {"data/skip_mean", "data/skip_resampled"} <= set(acc.Tags()["scalars"])
    # inference from pixel keyframes: K = 3 -> 9 frames; two passes -> 33
    keys = torch.rand(1, 3, 3, 32, 32) * 2 - 1
    video = module.generate(keys, steps=2, skip_frames=2)
    assert video.shape == (1, 9, 3, 32, 32)
    assert module.generate(keys, passes=2, decode=False, steps=1).shape == (1, 33, 4, 16, 16)


def test_config_errors(cache: Path, tmp_path: Path) -> None:
    base = ROOT / "experiments/interpolation/base.yaml"
    with pytest.raises(ConfigError, match="model.variant=masked_frame"):
        build_system(load_config(base, _overrides(cache, tmp_path, "module.method=masked")))
    with pytest.raises(ConfigError, match="4K - 3"):
        build_system(load_config(base, _overrides(cache, tmp_path, "data.num_frames=8")))
    with pytest.raises(ConfigError, match="t2i_ckpt is not set"):
        build_system(load_config(base, _overrides(cache, tmp_path, "module.allow_random_t2i=false")))


def test_starts_from_a_t2i_checkpoint(cache: Path, tmp_path: Path) -> None:
    """The inherited weights of the interpolation UNet are the t2i UNet's (a bare state dict here). A file without a
    null embedding is refused (it would stay random and frozen) unless the null embedding trains; one with it gives
    its null embedding, frozen."""
    from ff_lightning.models.unet import UNET_PRESETS, KandinskyUNet

    torch.manual_seed(0)
    image = KandinskyUNet(**UNET_PRESETS["tiny"])
    path = tmp_path / "t2i.pt"
    torch.save(image.state_dict(), path)

    def build(t2i: Path, *extra: str) -> Any:
        overrides = _overrides(cache, tmp_path, "module.allow_random_t2i=false", f"module.t2i_ckpt={t2i}", *extra)
        return build_system(load_config(ROOT / "experiments/interpolation/masked.yaml", overrides))

    with pytest.raises(
        ConfigError, match=r"t2i\.pt has no null embedding .*random and frozen.*train_null_embedding=true"
    ):
        build(path)
    module = build(path, "module.train_null_embedding=true")
    state = module.unet.state_dict()
    for name in module.unet.inherited_parameter_names:
        assert torch.equal(state[name], image.state_dict()[name])
    assert all(p.requires_grad for p in module.unet.parameters())  # freeze_spatial: false
    assert module.null_embedding.embedding.requires_grad
    null = torch.randn(module.null_embedding.embedding.shape)
    with_null = tmp_path / "t2i_null.pt"
    torch.save({**image.state_dict(), "null_embedding.embedding": null}, with_null)
    frozen = build(with_null)
    assert torch.equal(frozen.null_embedding.embedding, null) and not frozen.null_embedding.embedding.requires_grad
