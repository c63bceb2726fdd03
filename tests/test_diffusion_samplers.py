"""Samplers (ancestral DDPM, DDIM), dynamic thresholding and classifier-free guidance."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from einops import repeat

from ff_lightning.diffusion import (
    NoiseSchedule,
    SamplingSchedule,
    combine_guidance,
    concat_conditions,
    dynamic_threshold,
    guided_denoiser,
    quantile_rows,
    sample,
)
from ff_lightning.models.unet import UNET_PRESETS, KandinskyUNet


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _oracle(schedule: SamplingSchedule, x0: torch.Tensor, kind: str = "eps"):
    """A model that knows x0: returns the exact eps (or v) of ``x`` at the step whose time value is ``t``."""
    by_time = {float(t): float(ab) for t, ab in zip(schedule.model_times, schedule.alphas_cumprod, strict=True)}

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = torch.tensor([by_time[float(v)] for v in t], dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return eps if kind == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0

    return denoise


@pytest.mark.parametrize("kind", ["eps", "v"])
def test_ddim_eta0_with_oracle_recovers_x0_along_the_forward_path(kind: str) -> None:
    sched = SamplingSchedule.release(20, 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 6, 6, generator=g, dtype=torch.float64)
    x_T = torch.randn(3, 4, 6, 6, generator=g, dtype=torch.float64)
    ab_T = sched.alphas_cumprod[-1].item()
    eps_T = (x_T - ab_T**0.5 * x0) / (1 - ab_T) ** 0.5  # deterministic DDIM keeps this eps along the whole path
    seen: list[int] = []

    def check(i: int, x_prev: torch.Tensor, x0_pred: torch.Tensor) -> None:
        ab_prev = sched.alpha_bar_prev(i)
        assert torch.allclose(x_prev, ab_prev**0.5 * x0 + (1 - ab_prev) ** 0.5 * eps_T, atol=1e-8)
        seen.append(i)

    out = sample(
        _oracle(sched, x0, kind), x0.shape, sched, method="ddim", eta=0.0, prediction=kind, threshold=None,
        x_T=x_T, dtype=torch.float64, callback=check,
    )  # fmt: skip
    assert torch.allclose(out, x0, atol=1e-8)
    assert seen == list(range(19, -1, -1))


def test_ddim_eta1_equals_ancestral_ddpm() -> None:
    sched = SamplingSchedule.subsample(NoiseSchedule.cosine(1000), 12)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # any deterministic function of (x, t)
        return 0.5 * torch.tanh(x) + 1e-3 * t.view(-1, 1, 1, 1)

    kw = dict(threshold=0.9, dtype=torch.float64)
    ddpm = sample(model, (2, 3, 4, 4), sched, method="ddpm", generator=torch.Generator().manual_seed(3), **kw)
    ddim = sample(model, (2, 3, 4, 4), sched, method="ddim", eta=1.0, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.allclose(ddpm, ddim, atol=1e-10)


@pytest.mark.parametrize("method,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.5)])
def test_sampler_determinism_and_shape(method: str, eta: float) -> None:
    sched = SamplingSchedule.release(8)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.9 * x

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return sample(model, (6, 4, 8, 8), sched, method=method, eta=eta, generator=g, threshold_group=3)

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (6, 4, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.abs().max() <= 1.0 + 1e-6  # dynamic thresholding: the last x0 is scaled into [-1, 1]


def test_sampler_on_tiny_unet_with_guidance_is_deterministic() -> None:
    torch.manual_seed(0)
    unet = KandinskyUNet(**UNET_PRESETS["tiny"]).eval()
    cond = (torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.bool))
    null = (torch.zeros(1, 3, 32), torch.tensor([[True, False, False]]))
    denoise = guided_denoiser(lambda x, t, c, m: unet(x, t, c, m), cond, null, 5.0)
    sched = SamplingSchedule.release(3)
    outs = [
        sample(denoise, (2, 4, 8, 8), sched, method="ddpm", generator=torch.Generator().manual_seed(7), progress=True)
        for _ in range(2)
    ]
    assert outs[0].shape == (2, 4, 8, 8) and torch.isfinite(outs[0]).all()
    assert torch.equal(outs[0], outs[1])


def test_quantile_rows_matches_torch_quantile() -> None:
    x = torch.randn(4, 1001, generator=torch.Generator().manual_seed(0))
    for q in (0.0, 0.5, 0.98, 1.0):
        assert torch.allclose(quantile_rows(x, q), torch.quantile(x, q, dim=1), atol=1e-6)


def test_dynamic_threshold() -> None:
    small = torch.rand(2, 4, 3, 3) * 1.8 - 0.9
    assert torch.equal(dynamic_threshold(small, 0.98), small)  # s = max(q, 1) = 1: no-op inside [-1, 1]
    big = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 5
    out = dynamic_threshold(big, 0.98)
    assert out.abs().max() <= 1.0 + 1e-6
    s = torch.quantile(big[0].abs().flatten(), 0.98)
    assert torch.allclose(out[0], big[0].clamp(-s, s) / s, atol=1e-6)
    # group=2: the rows of one sample share one scale (computed over both rows)
    frames = torch.ones(4, 1, 2, 2) * 0.5
    frames[1] *= 8  # a bright second frame of the first video
    grouped = dynamic_threshold(frames, 1.0, group=2)
    assert torch.allclose(grouped[0], frames[0] / 4) and torch.allclose(grouped[1], torch.ones(1, 2, 2))
    assert torch.allclose(grouped[2:], frames[2:])
    with pytest.raises(ValueError):
        dynamic_threshold(frames, 0.9, group=3)


# ---------------------------------------------------------------------------------------------------- guidance
def test_combine_guidance_formula() -> None:
    c, u = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(combine_guidance(c, u, 0.0), c)
    assert torch.allclose(combine_guidance(c, u, 5.0), 6.0 * c - 5.0 * u)


def _masked_model(calls: list[int]):
    def model(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        calls.append(x.shape[0])
        m = torch.ones(context.shape[:2]) if mask is None else mask.float()
        pooled = (context * m[..., None]).sum((1, 2)) / m.sum(1)  # b: independent of padding
        frames = x.shape[0] // context.shape[0]
        return x * 0.5 + repeat(pooled, "b -> (b t) 1 1 1", t=frames) + t.view(-1, 1, 1, 1) * 1e-2

    return model


def test_guided_denoiser_batched_equals_separate_calls_for_videos() -> None:
    g = torch.Generator().manual_seed(0)
    b, t = 2, 3
    x = torch.randn(b * t, 4, 2, 2, generator=g)  # (b t) rows, one context per video
    time = torch.full((b * t,), 40.0)
    cond = (torch.randn(b, 5, 8, generator=g), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool))
    neg = (torch.randn(1, 2, 8, generator=g), torch.ones(1, 2, dtype=torch.bool))  # one negative prompt, 2 tokens
    calls: list[int] = []
    model = _masked_model(calls)
    guided = guided_denoiser(model, cond, neg, 3.0)(x, time)
    assert calls == [2 * b * t]  # one batched forward
    c = model(x, time, *cond)
    u = model(x, time, neg[0].expand(b, -1, -1), neg[1].expand(b, -1))
    assert torch.allclose(guided, 4.0 * c - 3.0 * u, atol=1e-5)
    calls.clear()
    assert torch.equal(guided_denoiser(model, cond, neg, 0.0)(x, time), model(x, time, *cond))
    assert calls == [b * t, b * t]  # w = 0: only the conditional pass
    with pytest.raises(ValueError):
        guided_denoiser(model, cond, None, 2.0)


def test_concat_conditions_pads_and_masks() -> None:
    a = (torch.ones(2, 3, 4), None)
    b = (torch.ones(1, 5, 4), torch.tensor([[True, False, False, False, False]]))
    ctx, mask = concat_conditions(a, b)
    assert ctx.shape == (3, 5, 4) and mask is not None and mask.shape == (3, 5)
    assert mask[:2, :3].all() and not mask[:2, 3:].any() and ctx[:2, 3:].abs().sum() == 0
    assert mask[2].tolist() == [True, False, False, False, False]


# ------------------------------------------------------------------------------- spacings vs an exact denoiser
_TRAIN = NoiseSchedule.cosine(1000)
_POINTS = torch.tensor([[-1.0, 0.5], [1.0, -0.5], [0.2, 1.2]], dtype=torch.float64)  # the data: 3 points in 2-D


def _training_oracle(points: torch.Tensor, kind: str):
    """The exact minimiser of the training loss on data uniform over ``points`` ``(K, D)``: the posterior mean of x0
    given ``x_t`` at the *training* schedule's noise level of the time value fed, as eps or v."""

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = _TRAIN.alpha_bar(t.round().long()).to(x.dtype).view(-1, 1)
        dist = ((x[:, None, :] - ab.sqrt()[:, None] * points[None]) ** 2).sum(-1)  # N K
        x0 = torch.softmax(-dist / (2 * (1 - ab)), dim=1) @ points
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return eps if kind == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0

    return denoise


