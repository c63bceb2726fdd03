"""Evaluator networks: C3D and I3D shapes and loading (random weights), the packaged Inception (real weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ff_lightning.metrics.c3d import (
    C3D,
    C3D_CHANNEL_MEAN_BGR,
    c3d_state_dict_from_chainer,
    load_c3d_mean,
    preprocess_c3d,
)
from ff_lightning.metrics.i3d import I3D, load_i3d, preprocess_i3d
from ff_lightning.metrics.inception import InceptionFeatures, preprocess_inception, resize_tf_bilinear
from ff_lightning.metrics.weights import WeightsUnavailable


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("FF_WEIGHTS_DIR", raising=False)


def test_c3d_forward_shapes() -> None:
    torch.manual_seed(0)
    model = C3D().eval()
    video = torch.rand(1, 16, 3, 64, 80) * 2 - 1
    x = preprocess_c3d(video)
    assert x.shape == (1, 3, 16, 112, 112)
    with torch.no_grad():
        out = model.features(x)
    assert out["logits"].shape == (1, 101) and out["fc7"].shape == (1, 4096)


def test_c3d_preprocessing_bgr_scale_mean(tmp_path: Path) -> None:
    rgb = torch.tensor([-1.0, 0.0, 0.5]).view(1, 1, 3, 1, 1).expand(2, 17, 3, 112, 112)
    x = preprocess_c3d(rgb)  # already 112x112: no resize; 17 frames -> first 16
    bgr_scaled = torch.tensor([0.5, 0.0, -1.0]) * 128 + 128
    want = bgr_scaled - torch.tensor(C3D_CHANNEL_MEAN_BGR)
    torch.testing.assert_close(x[0, :, 0, 0, 0], want)
    assert x.shape == (2, 3, 16, 112, 112)
    # per-pixel mean clip from a TGANv2-style mean file, cropped [8:120, 8:120]
    mean = np.random.default_rng(0).uniform(80, 120, size=(3, 16, 128, 171)).astype(np.float32)
    f = tmp_path / "mean2.npz"
    np.savez(f, mean=mean)
    clip = load_c3d_mean(f)
    assert clip.shape == (3, 16, 112, 112)
    np.testing.assert_array_equal(clip.numpy(), mean[:, :, 8:120, 8:120])
    torch.testing.assert_close(preprocess_c3d(rgb, clip)[0], bgr_scaled.view(3, 1, 1, 1) - clip)
    with pytest.raises(ValueError, match="16 frames"):
        preprocess_c3d(rgb[:, :8])


def test_c3d_chainer_key_mapping() -> None:
    arrays = {"conv1a/W": np.ones((64, 3, 3, 3, 3)), "predictor/fc8/b": np.zeros(101), "pre/W": np.ones(1)}
    sd = c3d_state_dict_from_chainer(arrays)
    assert set(sd) == {"conv1a.weight", "fc8.bias"} and sd["conv1a.weight"].dtype == torch.float32
    with torch.device("meta"):
        names = set(C3D().state_dict())
    assert set(sd) <= names


def test_c3d_missing_weights_message() -> None:
    from ff_lightning.metrics.c3d import load_c3d

    with pytest.raises(WeightsUnavailable, match="conv3d_deepnetA_ucf.npz"):
        load_c3d()


def test_i3d_forward_shapes_small_input() -> None:
    torch.manual_seed(0)
    model = I3D().eval()
    x = preprocess_i3d(torch.rand(1, 16, 3, 40, 48) * 2 - 1, size=48)  # the real input is 224x224; small for speed
    assert x.shape == (1, 3, 16, 48, 48)
    with torch.no_grad():
        out = model.features(x)
    assert out["pool"].shape == (1, 1024) and out["logits"].shape == (1, 400)
    torch.testing.assert_close(out["logits"], model.logits.conv3d(out["pool"][..., None, None, None]).flatten(1))
    assert preprocess_i3d(torch.zeros(1, 20, 3, 8, 8)).shape == (1, 3, 16, 224, 224)


def test_i3d_loads_pytorch_port_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = I3D()
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}  # old checkpoints
    assert "Conv3d_1a_7x7.conv3d.weight" in state and "Mixed_3b.b1b.bn.running_mean" in state
    assert "logits.conv3d.bias" in state
    f = tmp_path / "rgb_imagenet.pt"
    torch.save(state, f)
    model = load_i3d(f)
    assert model.weights_info[0]["path"] == str(f.resolve()) and not model.training
    torch.testing.assert_close(model.state_dict()["Mixed_5c.b0.conv3d.weight"], state["Mixed_5c.b0.conv3d.weight"])
    torch.save({**state, "extra.weight": torch.zeros(1)}, f)
    with pytest.raises(RuntimeError, match="unexpected"), pytest.warns(UserWarning, match="changed since first use"):
        load_i3d(f)


def _grid_sample_tf_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Independent formulation: sample source pixel j * in / out with grid_sample (align_corners=True coordinates)."""
    n, _, h, w = x.shape
    ys = torch.arange(size[0], dtype=torch.float64) * h / size[0]
    xs = torch.arange(size[1], dtype=torch.float64) * w / size[1]
    gy = (ys / (h - 1)) * 2 - 1
    gx = (xs / (w - 1)) * 2 - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1).unsqueeze(0).expand(n, -1, -1, -1)
    return F.grid_sample(x.double(), grid, mode="bilinear", padding_mode="border", align_corners=True).float()


def test_tf_bilinear_resize_matches_reference() -> None:
    x = torch.rand(2, 3, 17, 23)
    for size in ((299, 299), (8, 11)):
        torch.testing.assert_close(resize_tf_bilinear(x, size), _grid_sample_tf_resize(x, size), rtol=1e-5, atol=1e-5)


def test_inception_preprocessing_range() -> None:
    x = torch.tensor([-1.0, 1.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 299, 299)
    y = preprocess_inception(x)
    torch.testing.assert_close(y[0, :, 0, 0], torch.tensor([-1.0, 0.9921875, 0.0]))  # u/128 - 1, u = 0, 255, 128


def test_packaged_inception_gives_2048_features() -> None:
    """Real packaged weights, offline. About 0.3-1 s per 2-image batch on an idle 2-core CPU."""
    model = InceptionFeatures()
    assert model.weights_info[0]["pinned"] is True
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.jit.optimized_execution(False):  # skip the profiling executor's first-call work (results identical)
        feats = model(images)
        video_feats = model(images[:1].unsqueeze(1))  # (B, T, 3, H, W) -> B * T frames
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all() and (feats >= 0).all()  # post-ReLU pool
    assert feats.std(dim=1).min() > 0 and not torch.allclose(feats[0], feats[1])
    torch.testing.assert_close(video_feats, feats[:1], rtol=1e-4, atol=1e-4)
