"""Metric functions against independent references (scikit-image, numpy, scipy, closed forms)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ff_lightning.metrics import functional as MF
from ff_lightning.metrics.distribution import statistics_from_sums


def _pair(shape: tuple[int, ...], seed: int = 0, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g, dtype=torch.float64)
    pred = (target + noise * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return pred, target


def test_to_unit_maps_and_clamps() -> None:
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    assert torch.equal(MF.to_unit(x), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    assert torch.allclose(MF.to_unit(torch.tensor([0.0, 255.0]), 0.0, 255.0), torch.tensor([0.0, 1.0]))


def test_psnr_matches_skimage_per_frame() -> None:
    pred, target = _pair((2, 3, 3, 16, 20))
    frames = MF.psnr(pred, target, data_range=1.0, reduction="frames")
    ref = np.array(
        [
            [peak_signal_noise_ratio(target[b, t].numpy(), pred[b, t].numpy(), data_range=1.0) for t in range(3)]
            for b in range(2)
        ]
    )
    np.testing.assert_allclose(frames.numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(MF.psnr(pred, target, reduction="none").numpy(), ref.mean(1), rtol=1e-10)
    assert MF.psnr(pred, target).item() == pytest.approx(ref.mean(), rel=1e-10)


def test_psnr_identical_frames_capped_and_data_range() -> None:
    x = torch.rand(1, 2, 3, 8, 8)
    assert MF.psnr(x, x).item() == pytest.approx(100.0)
    pred, target = _pair((2, 3, 8, 8), seed=1)
    ref = [peak_signal_noise_ratio(target[i].numpy() * 255, pred[i].numpy() * 255, data_range=255) for i in range(2)]
    np.testing.assert_allclose(MF.psnr(pred * 255, target * 255, data_range=255, reduction="none").numpy(), ref)


def test_ssim_matches_skimage_valid_region() -> None:
    pred, target = _pair((2, 2, 3, 24, 31), seed=2, noise=0.2)
    got = MF.ssim(pred, target, data_range=1.0, reduction="frames")
    ref = np.array(
        [
            [
                structural_similarity(
                    target[b, t].numpy(),
                    pred[b, t].numpy(),
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                    data_range=1.0,
                    channel_axis=0,
                )
                for t in range(2)
            ]
            for b in range(2)
        ]
    )
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-9)
    # float32 input, chunking across frames, image (N, C, H, W) input
    got32 = MF.ssim(pred.float(), target.float(), reduction="frames", chunk_frames=1)
    np.testing.assert_allclose(got32.numpy(), ref, atol=1e-5)
    img = MF.ssim(pred[:, 0], target[:, 0], reduction="none")
    np.testing.assert_allclose(img.numpy(), ref[:, 0], atol=1e-9)


def test_ssim_identity_and_window_checks() -> None:
    x = torch.rand(2, 3, 16, 16)
    assert MF.ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        MF.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_mse_matches_numpy_and_shapes() -> None:
    pred, target = _pair((3, 4, 2, 5, 6), seed=3)
    ref = ((pred.numpy() - target.numpy()) ** 2).mean(axis=(2, 3, 4))
    np.testing.assert_allclose(MF.mse(pred, target, reduction="frames").numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(MF.mse(pred, target, reduction="none").numpy(), ref.mean(1), rtol=1e-12)
    with pytest.raises(ValueError, match="shapes differ"):
        MF.mse(pred, target[:, :2])
    with pytest.raises(ValueError, match="reduction"):
        MF.mse(pred, target, reduction="sum")  # type: ignore[arg-type]


def test_temporal_consistency_matches_numpy() -> None:
    pred, target = _pair((2, 5, 3, 6, 7), seed=4)
    p, t = pred.numpy(), target.numpy()
    ref = np.abs(np.diff(p, axis=1) - np.diff(t, axis=1)).mean(axis=(1, 2, 3, 4))
    np.testing.assert_allclose(MF.temporal_consistency(pred, target, reduction="none").numpy(), ref, rtol=1e-12)
    assert MF.temporal_consistency(target + 0.3, target).item() == pytest.approx(0.0, abs=1e-12)  # offset: no flicker
    with pytest.raises(ValueError, match="at least 2 frames"):
        MF.temporal_consistency(pred[:, :1], target[:, :1])


def test_clip_similarity() -> None:
    g = torch.Generator().manual_seed(5)
    txt = torch.randn(4, 8, generator=g)
    img = txt.unsqueeze(1).repeat(1, 3, 1) * 2.5  # same direction, any scale
    assert torch.allclose(MF.clip_similarity(img, txt, reduction="none"), torch.ones(4, dtype=torch.float64))
    img = torch.randn(4, 3, 8, generator=g)
    cos = torch.nn.functional.cosine_similarity(img.double(), txt.double().unsqueeze(1), dim=-1)
    assert torch.allclose(MF.clip_similarity(img, txt, reduction="frames"), cos)
    assert MF.clip_similarity(img, txt).item() == pytest.approx(cos.mean(1).mean().item())
    assert MF.clip_similarity(-txt, txt).item() == pytest.approx(-1.0)  # raw cosine, not clipped at 0


def test_bootstrap_ci_deterministic_and_sane() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(3.0, 2.0, size=400)
    a, b = MF.bootstrap_ci(v, n_boot=2000, seed=1), MF.bootstrap_ci(torch.from_numpy(v), n_boot=2000, seed=1)
    assert a == b
    assert a.low < a.mean < a.high and a.mean == pytest.approx(v.mean())
    half = 1.96 * v.std(ddof=1) / np.sqrt(v.size)
    assert (a.high - a.low) / 2 == pytest.approx(half, rel=0.15)
    assert MF.bootstrap_ci(v, seed=2) != MF.bootstrap_ci(v, seed=3)
    assert MF.bootstrap_ci([1.5]) == (1.5, 1.5, 1.5)
    assert MF.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError):
        MF.bootstrap_ci([])
    with pytest.raises(ValueError, match="method"):
        MF.bootstrap_ci(v, method="normal")  # type: ignore[arg-type]


def _coverage(method: str | None, draws: int = 2000, n: int = 30) -> float:
    """Fraction of ``draws`` samples of N exponential(1) values whose 95% interval holds the true mean 1."""
    rng = np.random.default_rng(2024)
    hits = 0
    for _ in range(draws):
        x = rng.exponential(1.0, size=n)
        # fixed seed, as the callers use it; method None: the default every caller gets
        ci = MF.bootstrap_ci(x, n_boot=1000, seed=0) if method is None else MF.bootstrap_ci(x, 1000, 0.05, 0, method)
        hits += ci.low <= 1.0 <= ci.high
    return hits / draws


def test_bootstrap_ci_coverage_by_simulation() -> None:
    """The default interval holds the mean of a skewed distribution ~95% of the time at N = 30 (about 1 s).

    2000 draws: the Monte Carlo standard error of a coverage near 0.95 is 0.005, so the window [0.92, 0.98] is ~6 SE
    wide on each side of the nominal level. The plain percentile interval is measured too: it under-covers (about
    0.90), which is what this test exists to catch.
    """
    default = _coverage(None)
    assert 0.92 <= default <= 0.98, default
    assert _coverage("percentile") < 0.92


def test_bootstrap_ci_proportions_wilson_and_bounded() -> None:
    """0/1 accuracies get the Wilson interval (checked against its closed form and by coverage), inside [0, 1]; other
    intervals never leave the values' range (the bootstrap-t of a bounded sample can)."""
    hits = np.array([1.0] * 23 + [0.0])
    ci = MF.bootstrap_ci(hits)
    z, n, p = 1.959963984540054, 24, 23 / 24
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert ci == pytest.approx((p, centre - half, centre + half), abs=1e-12)
    assert 0.0 <= ci.low < ci.mean < ci.high <= 1.0
    all_hit = MF.bootstrap_ci(np.ones(24), proportion=True)
    assert all_hit.mean == all_hit.high == 1.0 and 0.8 < all_hit.low < 0.9  # 24 of 24 is not certainty
    with pytest.raises(ValueError, match="0/1"):
        MF.bootstrap_ci([0.5, 1.0], proportion=True)
    rng = np.random.default_rng(5)
    covered = sum(
        (c := MF.bootstrap_ci(rng.binomial(1, 0.8, size=30).astype(float), proportion=True)).low <= 0.8 <= c.high
        for _ in range(2000)
    )
    assert 0.92 <= covered / 2000 <= 0.99
    skewed = np.array([0.0] * 28 + [1e-3, 0.9])  # one outlier: the bootstrap-t's upper end passes the largest value
    assert MF.bootstrap_ci(skewed).high <= 0.9 and MF.bootstrap_ci(skewed).low >= 0.0


