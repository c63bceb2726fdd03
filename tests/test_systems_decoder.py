"""DecoderModule (video MoVQ decoder fine-tuning) through real Lightning Trainers on bundled real footage.

Tiny preset, 32x32 frames, 3-frame clips, 1-2 optimiser steps per run. What trains under each policy is checked
bit-exactly on the parameters; GAN, EMA, LPIPS, non-finite losses, validation logging and the Table 3 evaluator too.
"""

from __future__ import annotations

import math
from itertools import chain
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import DictConfig

from ff_lightning.config import ConfigError, load_config
from ff_lightning.data import build_datamodule
from ff_lightning.models.video_decoder import temporal_parameter_names
from ff_lightning.registry import build
from ff_lightning.systems.decoder import DecoderModule
from ff_lightning.systems.ema import EMA

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "experiments" / "decoder" / "base.yaml"
FRAMES = 3
FROZEN = ("movq.encoder.", "movq.quantize.", "movq.quant_conv.", "movq.post_quant_conv.")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Reduced bundled footage at 32 px, shared by this session's system/ablation tests (the build is idempotent)."""
    from ff_lightning.data.bundled import build_all

    cache = tmp_path_factory.getbasetemp() / "ff_bundled_32"
    build_all(cache, reduced=True, size=32, progress=False, sets=["footage"])
    return cache


