"""Kandinsky Video 1.1 interpolation in generation (:class:`ff_lightning.pipelines.kv11_interpolation.
KV11InterpolationStage`) on tiny generated release files: ``ff import`` (every part) -> ``ff generate --pipeline``
(12 keyframes -> 45 frames, and 177 at two passes) / ``ff eval ucf101 --pipeline``, and the stage's sampling against
the release's loop written out by hand here (``p_sample_loop_interpolation`` with diffusers' DDPM: v-prediction,
trailing spacing on the zero-SNR cosine schedule, x0 clipped to [-1, 1])."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from release_files import write_release  # noqa: E402
from test_kv11_generate import _zero_snr_alphas_cumprod  # noqa: E402

from ff_lightning.pipelines.kv11_interpolation import KV11InterpolationStage  # noqa: E402

PROMPT = "a red circle"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny kv1.1 release files -> ``ff import`` of every part -> the folder."""
    from ff_lightning.cli import main

    root = tmp_path_factory.mktemp("kv11_all")
    write_release(root / "src", "kv1.1")
    argv = ["import", str(root / "src"), "--format", "kv1.1", "--out", str(root / "out"), "--preset", "tiny",
            "--text-encoder", "tiny", "--text-dim", "64", "--size", "32x32"]  # fmt: skip
    assert main(argv) == 0
    return root / "out"


@pytest.fixture(scope="module")
def pipeline(imported: Path):  # noqa: ANN201
    from ff_lightning.pipelines.video import VideoPipeline

    return VideoPipeline.from_folder(imported)


# ------------------------------------------------------------------------------------------------- end to end
def test_import_wires_the_interpolation_stage_with_its_own_projection(imported: Path) -> None:
    from safetensors.torch import load_file

    src = imported.parent / "src" / "weights"
    manifest = json.loads((imported / "export.json").read_text())
    assert manifest["stages"] == {s: f"{s}/" for s in ("keyframes", "interpolation", "decoder")}
    assert not manifest["unwired_stages"]
    state = load_file(imported / "interpolation" / "module.safetensors")
    released = torch.load(src / "t5_projections.pt", weights_only=True)
    # the release pipeline encodes the interpolation prompt with projection_base; projection_interpolation is kept
    for ours, theirs in (("text_projection.", "projection_base"), ("text_projection_interpolation.",
                                                                      "projection_interpolation")):  # fmt: skip
        assert torch.equal(state[ours + "projection.weight"], released[theirs]["0.weight"])
        assert torch.equal(state[ours + "norm.weight"], released[theirs]["1.weight"])
    null = torch.load(src / "interpolation.pt", weights_only=True)["null_embedding"]
    assert torch.equal(state["null_embedding.embedding"], null.reshape(-1))
    assert not torch.equal(released["projection_base"]["0.weight"], released["projection_interpolation"]["0.weight"])