def _spd(d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T / d + 0.5 * np.eye(d)


def test_frechet_distance_vs_scipy_sqrtm_on_spd() -> None:
    d = 24
    rng = np.random.default_rng(7)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _spd(d, 1), _spd(d, 2)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert MF.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)
    assert MF.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(MF.frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_frechet_distance_diagonal_closed_form() -> None:
    a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    mu1, mu2 = np.zeros(4), np.array([1.0, 0.0, -2.0, 0.0])
    ref = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = MF.frechet_distance(torch.tensor(mu1), torch.tensor(np.diag(a)), torch.tensor(mu2), torch.tensor(np.diag(b)))
    assert got == pytest.approx(ref, rel=1e-12)


def test_frechet_distance_identical_and_rank_deficient() -> None:
    x = torch.randn(40, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1  # N < D: singular
    mu, sigma = MF.feature_statistics(x)
    assert MF.frechet_distance(mu, sigma, mu, sigma) < 1e-6
    y = x + 0.5
    mu2, sigma2 = MF.feature_statistics(y)
    assert MF.frechet_distance(mu, sigma, mu2, sigma2) == pytest.approx(128 * 0.25, rel=1e-6)  # pure mean shift


def test_feature_statistics_and_sums_match_numpy() -> None:
    x = np.random.default_rng(3).normal(size=(50, 6))
    mu, sigma = MF.feature_statistics(torch.from_numpy(x).float())
    assert mu.dtype == torch.float64
    np.testing.assert_allclose(mu.numpy(), x.mean(0), atol=1e-6)
    np.testing.assert_allclose(sigma.numpy(), np.cov(x, rowvar=False), atol=1e-6)
    t = torch.from_numpy(x)
    mu2, sigma2 = statistics_from_sums(50, t.sum(0), t.T @ t)
    np.testing.assert_allclose(sigma2.numpy(), np.cov(x, rowvar=False), atol=1e-12)
    np.testing.assert_allclose(mu2.numpy(), x.mean(0), atol=1e-12)


def _is_reference(p: np.ndarray, splits: int) -> tuple[float, float]:
    n, scores = len(p), []
    for k in range(splits):
        part = p[k * n // splits : (k + 1) * n // splits]
        py = part.mean(0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(py)), 0.0).sum(1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_closed_forms() -> None:
    k = 7
    one_hot = torch.eye(k).repeat(10, 1)  # uniform marginal, certain conditionals
    mean, std = MF.inception_score(one_hot, splits=10)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    assert MF.inception_score(60.0 * one_hot, splits=1, from_logits=True)[0] == pytest.approx(k, rel=1e-9)
    same = torch.randn(1, k).repeat(30, 1)  # identical rows -> p(y|x) = p(y) -> IS 1
    assert MF.inception_score(same, splits=3)[0] == pytest.approx(1.0, abs=1e-12)


def test_inception_score_matches_numpy_reference() -> None:
    logits = torch.randn(103, 11, generator=torch.Generator().manual_seed(9)) * 2
    probs = torch.softmax(logits.double(), dim=1).numpy()
    ref = _is_reference(probs, splits=5)
    got = MF.inception_score(logits, splits=5)
    assert got == pytest.approx(ref, rel=1e-10)
    assert MF.inception_score(torch.from_numpy(probs), splits=5) == pytest.approx(ref, rel=1e-10)  # auto-detects probs
    with pytest.raises(ValueError, match="splits"):
        MF.inception_score(logits[:3], splits=5)


def test_psnr_and_ssim_agree_with_torchmetrics() -> None:
    """Cross-check against torchmetrics' functional PSNR / SSIM (Gaussian 11 x 1.5, valid region) per frame."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    pred, target = _pair((2, 3, 3, 24, 28), seed=5)
    frames_p, frames_t = pred.flatten(0, 1).float(), target.flatten(0, 1).float()
    tm_psnr = peak_signal_noise_ratio(frames_p, frames_t, data_range=1.0, reduction="none", dim=(1, 2, 3))
    torch.testing.assert_close(
        MF.psnr(pred, target, reduction="frames").flatten(), tm_psnr.double(), rtol=1e-5, atol=1e-4
    )
    # torchmetrics averages the SSIM map over the whole (reflect-padded) frame; ours (and scikit-image) over the
    # valid region, where the window lies inside the frame: its full map cropped by the window radius (5) is ours
    _, full = structural_similarity_index_measure(
        frames_p.double(), frames_t.double(), data_range=1.0, reduction="none", return_full_image=True
    )
    valid = full[..., 5:-5, 5:-5].mean(dim=(1, 2, 3))
    torch.testing.assert_close(MF.ssim(pred, target, reduction="frames").flatten(), valid, rtol=1e-9, atol=1e-9)


def test_frechet_distance_agrees_with_torch_fidelity() -> None:
    """Cross-check of the Fréchet distance against torch-fidelity's ``fid_statistics_to_metric``."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    g = np.random.default_rng(7)
    a, b = g.normal(size=(300, 24)), g.normal(loc=0.3, scale=1.4, size=(200, 24)) @ g.normal(size=(24, 24)) / 5
    (mu1, s1), (mu2, s2) = MF.feature_statistics(torch.from_numpy(a)), MF.feature_statistics(torch.from_numpy(b))
    ours = float(MF.frechet_distance(mu1, s1, mu2, s2))
    theirs = fid_statistics_to_metric(
        {"mu": mu1.numpy(), "sigma": s1.numpy()}, {"mu": mu2.numpy(), "sigma": s2.numpy()}, False
    )["frechet_inception_distance"]
    assert ours == pytest.approx(theirs, rel=1e-6)
