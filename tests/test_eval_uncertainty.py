"""Intervals: the resampling Fréchet distance matches the reference function; IS and per-sample records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ff_lightning.evaluation.uncertainty import (
    FrechetBootstrap,
    frechet_record,
    inception_score_record,
    per_sample_record,
    unavailable,
)
from ff_lightning.metrics.functional import feature_statistics, frechet_distance, inception_score


@pytest.mark.parametrize(("n", "frames", "d"), [(40, 1, 8), (6, 2, 16), (5, 1, 32)])
def test_frechet_bootstrap_matches_reference(n: int, frames: int, d: int) -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.randn(50, d, generator=g, dtype=torch.float64)
    fake = torch.randn(n, frames, d, generator=g, dtype=torch.float64) * 1.3 + 0.2
    mu_r, s_r = feature_statistics(real)
    fb = FrechetBootstrap(mu_r, s_r, fake if frames > 1 else fake[:, 0])
    assert fb.gram_route == (n * frames < d)
    want = frechet_distance(mu_r, s_r, *feature_statistics(fake.reshape(-1, d)))
    assert fb.value() == pytest.approx(want, rel=1e-8, abs=1e-8)
    idx = np.array([0, 0, 1, 3, 4])  # a resample of videos, with a repeat; frames stay with their video
    rows = fake[torch.from_numpy(idx)].reshape(-1, d)
    assert fb.value(idx) == pytest.approx(frechet_distance(mu_r, s_r, *feature_statistics(rows)), rel=1e-8, abs=1e-8)


def test_frechet_record_interval_and_repeats() -> None:
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(64, 6, generator=g), torch.randn(32, 6, generator=g) + 0.5
    mu, s = feature_statistics(real)
    rec = frechet_record(mu, s, fake, alpha=0.05, n_boot=50, repeats=4, seed=0)
    assert rec["ci_low"] <= rec["value"] <= rec["ci_high"] and rec["n"] == 32 and not rec["higher_is_better"]
    bias = rec["boot_mean"] - rec["value"]
    assert bias > 0  # resampling (duplicates) inflates Fréchet distances; the interval is recentred
    assert rec["ci_low"] == pytest.approx(rec["ci_raw"][0] - bias)
    assert rec["ci_high"] == pytest.approx(rec["ci_raw"][1] - bias)
    rep = rec["repeats"]
    assert rep["k"] == 4 and rep["size"] == 8 and len(rep["values"]) == 4
    assert rep["values"][0] == pytest.approx(frechet_distance(mu, s, *feature_statistics(fake[:8])))
    assert rec == frechet_record(mu, s, fake, alpha=0.05, n_boot=50, repeats=4, seed=0)  # deterministic


def test_inception_score_and_per_sample_records() -> None:
    logits = torch.randn(40, 5, generator=torch.Generator().manual_seed(2)) * 3
    rec = inception_score_record(logits, splits=1, alpha=0.05, n_boot=30, repeats=2, seed=0)
    assert rec["value"] == pytest.approx(inception_score(logits, splits=1)[0])
    assert rec["ci_low"] <= rec["ci_high"] and rec["split_std"] == 0.0 and rec["repeats"]["k"] == 2
    vals = torch.tensor([0.2, 0.3, 0.25, 0.28])
    ps = per_sample_record(vals, alpha=0.05, n_boot=200, seed=0)
    assert ps["value"] == pytest.approx(0.2575) and ps["ci_low"] < ps["value"] < ps["ci_high"] and ps["n"] == 4
    na = unavailable("no file")
    assert na["value"] is None and na["reason"] == "no file" and not na["available"]


def test_one_interval_convention_for_distribution_metrics() -> None:
    """``ff eval``'s Fréchet records and the keyframe sweep's frame FID give the same interval for the same clips,
    resamples and seed: the percentiles of the resampled FIDs shifted by ``mean(resamples) - value``."""
    from ff_lightning.evaluation.keyframes import fid_bootstrap
    from ff_lightning.evaluation.uncertainty import recentred_interval

    g = torch.Generator().manual_seed(3)
    real = torch.randn(80, 12, generator=g, dtype=torch.float64)
    clips = torch.randn(9, 3, 12, generator=g, dtype=torch.float64) * 1.2 + 0.3  # 9 clips of 3 frames
    mu, s = feature_statistics(real)
    value, lo, hi = fid_bootstrap(clips, mu, s, n_boot=60, seed=5)
    rec = frechet_record(mu, s, clips, alpha=0.05, n_boot=60, repeats=1, seed=5)
    assert (value, lo, hi) == pytest.approx((rec["value"], rec["ci_low"], rec["ci_high"]), rel=1e-10)
    # independently: the same resamples of clips, FIDs from the reference function, numpy percentiles, mean shift
    rng = np.random.default_rng(5)
    boot = []
    for _ in range(60):
        rows = clips[torch.from_numpy(rng.integers(0, 9, size=9))].reshape(-1, 12)
        boot.append(frechet_distance(mu, s, *feature_statistics(rows)))
    q_lo, q_hi = np.quantile(boot, [0.025, 0.975])
    shift = float(np.mean(boot)) - value
    assert shift > 0  # resampled FIDs sit above the value (duplicated clips)
    assert (lo, hi) == pytest.approx((q_lo - shift, q_hi - shift), rel=1e-7)
    assert lo <= value <= hi
    ci = recentred_interval([2.0, 4.0, 6.0], 3.0, alpha=0.5)  # percentiles 3 and 5, bias 1
    assert (ci["ci_low"], ci["ci_high"], ci["bias"], *ci["ci_raw"]) == pytest.approx((2.0, 4.0, 1.0, 3.0, 5.0))
    assert recentred_interval([], 3.0)["ci_low"] is None
