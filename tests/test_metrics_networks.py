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


def _smooth_frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 frames ``(T, h, w, 3)``: smooth random images (upsampled noise), like decoded video."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(t, 3, max(2, h // 8), max(2, w // 8), generator=g) * 255
    up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return up.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_fvd_preprocessing_is_the_same_for_real_and_generated() -> None:
    """One video as a real clip (decoded uint8 -> the data layer's resize + crop) and as a generated video (at its
    native non-square size, in [-1, 1]) gives the identical I3D input, hence identical features and FVD 0."""
    from ff_lightning.data.transforms import frames_to_clip

    size = 32  # the protocol uses 224; small for speed, same code path
    frames = _smooth_frames(16, 48, 80)
    real_clip, _ = frames_to_clip(frames, (size, size))  # what ClipDataset gives the evaluator
    generated = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (T, 3, 48, 80)
    x_real = preprocess_i3d(real_clip.unsqueeze(0), size=size)
    x_gen = preprocess_i3d(generated.unsqueeze(0), size=size)
    assert x_real.shape == x_gen.shape == (1, 3, 16, size, size)
    torch.testing.assert_close(x_gen, x_real, rtol=0, atol=1e-6)
    # 8-bit levels: every value is u / 127.5 - 1 for an integer u in 0..255
    u = (x_gen + 1) * 127.5
    torch.testing.assert_close(u, u.round(), rtol=0, atol=1e-4)
    # a centre crop, not a stretch: the middle column of the input survives, the outer columns do not
    squashed = F.interpolate(generated, size=(size, size), mode="bilinear", align_corners=False)
    assert (x_gen[0, :, :, :, 0] - squashed[:, :, :, 0].permute(1, 0, 2)).abs().max() > 0.05
    torch.manual_seed(0)
    model = I3D().eval()
    with torch.no_grad():
        f_real, f_gen = model(torch.cat([x_real, x_real])), model(torch.cat([x_gen, x_gen]))
    torch.testing.assert_close(f_gen, f_real, rtol=0, atol=1e-5)