def test_ff_generate_pipeline_interpolates_12_keyframes_to_45_frames(imported: Path, tmp_path: Path) -> None:
    from ff_lightning.cli import main
    from ff_lightning.data.video_io import probe_video

    info, video = tmp_path / "run.json", tmp_path / "v.mp4"
    argv = ["generate", PROMPT, "--pipeline", str(imported), "--steps", "2", "--interp-steps", "2", "--out",
            str(video), "--info", str(info), "--no-progress", "--motion", "high"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads(info.read_text())
    assert record["frames"] == 45 and set(record["stages"]) == {"keyframes", "interpolation", "decoder"}
    assert "interpolation" not in record.get("notes", {})
    assert record["stages"]["interpolation"]["variant"] == "kv1_1" and record["motion"] == "high"
    assert probe_video(video).num_frames == 45


def test_motion_and_noise_augmentation_reach_the_keyframes(pipeline) -> None:  # noqa: ANN001
    from ff_lightning.pipeline import GenerateOptions

    def frames(**kwargs: object) -> torch.Tensor:
        options = GenerateOptions(steps=2, passes=0, progress=False, size=(8, 8), **kwargs)
        return pipeline.generate(PROMPT, options).latents

    default = frames()
    assert torch.equal(default, frames(motion="medium", noise_augmentation=20))  # the release's defaults
    high = frames(motion="high")
    assert (high - default).abs().max() > 1e-4
    assert torch.equal(high[:12], pipeline.keyframes.sample([PROMPT], (4, 4), steps=2, motion="high")[0])
    assert (frames(noise_augmentation=200) - default).abs().max() > 1e-4


def test_two_passes_are_the_release_high_fps_and_three_are_refused(pipeline) -> None:  # noqa: ANN001
    from ff_lightning.config import ConfigError
    from ff_lightning.pipeline import GenerateOptions

    kf = pipeline.keyframes.sample([PROMPT], (4, 4), steps=2, seed=0)  # (1, 12, 4, 4, 4)
    ip: KV11InterpolationStage = pipeline.interpolation
    seen: list[int] = []
    original = ip.interpolate_once

    def spy(video, context, mask, schedule, options, seed):  # noqa: ANN001, ANN202
        seen.append(options.skip_frames)
        return original(video, context, mask, schedule, options, seed)

    ip.interpolate_once = spy  # type: ignore[method-assign]
    try:
        out = ip.interpolate(kf, prompts=[PROMPT], passes=2, steps=1)
    finally:
        del ip.interpolate_once
    assert out.shape == (1, 177, 4, 4, 4) and seen == [3, 1]  # 12 -> 45 -> 177; skip 3, then 1
    assert torch.equal(out[0, ::16], kf[0])  # the keyframes stay where they were
    with pytest.raises(ConfigError, match="1 pass .* or 2"):
        pipeline.generate(PROMPT, GenerateOptions(steps=1, interp_steps=1, passes=3, progress=False))


def test_ff_eval_ucf101_pipeline_scores_the_interpolated_video(imported: Path, tmp_path: Path) -> None:
    from ff_lightning.cli import main

    out = tmp_path / "eval"
    argv = ["eval", "ucf101", "--pipeline", str(imported), "--num-samples", "8", "--allow-missing", "--out", str(out),
            "--sample-steps", "1", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    (result,) = out.glob("pipeline-*.json")
    gen = json.loads(result.read_text())["generator"]
    assert gen["sampling"]["passes"] == 1 and gen["frames"]["generated"] == 45
    assert "interpolation" in gen["stages"] and "interpolation" not in gen.get("notes", {})


# --------------------------------------------------------------------------------- the release's procedure
def _reference(
    stage: KV11InterpolationStage, keyframes: torch.Tensor, steps: int, seed: int, w: float = 0.5, skip: int = 3
) -> torch.Tensor:
    """``p_sample_loop_interpolation`` + diffusers' DDPMScheduler step (v-prediction, trailing, zero-SNR cosine,
    thresholding at sample_max_value 1) for one video's keyframes ``(k, c, h, w)``; returns the ``(4k - 3)`` frames."""
    unet = stage.unet
    table = _zero_snr_alphas_cumprod()
    times = [round(1000 - i * 1000 / steps) - 1 for i in range(steps)]  # trailing: 999, 899, ... at 10 steps
    k, c, h, wd = keyframes.shape
    n = k - 1
    ctx, mask = stage.text.condition([PROMPT])
    ctx, mask = ctx.expand(n, -1, -1), mask.expand(n, -1)
    u_ctx, u_mask = torch.zeros_like(ctx), torch.zeros_like(mask)
    u_ctx[:, 0], u_mask[:, 0] = stage.text.null.embedding, 1
    left = torch.cat([keyframes[:-1], torch.zeros_like(keyframes[:-1])])
    right = torch.cat([keyframes[1:], torch.zeros_like(keyframes[1:])])
    temporal_mask = torch.cat([torch.ones(n), torch.zeros(n)])
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3 * c, h, wd, generator=gen)
    for i, t in enumerate(times):
        large = torch.cat([left, x.repeat(2, 1, 1, 1), right], dim=1)
        out = unet.forward_official(large, torch.full((2 * n,), float(t)), torch.cat([ctx, u_ctx]),
                                    torch.cat([mask, u_mask]).bool(), num_predicted_groups=n,
                                    perturbation_time=torch.zeros(2 * n), skip_frames=torch.full((2 * n,), skip),
                                    temporal_mask=temporal_mask)  # fmt: skip
        cond, uncond = out.chunk(2)
        v = (w + 1) * cond - w * uncond
        ab = float(table[t])
        ab_prev = float(table[times[i + 1]]) if i + 1 < len(times) else 1.0  # diffusers' previous_timestep
        x0 = (ab**0.5 * x - (1 - ab) ** 0.5 * v).clamp(-1, 1)
        beta = 1 - ab / ab_prev
        mean = ab_prev**0.5 * beta / (1 - ab) * x0 + (1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab) * x
        noise = torch.randn(x.shape, generator=gen) if i + 1 < len(times) else torch.zeros_like(x)
        x = mean + (beta * (1 - ab_prev) / (1 - ab)) ** 0.5 * noise
    video = torch.zeros(4 * k - 3, c, h, wd)
    video[0::4] = keyframes
    middle = x.reshape(n, 3, c, h, wd).reshape(3 * n, c, h, wd)  # 'b (t c) h w -> (b t) c h w'
    video[[i for i in range(4 * k - 3) if i % 4]] = middle
    return video


def test_schedule_is_diffusers_zero_snr_trailing() -> None:
    from ff_lightning.pipelines.kv11_interpolation import kv11_interpolation_schedule

    s = kv11_interpolation_schedule(10)
    assert s.model_times.tolist() == [99.0 + 100 * i for i in range(10)]
    assert torch.allclose(s.alphas_cumprod, _zero_snr_alphas_cumprod()[99::100], rtol=0, atol=1e-12)
    assert float(s.alphas_cumprod[-1]) == 0.0  # zero terminal SNR: x0 = -v at t = 999


@torch.no_grad()
def test_stage_sampling_equals_the_release_loop_written_out(pipeline) -> None:  # noqa: ANN001
    from ff_lightning.pipelines.kv11_interpolation import KV11InterpolationOptions, kv11_interpolation_schedule

    ip: KV11InterpolationStage = pipeline.interpolation
    keyframes = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(3)) * 0.5
    ctx, mask = ip.text.condition([PROMPT])
    ours = ip.interpolate_once(keyframes, ctx, mask, kv11_interpolation_schedule(3), KV11InterpolationOptions(), 5)
    expected = _reference(ip, keyframes, steps=3, seed=5)
    assert ours.shape == (13, 4, 4, 4)
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()
    # the comparison notices the guidance weight and the skip count
    for kwargs in ({"w": 0.0}, {"skip": 1}):
        assert (_reference(ip, keyframes, steps=3, seed=5, **kwargs) - ours).abs().max() > 1e-3, kwargs
    # and the whole-video call is the same pass (unscaled latents, latent_scale 1)
    whole = ip.interpolate(keyframes[None], prompts=[PROMPT], steps=3, seed=5)
    assert torch.allclose(whole[0], ours, atol=1e-6)


def test_an_older_import_without_the_projection_is_a_clear_error(imported: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from ff_lightning.checkpoints import CheckpointError, read_stage_source
    from ff_lightning.pipelines.kv11_interpolation import build_kv11_interpolation_stage

    old = tmp_path / "interpolation"
    shutil.copytree(imported / "interpolation", old)
    state = {k: v for k, v in load_file(old / "module.safetensors").items() if not k.startswith("text_projection.")}
    save_file(state, old / "module.safetensors")
    with pytest.raises(CheckpointError, match="import the kv1.1 files again"):
        build_kv11_interpolation_stage(read_stage_source(old), None)


def test_the_unused_projection_interpolation_can_be_chosen(pipeline, imported: Path) -> None:  # noqa: ANN001
    from ff_lightning.checkpoints import read_stage_source
    from ff_lightning.pipelines.kv11_interpolation import build_kv11_interpolation_stage

    src = read_stage_source(imported / "interpolation")
    other = build_kv11_interpolation_stage(src, pipeline.keyframes.text.cache, projection="interpolation")
    base, _ = pipeline.interpolation.text.condition([PROMPT])
    intended, _ = other.text.condition([PROMPT])
    assert base.shape == intended.shape and (base - intended).abs().max() > 1e-3
