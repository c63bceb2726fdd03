"""Kandinsky Video 1.1 keyframe generation (:mod:`ff_lightning.pipelines.kv11`) on tiny generated release files:
``ff import`` -> ``ff generate --pipeline`` / ``ff eval ucf101 --pipeline``, and the stage's sampling against the
release's procedure written out by hand here (first frame in image mode, uint8 round trip, noise-augmented first
frame, three-branch guidance, zero-SNR cosine DDPM at leading spacing with x0 clipped to [-1, 1])."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from release_files import write_release  # noqa: E402

from ff_lightning.pipelines.kv11 import KV11KeyframeStage  # noqa: E402

PROMPT = "a red circle"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny kv1.1 release files -> ``ff import`` (keyframes + decoder) -> the folder."""
    from ff_lightning.cli import main

    root = tmp_path_factory.mktemp("kv11")
    write_release(root / "src", "kv1.1")
    argv = ["import", str(root / "src"), "--format", "kv1.1", "--parts", "movq,keyframes,decoder", "--out",
            str(root / "out"), "--preset", "tiny", "--text-encoder", "tiny", "--text-dim", "64",
            "--size", "32x32"]  # fmt: skip
    assert main(argv) == 0
    return root / "out"


@pytest.fixture(scope="module")
def stage(imported: Path) -> KV11KeyframeStage:
    from ff_lightning.checkpoints import read_stage_source
    from ff_lightning.pipelines.kv11 import build_kv11_keyframe_stage

    return build_kv11_keyframe_stage(read_stage_source(imported / "keyframes"))


