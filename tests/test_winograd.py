"""Winograd F(2x2, 3x3) convolution (ff_lightning/models/winograd.py) against direct convolutions computed in float64,
and its use in the decoder's no-autograd temporal convs (whole and streamed decode)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ff_lightning.models.stream_decode as stream_decode
import ff_lightning.models.temporal as temporal
from ff_lightning.models.temporal import conv3d_as_taps, winograd_pays
from ff_lightning.models.winograd import winograd_applies, winograd_conv, winograd_weight


def _conv3d_f64(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, t: int) -> torch.Tensor:
    """The "same" Conv3d over each video of folded ``x`` ``(b t) c h w``, in float64 on the b c t h w layout."""
    video = x.double().unflatten(0, (-1, t)).transpose(1, 2)  # b c t h w
    b64 = None if bias is None else bias.double()
    out = F.conv3d(video, weight.double(), b64, padding=1)
    return out.transpose(1, 2).flatten(0, 1)  # (b t) o h w


def test_weight_transform_is_g_w_gt() -> None:
    torch.manual_seed(0)
    w = torch.randn(3, 2, 3, 3, 3, dtype=torch.float64)
    g = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1.0]], dtype=torch.float64)
    u = winograd_weight(w)  # 16 kt o c
    assert u.shape == (16, 3, 3, 2)
    for tap in range(3):
        for o in range(3):
            for c in range(2):
                expected = g @ w[o, c, tap] @ g.T  # 4 x 4
                torch.testing.assert_close(u[:, tap, o, c], expected.reshape(16), rtol=0, atol=1e-15)
    assert winograd_weight(w[:, :, 1]).shape == (16, 1, 3, 2)  # a 2D kernel: one tap


@pytest.mark.parametrize("size", [(2, 2), (4, 6), (8, 8), (6, 10)])
@pytest.mark.parametrize("bias", [True, False])
def test_2d_matches_conv2d(size: tuple[int, int], bias: bool) -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(5, 7, 3, padding=1, bias=bias)
    x = torch.randn(3, 5, *size)
    expected = F.conv2d(x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(), padding=1)
    with torch.no_grad():
        direct = conv(x)
        for piece in (None, 1, 2):
            got = winograd_conv(x, conv.weight, conv.bias, piece_frames=piece)
            assert got.shape == (3, 7, *size) and got.dtype == torch.float32
            # as close to the exact result as the float32 direct conv is (both round differently)
            err, direct_err = (got.double() - expected).abs().max(), (direct.double() - expected).abs().max()
            assert err <= max(4 * direct_err, 1e-6), (err, direct_err)


@pytest.mark.parametrize("videos,frames", [(1, 1), (1, 2), (1, 5), (2, 4), (3, 3)])
def test_3d_matches_conv3d(videos: int, frames: int) -> None:
    torch.manual_seed(2)
    conv = nn.Conv3d(6, 4, 3, padding=1)
    x = torch.randn(videos * frames, 6, 8, 6)
    expected = _conv3d_f64(x, conv.weight, conv.bias, frames)
    with torch.no_grad():
        direct = fold = conv(x.unflatten(0, (videos, frames)).transpose(1, 2)).transpose(1, 2).flatten(0, 1)
        direct_err = (fold.double() - expected).abs().max()
        for piece in (None, 1, 2, 3):
            got = winograd_conv(x, conv.weight, conv.bias, frames, piece)
            assert got.shape == direct.shape
            assert (got.double() - expected).abs().max() <= max(4 * direct_err, 1e-6)
        # a range of output frames: the same values as those frames of the whole output
        if frames >= 3:
            part = winograd_conv(x, conv.weight, conv.bias, frames, 1, out_frames=(1, frames - 1))
            whole = winograd_conv(x, conv.weight, conv.bias, frames, 1)
            keep = whole.unflatten(0, (videos, frames))[:, 1 : frames - 1].flatten(0, 1)
            torch.testing.assert_close(part, keep, rtol=0, atol=0)
            # a window of the video, with its offset as origin, zero frames around it where the video ends: every
            # output frame bit for bit as in the whole-video call when the window starts on a piece boundary (the
            # same matrix products), up to float rounding when it starts inside a piece
            ref = winograd_conv(x, conv.weight, conv.bias, frames, 2).unflatten(0, (videos, frames))
            for a, e in ((0, 2), (2, frames), (1, frames)):
                lo, hi = max(a - 1, 0), min(e + 1, frames)
                pad = (1 if a == 0 else 0, 1 if e == frames else 0)
                window = F.pad(x.unflatten(0, (videos, frames))[:, lo:hi], (0, 0, 0, 0, 0, 0, *pad))
                origin = lo - pad[0]  # video frame of window frame 0
                length = window.shape[1]
                got = winograd_conv(
                    window.flatten(0, 1), conv.weight, conv.bias, length, 2, (a - origin, e - origin), origin=origin
                )
                want = ref[:, a:e].flatten(0, 1)
                if a % 2 == 0:
                    assert torch.equal(got, want)
                else:
                    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_rejects_what_it_cannot_compute() -> None:
    w = torch.randn(2, 2, 3, 3, 3)
    with pytest.raises(ValueError, match="even height and width"):
        winograd_conv(torch.randn(2, 2, 5, 4), w, None, 2)
    with pytest.raises(ValueError, match="multiple of num_frames"):
        winograd_conv(torch.randn(3, 2, 4, 4), w, None, 2)
    with pytest.raises(ValueError, match="temporal kernel 5"):
        winograd_conv(torch.randn(2, 2, 4, 4), torch.randn(2, 2, 5, 3, 3), None, 2)
    with pytest.raises(ValueError, match="out_frames"):
        winograd_conv(torch.randn(2, 2, 4, 4), w, None, 2, out_frames=(1, 3))
    x = torch.randn(2, 2, 4, 4)
    with torch.no_grad():
        assert winograd_applies(x, w, (1, 1, 1), (1, 1, 1))
        assert not winograd_applies(x.double(), w.double(), (1, 1, 1), (1, 1, 1))  # float32 only
        assert not winograd_applies(torch.randn(2, 2, 5, 4), w, (1, 1, 1), (1, 1, 1))  # odd height
        assert not winograd_applies(x, w, (1, 0, 0), (1, 1, 1))  # not "same"
    assert not winograd_applies(x, w, (1, 1, 1), (1, 1, 1))  # autograd on: forward only


def test_temporal_conv_uses_winograd_above_the_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(3)
    conv = nn.Conv3d(8, 8, 3, padding=1)
    x = torch.randn(6, 8, 8, 8)  # 2 videos of 3 frames, 8 channels of 8x8
    calls = []
    real = temporal.winograd_conv
    monkeypatch.setattr(temporal, "winograd_conv", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        assert not winograd_pays(conv, x)  # 8 channels < WINOGRAD_MIN_CHANNELS: the tap convs
        taps = conv3d_as_taps(conv, x, 3, 2)
        assert not calls
        monkeypatch.setattr(temporal, "WINOGRAD_MIN_CHANNELS", 8)
        monkeypatch.setattr(temporal, "WINOGRAD_MIN_PIXELS", 64)
        assert winograd_pays(conv, x)
        assert not winograd_pays(conv, x[..., :6, :6])  # 36 pixels < 64
        monkeypatch.setattr(temporal, "WINOGRAD_MAX_FRAME_ELEMENTS", 8 * 8 * 8 - 1)
        assert not winograd_pays(conv, x)  # frames too large: the temporaries would outgrow the taps'
        monkeypatch.setattr(temporal, "WINOGRAD_MAX_FRAME_ELEMENTS", 8 * 8 * 8)
        wino = conv3d_as_taps(conv, x, 3, 2)
        assert calls
    torch.testing.assert_close(wino, taps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wino.double(), _conv3d_f64(x, conv.weight, conv.bias, 3), rtol=1e-5, atol=1e-5)
    assert not winograd_pays(nn.Conv3d(8, 8, (3, 1, 1), padding=(1, 0, 0)), x)  # spatial kernel 1: not 3x3


@pytest.mark.parametrize("variant", ["conv3x3x3_attn", "2d_to_3d"])
def test_decoder_with_winograd_matches_taps_whole_and_streamed(monkeypatch: pytest.MonkeyPatch, variant: str) -> None:
    from ff_lightning.models.movq import MoVQ
    from ff_lightning.models.video_decoder import decode_video, video_decoder_from_image
    from ff_lightning.registry import build

    torch.manual_seed(4)
    model = video_decoder_from_image(build("movq", "movqgan", "tiny"), variant).eval()
    assert isinstance(model, MoVQ)
    with torch.no_grad():
        for p in model.decoder.parameters():  # non-zero temporal weights, so the frames really mix
            p.add_(0.05 * torch.randn_like(p))
        latents = torch.randn(6, model.post_quant_conv.in_channels, 8, 8)
        taps = decode_video(model, latents, 6)
        calls = []
        real = temporal.winograd_conv
        monkeypatch.setattr(temporal, "winograd_conv", lambda *a, **k: calls.append(1) or real(*a, **k))
        monkeypatch.setattr(temporal, "WINOGRAD_MIN_CHANNELS", 1)
        monkeypatch.setattr(temporal, "WINOGRAD_MIN_PIXELS", 1)
        whole = decode_video(model, latents, 6)
        assert calls
        streamed_calls = []
        monkeypatch.setattr(stream_decode, "winograd_conv", lambda *a, **k: streamed_calls.append(1) or real(*a, **k))
        streamed = decode_video(model, latents, 6, chunk_frames=2)
        assert streamed_calls
    torch.testing.assert_close(whole, taps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(streamed, whole, rtol=1e-5, atol=1e-5)