@pytest.fixture(autouse=True)
def _offline_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Empty weight caches: no LPIPS backbone can be found, none may be downloaded."""
    monkeypatch.setenv("FF_CACHE_DIR", str(tmp_path / "ffcache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("FF_WEIGHTS_DIR", raising=False)


def _cfg(cache: Path, out: Path, *extra: str) -> DictConfig:
    return load_config(
        BASE,
        [
            f"data.cache_dir={cache}",
            f"data.num_frames={FRAMES}",
            "data.size=[32,32]",
            "data.batch_size=1",
            "data.max_samples=2",
            "data.max_val_samples=2",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.enable_progress_bar=false",
            "trainer.check_val_every_n_epoch=1",  # base.yaml validates every 2nd epoch; these tests need each epoch
            "trainer.limit_val_batches=null",
            "trainer.log_every_n_steps=1",
            f"run.output_dir={out}",
            "module.allow_random_movq=true",
            "module.log_video_every_n_steps=0",
            "model.variant=conv3x1x1",
            *extra,
        ],
    )


def _trainer(max_steps: int, callbacks: list[L.Callback] | None = None, validate: bool = False) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=None if validate else 0,
        callbacks=callbacks or [],
    )


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in chain(module.named_parameters(), module.named_buffers())}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    after = _snapshot(module)
    assert after.keys() == before.keys()
    return {n for n in before if not torch.equal(before[n], after[n])}


def _temporal_names(module: DecoderModule) -> set[str]:
    return {f"movq.decoder.{n}" for n in temporal_parameter_names(module.movq.decoder)}


# ------------------------------------------------------------------------------------------------------ policies
def test_policy_temporal_trains_only_temporal_parameters(data_cache: Path, tmp_path: Path) -> None:
    cfg = _cfg(data_cache, tmp_path, "module.policy=temporal")
    module = DecoderModule(cfg)
    temporal = _temporal_names(module)
    assert temporal and {n for n, p in module.named_parameters() if p.requires_grad} == temporal
    before = _snapshot(module)
    _trainer(2).fit(module, datamodule=build_datamodule(cfg.data))
    changed = _changed(before, module)
    assert changed, "two optimiser steps changed nothing"
    assert changed <= temporal, f"non-temporal parameters changed: {sorted(changed - temporal)[:5]}"
    assert not any(n.startswith(FROZEN) for n in changed)
    assert any(n.endswith("alpha") for n in changed)  # the merges leave 0 first: the path into the temporal convs


def test_policy_decoder_trains_2d_decoder_but_not_encoder_or_quantizer(data_cache: Path, tmp_path: Path) -> None:
    cfg = _cfg(data_cache, tmp_path, "module.policy=decoder")
    module = DecoderModule(cfg)
    before = _snapshot(module)
    modes = _ModeProbe()
    _trainer(1, [modes]).fit(module, datamodule=build_datamodule(cfg.data))
    changed = _changed(before, module)
    spatial = {n for n in changed if n.startswith("movq.decoder.")} - _temporal_names(module)
    assert "movq.decoder.conv_out.weight" in spatial and len(spatial) > 10
    assert not [n for n in changed if n.startswith(FROZEN)], "encoder / quantizer / 1x1 convs must stay frozen"
    assert modes.seen == [{"encoder": False, "quantize": False, "quant_conv": False, "decoder": True}]


class _ModeProbe(L.Callback):
    """train/eval mode of the MoVQ parts while training steps run."""

    def __init__(self) -> None:
        self.seen: list[dict[str, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.seen.append(
            {k: getattr(pl_module.movq, k).training for k in ("encoder", "quantize", "quant_conv", "decoder")}
        )


def test_policy_none_evaluates_and_refuses_to_train(data_cache: Path, tmp_path: Path) -> None:
    from ff_lightning.train import fit

    cfg = _cfg(data_cache, tmp_path, "module.policy=none", "model.variant=image", "trainer.max_steps=0")
    module = DecoderModule(cfg)
    assert not any(p.requires_grad for p in module.parameters())
    with pytest.raises(ValueError, match="nothing to train.*max_steps=0"):
        module.configure_optimizers()
    result = fit(cfg)  # max_steps=0: validation only, no optimiser
    assert result.checkpoint is None
    assert {"val/psnr", "val/ssim", "val/mse"} <= result.metrics.keys()
    assert all(math.isfinite(result.metrics[k]) for k in ("val/psnr", "val/ssim", "val/mse"))


def test_policy_temporal_with_image_variant_is_a_config_error(data_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="temporal.*image"):
        DecoderModule(_cfg(data_cache, tmp_path, "module.policy=temporal", "model.variant=image"))
    with pytest.raises(ConfigError, match="decoder, temporal, none"):
        DecoderModule(_cfg(data_cache, tmp_path, "module.policy=everything"))


# ------------------------------------------------------------------------------------------------- image MoVQ file
def test_missing_movq_ckpt_is_a_config_error(data_cache: Path, tmp_path: Path) -> None:
    cfg = _cfg(data_cache, tmp_path, "module.allow_random_movq=false")
    with pytest.raises(ConfigError, match="movq_ckpt") as e:
        DecoderModule(cfg)
    assert "make ablate-decoder" in str(e.value)


@pytest.fixture(scope="module")
def saved_movq() -> dict[str, torch.Tensor]:
    torch.manual_seed(1234)
    movq = build("movq", "movqgan", "tiny")
    with torch.no_grad():
        for p in movq.parameters():
            p.add_(0.01)  # certainly not what a fresh initialisation gives
    return {k: v.detach().clone().contiguous() for k, v in movq.state_dict().items()}


@pytest.mark.parametrize("fmt", ["safetensors", "lightning_ckpt"])
def test_movq_ckpt_loads_bit_exact(
    fmt: str, saved_movq: dict[str, torch.Tensor], data_cache: Path, tmp_path: Path
) -> None:
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "movq.safetensors"
        save_file(saved_movq, str(path))
    else:  # what a Lightning checkpoint of the movq system looks like: nested, prefixed, with training-only entries
        path = tmp_path / "movq.ckpt"
        state = {f"movq.{k}": v for k, v in saved_movq.items()}
        state["discriminator.main.0.weight"] = torch.zeros(8, 3, 4, 4)
        torch.save({"state_dict": state, "global_step": 7, "epoch": 0, "pytorch-lightning_version": "2"}, path)
    cfg = _cfg(data_cache, tmp_path, "module.allow_random_movq=false", f"module.movq_ckpt={path}")
    module = DecoderModule(cfg)
    got = module.movq.state_dict()
    for prefix in ("encoder.", "quantize.", "quant_conv.", "post_quant_conv."):
        keys = [k for k in saved_movq if k.startswith(prefix)]
        assert keys
        for k in keys:
            assert torch.equal(got[k], saved_movq[k]), k
    dec = module.movq.decoder.state_dict()  # 2D weights of the converted decoder are the image decoder's
    for k, v in saved_movq.items():
        if k.startswith("decoder."):
            assert torch.equal(dec[k[len("decoder.") :]], v), k


# ------------------------------------------------------------------------------------------------------------ GAN
class _DiscriminatorProbe(L.Callback):
    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.states.append(_snapshot(pl_module.discriminator))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.states.append(_snapshot(pl_module.discriminator))


@pytest.mark.parametrize("policy", ["decoder", "temporal"])
def test_gan_starts_at_gan_start_step(policy: str, data_cache: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        data_cache,
        tmp_path,
        f"module.policy={policy}",
        "module.gan_weight=0.8",
        "module.gan_start_step=1",
        "module.disc_channels=8",
        "module.disc_layers=1",
    )
    module = DecoderModule(cfg)
    assert module.discriminator is not None
    probe = _DiscriminatorProbe()
    before = _snapshot(module)
    trainer = _trainer(2, [probe])
    trainer.fit(module, datamodule=build_datamodule(cfg.data))
    assert len(probe.states) == 3  # initial + two batches (the GAN's own optimiser step counts in global_step)
    init, step0, step1 = probe.states
    assert all(torch.equal(init[k], step0[k]) for k in init), "discriminator trained before gan_start_step"
    assert any(not torch.equal(step0[k], step1[k]) for k in init), "discriminator did not train from gan_start_step"
    logged = trainer.callback_metrics
    for key in ("train/g_loss", "train/d_loss", "train/gan_adaptive_w", "train/loss", "train/rec_loss"):
        assert key in logged and torch.isfinite(logged[key]), key
    changed = {n for n in _changed(before, module) if n.startswith("movq.")}
    assert changed and not [n for n in changed if n.startswith(FROZEN)]
    if policy == "temporal":
        assert changed <= _temporal_names(module)


# ------------------------------------------------------------------------------------------------------------ EMA
def test_ema_device_follows_parameters() -> None:
    """A shadow restored on another device than the model (resume, DDP rank) follows the parameters."""
    params = [torch.nn.Parameter(torch.ones(3, device="meta"))]
    ema = EMA(params, 0.9)
    ema.load_state_dict({"decay": 0.9, "shadow": [torch.zeros(3)]})  # as restored: on the CPU
    ema.update(params)
    assert ema.shadow[0].device == params[0].device


class _SwapProbe(L.Callback):
    """Parameters before validation, while validating (EMA swapped in) and after (swapped back out)."""

    def __init__(self) -> None:
        self.before: list[torch.Tensor] | None = None
        self.shadow: list[torch.Tensor] | None = None
        self.during: list[torch.Tensor] | None = None
        self.after: list[torch.Tensor] | None = None

    @staticmethod
    def _params(m: DecoderModule) -> list[torch.Tensor]:
        return [p.detach().clone() for p in m.trainable_parameters()]

    def on_validation_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.before = self._params(pl_module)
        self.shadow = [s.clone() for s in pl_module.ema.shadow]

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        if self.during is None:
            self.during = self._params(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.after = self._params(pl_module)


@pytest.fixture(scope="module")
def ema_run(data_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """One fit (TensorBoard, checkpoint, EMA 0.9, 2 steps = one epoch, then validation) with add_video recorded."""
    from torch.utils.tensorboard import SummaryWriter

    from ff_lightning.train import fit

    out = tmp_path_factory.mktemp("ema_run")
    cfg = _cfg(
        data_cache,
        out,
        "optim.ema_decay=0.9",
        "module.policy=decoder",
        "trainer.max_steps=2",
        "data.val_batch_size=2",
        "module.log_video_every_n_steps=1",
        "module.num_log_samples=2",
    )
    videos: list[tuple[str, tuple[int, ...]]] = []
    original = SummaryWriter.add_video

    def add_video(self, tag, vid_tensor, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        videos.append((tag, tuple(vid_tensor.shape)))
        return original(self, tag, vid_tensor, *args, **kwargs)

    probe = _SwapProbe()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SummaryWriter, "add_video", add_video)
        result = fit(cfg, extra_callbacks=[probe])
    return cfg, result, probe, videos


def test_ema_shadow_moves_and_differs_from_params(ema_run) -> None:
    _, result, probe, _ = ema_run
    module = result.module
    assert module.ema is not None and module.ema.decay == 0.9
    params = module.trainable_parameters()
    assert len(module.ema.shadow) == len(params)
    assert any(not torch.equal(s, p) for s, p in zip(module.ema.shadow, params))


def test_validation_swaps_ema_in_and_restores_params(ema_run) -> None:
    _, _, probe, _ = ema_run
    assert probe.before is not None and probe.during is not None and probe.after is not None
    assert any(not torch.equal(b, s) for b, s in zip(probe.before, probe.shadow))  # a swap is observable
    assert all(torch.equal(d, s) for d, s in zip(probe.during, probe.shadow)), "validation did not use the EMA"
    assert all(torch.equal(a, b) for a, b in zip(probe.after, probe.before)), "parameters not restored bit-exact"


def test_ema_saved_in_checkpoint_and_restored(ema_run) -> None:
    cfg, result, _, _ = ema_run
    assert result.checkpoint is not None and result.checkpoint.is_file()
    ckpt = torch.load(result.checkpoint, map_location="cpu", weights_only=False)
    assert ckpt["ema"]["decay"] == 0.9
    shadow = result.module.ema.shadow
    assert all(torch.equal(a, b) for a, b in zip(ckpt["ema"]["shadow"], shadow, strict=True))
    restored = DecoderModule.load_from_checkpoint(result.checkpoint, cfg=cfg, map_location="cpu")
    assert restored.ema is not None and restored.ema.decay == 0.9
    assert all(torch.equal(a, b) for a, b in zip(restored.ema.shadow, shadow, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(restored.trainable_parameters(), result.module.trainable_parameters()))


def test_validation_logs_metrics_and_side_by_side_video(ema_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, result, _, videos = ema_run
    for key in ("val/psnr", "val/ssim", "val/mse"):
        assert key in result.metrics and math.isfinite(result.metrics[key]), key
    assert 0.0 < result.metrics["val/mse"] < 1.0 and -1.0 <= result.metrics["val/ssim"] <= 1.0
    shapes = dict(videos)
    assert shapes["val/reconstruction"] == (2, FRAMES, 3, 32, 64)  # (N, T, C, H, 2W): target | reconstruction
    assert shapes["train/reconstruction"] == (1, FRAMES, 3, 32, 64)
    acc = EventAccumulator(str(result.run_dir), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    assert "val/reconstruction" in tags["images"] and "train/reconstruction" in tags["images"]
    gif = acc.Images("val/reconstruction")[0]  # the N=2 side-by-side videos tiled in one row of a GIF
    assert gif.encoded_image_string[:6] == b"GIF89a" and (gif.width, gif.height) == (2 * 64, 32)
    assert {"val/psnr", "val/ssim", "val/mse"} <= set(tags["scalars"])


# -------------------------------------------------------------------------------------------- LPIPS / NaN checks
def test_lpips_loss_without_alexnet_file_fails_at_construction(data_cache: Path, tmp_path: Path) -> None:
    from ff_lightning.metrics.weights import WeightsUnavailable

    with pytest.raises(WeightsUnavailable, match="alexnet-owt-7be5be79.pth"):
        DecoderModule(_cfg(data_cache, tmp_path, "module.lpips_weight=0.1"))
    missing = tmp_path / "nowhere" / "alexnet.pth"
    with pytest.raises(WeightsUnavailable, match="alexnet"):
        DecoderModule(_cfg(data_cache, tmp_path, "module.lpips_weight=0.1", f"module.lpips_weights={missing}"))


class _Poison(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx == 1:
            batch["video"][0, 0, 0, 0, 0] = float("nan")


def test_non_finite_loss_raises_naming_the_step(data_cache: Path, tmp_path: Path) -> None:
    cfg = _cfg(data_cache, tmp_path, "module.policy=decoder")
    module = DecoderModule(cfg)
    with pytest.raises(FloatingPointError, match="non-finite loss .* at step 1"):
        _trainer(2, [_Poison()]).fit(module, datamodule=build_datamodule(cfg.data))


# ------------------------------------------------------------------------------------------------------ evaluation
def test_evaluate_identity_video_decoder_equals_image_decoder(
    saved_movq: dict[str, torch.Tensor], data_cache: Path, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    from ff_lightning.evaluation.decoder import evaluate_decoder

    path = tmp_path / "movq.safetensors"
    save_file(saved_movq, str(path))
    results = {}
    for variant in ("image", "conv3x1x1", "conv3x1x1_attn"):
        cfg = _cfg(
            data_cache,
            tmp_path,
            f"model.variant={variant}",
            "module.policy=none",
            "module.allow_random_movq=false",
            f"module.movq_ckpt={path}",
        )
        results[variant] = evaluate_decoder(DecoderModule(cfg), cfg)
    ref = results["image"]
    for variant, res in results.items():
        for m in ("psnr", "ssim", "mse", "flicker"):
            r = res[m]
            assert r["n"] == 2 and r["value"] is not None and math.isfinite(r["value"]), (variant, m)
            assert r["ci_low"] <= r["value"] <= r["ci_high"], (variant, m, r)
            assert r["value"] == pytest.approx(ref[m]["value"], rel=1e-5, abs=1e-7), (variant, m)
        lp = res["lpips"]
        assert lp["value"] is None and lp["ci_low"] is None and lp["n"] == 0
        assert "alexnet" in lp["reason"].lower()
    assert 0.0 < ref["mse"]["value"] < 1.0 and ref["psnr"]["value"] > 0


def test_evaluate_decoder_uses_ema_weights_and_restores_params(ema_run) -> None:
    from ff_lightning.evaluation.decoder import _eval_device, evaluate_decoder

    cfg, result, _, _ = ema_run
    module = result.module
    assert _eval_device(cfg) == torch.device("cpu")  # trainer.accelerator=cpu
    params = [p.detach().clone() for p in module.trainable_parameters()]
    with_ema = evaluate_decoder(module, cfg)
    assert all(torch.equal(a, b) for a, b in zip(module.trainable_parameters(), params, strict=True))
    ema, module.ema = module.ema, None
    try:
        raw = evaluate_decoder(module, cfg)
        ema.swap_in(module.trainable_parameters())
        averaged = evaluate_decoder(module, cfg)
        ema.swap_out(module.trainable_parameters())
    finally:
        module.ema = ema
    assert with_ema["psnr"]["value"] == averaged["psnr"]["value"] != raw["psnr"]["value"]
