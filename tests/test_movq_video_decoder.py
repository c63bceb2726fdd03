"""Video decoders (tiny preset): identity at init, bit-exact conversion, fine-tuning policies, frame mixing,
chunked decoding."""

from __future__ import annotations

import pytest
import torch

from ff_lightning.models.movq import Decoder, MoVQ
from ff_lightning.models.video_decoder import (
    VARIANTS,
    apply_finetune_policy,
    decode_video,
    temporal_parameter_names,
    temporal_receptive_radius,
    video_decoder_from_image,
)
from ff_lightning.registry import build

T = 4  # frames per video
VIDEO_VARIANTS = [v for v in VARIANTS if v != "image"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest and avoids oversubscribing shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image_movq() -> MoVQ:
    torch.manual_seed(0)
    model = build("movq", "movqgan", "tiny")
    with torch.no_grad():  # make SpatialNorm / biases non-trivial so identities are not accidental
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _latents(videos: int = 2, frames: int = T, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(videos * frames, 4, 4, 4, generator=gen)  # (b t) c h w


def _perturb_temporal(decoder: Decoder, seed: int = 0) -> None:
    """Move every added temporal parameter off its identity init (2D->3D: the off-centre taps)."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(decoder.named_parameters())
    with torch.no_grad():
        for name in temporal_parameter_names(decoder):
            p = params[name]
            if name.endswith("alpha"):
                p.fill_(0.5)
            elif p.dim() == 5 and decoder.temporal.video_convs:
                p[:, :, [0, 2]] = torch.randn(p[:, :, [0, 2]].shape, generator=gen) * 0.05
            else:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_converted_decoder_equals_image_decoder(image_movq: MoVQ, variant: str) -> None:
    video = video_decoder_from_image(image_movq, variant).eval()
    lat = _latents()
    with torch.no_grad():
        expected = image_movq.decode(lat)  # each frame on its own
        got = video.decode(lat, num_frames=T)
    if variant == "2d_to_3d":  # Conv3d vs Conv2d arithmetic
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    else:
        assert torch.equal(got, expected)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fresh_decoder_decodes_frames_independently(variant: str) -> None:
    torch.manual_seed(0)
    decoder = build("decoder", variant, "tiny").eval()
    lat = _latents()
    with torch.no_grad():
        as_video = decoder(lat, lat, num_frames=T)
        as_images = decoder(lat, lat, num_frames=1)
    torch.testing.assert_close(as_video, as_images, atol=1e-6, rtol=1e-6)


def test_fresh_2d_to_3d_is_its_centre_tap_image_decoder() -> None:
    torch.manual_seed(0)
    video = build("decoder", "2d_to_3d", "tiny").eval()
    image = build("decoder", "image", "tiny").eval()
    state = {}
    for key, value in video.state_dict().items():
        if value.dim() == 5:
            assert not value[:, :, [0, 2]].any()  # off-centre taps start at zero
            value = value[:, :, 1]
        state[key] = value
    image.load_state_dict(state)
    lat = _latents()
    with torch.no_grad():
        torch.testing.assert_close(video(lat, lat, num_frames=T), image(lat, lat), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_conversion_copies_2d_weights_bit_exact(image_movq: MoVQ, variant: str) -> None:
    video = video_decoder_from_image(image_movq, variant)
    assert isinstance(video, MoVQ) and video is not image_movq
    source, target = image_movq.state_dict(), video.state_dict()
    for key, value in source.items():
        if variant == "2d_to_3d" and target[key].dim() == 5:
            assert torch.equal(target[key][:, :, 1], value) and not target[key][:, :, [0, 2]].any()
        else:
            assert torch.equal(target[key], value), key
        assert target[key].data_ptr() != value.data_ptr()  # a copy, not shared storage
    added = set(target) - set(source)
    assert all(".temporal_" in f".{k}" for k in added)
    # the decoder alone converts the same way (the randomly initialised temporal weights aside)
    decoder = video_decoder_from_image(image_movq.decoder, variant)
    assert isinstance(decoder, Decoder)
    decoder_state = decoder.state_dict()
    for key in source:
        if key.startswith("decoder."):
            assert torch.equal(decoder_state[key[len("decoder.") :]], target[key])


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("policy", ["temporal", "decoder"])
@pytest.mark.parametrize("variant", ["conv3x1x1_attn", "resblock", "2d_to_3d"])
def test_policy_and_one_adam_step(image_movq: MoVQ, variant: str, policy: str) -> None:
    model = video_decoder_from_image(image_movq, variant, policy=policy)
    added = {f"decoder.{n}" for n in temporal_parameter_names(model.decoder)}
    unused = {
        f"decoder.{n}"
        for n, p in model.decoder.named_parameters()
        if n.endswith(("conv_y.weight", "conv_y.bias", "conv_b.weight", "conv_b.bias")) and "temporal_attn" in n
    }
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    decoder_params = {n for n, _ in model.named_parameters() if n.startswith("decoder.")}
    if policy == "temporal":
        assert trainable == added - unused
    else:
        assert trainable == decoder_params - unused
    assert not any(n.startswith(("encoder.", "quantize.", "quant_conv.", "post_quant_conv.")) for n in trainable)

    before = _snapshot(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    frames = torch.rand(T, 3, 8, 8) * 2 - 1  # one video
    loss = (model.decode(model.encode(frames), num_frames=T) - frames).square().mean()
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "the step changed nothing"
    assert not any(n.startswith(("encoder.", "quantize.", "quant_conv.", "post_quant_conv.")) for n in changed)
    if policy == "temporal":
        assert changed <= added  # every 2D decoder parameter is bit-identical
    else:
        assert changed - added  # 2D decoder parameters trained too
        assert "decoder.conv_out.weight" in changed


def test_apply_policy_to_movq_freezes_encoder(image_movq: MoVQ) -> None:
    model = video_decoder_from_image(image_movq, "conv3x1x1")
    apply_finetune_policy(model, "decoder")
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not any(p.requires_grad for p in model.quantize.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    with pytest.raises(ValueError, match="policy"):
        apply_finetune_policy(model, "everything")


@pytest.mark.parametrize("variant", VIDEO_VARIANTS)
def test_temporal_layers_mix_frames(variant: str) -> None:
    torch.manual_seed(0)
    decoder = build("decoder", variant, "tiny").eval()
    lat = _latents(videos=1)
    moved = lat.clone()
    moved[2] += 1.0  # change only frame 2 of the video
    with torch.no_grad():
        # at init frame 1 ignores frame 2 ...
        assert torch.equal(decoder(lat, lat, num_frames=T)[1], decoder(moved, moved, num_frames=T)[1])
        _perturb_temporal(decoder)
        # ... once the temporal weights are non-zero it depends on it
        diff = (decoder(lat, lat, num_frames=T)[1] - decoder(moved, moved, num_frames=T)[1]).abs().max()
    assert diff > 1e-4


def test_chunked_decode_whole_video_is_exact(image_movq: MoVQ) -> None:
    model = video_decoder_from_image(image_movq, "conv3x3x3_attn")
    _perturb_temporal(model.decoder)
    lat = _latents(frames=6)
    with torch.no_grad():
        full = model.decode(lat, num_frames=6)
    assert torch.equal(decode_video(model, lat, 6), full)
    assert torch.equal(decode_video(model, lat, 6, chunk_frames=6), full)
    assert torch.equal(decode_video((model.post_quant_conv, model.decoder), lat, 6, chunk_frames=8), full)


@pytest.mark.parametrize("variant", ["image", "conv3x1x1", "conv3x3x3", "resblock", "2d_to_3d"])
def test_chunked_decode_with_enough_context_matches_full(variant: str) -> None:
    # a one-level decoder (3 ResnetBlocks, temporal radius 6) so that 20 frames leave chunks whose context
    # window touches neither end of the video
    torch.manual_seed(0)
    decoder = build("decoder", variant, "tiny", ch_mult=(1,), num_res_blocks=0, attn_resolutions=()).eval()
    _perturb_temporal(decoder)
    pair = (torch.nn.Conv2d(4, 4, 1), decoder)
    frames, chunk = 20, 2
    radius = temporal_receptive_radius(decoder)
    assert radius == (0 if variant == "image" else 6)
    lat = _latents(videos=1, frames=frames)
    with torch.no_grad():
        full = decoder(pair[0](lat), lat, num_frames=frames)
    chunked = decode_video(pair, lat, frames, chunk_frames=chunk, context_frames=int(radius), method="window")
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    if radius:  # with less context the chunk edges differ: the context is what makes it exact
        short = decode_video(pair, lat, frames, chunk_frames=chunk, context_frames=int(radius) - 1, method="window")
        assert (short - full).abs().max() > 1e-6


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stream_decode_equals_whole_decode(image_movq: MoVQ, variant: str) -> None:
    # the default chunked decode streams: every variant, attention included, equals the whole decode
    model = video_decoder_from_image(image_movq, variant).eval()
    _perturb_temporal(model.decoder)
    lat = torch.randn(2 * 7, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model.decode(lat, num_frames=7)
    for chunk in (1, 2, 3):
        torch.testing.assert_close(decode_video(model, lat, 7, chunk_frames=chunk), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown decode method"):
        decode_video(model, lat, 7, chunk_frames=2, method="nope")


def test_chunked_decode_attention_values(image_movq: MoVQ) -> None:
    model = video_decoder_from_image(image_movq, "resblock_attn")
    lat = _latents(frames=6)
    with torch.no_grad():
        full = model.decode(lat, num_frames=6)
    torch.testing.assert_close(decode_video(model, lat, 6, chunk_frames=2), full, atol=1e-5, rtol=1e-5)
    assert temporal_receptive_radius(model.decoder) == float("inf")
    _perturb_temporal(model.decoder)
    with torch.no_grad():
        full = model.decode(lat, num_frames=6)
    # context reaching both ends for every chunk: each window is the whole video, so every kept frame is exact
    wide = decode_video(model, lat, 6, chunk_frames=2, context_frames=4, method="window")
    torch.testing.assert_close(wide, full, atol=1e-5, rtol=1e-5)
    # shorter context: temporal attention (global receptive field) only sees the window, the documented
    # approximation; the chunk's frames still come back in place (frame 0 is decoded from window 0..4)
    short = decode_video(model, lat, 6, chunk_frames=3, context_frames=2, method="window")
    assert short.shape == full.shape and (short - full).abs().max() > 1e-6
    with torch.no_grad():
        window = model.decode(lat.view(2, 6, *lat.shape[1:])[:, :5].flatten(0, 1), num_frames=5)
    torch.testing.assert_close(short.view(2, 6, *short.shape[1:])[:, :3], window.view(2, 5, *window.shape[1:])[:, :3])


def test_tiny_movq_forward_backward() -> None:
    torch.manual_seed(0)
    model = build("movq", "movqgan", "tiny")
    frames = torch.rand(2 * T, 3, 32, 32) * 2 - 1  # two videos of T frames at the tiny preset's resolution
    out = model(frames, num_frames=T)
    assert out.sample.shape == frames.shape and out.indices.shape == (2 * T, 16, 16)
    ((out.sample - frames).abs().mean() + out.codebook_loss).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_first_frame_attention_conditioning_option() -> None:
    """Released-decoder parity option: spatial-attention norms see the first frame's latent of each video."""
    torch.manual_seed(0)
    plain = build("decoder", "image", "tiny").eval()
    quirk = build("decoder", "image", "tiny", attn_zq_first_frame=True).eval()
    quirk.load_state_dict(plain.state_dict())
    z, zq = _latents(videos=2), _latents(videos=2, seed=5)
    moved = zq.clone()
    moved[0] += 1.0  # the first frame's latent of video 0 only
    with torch.no_grad():
        assert torch.equal(quirk(z, zq, num_frames=1), plain(z, zq, num_frames=1))  # single frames: no change
        base, after = quirk(z, zq, num_frames=T), quirk(z, moved, num_frames=T)
        assert (base[1] - after[1]).abs().max() > 1e-4  # frame 1 of video 0 now depends on frame 0's latent
        assert torch.equal(base[T:], after[T:])  # video 1 is untouched
        assert torch.equal(plain(z, zq, num_frames=T)[1], plain(z, moved, num_frames=T)[1])
