"""Reference-image keyframes (``keyframe_unet/ref_blocks_conv1d_attn1d``, system ``reference_keyframes``).

Identity at conversion (any reference changes nothing), what trains and what stays bit-exact, the image stage sharing
the frozen weights, two-weight guidance (``w_img = 0`` is text CFG; the three-branch formula), the training batch's
reference (a real frame, noise-augmented, dropped), ``ff params``, and a short training of a small model after which
the reference given as frame 0 is reproduced there far better than without it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ff_lightning.config import ConfigError
from ff_lightning.diffusion import guided_denoiser
from ff_lightning.models.keyframes import keyframe_unet_from_t2i
from ff_lightning.models.reference import ReferenceInputConv, reference_guided_denoiser
from ff_lightning.models.unet import UNET_PRESETS, KandinskyUNet

ROOT = Path(__file__).resolve().parents[1]
REF = "ref_blocks_conv1d_attn1d"
T, B, HW = 3, 2, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image_unet() -> KandinskyUNet:
    torch.manual_seed(0)
    unet = KandinskyUNet(**UNET_PRESETS["tiny"])
    with torch.no_grad():  # a "trained" image model: the norms' time conditioning non-zero too
        for name, p in unet.named_parameters():
            if "context_mlp" in name:
                p.normal_(0.0, 0.05)
    return unet


def _inputs(seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B * T, 4, HW, HW, generator=g)
    time = torch.tensor([100.0, 700.0])
    context = torch.randn(B, 5, UNET_PRESETS["tiny"]["context_dim"], generator=g)
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return x, time, context, mask


def _randomise(model: torch.nn.Module, names: set[str], seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in names:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_zero_initialised_reference_leaves_the_output_unchanged(image_unet: KandinskyUNet) -> None:
    x, time, context, mask = _inputs()
    rep = {"repeats": T, "dim": 0}
    framewise = image_unet(x, time.repeat_interleave(**rep), context.repeat_interleave(**rep),
                           mask.repeat_interleave(**rep))  # fmt: skip
    plain = keyframe_unet_from_t2i(image_unet, "blocks_conv1d_attn1d", T)
    ref = keyframe_unet_from_t2i(image_unet, REF, T)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        expected = plain(x, time, context, mask)
        torch.testing.assert_close(expected, framewise, rtol=0, atol=1e-6)
        outs = [ref(x, time, context, mask)]  # no reference at all
        for frames in (None, 2, torch.tensor([[1, 1, 0], [0, 0, 0]])):  # frame 0, frame 2, some frames / none
            reference = torch.randn(B, 4, HW, HW, generator=g) * 3
            level = torch.tensor([0.0, 250.0])
            outs.append(
                ref(x, time, context, mask, reference=reference, reference_frames=frames, reference_level=level)
            )
    for out in outs:
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="takes no reference"):
        plain(x, time, context, mask, reference=torch.zeros(B, 4, HW, HW))


def test_only_new_parts_train_and_spatial_weights_are_bit_exact(image_unet: KandinskyUNet) -> None:
    model = keyframe_unet_from_t2i(image_unet, REF, T)
    plain = keyframe_unet_from_t2i(image_unet, "blocks_conv1d_attn1d", T)
    image_names = {n for n, _ in image_unet.named_parameters()}
    assert model.inherited_parameter_names == image_names  # in_layer.weight / bias keep the image model's keys
    state = model.state_dict()
    for name, tensor in image_unet.state_dict().items():
        assert torch.equal(state[name], tensor), name
        assert state[name].data_ptr() != tensor.data_ptr(), f"{name}: copy=True must not share storage"
    reference_parts = {"in_layer.reference_weight", *(f"reference_level_embed.{i}.{k}" for i in (1, 3)
                                                      for k in ("weight", "bias"))}  # fmt: skip
    plain_added = {n for n, _ in plain.added_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == plain_added | reference_parts  # temporal blocks, frame-position MLP, reference parts
    assert not trainable & image_names
    assert isinstance(model.in_layer, ReferenceInputConv) and model.in_layer.reference_weight.shape == (16, 5, 3, 3)
    assert not model.in_layer.reference_weight.any() and not model.reference_level_embed[3].weight.any()


def test_fused_input_conv_and_image_stage_share_the_frozen_weights(image_unet: KandinskyUNet) -> None:
    model = keyframe_unet_from_t2i(image_unet, REF, T)
    _randomise(model, {n for n, _ in model.added_parameters()})  # as if trained: temporal + reference parts non-zero
    x, time, context, mask = _inputs(2)
    packed = torch.randn(B * T, 9, HW, HW)
    with torch.no_grad():
        torch.testing.assert_close(model.in_layer.fused()(packed), model.in_layer(packed), rtol=1e-5, atol=1e-5)
        image = model.image_unet()  # the image stage: the T2I base, whatever the trained temporal parts are
        assert image.in_layer.weight is model.in_layer.weight and not any(p.requires_grad for p in image.parameters())
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n, _ in model.added_parameters()}
        assert set(image.state_dict()) == {n for n, _ in image_unet.named_parameters()}
        torch.testing.assert_close(image(x, time.repeat_interleave(T), context.repeat_interleave(T, 0),
                                         mask.repeat_interleave(T, 0)),
                                   image_unet(x, time.repeat_interleave(T), context.repeat_interleave(T, 0),
                                              mask.repeat_interleave(T, 0)), rtol=0, atol=0)  # fmt: skip
        # trained reference parts: the reference now changes the output, and only within its own video
        ref = torch.randn(B, 4, HW, HW)
        base = model(x, time, context, mask, reference=ref)
        ref2 = ref.clone()
        ref2[1] += 1.0
        moved = (model(x, time, context, mask, reference=ref2) - base).flatten(1).abs().amax(1) > 1e-6
    assert not moved[:T].any() and moved[T:].all()


def _toy_model_fn(calls: list[int]) -> Any:
    """A deterministic stand-in for the keyframe UNet: depends on x, t, the text context and the reference flag."""
    weight = torch.linspace(-1, 1, 6)

    def model_fn(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, mask: Any, use: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        videos = ctx.shape[0]
        per_row = x.shape[0] // videos
        text = (ctx.mean(dim=(1, 2)) * 3).repeat_interleave(per_row)
        image = use.float().repeat_interleave(per_row) * 0.7
        scale = (1 + t / 1000)[:, None, None, None]
        return torch.tanh(x * scale + text[:, None, None, None] + image[:, None, None, None] * weight[:, None, None])

    return model_fn


def test_two_weight_guidance() -> None:
    g = torch.Generator().manual_seed(0)
    videos, frames = 2, 3
    x, t = torch.randn(videos * frames, 6, 2, 2, generator=g), torch.full((videos * frames,), 300.0)
    cond = (torch.randn(videos, 4, 5, generator=g), torch.ones(videos, 4, dtype=torch.bool))
    uncond = (torch.randn(1, 2, 5, generator=g), None)  # another length and batch 1: padded and broadcast
    calls: list[int] = []
    fn = _toy_model_fn(calls)
    w_text = 2.5

    def with_reference(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, mask: Any) -> torch.Tensor:
        return fn(x, t, ctx, mask, torch.ones(ctx.shape[0], dtype=torch.bool))

    text_cfg = guided_denoiser(with_reference, cond, uncond, w_text)(x, t)
    two = reference_guided_denoiser(fn, cond, uncond, w_text, 0.0)
    calls.clear()
    torch.testing.assert_close(two(x, t), text_cfg, rtol=0, atol=1e-6)  # w_img = 0: text CFG, reference in both
    assert calls == [2 * videos * frames]  # two branches in one batched forward
    # three branches: e(I,T) + w_t (e(I,T) - e(I,0)) + w_i (e(I,0) - e(0,0)), computed branch by branch
    from ff_lightning.diffusion.guidance import expand_condition, pad_condition

    u_ctx, u_mask = pad_condition(expand_condition(uncond, videos), 4)
    yes, no = torch.ones(videos, dtype=torch.bool), torch.zeros(videos, dtype=torch.bool)
    e_it = fn(x, t, cond[0], cond[1], yes)
    e_i0 = fn(x, t, u_ctx, u_mask, yes)
    e_00 = fn(x, t, u_ctx, u_mask, no)
    calls.clear()
    out = reference_guided_denoiser(fn, cond, uncond, w_text, 1.5)(x, t)
    assert calls == [3 * videos * frames]
    torch.testing.assert_close(out, e_it + w_text * (e_it - e_i0) + 1.5 * (e_i0 - e_00), rtol=0, atol=1e-6)
    torch.testing.assert_close(reference_guided_denoiser(fn, cond, None, 0.0, 0.0)(x, t), e_it, rtol=0, atol=0)


def test_ff_params_counts_the_reference_parts(capsys: pytest.CaptureFixture[str]) -> None:
    from ff_lightning.cli import main

    counts = {}
    for variant, preset in ((REF, "tiny"), ("blocks_conv1d_attn1d", "tiny"), (REF, "paper")):  # meta device
        assert main(["params", "keyframe_unet", variant, "--preset", preset, "--json"]) in (0, None)
        counts[variant, preset] = json.loads(capsys.readouterr().out)

    def extra(preset: str) -> int:  # reference conv (c + 1 channels, 3x3, no bias) + level MLP
        init, ted, c = (UNET_PRESETS[preset][k] for k in ("init_channels", "time_embed_dim", "num_channels"))
        return init * (c + 1) * 9 + (init * ted + ted) + (ted * ted + ted)

    ref, plain = counts[REF, "tiny"], counts["blocks_conv1d_attn1d", "tiny"]
    assert ref["total"] - plain["total"] == extra("tiny") and ref["trainable"] - plain["trainable"] == extra("tiny")
    assert ref["frozen"] == plain["frozen"]
    blocks_paper = 4_143_739_012  # keyframe_unet/blocks_conv1d_attn1d at the paper preset (the release's layout)
    assert counts[REF, "paper"]["total"] == blocks_paper + extra("paper") == 4_146_404_932


# ------------------------------------------------------------------------------------------------ the system
SMALL_UNET = {"model_channels": 16, "init_channels": 16, "time_embed_dim": 32, "context_dim": 8, "groups": 4,
              "head_dim": 8, "dim_mult": [1], "num_blocks": [1], "add_cross_attention": [False],
              "add_self_attention": [False]}  # fmt: skip


def _module(tmp_path: Path, *extra: str) -> Any:
    from ff_lightning.config import load_config
    from ff_lightning.train import build_system

    cfg = load_config(
        ROOT / "experiments/keyframes/ref_blocks.yaml",
        ["module.allow_random_movq=true", "module.allow_random_t2i=true", "data.num_frames=2", "data.stride=1",
         f"model.overrides={json.dumps(SMALL_UNET)}", f"run.output_dir={tmp_path}", *extra],
    )  # fmt: skip
    return build_system(cfg)


def test_training_reference_is_a_real_frame_noise_augmented_or_dropped(tmp_path: Path) -> None:
    module = _module(tmp_path, "module.reference_frame=1", "module.reference_noise_levels=[0,0]",
                     "module.reference_dropout=0.0")  # fmt: skip
    x0 = torch.randn(3 * 2, 4, 4, 4)
    extras = module.unet_extras(x0, 3, None)
    assert torch.equal(extras["reference"], x0.view(3, 2, 4, 4, 4)[:, 1])  # clean latent of frame 1
    assert torch.equal(extras["reference_frames"], torch.tensor([[0.0, 1.0]] * 3))
    assert torch.equal(extras["reference_level"], torch.zeros(3))
    module.m.reference_noise_levels = [300, 300]
    noisy = module.unet_extras(x0, 3, torch.Generator().manual_seed(0))  # validation: seeded, never dropped
    a, s = (
        module.schedule.alpha_bar(torch.tensor(300)).sqrt(),
        (1 - module.schedule.alpha_bar(torch.tensor(300))).sqrt(),
    )
    eps = (noisy["reference"] - a * x0.view(3, 2, 4, 4, 4)[:, 1]) / s  # the noise that was added: unit scale
    assert 0.7 < float(eps.std()) < 1.3 and torch.equal(noisy["reference_level"], torch.full((3,), 300.0))
    module.m.reference_dropout = 1.0
    dropped = module.unet_extras(x0, 3, None)
    assert not dropped["reference_frames"].any() and not dropped["reference_level"].any()
    for bad in ("[5,1]", "[0,1,2]", "[0,1000]"):
        with pytest.raises(ConfigError, match="reference_noise_levels"):
            _module(tmp_path, f"module.reference_noise_levels={bad}")
    with pytest.raises(ConfigError, match="reference_frame=2 is not a frame"):
        _module(tmp_path, "module.reference_frame=2")


def test_heldout_loss_with_the_clip_frame_as_reference(tmp_path: Path) -> None:
    """The evaluator's oracle figure: the clip's own frame as reference; identical to no reference at conversion."""
    from ff_lightning.evaluation.keyframes import heldout_loss

    module = _module(tmp_path).eval()
    batch = {"video": torch.rand(2, 2, 3, 32, 32) * 2 - 1, "caption": ["a", "b"], "meta": [{}, {}]}
    plain = heldout_loss(module, batch, 0, [100, 900])
    assert torch.equal(heldout_loss(module, batch, 0, [100, 900], given_reference=True), plain)  # zero init
    with torch.no_grad():
        module.unet.in_layer.reference_weight.normal_(0, 0.5)
    assert torch.equal(heldout_loss(module, batch, 0, [100, 900]), plain)  # no reference: unaffected
    assert not torch.allclose(heldout_loss(module, batch, 0, [100, 900], given_reference=True), plain)


def test_reference_frame_is_reproduced_after_a_short_training(tmp_path: Path) -> None:
    """A small keyframe UNet (one level, the whole UNet trained here so that 100 steps suffice) learns clips of one
    colour per clip; sampled through ``generate`` with the reference as frame 0 (image guidance on, text guidance
    off) frame 0 matches the reference far better than sampled without a reference."""
    torch.manual_seed(0)
    module = _module(tmp_path, "module.prediction=v", "module.reference_noise_levels=[0,0]",
                     "module.reference_dropout=0.2", "module.cfg_dropout=0.0", "module.sampler=ddim",
                     "module.dynamic_threshold=0.98")  # fmt: skip
    unet = module.unet
    unet.requires_grad_(True)
    opt = torch.optim.Adam(unet.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(1)
    batch, t = 64, 2

    def clips(n: int, gen: torch.Generator) -> torch.Tensor:  # one colour per clip: (n t) 4 4 4
        colour = torch.rand(n, 1, 4, 1, 1, generator=gen) * 2 - 1
        return colour.expand(n, t, 4, 4, 4).reshape(n * t, 4, 4, 4).contiguous()

    with torch.no_grad():
        context, mask = module.text_condition(["a shape"])
    for _ in range(100):
        x0 = clips(batch, g)
        extras = module.unet_extras(x0, batch, None)  # frame 0, clean, dropped 20% of the time
        steps = torch.randint(0, 1000, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        rows = steps.repeat_interleave(t)
        x_t = module.schedule.q_sample(x0, rows, noise)
        out = unet(x_t, rows.float(), context.expand(batch, -1, -1), mask.expand(batch, -1), num_frames=t,
                   frame_stride=module.position_unit, **extras)  # fmt: skip
        loss = (out - module.schedule.target("v", x0, noise, rows)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    unet.eval()
    n = 8
    reference = clips(n, torch.Generator().manual_seed(99)).view(n, t, 4, 4, 4)[:, 0]
    kw: dict[str, Any] = {"decode": False, "steps": 20, "guidance_weight": 0.0, "seed": 5}
    guided = module.generate(["a shape"] * n, (4, 4), reference=reference, image_guidance_weight=1.0, **kw)
    without = module.generate(["a shape"] * n, (4, 4), use_reference=False, **kw)
    err_ref = float((guided[:, 0] - reference).square().mean())
    err_none = float((without[:, 0] - reference).square().mean())
    print(f"frame-0 MSE to the reference: {err_ref:.4f} with it, {err_none:.4f} without")
    assert err_ref < 0.35 * err_none, (err_ref, err_none)


def test_tensorboard_samples_show_reference_keyframes_and_truth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from ff_lightning.systems.reference_keyframes import ReferenceKeyframesModule

    module = _module(tmp_path, "module.sample_steps=2", "module.num_log_samples=2")
    logged: dict[str, Any] = {}
    exp = SimpleNamespace(add_images=lambda tag, x, global_step: logged.setdefault(tag, x),
                          add_video=lambda tag, x, global_step, fps: logged.setdefault(tag, x))  # fmt: skip
    monkeypatch.setattr(
        ReferenceKeyframesModule, "trainer", property(lambda self: SimpleNamespace(is_global_zero=True))
    )
    monkeypatch.setattr(module, "_tensorboard", lambda: exp)
    video = torch.rand(3, 2, 3, 8, 8) * 2 - 1
    module.log_samples("val/samples", {"video": video, "caption": ["a", "b", "c"]})
    strip, clip = logged["val/samples/strip"], logged["val/samples"]
    assert clip.shape == (2, 2, 3, 8, 8) and strip.shape == (2, 3, 8, 8 * (1 + 2 + 2))  # reference | keyframes | truth
    torch.testing.assert_close(strip[..., 8 * 3 :], ((video[:2].clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1, 4)
                               .reshape(2, 3, 8, 16))  # fmt: skip
    torch.testing.assert_close(strip[..., 8:24], clip.permute(0, 2, 3, 1, 4).reshape(2, 3, 8, 16))


# ------------------------------------------------------------------------------------------ ff generate --image
def _ref_checkpoint(folder: Path, movq: Path) -> Path:
    """A reference_keyframes checkpoint (as Lightning writes it) whose reference weights are random, not zero."""
    import lightning as L

    from ff_lightning.config import load_config
    from ff_lightning.io import atomic_torch_save
    from ff_lightning.train import build_system

    torch.manual_seed(4)
    module = build_system(load_config(ROOT / "experiments/keyframes/ref_blocks.yaml", [
        "module.allow_random_t2i=true", "module.sample_steps=2", "data.num_frames=2", f"module.movq_ckpt={movq}",
        f"run.output_dir={folder / 'runs'}"]))  # fmt: skip
    with torch.no_grad():
        module.unet.in_layer.reference_weight.normal_(0, 0.5)  # as if trained: the reference changes the output
    ckpt = {"epoch": 0, "global_step": 0, "pytorch-lightning_version": L.__version__,
            "state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}  # fmt: skip
    module.on_save_checkpoint(ckpt)
    return atomic_torch_save(ckpt, folder / "ref_keyframes.ckpt")


def test_ff_generate_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import av
    import numpy as np
    from PIL import Image

    from ff_lightning.cli import main
    from ff_lightning.systems.reference_keyframes import fit_reference_image, read_reference_image
    from ff_lightning.tiny_models import write_untrained_stages

    stages = write_untrained_stages(tmp_path / "stages", seed=0, stages=("keyframes",))
    ref_ckpt = _ref_checkpoint(tmp_path, stages["movq"])
    images = {}
    for name, colour in (("red", (230, 20, 20)), ("blue", (20, 20, 230))):
        pixels = np.zeros((48, 64, 3), dtype=np.uint8)
        pixels[:] = colour
        pixels[10:30, 20:40] = 255
        images[name] = tmp_path / f"{name}.png"
        Image.fromarray(pixels).save(images[name])
    loaded = read_reference_image(images["red"])
    assert loaded.shape == (3, 48, 64) and float(loaded[0, 0, 0]) == pytest.approx(230 / 127.5 - 1)
    fitted = fit_reference_image(loaded, (32, 32))  # cover + centre crop: 48x64 -> 32x43 -> 32x32
    assert fitted.shape == (3, 32, 32) and float(fitted[0, 0, 0]) == pytest.approx(230 / 127.5 - 1, abs=1e-5)

    def run(image: Path | None, ckpt: Path, out: Path, *extra: str) -> int:
        given = ["--image", str(image)] if image else []
        return main(["generate", "a red circle moving left slowly", "--keyframes", str(ckpt), "--no-interpolation",
                     "--no-decoder", "--steps", "2", "--seed", "1", "--no-progress", *given, "--out", str(out),
                     *extra])  # fmt: skip

    frames = {}
    for name, image in images.items():
        assert run(image, ref_ckpt, tmp_path / f"{name}.mp4") == 0
        with av.open(str(tmp_path / f"{name}.mp4")) as container:
            frames[name] = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert frames["red"].shape == (2, 32, 32, 3)
    assert np.abs(frames["red"].astype(int) - frames["blue"].astype(int)).mean() > 1  # the image conditions the video
    capsys.readouterr()
    assert run(images["red"], stages["keyframes"], tmp_path / "plain.mp4") == 2  # not a reference_keyframes model
    assert "takes no reference image" in capsys.readouterr().err and not (tmp_path / "plain.mp4").exists()
    assert run(tmp_path / "missing.png", ref_ckpt, tmp_path / "m.mp4") == 2
    assert "reference image not found" in capsys.readouterr().err
    assert run(None, stages["keyframes"], tmp_path / "g.mp4", "--image-guidance", "2") == 2
    assert "takes no reference image (image guidance given)" in capsys.readouterr().err
    # without --image the image stage makes the reference; the image weight is used (another video)
    assert run(None, ref_ckpt, tmp_path / "w1.mp4", "--image-guidance", "0") == 0
    assert run(None, ref_ckpt, tmp_path / "w2.mp4", "--image-guidance", "3") == 0
    decoded = []
    for name in ("w1", "w2"):
        with av.open(str(tmp_path / f"{name}.mp4")) as container:
            decoded.append(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]))
    assert decoded[0].shape == (2, 32, 32, 3) and np.abs(decoded[0].astype(int) - decoded[1].astype(int)).mean() > 1


def test_typed_reference_stage_reproduces_the_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ff generate --image`` runs the typed ReferenceKeyframeStage (no LightningModule): its videos equal, bit for
    bit, those of the reference_keyframes system loaded from the same checkpoint (user image, and the image stage's
    reference with another image weight)."""
    import ff_lightning.pipeline as pipeline_module
    from ff_lightning.pipeline import GenerateOptions, generate_video, load_stages
    from ff_lightning.pipelines import VideoPipeline
    from ff_lightning.pipelines.reference import ReferenceKeyframeStage
    from ff_lightning.tiny_models import write_untrained_stages

    stages = write_untrained_stages(tmp_path / "stages", seed=0, stages=("keyframes",))
    ckpt = _ref_checkpoint(tmp_path, stages["movq"])
    pipe = VideoPipeline.from_paths(ckpt)
    assert isinstance(pipe.keyframes, ReferenceKeyframeStage)
    system = load_stages(ckpt, None, None)
    image = torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1
    videos = []
    for given, weight in ((image, None), (None, 2.0)):
        options = GenerateOptions(steps=2, seed=1, progress=False, image=given, image_guidance_weight=weight)
        typed = pipe.generate("a red circle", options).frames
        assert torch.equal(typed, generate_video(system, "a red circle", options).frames)
        videos.append(typed)
    assert not torch.equal(videos[0], videos[1])

    def no_system(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("built the LightningModule")

    monkeypatch.setattr(pipeline_module, "load_stages", no_system)  # what ff generate --image runs: the typed stage
    options = GenerateOptions(steps=2, seed=1, progress=False, image=image)
    assert torch.equal(pipeline_module.generate("a red circle", ckpt, options=options).frames, videos[0])
