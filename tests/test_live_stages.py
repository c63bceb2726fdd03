"""TensorBoard samples and ``generate`` of the training systems run the typed stages of ``ff_lightning.pipelines``
over the live modules: the logged images equal the stages' samples for the same seed, bit for bit, and the stages
reproduce the systems' former sampling formula (text-guided ``sample`` with the system's own conditioning)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from einops import rearrange

from ff_lightning.config import load_config
from ff_lightning.pipelines.live import image_stage_of, interpolation_stage_of, keyframe_stage_of
from ff_lightning.train import build_system

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"model_channels": 16, "init_channels": 16, "time_embed_dim": 32, "context_dim": 8, "groups": 4,
         "head_dim": 8, "dim_mult": [1], "num_blocks": [1], "add_cross_attention": [False],
         "add_self_attention": [False]}  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _system(tmp_path: Path, experiment: str, *extra: str) -> Any:
    pin = ["module.allow_random_movq=true", "module.latent_scale=0.7", "module.sample_steps=2",
           "module.num_log_samples=2", "module.sample_seed=3", f"model.overrides={json.dumps(SMALL)}",
           f"run.output_dir={tmp_path}"]  # fmt: skip
    if not experiment.startswith("t2i"):
        pin.append("module.allow_random_t2i=true")
    torch.manual_seed(0)
    module = build_system(load_config(ROOT / f"experiments/{experiment}.yaml", [*pin, *extra]))
    with torch.no_grad():  # non-zero temporal / reference parts: every part of the UNet matters
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return module.eval()


def _logged(module: Any, batch: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    exp = SimpleNamespace(add_images=lambda tag, x, global_step: out.setdefault(tag, x.clone()),
                          add_video=lambda tag, x, global_step, fps: out.setdefault(tag, x.clone()))  # fmt: skip
    monkeypatch.setattr(type(module), "trainer", property(lambda self: SimpleNamespace(is_global_zero=True)))
    monkeypatch.setattr(module, "_tensorboard", lambda: exp)
    module.log_samples("val/samples", batch)
    return out


def _unit(x: torch.Tensor) -> torch.Tensor:
    return (x.float().clamp(-1, 1) + 1) / 2


def _batch(frames: int, **extra: Any) -> dict[str, Any]:
    g = torch.Generator().manual_seed(5)
    return {"video": torch.rand(2, frames, 3, 8, 8, generator=g) * 2 - 1, "caption": ["a red circle", "a square"],
            "meta": [{}, {}], **extra}  # fmt: skip


def _former_sampling(module: Any, model_fn: Any, prompts: list[str], shape: tuple[int, ...], group: int) -> Any:
    """The systems' sampling before it moved into pipelines/ (``LatentDiffusionSystem.run_sampler``)."""
    from ff_lightning.diffusion import SamplingSchedule, guided_denoiser, sample

    m = module.m
    cond = module.text_condition(prompts)
    uncond = module.null_embedding.condition(len(prompts), cond[0].shape[1])
    return sample(guided_denoiser(model_fn, cond, uncond, m.guidance_weight), shape,
                  SamplingSchedule.build(m.sample_spacing, m.sample_steps, module.schedule), method=m.sampler,
                  prediction=m.prediction, eta=m.ddim_eta, threshold=m.dynamic_threshold, threshold_group=group,
                  generator=torch.Generator().manual_seed(m.sample_seed), device=module.device,
                  dtype=torch.float32)  # fmt: skip