def _miss(spacing: str, steps: int, method: str, kind: str, points: torch.Tensor) -> torch.Tensor:
    """Distance of 256 samples ``(256,)`` to the nearest data point."""
    sched = SamplingSchedule.build(spacing, steps, _TRAIN)
    out = sample(
        _training_oracle(points, kind), (256, 2), sched, method=method, prediction=kind, threshold=None,
        dtype=torch.float64, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    return torch.cdist(out, points).min(dim=1).values


@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("method,kind", [("ddim", "eps"), ("ddim", "v"), ("ddpm", "eps"), ("ddpm", "v")])
def test_consistent_spacings_reach_the_data_with_an_exact_denoiser(steps: int, method: str, kind: str) -> None:
    # subsample (the default) ends at training step 0: every sample lands on a data point
    assert _miss("subsample", steps, method, kind, _POINTS).max() < 1e-6
    # trailing ends at step N / n - 1 (99 at 10 steps): exact for one point; for a mixture its last x0 is the
    # posterior mean there, exact except for the few samples still between two points
    assert _miss("trailing", steps, method, kind, _POINTS[:1]).max() < 1e-6
    mixture = _miss("trailing", steps, method, kind, _POINTS)
    assert mixture.median() < 1e-6 and (mixture < 1e-3).float().mean() >= 0.9


@pytest.mark.parametrize("method,kind", [("ddim", "eps"), ("ddim", "v"), ("ddpm", "eps"), ("ddpm", "v")])
def test_release_spacing_misses_the_data_at_few_steps(method: str, kind: str) -> None:
    # the documented release behaviour: its noise levels are the trailing ones ...
    for n in (10, 20, 50):
        release, trailing = SamplingSchedule.release(n, 1000), SamplingSchedule.trailing(_TRAIN, n)
        assert torch.allclose(release.alphas_cumprod[:-1], trailing.alphas_cumprod[:-1], rtol=1e-9)
        # ... but the model is fed one sampling interval less noise (minus one training step)
        assert torch.equal(trailing.model_times - release.model_times, torch.full((n,), 1000 / n - 1).double())
    # so even an exact denoiser of one data point misses it, less and less as the steps get finer
    point = _POINTS[:1]
    miss = {n: float(_miss("release", n, method, kind, point).mean()) for n in (10, 20, 50)}
    assert miss[10] > miss[20] > miss[50] > 0.05
    assert miss[20] > 0.2  # 20 sampling steps: farther than a fifth of the point's norm (~0.76) on average


def test_unknown_spacing_is_refused() -> None:
    with pytest.raises(ValueError, match="valid choices: subsample, trailing, release"):
        SamplingSchedule.build("leading", 10, _TRAIN)
