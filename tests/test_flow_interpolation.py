"""Flow-based interpolation arm: warping against a numpy reference, Farneback on synthetic translations, occlusion
weights on a synthetic occlusion, frame counts equal to the diffusion interpolator's, latent-space mode, RAFT loading."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ff_lightning.diffusion import NoiseSchedule, SamplingSchedule
from ff_lightning.models.flow_interpolation import (
    RAFT_SMALL_FILE,
    FarnebackFlow,
    FlowInterpolator,
    backward_warp,
    build_flow_interpolator,
    flow_visibility,
    resize_flow,
)
from ff_lightning.models.interpolation import interpolation_unet_from_t2i
from ff_lightning.models.interpolation_pipeline import FusionFramesMethod, SamplingOptions, interpolate, output_frames
from ff_lightning.models.unet import UNET_PRESETS, KandinskyUNet
from ff_lightning.registry import build, param_counts

pytest.importorskip("cv2")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _texture(size: int, seed: int = 0) -> torch.Tensor:
    """A smooth random RGB texture ``(1, 3, size, size)`` in [-1, 1] (bicubic upsampling of coarse noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size // 4, size // 4, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def _translated(big: torch.Tensor, dx: int, dy: int, size: int = 64, margin: int = 16) -> torch.Tensor:
    """The window of ``big`` whose content has moved by ``(dx, dy)`` pixels (right / down) against ``dx = dy = 0``."""
    return big[..., margin - dy : margin - dy + size, margin - dx : margin - dx + size]


INTERIOR = (slice(None), slice(None), slice(8, -8), slice(8, -8))


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b)[INTERIOR].abs().mean())


def test_exact_flow_warp_matches_numpy_reference_for_integer_shifts() -> None:
    g = torch.Generator().manual_seed(1)
    img = torch.randn(2, 3, 9, 11, generator=g)
    flow = torch.randint(-3, 4, (2, 2, 9, 11), generator=g).float()
    out = backward_warp(img, flow).numpy()
    a, f = img.numpy(), flow.numpy().astype(int)
    ref = np.empty_like(a)
    for n in range(2):
        for y in range(9):
            for x in range(11):
                sy = min(max(y + f[n, 1, y, x], 0), 8)  # border padding: clamp to the edge
                sx = min(max(x + f[n, 0, y, x], 0), 10)
                ref[n, :, y, x] = a[n, :, sy, sx]
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_resize_flow_scales_vectors_by_the_size_ratio() -> None:
    flow = torch.stack([torch.full((16, 32), 4.0), torch.full((16, 32), -2.0)])[None]
    small = resize_flow(flow, (4, 8))
    assert small.shape == (1, 2, 4, 8)
    torch.testing.assert_close(small[0, 0], torch.full((4, 8), 1.0))
    torch.testing.assert_close(small[0, 1], torch.full((4, 8), -0.5))


def test_farneback_flow_recovers_a_translation() -> None:
    big = _texture(96)
    f0, f1 = _translated(big, 0, 0), _translated(big, 4, 2)
    flow = FarnebackFlow()(f0, f1)
    assert flow.shape == (1, 2, 64, 64)
    mean = flow[INTERIOR].mean(dim=(2, 3))[0]
    torch.testing.assert_close(mean, torch.tensor([4.0, 2.0]), atol=0.1, rtol=0)
    recovered = backward_warp(f1, flow)  # f1(p + F01(p)) ~ f0(p)
    assert _err(recovered, f0) < 0.3 * _err(f1, f0)


def test_flow_interpolator_middle_frame_of_a_translation() -> None:
    big = _texture(96, seed=2)
    f0, f1 = _translated(big, 0, 0), _translated(big, 4, 2)
    seq = FlowInterpolator(FarnebackFlow())(torch.stack([f0, f1], dim=1))  # (1, 5, 3, 64, 64)
    assert seq.shape == (1, 5, 3, 64, 64)
    torch.testing.assert_close(seq[:, 0], f0)
    torch.testing.assert_close(seq[:, 4], f1)
    truth = _translated(big, 2, 1)  # t = 1/2 of a (4, 2) translation
    err = _err(seq[:, 2], truth)
    assert err < 0.3 * _err(f0, truth)  # frame-copy baseline
    assert err < 0.3 * _err((f0 + f1) / 2, truth)  # and a linear blend


def _occlusion_flows(h: int = 24, w: int = 40, a: int = 8, size: int = 8, d: int = 12) -> tuple:
    """A ``size`` square (rows 8..16) at columns ``a..a+size`` in frame 0 moves right by ``d`` over a static
    background: the exact flows ``F01`` (d on the square) and ``F10`` (-d on the moved square)."""
    f01, f10 = torch.zeros(1, 2, h, w), torch.zeros(1, 2, h, w)
    rows = slice(8, 8 + size)
    f01[0, 0, rows, a : a + size] = d
    f10[0, 0, rows, a + d : a + d + size] = -d
    return f01, f10, rows