def test_t2i_samples_are_the_image_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _system(tmp_path, "t2i/tiny", "data.num_frames=1", "module.dynamic_threshold=0.98")
    logged = _logged(module, _batch(1), monkeypatch)["val/samples"]  # 2 3 8 8
    prompts = ["a red circle", "a square"]
    with torch.no_grad():
        latents = image_stage_of(module).sample(prompts, (4, 4), seed=3)  # unscaled, 2 4 4 4
        assert torch.equal(_unit(module.movq.decode(latents, num_frames=1)), logged)
        former = _former_sampling(module, lambda x, t, c, mk: module.unet(x, t, c, mk), prompts, (2, 4, 4, 4), 1)
    assert torch.equal(image_stage_of(module).model_latents(prompts, (4, 4), seed=3), former)
    assert not torch.equal(image_stage_of(module).model_latents(prompts, (4, 4), seed=4), former)  # seed matters


def test_keyframe_samples_are_the_keyframe_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _system(tmp_path, "keyframes/blocks", "data.num_frames=2", "data.stride=2")
    logged = _logged(module, _batch(2), monkeypatch)["val/samples"]  # 2 2 3 8 8
    prompts = ["a red circle", "a square"]
    stage = keyframe_stage_of(module)
    with torch.no_grad():
        latents = stage.sample(prompts, (4, 4), seed=3)  # 2 2 4 4 4, unscaled
        frames = module.movq.decode(rearrange(latents, "b t c h w -> (b t) c h w"), num_frames=2)
        assert torch.equal(_unit(rearrange(frames, "(b t) c h w -> b t c h w", t=2)), logged)
        stride = 2.0 * module.position_unit  # data.stride 2: the sample frame step

        def model_fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, mk: Any) -> torch.Tensor:
            return module.unet(x, t, c, mk, num_frames=2, frame_stride=stride)

        former = _former_sampling(module, model_fn, prompts, (4, 4, 4, 4), 2)
    assert torch.equal(stage.model_latents(prompts, (4, 4), seed=3), former)
    assert not torch.equal(stage.model_latents(prompts, (4, 4), seed=4), former)  # the seed matters


def test_interpolation_samples_are_the_interpolation_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _system(tmp_path, "interpolation/base", "data.num_frames=5", "module.inference_perturbation=20")
    batch = _batch(5, meta=[{"skip_frames": 2}, {"skip_frames": 3}])
    grid = _logged(module, batch, monkeypatch)["val/samples"]  # 2 3 (3 8) (5 8): keyframes / interpolated / real
    stage = interpolation_stage_of(module)
    with torch.no_grad():
        keys = module.movq.encode(rearrange(batch["video"][:, ::4], "b k c h w -> (b k) c h w"))
        seq = stage.interpolate(rearrange(keys, "(b k) c h w -> b k c h w", k=2), skip_frames=torch.tensor([2, 3]),
                                seed=3)  # fmt: skip
        frames = module.movq.decode(rearrange(seq, "b t c h w -> (b t) c h w"), num_frames=5).float().clamp(-1, 1)
    row = rearrange(frames, "(b t) c h w -> b c h (t w)", t=5)
    assert torch.equal(grid[:, :, 8:16], ((row + 1) / 2).clamp(0, 1))  # the middle row: interpolated frames
    assert torch.equal(stage.null_embedding, module.null_embedding.embedding)  # the live weights, not a copy


def test_reference_samples_are_the_reference_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ff_lightning.pipelines.reference import reference_stage_over

    module = _system(tmp_path, "keyframes/ref_blocks", "data.num_frames=2", "data.stride=1",
                     "module.reference_sample_level=50")  # fmt: skip
    strip = _logged(module, _batch(2), monkeypatch)["val/samples/strip"]  # 2 3 8 (8 + 16 + 16)
    stage = reference_stage_over(keyframe_stage_of(module))
    with torch.no_grad():
        latents, ref = stage.model_latents(["a red circle", "a square"], (4, 4), seed=3)
        video = _unit(module.movq.decode(latents / 0.7, num_frames=2))  # (b t) 3 8 8
        ref_image = _unit(module.movq.decode(ref / 0.7))
    assert torch.equal(strip[..., :8], ref_image)
    assert torch.equal(strip[..., 8:24], rearrange(video, "(b t) c h w -> b c h (t w)", t=2))
