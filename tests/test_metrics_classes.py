"""torchmetrics classes: agreement with the functions, split updates, state merging (the DDP reduction)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torchmetrics import Metric

from ff_lightning.metrics import (
    CLIPSimilarity,
    FrechetDistance,
    InceptionScore,
    TemporalConsistency,
    VideoLPIPS,
    VideoMSE,
    VideoPSNR,
    VideoSSIM,
)
from ff_lightning.metrics import functional as MF


def _videos(seed: int = 0, b: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, 3, 3, 16, 16, generator=g) * 2 - 1
    pred = (target + 0.2 * torch.randn(target.shape, generator=g)).clamp(-1, 1)
    return pred, target


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float):
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12), k
        else:
            assert a[k] == b[k], k


def _trunk_state() -> dict[str, torch.Tensor]:
    from test_metrics_lpips import _random_trunk_state

    return _random_trunk_state(0)


PIXEL: dict[str, tuple[Callable[[], Metric], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "psnr": (VideoPSNR, lambda p, t: MF.psnr(MF.to_unit(p), MF.to_unit(t), reduction="none")),
    "ssim": (VideoSSIM, lambda p, t: MF.ssim(MF.to_unit(p), MF.to_unit(t), reduction="none")),
    "mse": (VideoMSE, lambda p, t: MF.mse(MF.to_unit(p), MF.to_unit(t), reduction="none")),
    "temporal": (TemporalConsistency, lambda p, t: MF.temporal_consistency(MF.to_unit(p), MF.to_unit(t), "none")),
}


@pytest.mark.parametrize("name", sorted(PIXEL))
def test_pixel_metrics_split_merge_and_reference(name: str) -> None:
    cls, ref = PIXEL[name]
    pred, target = _videos()
    single = cls()
    single.update(pred, target)
    out = single.compute()
    want = ref(pred, target)
    assert out["value"] == pytest.approx(want.mean().item(), rel=1e-12) and out["n"] == 6
    assert out["ci_low"] <= out["value"] <= out["ci_high"]
    torch.testing.assert_close(single.per_sample(), want)

    split = cls()
    for i in range(0, 6, 2):
        split.update(pred[i : i + 2], target[i : i + 2])
    _same(split.compute(), out)

    a, b = cls(), cls()
    a.update(pred[:4], target[:4])
    b.update(pred[4:], target[4:])
    a.merge_state(b)  # the same reduction DDP applies ("cat" of per-sample values)
    _same(a.compute(), out)

    single.reset()
    with pytest.warns(UserWarning, match="before the ``update``"), pytest.raises(ValueError, match="before any update"):
        single.compute()


def test_input_range_none_uses_raw_values() -> None:
    pred, target = _videos(1)
    m = VideoPSNR(data_range=2.0, input_range=None)
    m.update(pred, target)
    assert m.compute()["value"] == pytest.approx(MF.psnr(pred, target, data_range=2.0).item(), rel=1e-12)


def test_video_lpips_class_keeps_network_out_of_state() -> None:
    state = _trunk_state()
    pred, target = _videos(2, b=3)
    pred, target = pred.repeat_interleave(2, -1).repeat_interleave(2, -2), target.repeat_interleave(2, -1)
    target = target.repeat_interleave(2, -2)  # 32x32 frames
    m = VideoLPIPS(backbone_state_dict=state)
    m.update(pred[:2], target[:2])
    m.update(pred[2:], target[2:])
    out = m.compute()
    want = MF.lpips(pred, target, reduction="none", backbone_state_dict=state)
    assert out["value"] == pytest.approx(want.mean().item(), rel=1e-5) and out["n"] == 3  # float32, other batching
    assert {w["name"] for w in out["weights"]} == {"lpips_alex_v0.1", "alexnet"}
    assert not any("trunk" in k or "heads" in k for k in m.state_dict())
    assert not list(m.parameters())


def test_frechet_distance_class() -> None:
    g = torch.Generator().manual_seed(3)
    real, fake = torch.randn(40, 8, generator=g), torch.randn(30, 8, generator=g) * 1.5 + 0.3
    m = FrechetDistance(num_features=8)
    for chunk in real.split(7):
        m.update(chunk, real=True)
    for chunk in fake.split(11):
        m.update(chunk, real=False)
    out = m.compute()
    mu_r, s_r = MF.feature_statistics(real)
    mu_f, s_f = MF.feature_statistics(fake)
    assert out["value"] == pytest.approx(MF.frechet_distance(mu_r, s_r, mu_f, s_f), rel=1e-9)
    assert (out["n_real"], out["n_fake"]) == (40, 30) and out["weights"] == []

    a, b = FrechetDistance(num_features=8), FrechetDistance(num_features=8)
    a.update(real[:25], real=True)
    a.update(fake[:5], real=False)
    b.update(real[25:], real=True)
    b.update(fake[5:], real=False)
    a.merge_state(b)
    assert a.compute()["value"] == pytest.approx(out["value"], rel=1e-9)

    proj = torch.randn(3, 8, generator=g)
    with_extractor = FrechetDistance(num_features=8, feature_extractor=lambda x: x.flatten(1) @ proj)
    with_extractor.update(real[:, :3].reshape(40, 3, 1), real=True)
    with_extractor.update(fake[:, :3].reshape(30, 3, 1), real=False)
    mu_r, s_r = MF.feature_statistics(real[:, :3] @ proj)
    mu_f, s_f = MF.feature_statistics(fake[:, :3] @ proj)
    assert with_extractor.compute()["value"] == pytest.approx(MF.frechet_distance(mu_r, s_r, mu_f, s_f), rel=1e-9)
    with pytest.raises(ValueError, match="8-d"):
        FrechetDistance(num_features=8).update(real[:, :4], real=True)


def test_inception_score_class() -> None:
    logits = torch.randn(50, 10, generator=torch.Generator().manual_seed(4)) * 3
    m = InceptionScore(splits=5)
    for chunk in logits.split(8):
        m.update(chunk)
    out = m.compute()
    mean, std = MF.inception_score(logits, splits=5)
    assert (out["value"], out["std"], out["n"]) == (pytest.approx(mean), pytest.approx(std), 50)
    a, b = InceptionScore(splits=1), InceptionScore(splits=1)
    a.update(logits[:20])
    b.update(logits[20:])
    a.merge_state(b)
    assert a.compute()["value"] == pytest.approx(MF.inception_score(logits, splits=1)[0], rel=1e-12)
    clf = InceptionScore(splits=1, classifier=lambda x: x * 2)
    clf.update(logits)
    assert clf.compute()["value"] == pytest.approx(MF.inception_score(logits * 2, splits=1)[0])


def test_clip_similarity_class() -> None:
    g = torch.Generator().manual_seed(5)
    txt = torch.randn(5, 16, generator=g)
    m = CLIPSimilarity(weights=[{"name": "ViT-B-32", "source": "test"}])
    m.update(txt.unsqueeze(1).repeat(1, 4, 1), txt)
    out = m.compute()
    assert out["value"] == pytest.approx(1.0) and out["n"] == 5 and out["ci_low"] == pytest.approx(1.0)
    assert out["weights"][0]["name"] == "ViT-B-32"
    img = torch.randn(5, 4, 16, generator=g)
    m.reset()
    m.update(img[:2], txt[:2])
    m.update(img[2:], txt[2:])
    assert m.compute()["value"] == pytest.approx(MF.clip_similarity(img, txt).item(), rel=1e-12)


def test_forward_returns_batch_value_and_accumulates() -> None:
    pred, target = _videos(6)
    m = VideoMSE()
    batch = m(pred[:3], target[:3])
    assert batch["n"] == 3
    m(pred[3:], target[3:])
    assert m.compute()["n"] == 6