# ------------------------------------------------------------------------------------------------- end to end
def test_ff_generate_pipeline_writes_the_12_keyframes_through_the_imported_decoder(
    imported: Path, tmp_path: Path
) -> None:
    from ff_lightning.cli import main
    from ff_lightning.data.video_io import probe_video

    manifest = json.loads((imported / "export.json").read_text())
    assert manifest["stages"] == {"keyframes": "keyframes/", "decoder": "decoder/"}
    assert "not_wired" not in json.loads((imported / "keyframes" / "export.json").read_text())
    info, video = tmp_path / "run.json", tmp_path / "v.mp4"
    argv = ["generate", PROMPT, "--pipeline", str(imported), "--steps", "2", "--out", str(video), "--info", str(info),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads(info.read_text())
    assert record["frames"] == 12 and record["size"] == [32, 32]
    assert record["decoder"] == "video decoder (conv3x3x3_attn)"
    assert set(record["stages"]) == {"keyframes", "decoder"}
    assert "interpolation" in record["notes"]  # 1.1 interpolation is not available: recorded
    probed = probe_video(video)
    assert (probed.height, probed.width) == (32, 32) and probed.num_frames == 12


def test_ff_eval_ucf101_pipeline_runs_the_kv11_folder(imported: Path, tmp_path: Path) -> None:
    """No interpolation stage: ``--pipeline`` defaults to keyframes only (12 frames, repeated up to the 16 read)."""
    from ff_lightning.checkpoints import sha256_file
    from ff_lightning.cli import main

    out = tmp_path / "eval"
    argv = ["eval", "ucf101", "--pipeline", str(imported), "--num-samples", "8", "--allow-missing", "--out", str(out),
            "--sample-steps", "2", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    (result,) = out.glob("pipeline-*.json")
    record = json.loads(result.read_text())
    gen = record["generator"]
    assert gen["kind"] == "pipeline" and gen["frames"]["generated"] == 12 and gen["frames"]["protocol"] == 16
    assert gen["stages"]["keyframes"]["sha256"] == sha256_file(imported / "keyframes" / "module.safetensors")
    assert gen["sampling"]["motion"] == "medium" and gen["sampling"]["noise_augmentation"] == 20
    assert gen["sampling"]["passes"] == 0 and "interpolation" in gen["notes"]
    assert record["samples"]["generated"] == 8 and not record["comparable_to_paper"]


# --------------------------------------------------------------------------------- the release's procedure
def _zero_snr_alphas_cumprod(n: int = 1000) -> torch.Tensor:
    """squaredcos_cap_v2 betas (clipped at 0.999), then sqrt(alphas_cumprod) shifted / scaled to end at 0."""
    f = [math.cos((i / n + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(n + 1)]
    betas = torch.tensor([min(1 - f[i + 1] / f[i], 0.999) for i in range(n)], dtype=torch.float64)
    root = torch.cumprod(1 - betas, 0).sqrt()
    return ((root - root[-1]) * root[0] / (root[0] - root[-1])) ** 2


def test_sampling_schedule_is_diffusers_zero_snr_leading() -> None:
    from ff_lightning.pipelines.kv11 import kv11_sampling_schedule

    s = kv11_sampling_schedule(50)
    assert s.model_times.tolist() == [20.0 * i for i in range(50)]  # DDPMScheduler 'leading': 980, 960, ..., 0
    # diffusers 0.42.1 DDPMScheduler(squaredcos_cap_v2, rescale_betas_zero_snr=True).alphas_cumprod[[0, 20, 500, 980]]
    diffusers = [0.9999587535858154, 0.9981142282485962, 0.4922648072242737, 0.0008737004245631397]
    ours = [float(s.alphas_cumprod[0]), float(s.alphas_cumprod[1]), 0.0, float(s.alphas_cumprod[49])]
    ours[2] = float(_zero_snr_alphas_cumprod()[500])
    assert ours == pytest.approx(diffusers, rel=2e-6)
    assert torch.allclose(s.alphas_cumprod, _zero_snr_alphas_cumprod()[::20], rtol=0, atol=1e-12)


def _ddpm(x: torch.Tensor, eps: torch.Tensor, ab: float, ab_prev: float, noise: torch.Tensor | None) -> torch.Tensor:
    x0 = ((x - (1 - ab) ** 0.5 * eps) / ab**0.5).clamp(-1, 1)  # thresholding with sample_max_value 1
    beta = 1 - ab / ab_prev
    mean = ab_prev**0.5 * beta / (1 - ab) * x0 + (1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab) * x
    return mean if noise is None else mean + (beta * (1 - ab_prev) / (1 - ab)) ** 0.5 * noise


def _reference(
    stage: KV11KeyframeStage, h: int, w: int, steps: int, seed: int, mutate: str = ""
) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's keyframes for one prompt, step by step (``mutate`` drops one ingredient, to show the comparison
    notices it)."""
    from PIL import Image

    unet, movq = stage.unet, stage.movq
    table = _zero_snr_alphas_cumprod()
    times = [i * (1000 // steps) for i in range(steps)][::-1]  # leading spacing
    ctx, mask = stage.text.condition([PROMPT])
    null_ctx, null_mask = torch.zeros_like(ctx), torch.zeros_like(mask)
    null_ctx[:, 0], null_mask[:, 0] = stage.text.null.embedding, True
    gen = torch.Generator().manual_seed(seed)
    # 1. the first frame: image mode at twice the latent size, (1 + 5) cond - 5 uncond
    x = torch.randn(1, 4, 2 * h, 2 * w, generator=gen)
    for k, t in enumerate(times):
        both = torch.cat([torch.cat([x, x]), torch.zeros(2, 5, 2 * h, 2 * w)], dim=1)
        e_c, e_u = unet.forward_image(both, torch.full((2,), float(t)), torch.cat([ctx, null_ctx]),
                                      torch.cat([mask, null_mask])).chunk(2)  # fmt: skip
        prev = float(table[times[k + 1]]) if k + 1 < len(times) else 1.0
        noise = torch.randn(x.shape, generator=gen) if t > 0 else None
        x = _ddpm(x, 6 * e_c - 5 * e_u, float(table[t]), prev, noise)
    image = ((movq.decode(x, num_frames=1).clamp(-1, 1) + 1) / 2).clamp(0, 1) * 255  # decode_image: uint8, truncated
    pil = Image.fromarray(image[0].permute(1, 2, 0).to(torch.uint8).numpy())
    pil = pil.resize((pil.size[0] // 2, pil.size[1] // 2), Image.Resampling.BICUBIC)  # encode_image: back to 32x32
    frame = torch.from_numpy(np.asarray(pil, dtype=np.float32).copy()).permute(2, 0, 1)[None] / 127.5 - 1
    first = movq.encode(frame)
    # 2. twelve keyframes on the noise-augmented first frame
    x = torch.randn(12, 4, h, w, generator=gen)
    uniform = torch.rand(first.shape, generator=gen)
    ab20 = float(table[20])
    cond = torch.zeros(12, 5, h, w)
    cond[0, :4] = ab20**0.5 * first[0] + (1 - ab20) ** 0.5 * uniform[0]
    cond[0, 4] = 1
    if mutate == "no first frame":
        cond.zero_()
    rows = torch.cat([cond, cond, torch.zeros_like(cond)])
    context = torch.cat([ctx.expand(12, -1, -1), null_ctx.expand(24, -1, -1)])
    context_mask = torch.cat([mask.expand(12, -1), null_mask.expand(24, -1)])
    positions = torch.arange(12).repeat(3).float()
    motion = torch.full((36,), 1 if mutate == "motion low" else 10)
    for k, t in enumerate(times):
        inp = torch.cat([x.repeat(3, 1, 1, 1), rows], dim=1)
        out = unet.forward_official(inp, torch.full((36,), float(t)), context, context_mask, positions, 12,
                                    torch.full((36,), 20), motion)  # fmt: skip
        e_c, e_i, e_u = out.chunk(3)
        eps = (1 - 2.0) * e_u + (2.0 - 5.0) * e_i + 5.0 * e_c  # release defaults: prompt 5, image 2
        prev = float(table[times[k + 1]]) if k + 1 < len(times) else 1.0
        noise = torch.randn(x.shape, generator=gen) if t > 0 else None
        x = _ddpm(x, eps, float(table[t]), prev, noise)
    return x, first


@torch.no_grad()
def test_stage_sampling_equals_the_release_procedure_written_out(stage: KV11KeyframeStage) -> None:
    h, w = stage.latent_size((32, 32))
    assert (h, w) == (16, 16)
    latents, first = stage.model_latents([PROMPT], (h, w), steps=3, seed=11)
    expected, expected_first = _reference(stage, h, w, steps=3, seed=11)
    assert torch.allclose(first, expected_first, atol=1e-5)
    assert latents.shape == (12, 4, h, w)
    assert torch.allclose(latents, expected, atol=1e-5), (latents - expected).abs().max()
    # the comparison notices a missing ingredient: the first-frame conditioning, the motion score
    for mutate in ("no first frame", "motion low"):
        wrong, _ = _reference(stage, h, w, steps=3, seed=11, mutate=mutate)
        assert (wrong - latents).abs().max() > 1e-3, mutate
    low, _ = stage.model_latents([PROMPT], (h, w), steps=3, seed=11, motion="low")
    assert torch.allclose(low, _reference(stage, h, w, steps=3, seed=11, mutate="motion low")[0], atol=1e-5)


@torch.no_grad()
def test_a_given_first_frame_replaces_the_image_mode_frame(stage: KV11KeyframeStage) -> None:
    """``image=`` (the release's image-to-video): fitted to the frame size (cover by the smaller ratio, centre crop)
    and encoded; the video starts from it whatever the seed."""
    image = torch.rand(3, 40, 64) * 2 - 1  # 40x64 -> 32x51 -> centre 32x32
    a, first_a = stage.model_latents([PROMPT], (16, 16), steps=2, seed=1, image=image)
    _, first_b = stage.model_latents([PROMPT], (16, 16), steps=2, seed=2, image=image)
    assert torch.equal(first_a, first_b) and first_a.shape == (1, 4, 16, 16)
    _, generated = stage.model_latents([PROMPT], (16, 16), steps=2, seed=1)
    assert not torch.allclose(first_a, generated)
    assert torch.isfinite(a).all()
