"""The t2i and keyframes systems: tiny fits through ``ff_lightning.train.fit`` on the bundled captioned shapes.

One text-to-image run is trained (2 steps) and its checkpoint starts a keyframe run of every variant: spatial weights
must stay bit-exact (those of the t2i checkpoint), temporal weights must move.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from ff_lightning.config import ConfigError, load_config
from ff_lightning.models.keyframes import KEYFRAME_DESIGNS, default_frame_stride
from ff_lightning.train import build_system, fit

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ff_lightning.data.bundled import build_all

    root = tmp_path_factory.mktemp("ffcache")
    build_all(root, reduced=True, progress=False, sets=["shapes"])
    return root


def _overrides(cache: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"data.cache_dir={cache}", "data.batch_size=2", "data.size=[32,32]", "data.max_val_samples=2",
        "trainer.max_steps=2", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        "trainer.limit_val_batches=0", "trainer.log_every_n_steps=1", "optim.warmup_steps=0", "optim.lr=1e-3",
        "module.allow_random_movq=true", "module.sample_steps=2", f"run.output_dir={out}", *extra,
    ]  # fmt: skip


class Snapshot(L.Callback):
    """Copies every parameter when training starts."""

    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


@pytest.fixture(scope="module")
def t2i_run(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("runs")
    text_cache = out / "text"
    cfg = load_config(
        ROOT / "experiments/t2i/tiny.yaml",
        _overrides(cache, out, "data.num_frames=1", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
                   "optim.ema_decay=0.9", f"module.text_cache_dir={text_cache}"),
    )  # fmt: skip
    snap = Snapshot()
    result = fit(cfg, extra_callbacks=[snap])
    return {"result": result, "snapshot": snap.before, "text_cache": text_cache, "out": out}


def test_t2i_fit_trains_logs_and_caches_text(t2i_run: dict[str, Any]) -> None:
    result = t2i_run["result"]
    assert result.checkpoint is not None and result.checkpoint.is_file()
    assert {"train/loss", "val/loss"} <= set(result.metrics)
    module = result.module
    after = dict(module.named_parameters())
    changed = [n for n, p in t2i_run["snapshot"].items() if n.startswith("unet.") and not torch.equal(p, after[n])]
    assert len(changed) > 10  # the whole UNet trains
    assert all(torch.equal(p, after[n]) for n, p in t2i_run["snapshot"].items() if n.startswith("movq."))
    ckpt = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert not any(k.startswith("movq.") for k in ckpt["state_dict"])  # the frozen MoVQ is not saved
    assert "ema_state_dict" in ckpt and "text_projection.projection.weight" in ckpt["state_dict"]
    assert list(t2i_run["text_cache"].glob("tiny-*.safetensors"))  # caption embeddings persisted
    events = list(result.run_dir.glob("events.out.tfevents.*"))
    assert events, "no TensorBoard log"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(result.run_dir), size_guidance={"images": 0})
    acc.Reload()
    assert "val/samples" in acc.Tags()["images"]
    # sampling from the trained module: deterministic under its seed, decoded by the MoVQ
    images = module.generate(["a red circle moving left slowly"], (16, 16), steps=2, seed=3)
    assert images.shape == (1, 1, 3, 32, 32)
    assert torch.equal(images, module.generate(["a red circle moving left slowly"], (16, 16), steps=2, seed=3))


def _keyframes_cfg(t2i_run: dict[str, Any], cache: Path, variant: str, *extra: str) -> Any:
    system = "reference_keyframes" if KEYFRAME_DESIGNS[variant].reference else "keyframes"  # ref_* kinds: own system
    return load_config(
        ROOT / "experiments/keyframes/base.yaml",
        _overrides(cache, t2i_run["out"], f"model.variant={variant}", f"data.num_frames={FRAMES}",
                   f"module.t2i_ckpt={t2i_run['result'].checkpoint}", f"system={system}", *extra),
    )  # fmt: skip


@pytest.mark.parametrize("variant", sorted(KEYFRAME_DESIGNS))
def test_keyframes_fit_trains_only_temporal_parts(t2i_run: dict[str, Any], cache: Path, variant: str) -> None:
    extra = ("trainer.val_check_interval=2", "trainer.limit_val_batches=1") if variant == "layers" else ()
    snap = Snapshot()
    result = fit(_keyframes_cfg(t2i_run, cache, variant, *extra), extra_callbacks=[snap])
    module = result.module
    unet = module.unet
    after = dict(module.named_parameters())
    t2i_state = torch.load(t2i_run["result"].checkpoint, map_location="cpu", weights_only=True)
    t2i_weights = {**t2i_state["state_dict"], **t2i_state["ema_state_dict"]}  # the t2i run's EMA weights are used
    spatial = {f"unet.{n}" for n in unet.inherited_parameter_names}
    assert spatial and all(torch.equal(snap.before[n], after[n]) for n in spatial)
    assert all(torch.equal(after[n], t2i_weights[n]) for n in spatial)  # bit-exact the trained t2i UNet
    for name in ("text_projection.projection.weight", "null_embedding.embedding"):  # frozen by default
        assert torch.equal(after[name], t2i_weights[name]) and not after[name].requires_grad
    temporal = [n for n in after if n.startswith("unet.") and n not in spatial]
    assert temporal and all(after[n].requires_grad for n in temporal)
    assert any(not torch.equal(snap.before[n], after[n]) for n in temporal)
    assert {n for n, p in module.named_parameters() if p.requires_grad} == set(temporal)
    if variant == "layers":
        assert "val/loss" in result.metrics
        video = module.generate(["a blue square moving up fast"], (16, 16), steps=2)
        assert video.shape == (1, FRAMES, 3, 32, 32)


def test_keyframes_config_errors(t2i_run: dict[str, Any], cache: Path, tmp_path: Path) -> None:
    base = ROOT / "experiments/keyframes/base.yaml"
    with pytest.raises(ConfigError, match="t2i_ckpt is not set"):
        build_system(load_config(base, _overrides(cache, tmp_path)))
    with pytest.raises(FileNotFoundError, match="t2i_ckpt not found"):
        build_system(load_config(base, _overrides(cache, tmp_path, f"module.t2i_ckpt={tmp_path / 'none.ckpt'}")))
    with pytest.raises(ConfigError, match="text_max_length"):
        build_system(_keyframes_cfg(t2i_run, cache, "blocks_conv1d", "module.text_max_length=12"))
    with pytest.raises(ConfigError, match="model.component=keyframe_unet"):
        build_system(
            load_config(
                base,
                _overrides(
                    cache,
                    tmp_path,
                    "model.component=t2i_unet",
                    "model.variant=kandinsky3",
                    "module.allow_random_t2i=true",
                ),
            )
        )


def test_frame_positions_follow_the_sampling_stride(cache: Path, tmp_path: Path) -> None:
    cfg = load_config(
        ROOT / "experiments/keyframes/base.yaml",
        _overrides(cache, tmp_path, "module.allow_random_t2i=true", "data.num_frames=4", "data.stride=2",
                   "module.train_text_projection=true"),
    )  # fmt: skip
    module = build_system(cfg)
    unit = default_frame_stride(4)
    metas = [{"stride": 1}, {"stride": 3}, {"stride": None, "fps": 10.0, "source_fps": 30.0}, {}]
    strides = module.frame_strides({"meta": metas}, 4)
    assert strides.tolist() == [unit * 1, unit * 3, unit * 3, unit * 2]  # missing meta: data.stride
    assert module.text_projection.projection.weight.requires_grad  # train_text_projection


def test_motion_figures_see_frame_order_and_motion_words(cache: Path, tmp_path: Path) -> None:
    """The evaluator's motion_word_gain / time_order_gain inputs: a clip played backwards keeps each frame's noise, so
    a model that treats frames independently (temporal parts at their identity initialisation) gives exactly the
    loss of the clip in order; trained-looking temporal weights make the order matter."""
    from ff_lightning.evaluation.keyframes import heldout_loss, opposite_direction_caption

    assert opposite_direction_caption("a red circle moving left slowly") == "a red circle moving right slowly"
    assert opposite_direction_caption("a red circle moving down quickly") == "a red circle moving up quickly"
    cfg = load_config(
        ROOT / "experiments/keyframes/base.yaml",
        _overrides(cache, tmp_path, "module.allow_random_t2i=true", "data.num_frames=4"),
    )
    module = build_system(cfg).eval()
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 4, 3, 32, 32, generator=g) * 2 - 1
    batch = {"video": video, "caption": ["a red circle moving left slowly", "a blue square moving up quickly"],
             "meta": [{}, {}]}  # fmt: skip
    steps = [100, 600, 900]
    plain = heldout_loss(module, batch, 0, steps)
    backwards = heldout_loss(module, batch, 0, steps, reverse_frames=True)
    torch.testing.assert_close(backwards, plain, rtol=1e-6, atol=1e-9)  # frames independent: order is invisible
    with torch.no_grad():
        for _, p in module.unet.added_parameters():
            p.normal_(0.0, 0.1, generator=g)
    plain = heldout_loss(module, batch, 0, steps)
    assert (heldout_loss(module, batch, 0, steps, reverse_frames=True) - plain).abs().min() > 1e-6


def test_full_finetune_and_timestep_shift_options(cache: Path, tmp_path: Path) -> None:
    """module.train_spatial unfreezes the inherited UNet weights (default: frozen); module.timestep_shift draws training
    steps towards high noise (1: uniform, the same draws as before)."""
    from ff_lightning.systems.t2i import _draw

    def trainable(*extra: str) -> tuple[int, int]:
        cfg = load_config(ROOT / "experiments/keyframes/base.yaml",
                          _overrides(cache, tmp_path, "module.allow_random_t2i=true", "data.num_frames=4", *extra))  # fmt: skip
        unet = build_system(cfg).unet
        inherited = [p.requires_grad for n, p in unet.named_parameters() if n in unet.inherited_parameter_names]
        return sum(inherited), len(inherited)

    frozen, total = trainable()
    assert frozen == 0 and total > 0
    assert trainable("module.train_spatial=true") == (total, total)

    schedule = build_system(load_config(ROOT / "experiments/keyframes/base.yaml", _overrides(
        cache, tmp_path, "module.allow_random_t2i=true", "data.num_frames=4"))).schedule  # fmt: skip
    x0 = torch.zeros(4000, 1)
    plain, _ = _draw(schedule, x0, 4000, torch.Generator().manual_seed(0))
    same, _ = _draw(schedule, x0, 4000, torch.Generator().manual_seed(0), shift=1.0)
    assert torch.equal(plain, same)
    shifted, _ = _draw(schedule, x0, 4000, torch.Generator().manual_seed(0), shift=4.0)
    # u -> 4u / (1 + 3u): the median step moves from ~500 to 1000 * 4 * 0.5 / 2.5 = 800
    assert abs(float(plain.float().median()) - 500) < 40 and abs(float(shifted.float().median()) - 800) < 40
    assert int(shifted.min()) >= 0 and int(shifted.max()) <= schedule.num_steps - 1
    with pytest.raises(ValueError, match="must be > 0"):
        _draw(schedule, x0, 4, None, shift=0.0)


def test_motion_loss_weight_adds_the_error_change_between_frames(cache: Path, tmp_path: Path) -> None:
    """module.motion_loss_weight w: the training loss is MSE(err) + w * MSE(err[t+1] - err[t]) over each clip's
    frames; 0 gives the plain loss, and validation (a generator) always takes the plain loss."""

    def module_with(weight: float) -> Any:
        cfg = load_config(ROOT / "experiments/keyframes/base.yaml", _overrides(
            cache, tmp_path, "module.allow_random_t2i=true", "data.num_frames=4", "module.cfg_dropout=0",
            f"module.motion_loss_weight={weight}"))  # fmt: skip
        torch.manual_seed(0)  # same UNet weights for every weight
        m = build_system(cfg)
        with torch.no_grad():
            for _, p in m.unet.added_parameters():  # temporal parts away from identity: frames interact
                p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(1))
        return m

    video = torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = {"video": video, "caption": ["a red circle moving left slowly"] * 2, "meta": [{}, {}]}
    captured: dict[str, torch.Tensor] = {}
    m0 = module_with(0.0)
    target_fn = m0.schedule.target

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        captured["target"] = target_fn(*args, **kwargs)
        return captured["target"]

    m0.schedule.target = spy  # type: ignore[method-assign]
    hook = m0.unet.register_forward_hook(lambda mod, inp, out: captured.__setitem__("out", out))
    torch.manual_seed(5)
    plain = m0.diffusion_loss(batch)
    hook.remove()
    err = (captured["out"] - captured["target"]).reshape(2, 4, -1)  # b t (c h w)
    change = (err[:, 1:] - err[:, :-1]).pow(2).mean()
    assert float(change.detach()) > 0
    torch.testing.assert_close(plain, err.pow(2).mean())
    m3 = module_with(3.0)
    torch.manual_seed(5)
    torch.testing.assert_close(m3.diffusion_loss(batch), plain + 3.0 * change, rtol=1e-5, atol=1e-7)
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    torch.testing.assert_close(m3.diffusion_loss(batch, g()), m0.diffusion_loss(batch, g()))
    with pytest.raises(ConfigError, match="motion_loss_weight must be >= 0"):
        module_with(-1.0)