def test_occlusion_weights_go_to_the_visible_side() -> None:
    a, size, d = 8, 8, 12
    f01, f10, rows = _occlusion_flows(a=a, size=size, d=d)
    v0, v1 = flow_visibility(f01, f10), flow_visibility(f10, f01)
    hidden_in_1 = (rows, slice(a + d, a + d + size))  # background of frame 0 that the square covers in frame 1
    revealed_in_1 = (rows, slice(a, a + size))  # background of frame 1 that the square covered in frame 0
    assert float(v0[0, 0][hidden_in_1].max()) < 0.05
    assert float(v1[0, 0][revealed_in_1].max()) < 0.05
    assert float(v0[0, 0][:, :a].min()) > 0.95 and float(v0[0, 0][rows, a : a + size].min()) > 0.95
    # the blend weight of frame 1 at t = 1/2: constant frames 0 and 1 make the output equal to that weight
    arm = FlowInterpolator(FarnebackFlow())
    w1 = arm.middle_frames(torch.zeros(1, 1, 24, 40), torch.ones(1, 1, 24, 40), f01, f10)[0, 1, 0]
    assert float(w1[hidden_in_1].min()) > 0.9  # frame 0's sample there is occluded in frame 1: frame 1 wins
    assert float(w1[revealed_in_1].max()) < 0.1  # frame 1's sample there was occluded in frame 0: frame 0 wins
    torch.testing.assert_close(w1[:4], torch.full((4, 40), 0.5))  # no motion, both visible: the linear blend
    plain = FlowInterpolator(FarnebackFlow(), occlusion=False)
    w1_plain = plain.middle_frames(torch.zeros(1, 1, 24, 40), torch.ones(1, 1, 24, 40), f01, f10)[0, 1, 0]
    torch.testing.assert_close(w1_plain, torch.full((24, 40), 0.5))


@pytest.fixture(scope="module")
def fusionframes() -> FusionFramesMethod:
    torch.manual_seed(0)
    image = KandinskyUNet(**{**UNET_PRESETS["tiny"], "num_channels": 3, "out_channels": 3})
    return FusionFramesMethod(interpolation_unet_from_t2i(image))


@pytest.mark.parametrize("k, passes", [(2, 1), (3, 1), (5, 1), (2, 2), (3, 2)])
def test_frame_count_equals_the_diffusion_interpolators(fusionframes: FusionFramesMethod, k: int, passes: int) -> None:
    keys = torch.rand(1, k, 3, 16, 16) * 2 - 1
    flow_seq = FlowInterpolator(FarnebackFlow())(keys, passes=passes)
    null = torch.zeros(int(fusionframes.unet.config["context_dim"]))
    sampling = SamplingOptions(SamplingSchedule.subsample(NoiseSchedule.cosine(1000), 1))
    diff_seq = interpolate(fusionframes, keys, null, sampling, passes=passes, guidance_weight=0.0)
    assert flow_seq.shape == diff_seq.shape == (1, output_frames(k, passes), 3, 16, 16)
    step = 4**passes
    torch.testing.assert_close(flow_seq[:, ::step], keys)  # keyframes kept, at the same positions
    if passes == 1:  # the diffusion arms' interpolate_once arguments are accepted (and ignored): arms swap
        once = FlowInterpolator(FarnebackFlow()).interpolate_once(
            keys, null, sampling, skip_frames=1, guidance_weight=0.25
        )
        torch.testing.assert_close(once, flow_seq)


def _space_to_depth(frames: torch.Tensor) -> torch.Tensor:
    return F.pixel_unshuffle(frames, 2)  # (N, 3, H, W) -> (N, 12, H/2, W/2)


def test_latent_space_mode_shapes_and_translation() -> None:
    big = _texture(96, seed=3)
    f0, f1 = _translated(big, 0, 0), _translated(big, 4, 4)  # middle frame at (2, 2) px = (1, 1) latent cells
    latents = torch.stack([_space_to_depth(f0), _space_to_depth(f1)], dim=1)  # (1, 2, 12, 32, 32)
    decode = lambda z: F.pixel_shuffle(z, 2)  # noqa: E731 - an exact decoder for the space-to-depth "latents"
    arm = FlowInterpolator(FarnebackFlow(), space="latent", flow_from="decoded")
    seq = arm(latents, decode=decode)
    assert seq.shape == (1, 5, 12, 32, 32)
    truth = _translated(big, 2, 2)
    assert _err(decode(seq[:, 2]), truth) < 0.3 * _err(f0, truth)
    from_latents = FlowInterpolator(FarnebackFlow(), space="latent", flow_from="latent")(latents)
    assert _err(decode(from_latents[:, 2]), truth) < 0.3 * _err(f0, truth)
    with pytest.raises(ValueError, match="needs `decode`"):
        arm(latents)
    vis = FlowInterpolator(FarnebackFlow(), space="latent", flow_from="latent")
    assert vis(torch.randn(2, 3, 4, 8, 8), passes=2).shape == (2, output_frames(3, 2), 4, 8, 8)


def test_registry_parameter_counts() -> None:
    assert param_counts(build("interpolation_arm", "flow_farneback"))["total"] == 0
    assert param_counts(build("interpolation_arm", "flow_farneback_latent"))["total"] == 0
    raft = param_counts(build("interpolation_arm", "flow_raft", device="meta"))
    assert raft["total"] > 900_000 and raft["trainable"] == 0  # frozen: used for inference only


def test_raft_loads_a_local_weights_file_and_names_a_missing_one(tmp_path: Path) -> None:
    from torchvision.models.optical_flow import raft_small

    missing = build_flow_interpolator("raft", weights=tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match=RAFT_SMALL_FILE):
        missing(torch.zeros(1, 2, 3, 16, 16))
    torch.manual_seed(0)
    state = raft_small(weights=None).state_dict()
    torch.save(state, tmp_path / RAFT_SMALL_FILE)
    arm = build_flow_interpolator("raft", weights=tmp_path, num_flow_updates=1)  # a folder holding the file
    out = arm(torch.rand(1, 2, 3, 16, 16) * 2 - 1)
    assert out.shape == (1, 5, 3, 16, 16) and bool(out.isfinite().all())
    loaded = arm.estimator.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
