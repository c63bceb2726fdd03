"""Cosine noise schedule and eps / v / x0 parameterisations, against closed forms computed here independently."""

from __future__ import annotations

import math

import pytest
import torch

from ff_lightning.diffusion import (
    NoiseSchedule,
    SamplingSchedule,
    eps_from_v,
    eps_from_x0,
    prediction_target,
    v_from_x0_eps,
    x0_eps_from_prediction,
    x0_from_eps,
    x0_from_v,
)


def _f(u: float) -> float:
    return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2


def test_cosine_alphas_cumprod_closed_form() -> None:
    n = 1000
    sched = NoiseSchedule.cosine(n)
    assert sched.num_steps == n and sched.alphas_cumprod.dtype == torch.float64
    # away from the max_beta clip the product telescopes to alpha_bar((i + 1) / N) = f((i + 1) / N) / f(0)
    for i in (0, 1, 10, 250, 500, 900, 990, 998):
        assert sched.alphas_cumprod[i].item() == pytest.approx(_f((i + 1) / n) / _f(0.0), rel=1e-9, abs=1e-15)
    assert sched.betas.max().item() == pytest.approx(0.999)  # the last beta is clipped
    assert sched.betas[-1].item() == pytest.approx(0.999)
    assert bool((sched.alphas_cumprod[1:] < sched.alphas_cumprod[:-1]).all())
    assert sched.betas[0].item() == pytest.approx(1 - _f(1 / n) / _f(0.0), rel=1e-9)


def test_q_sample_statistics() -> None:
    sched = NoiseSchedule.cosine(1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 0.7, dtype=torch.float64)
    for step in (0, 300, 700, 999):
        t = torch.full((x0.shape[0],), step, dtype=torch.long)
        xt = sched.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        ab = _f((step + 1) / 1000) / _f(0.0) if step < 999 else sched.alphas_cumprod[-1].item()
        assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=6e-3)
        assert xt.var().item() == pytest.approx(1 - ab, abs=1e-2)


def test_q_sample_per_row_steps_and_range_check() -> None:
    sched = NoiseSchedule.cosine(50)
    x0, noise = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    out = sched.q_sample(x0, torch.tensor([0, 49]), noise)
    ab = sched.alphas_cumprod
    assert torch.allclose(out[0], torch.full((3, 4, 4), math.sqrt(ab[0].item())))
    assert torch.allclose(out[1], torch.full((3, 4, 4), math.sqrt(ab[49].item())))
    with pytest.raises(IndexError):
        sched.q_sample(x0, torch.tensor([0, 50]), noise)


@pytest.mark.parametrize("kind", ["eps", "v"])
def test_parameterisation_round_trips(kind: str) -> None:
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 4, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 4, 5, 5, generator=g, dtype=torch.float64)
    ab = torch.tensor([0.999, 0.9, 0.5, 0.1, 1e-3, 1e-5], dtype=torch.float64)
    a, s = ab.sqrt().view(-1, 1, 1, 1), (1 - ab).sqrt().view(-1, 1, 1, 1)
    x_t = a * x0 + s * eps
    v_manual = a * eps - s * x0
    assert torch.allclose(v_from_x0_eps(x0, eps, ab), v_manual, atol=1e-12)
    assert torch.allclose(x0_from_v(x_t, v_manual, ab), x0, atol=1e-9)
    assert torch.allclose(eps_from_v(x_t, v_manual, ab), eps, atol=1e-9)
    assert torch.allclose(x0_from_eps(x_t, eps, ab), x0, atol=1e-6)  # divides by sqrt(1e-5): looser
    assert torch.allclose(eps_from_x0(x_t, x0, ab), eps, atol=1e-9)
    target = prediction_target(kind, x0, eps, ab)
    assert torch.equal(target, eps) if kind == "eps" else torch.allclose(target, v_manual, atol=1e-12)
    x0_back, eps_back = x0_eps_from_prediction(kind, x_t, target, ab)
    assert torch.allclose(x0_back, x0, atol=1e-6) and torch.allclose(eps_back, eps, atol=1e-9)


def test_schedule_target_and_x0_eps_use_the_step() -> None:
    sched = NoiseSchedule.cosine(1000)
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    t = torch.tensor([5, 500, 990])
    x_t = sched.q_sample(x0, t, noise)
    v = sched.target("v", x0, noise, t)
    rx0, reps = sched.x0_eps("v", x_t, v, t)
    assert torch.allclose(rx0, x0, atol=1e-4) and torch.allclose(reps, noise, atol=1e-4)
    with pytest.raises(ValueError, match="valid choices: eps, v"):
        sched.target("x0", x0, noise, t)


def test_release_sampling_schedule_matches_training_schedule() -> None:
    rel = SamplingSchedule.release(50, 1000)
    train = NoiseSchedule.cosine(1000)
    assert torch.equal(rel.model_times, torch.arange(50, dtype=torch.float64) * 20)
    # built for 50 steps: alphas_cumprod[i] = alpha_bar((i + 1) / 50) = the 1000-step table at 20 (i + 1) - 1
    idx = torch.arange(49) * 20 + 19
    assert torch.allclose(rel.alphas_cumprod[:49], train.alphas_cumprod[idx], rtol=1e-9)
    sub = SamplingSchedule.subsample(train, 10)
    assert sub.model_times[0] == 0 and sub.model_times[-1] == 999 and sub.num_steps == 10
    assert torch.equal(sub.alphas_cumprod, train.alphas_cumprod[sub.model_times.long()])
    with pytest.raises(ValueError):
        SamplingSchedule.build("karras", 10, train)
