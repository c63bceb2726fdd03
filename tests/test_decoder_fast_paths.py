"""The decoder's fast paths agree with the straightforward formulas they replace (old path kept callable):
SpatialNorm (one 2c-output conv on the small latent, broadcast instead of interpolation, in place without grad),
temporal Conv3d as three 2D convs (:func:`conv3d_as_taps`), sub-pixel upsampling, and a whole decoder against the
frame-by-frame reference decode of ``benchmarks/decoder_speed.py``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ff_lightning.models.layers import SpatialNorm, Upsample, _frame_conv_reference, conv3d_as_taps


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("size", [(8, 8), (16, 8), (6, 5)])  # integer factors 2, (4, 2), and none (fallback)
@pytest.mark.parametrize("grad", [False, True])
def test_spatial_norm_matches_reference(size: tuple[int, int], grad: bool) -> None:
    torch.manual_seed(0)
    norm = SpatialNorm(16, 4, num_groups=4)
    x, zq = torch.randn(3, 16, *size), torch.randn(3, 4, 4, 4)
    if size == (6, 5):
        zq = torch.randn(3, 4, 3, 2)
    with torch.set_grad_enabled(grad):
        ref = norm.forward_reference(x.clone(), zq)
        got = norm(x.clone(), zq)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    assert torch.equal(norm(x, None), norm.forward_reference(x, None))
    if grad:  # the autograd path gives the same gradients
        g_ref = torch.autograd.grad(ref.square().sum(), [*norm.parameters()])
        g_got = torch.autograd.grad(got.square().sum(), [*norm.parameters()])
        for a, b in zip(g_got, g_ref, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kernel", [(3, 1, 1), (3, 3, 3)])
@pytest.mark.parametrize("videos", [1, 2])
@pytest.mark.parametrize("grad", [False, True])
def test_conv3d_as_taps_matches_conv3d(kernel: tuple[int, int, int], videos: int, grad: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(8, 6, kernel, padding=tuple(k // 2 for k in kernel))
    frames = 5
    x = torch.randn(videos * frames, 8, 7, 6)
    with torch.set_grad_enabled(grad):
        ref = _frame_conv_reference(conv, x, frames)
        got = conv3d_as_taps(conv, x, frames)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(conv3d_as_taps(conv, x[:2], 1), conv3d_as_taps(conv, x[:2], 1))
    torch.testing.assert_close(conv3d_as_taps(conv, x, 1), _frame_conv_reference(conv, x, 1), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # in pieces of frames: the same sums as the whole batch
        whole = conv3d_as_taps(conv, x, frames)
        for piece in (1, 2, 4):
            torch.testing.assert_close(conv3d_as_taps(conv, x, frames, piece), whole, atol=1e-6, rtol=1e-6)
    with torch.set_grad_enabled(grad):  # under autograd the pieces are ignored
        torch.testing.assert_close(conv3d_as_taps(conv, x, frames, 2), ref, atol=1e-5, rtol=1e-5)
    if grad:
        g_ref = torch.autograd.grad(ref.square().sum(), [*conv.parameters()])
        g_got = torch.autograd.grad(got.square().sum(), [*conv.parameters()])
        for a, b in zip(g_got, g_ref, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


# sub-pixel path, odd sizes, 4x4 (sub-pixel with enough elements), tiny (reference path)
@pytest.mark.parametrize("kernel", [(3, 1, 1), (3, 3, 3)])
@pytest.mark.parametrize("videos", [1, 2])
def test_conv3d_as_taps_stacked_on_small_maps(kernel: tuple[int, int, int], videos: int) -> None:
    # maps of <= STACKED_MAX_PIXELS pixels without autograd: neighbouring frames stacked as channels, one conv
    from ff_lightning.models.temporal import STACKED_MAX_PIXELS

    torch.manual_seed(0)
    conv = nn.Conv3d(16, 12, kernel, padding=tuple(k // 2 for k in kernel))
    frames = 5
    x = torch.randn(videos * frames, 16, 4, 4)
    assert 16 <= STACKED_MAX_PIXELS
    ref = _frame_conv_reference(conv, x, frames)
    with torch.no_grad():
        for piece in (None, 1, 2, 5):
            torch.testing.assert_close(conv3d_as_taps(conv, x, frames, piece), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(conv3d_as_taps(conv, x, 1), _frame_conv_reference(conv, x, 1), atol=1e-5, rtol=1e-5)
        assert conv3d_as_taps(conv, x[:0], frames, 2).shape == (0, 12, 4, 4)  # no frames: an empty result


@pytest.mark.parametrize("size", [(8, 8), (9, 12), (4, 4), (2, 3)])
@pytest.mark.parametrize("grad", [False, True])
def test_upsample_subpixel_matches_reference(size: tuple[int, int], grad: bool) -> None:
    torch.manual_seed(0)
    up = Upsample(6)
    n = 171 if size == (4, 4) else 2  # 4x4: enough elements in all (16384) for the sub-pixel path
    x = torch.randn(n, 6, *size)
    with torch.set_grad_enabled(grad):
        ref, got = up.forward_reference(x), up(x)
    assert got.shape == (n, 6, 2 * size[0], 2 * size[1])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    if grad:
        g_ref = torch.autograd.grad(ref.square().sum(), [*up.parameters()])
        g_got = torch.autograd.grad(got.square().sum(), [*up.parameters()])
        for a, b in zip(g_got, g_ref, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("variant", ["image", "conv3x3x3_attn", "resblock_attn", "2d_to_3d"])
def test_decoder_matches_frame_by_frame_reference(variant: str) -> None:
    from conftest import load_benchmark

    bench = load_benchmark("decoder_speed")
    model = bench.make_model("tiny", variant, seed=0, device="cpu")  # temporal weights non-zero
    lat = bench.make_latents(model, 32, 5, seed=1, device="cpu")
    with torch.no_grad():
        fast = model.decode(lat, num_frames=5)
    ref = bench.reference_decode(model, lat, 5)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the patches are undone: a plain decode again
        assert torch.equal(model.decode(lat, num_frames=5), fast)


@pytest.mark.parametrize("variant", ["image", "conv3x1x1_attn", "resblock_attn", "2d_to_3d"])
def test_decoder_in_pieces_matches_whole_batch(monkeypatch: pytest.MonkeyPatch, variant: str) -> None:
    from conftest import load_benchmark

    from ff_lightning.models import layers

    bench = load_benchmark("decoder_speed")
    model = bench.make_model("tiny", variant, seed=0, device="cpu")
    lat = bench.make_latents(model, 32, 5, seed=1, device="cpu")
    with torch.no_grad():
        whole = model.decode(lat, num_frames=5)  # tiny frames: every per-frame op in one piece
        monkeypatch.setattr(layers, "PIECE_ELEMENTS", 1)  # one frame per piece
        pieces = model.decode(lat, num_frames=5)
    torch.testing.assert_close(pieces, whole, atol=1e-5, rtol=1e-5)
    out = layers.in_pieces(lambda a, b: a * 2 + b, torch.ones(3, 2), torch.arange(3.0)[:, None].expand(3, 2))
    assert torch.equal(out, torch.tensor([[2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]))


@pytest.mark.parametrize("variant", ["image", "conv3x3x3_attn", "resblock_attn"])
def test_decoder_no_frames(variant: str) -> None:
    from conftest import load_benchmark

    bench = load_benchmark("decoder_speed")
    model = bench.make_model("small", variant, seed=0, device="cpu")
    lat = bench.make_latents(model, 32, 4, seed=1, device="cpu")[:0]
    with torch.no_grad():
        assert model.decode(lat, num_frames=4).shape == (0, 3, 32, 32)


def test_pieces_written_over_the_input_and_added_into_the_residual(monkeypatch: pytest.MonkeyPatch) -> None:
    from ff_lightning.models import layers

    monkeypatch.setattr(layers, "PIECE_ELEMENTS", 4)  # two rows of 2 x 2 per piece
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 1, 3, padding=1)
    x, h = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    with torch.no_grad():
        want = conv(x)
        own = x.clone()
        got = layers.in_pieces(conv, own, into_x=True)  # each piece read before it is overwritten
        assert got is own
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
        kept = x.clone()
        assert layers.in_pieces(conv, kept) is not kept and torch.equal(kept, x)  # default: x untouched
        shortcut = nn.Conv2d(1, 1, 1)
        fresh = h.clone()
        res = layers._residual_of(shortcut, x, fresh)  # fn(x) + h, fn run on pieces added into h
        assert res is fresh
        torch.testing.assert_close(res, shortcut(x) + h, atol=1e-6, rtol=1e-6)
    with torch.enable_grad():  # under autograd: one call, no in-place writes
        xg = x.clone().requires_grad_()
        out = layers._residual_of(shortcut, xg, h.clone())
        torch.testing.assert_close(out, shortcut(x) + h)
        assert out.requires_grad


@pytest.mark.parametrize("videos", [1, 2])  # one video: the tap convs under autograd; two: Conv3d there
@pytest.mark.parametrize("kernel", [(1, 1, 1), (3, 1, 1), (3, 3, 3), (1, 3, 3), (2, 1, 1)])
def test_conv3d_frames_matches_conv3d_with_grad(kernel: tuple[int, int, int], videos: int) -> None:
    # the UNets' temporal convs (keyframe blocks: 1x1x1 and 3x1x1 stages) run through conv3d_frames under autograd
    from ff_lightning.models.temporal import conv3d_frames, fold_frames, unfold_frames

    torch.manual_seed(0)
    pad = tuple(k // 2 for k in kernel) if kernel != (2, 1, 1) else (1, 0, 0)
    conv = nn.Conv3d(6, 4, kernel, padding=pad)
    x = torch.randn(videos * 4, 6, 5, 5, requires_grad=True)
    ref = fold_frames(conv(unfold_frames(x, 4))) if kernel != (2, 1, 1) else None
    got = conv3d_frames(conv, x, 4)
    if ref is None:  # not a "same" conv: the generic path, same result as calling the Conv3d
        assert got.shape == (videos * 5, 4, 5, 5)
        return
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    g_ref = torch.autograd.grad(ref.square().sum(), [x, *conv.parameters()])
    g_got = torch.autograd.grad(got.square().sum(), [x, *conv.parameters()])
    for a, b in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