def test_fvd_preprocessing_quantises_generated_frames_to_8_bit() -> None:
    """Sub-8-bit differences (float noise below half a level) vanish, as in a saved video."""
    frames = torch.from_numpy(_smooth_frames(16, 32, 32, seed=1)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    jitter = (torch.rand(frames.shape, generator=torch.Generator().manual_seed(2)) - 0.5) * (0.9 / 127.5)
    a = preprocess_i3d(frames.unsqueeze(0), size=32)
    b = preprocess_i3d((frames + jitter).unsqueeze(0), size=32)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _conv3d_same_reference(x: np.ndarray, w: np.ndarray, stride: tuple[int, int, int]) -> np.ndarray:
    """Direct TF-"SAME" 3-D convolution in numpy (float64): output size ceil(n / s); the padding total
    ``max((out - 1) * s + k - n, 0)`` split with the smaller half in front (TF's rule). x (C, T, H, W), w (O, C, k)."""
    c, *n = x.shape
    k = w.shape[2:]
    outs, fronts, padded = [], [], []
    for ni, ki, si in zip(n, k, stride):
        out = -(-ni // si)
        total = max((out - 1) * si + ki - ni, 0)
        outs.append(out)
        fronts.append(total // 2)
        padded.append((total // 2, total - total // 2))
    xp = np.pad(x, [(0, 0), *padded])
    y = np.zeros((w.shape[0], *outs))
    for t in range(outs[0]):
        for i in range(outs[1]):
            for j in range(outs[2]):
                patch = xp[
                    :,
                    t * stride[0] : t * stride[0] + k[0],
                    i * stride[1] : i * stride[1] + k[1],
                    j * stride[2] : j * stride[2] + k[2],
                ]
                y[:, t, i, j] = np.tensordot(w, patch, axes=([1, 2, 3, 4], [0, 1, 2, 3]))
    return y


def test_i3d_unit_matches_a_direct_same_convolution() -> None:
    """Unit3D (conv with TF "SAME" padding, no BN) against a direct numpy convolution, odd and even sizes, stride 2."""
    from ff_lightning.metrics.i3d import MaxPoolSame, Unit3D

    torch.manual_seed(3)
    for shape, kernel, stride in (((2, 5, 9, 8), (3, 7, 7), (2, 2, 2)), ((2, 4, 6, 7), (3, 3, 3), (1, 1, 1))):
        unit = Unit3D(2, 3, kernel, stride, bn=False, relu=False).double().eval()
        x = torch.randn(1, *shape, dtype=torch.float64)
        want = _conv3d_same_reference(x[0].numpy(), unit.conv3d.weight.detach().numpy(), stride)
        np.testing.assert_allclose(unit(x)[0].detach().numpy(), want, rtol=1e-10, atol=1e-10)
    # SAME max pool (1x3x3, stride 1x2x2) on post-ReLU values: out = ceil(n / s), window clipped at the border
    x = torch.rand(1, 1, 2, 7, 8, dtype=torch.float64)
    y = MaxPoolSame((1, 3, 3), (1, 2, 2))(x)[0, 0].numpy()
    xa = x[0, 0].numpy()
    assert y.shape == (2, 4, 4)
    for i in range(4):
        for j in range(4):
            # total padding for H=7: (4-1)*2+3-7 = 2 -> 1 in front; W=8: (4-1)*2+3-8 = 1 -> 0 in front
            r0, c0 = 2 * i - 1, 2 * j
            ref = xa[:, max(r0, 0) : r0 + 3, max(c0, 0) : c0 + 3].max(axis=(1, 2))
            np.testing.assert_allclose(y[:, i, j], ref)


def test_i3d_logits_equal_per_position_logits_averaged() -> None:
    """The reference computes logits at every 2x7x7 pooled position and averages them; ours averages first."""
    torch.manual_seed(4)
    model = I3D().double().eval()
    x = torch.rand(1, 3, 16, 64, 64, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        h = x
        for name in model.order:
            h = getattr(model, name)(h)
        k = (min(2, h.shape[2]), min(7, h.shape[3]), min(7, h.shape[4]))
        per_pos = model.logits.conv3d(F.avg_pool3d(h, k, stride=1))  # (1, 400, t, h, w)
        want = per_pos.mean(dim=(2, 3, 4))
        got = model.features(x)["logits"]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_c3d_forward_matches_a_reference_written_from_the_caffe_layout() -> None:
    """C3D against a forward written independently from the Caffe prototxt: explicit -inf padding of odd maps
    before floor pooling (Caffe pools with ceil), fc6 on the (512, 1, 4, 4) map flattened channel-major."""
    torch.manual_seed(5)
    model = C3D().eval()
    x = torch.randn(1, 3, 16, 112, 112)
    sd = model.state_dict()
    h = x
    for name, pool in (
        ("conv1a", (1, 2, 2)),
        ("conv2a", (2, 2, 2)),
        ("conv3a", None),
        ("conv3b", (2, 2, 2)),
        ("conv4a", None),
        ("conv4b", (2, 2, 2)),
        ("conv5a", None),
        ("conv5b", (2, 2, 2)),
    ):
        h = F.relu(F.conv3d(h, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1))
        if pool is not None:
            pads = []
            for dim, k in zip((4, 3, 2), pool[::-1]):
                pads += [0, (-h.shape[dim]) % k]
            h = F.max_pool3d(F.pad(h, pads, value=float("-inf")), pool, pool)
    assert h.shape == (1, 512, 1, 4, 4)
    h = F.relu(F.linear(h.reshape(1, -1), sd["fc6.weight"], sd["fc6.bias"]))
    fc7 = F.relu(F.linear(h, sd["fc7.weight"], sd["fc7.bias"]))
    want = F.linear(fc7, sd["fc8.weight"], sd["fc8.bias"])
    with torch.no_grad():
        got = model.features(x)
    torch.testing.assert_close(got["fc7"], fc7, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["logits"], want, rtol=1e-5, atol=1e-6)
