"""Keyframe UNets: conversion from the image UNet, identity at initialisation, freezing, temporal mixing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from einops import repeat

from ff_lightning.models.keyframes import (
    KEYFRAME_DESIGNS,
    KeyframeUNet,
    default_frame_stride,
    keyframe_unet_from_t2i,
    make_frame_positions,
)
from ff_lightning.models.temporal import AlphaMerge
from ff_lightning.models.unet import UNET_PRESETS, KandinskyUNet
from ff_lightning.models.unet_temporal import TemporalAttentionBlock, TemporalResNetBlock
from ff_lightning.registry import build

KINDS = sorted(KEYFRAME_DESIGNS)
T, B, HW = 4, 2, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: on the shared 2-core CI box extra OpenMP threads only oversubscribe (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image_unet() -> KandinskyUNet:
    torch.manual_seed(0)
    unet = KandinskyUNet(**UNET_PRESETS["tiny"])
    with torch.no_grad():  # a "trained" image model: time conditioning of the norms non-zero too
        for name, p in unet.named_parameters():
            if "context_mlp" in name:
                p.normal_(0.0, 0.05)
    return unet


def _inputs(seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B * T, 4, HW, HW, generator=g)
    time = torch.tensor([37, 802])
    context = torch.randn(B, 5, 32, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    return x, time, context, mask


def _per_frame(t: torch.Tensor) -> torch.Tensor:
    return repeat(t, "b ... -> (b t) ...", t=T)  # one copy per frame, the release's row layout


def _randomise_temporal(model: KeyframeUNet) -> KeyframeUNet:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AlphaMerge):
                m.alpha.fill_(0.5)
        for name, p in model.added_parameters():
            if not name.endswith("alpha"):
                p.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("kind", KINDS)
def test_identity_at_initialisation(image_unet: KandinskyUNet, kind: str) -> None:
    x, time, context, mask = _inputs()
    expected = image_unet(x, _per_frame(time), _per_frame(context), _per_frame(mask))
    video = keyframe_unet_from_t2i(image_unet, kind, T)
    torch.testing.assert_close(video(x, time, context, mask), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_temporal_ops_mix_frames_only_within_a_video(image_unet: KandinskyUNet, kind: str) -> None:
    video = _randomise_temporal(keyframe_unet_from_t2i(image_unet, kind, T))
    x, time, context, mask = _inputs()
    with torch.no_grad():
        y = video(x, time, context, mask)
        x2 = x.clone()
        x2[1] += 1.0  # frame 1 of video 0
        y2 = video(x2, time, context, mask)
    changed = (y2 - y).flatten(1).abs().amax(1) > 1e-6
    assert changed[:T].all(), f"{kind}: every frame of the perturbed video should change, got {changed[:T]}"
    assert not changed[T:].any(), f"{kind}: the other video must not change"


def test_conversion_copies_spatial_weights_bit_exact_and_freezes_them(image_unet: KandinskyUNet) -> None:
    video = keyframe_unet_from_t2i(image_unet, "blocks_conv1d_attn1d", T)
    image_state, video_state = image_unet.state_dict(), video.state_dict()
    assert video.inherited_parameter_names == {n for n, _ in image_unet.named_parameters()}
    for name, tensor in image_state.items():
        assert torch.equal(video_state[name], tensor), name
        assert video_state[name].data_ptr() != tensor.data_ptr(), f"{name} shares storage with the image model"
    for name, p in video.named_parameters():
        assert p.requires_grad == (name not in video.inherited_parameter_names), name
    assert all(p.requires_grad for p in image_unet.parameters()), "copy=True leaves the image model untouched"
    added = {n for n, _ in video.added_parameters()}
    assert added and all(n.startswith("to_temporal_embed.") or "temporal" in n for n in added), (
        "only temporal parameters are added"
    )


def test_one_optimizer_step_changes_only_temporal_weights(image_unet: KandinskyUNet) -> None:
    video = keyframe_unet_from_t2i(image_unet, "blocks_conv1d_attn1d", T)
    before = {n: p.detach().clone() for n, p in video.named_parameters()}
    opt = torch.optim.SGD([p for p in video.parameters() if p.requires_grad], lr=0.1)
    x, time, context, mask = _inputs()
    video(x, time, context, mask).square().mean().backward()
    opt.step()
    for name, p in video.named_parameters():
        if name in video.inherited_parameter_names:
            assert p.grad is None and torch.equal(p, before[name]), name
    changed = {n for n, p in video.named_parameters() if not torch.equal(p, before[n])}
    assert changed and not changed & video.inherited_parameter_names
    # the zero-initialised outputs of every temporal block are the first to learn
    for name, module in video.named_modules():
        if isinstance(module, TemporalResNetBlock):
            assert f"{name}.temporal_resnet_blocks.3.2.weight" in changed
        if isinstance(module, TemporalAttentionBlock):
            assert f"{name}.temporal_attention.output_layer.weight" in changed


def test_copy_false_consumes_the_image_model() -> None:
    unet = KandinskyUNet(**UNET_PRESETS["tiny"])
    video = keyframe_unet_from_t2i(unet, "blocks_conv1d", T, copy=False)
    assert video.in_layer is unet.in_layer and not unet.in_layer.weight.requires_grad
    with pytest.raises(TypeError, match="image KandinskyUNet"):
        keyframe_unet_from_t2i(video, "layers", T)


def test_released_block_placement_order(image_unet: KandinskyUNet) -> None:
    """Down levels: self-attn, temporal attn, then (ResNet, temporal, cross-attn, ResNet, temporal); up levels
    mirror it (temporal before each ResNet, temporal attention before the self-attention)."""
    video = keyframe_unet_from_t2i(image_unet, "blocks_conv1d_attn1d", T)
    calls: list[str] = []
    tracked = {}
    for level_name in ("down_samples.1", "up_samples.0"):
        level = video.get_submodule(level_name)
        tracked[level.self_attention_block] = "self"
        tracked[level.temporal_attention_block] = "tattn"
        for group in level.resnet_attn_blocks:
            tracked.update({group[0]: "res", group[1]: "cross", group[2]: "res", group[3]: "tres", group[4]: "tres"})
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append(tracked[m])) for m in tracked]
    with torch.no_grad():
        video(*_inputs())
    for h in hooks:
        h.remove()
    down = ["self", "tattn", "res", "tres", "cross", "res", "tres"]
    up = ["tres", "res", "cross", "tres", "res", "tattn", "self"]
    assert calls == down + up


def test_frame_positions_and_frame_rate_conditioning(image_unet: KandinskyUNet) -> None:
    assert default_frame_stride(15) == 12
    assert make_frame_positions(15, 12, 1).tolist() == list(range(0, 180, 12))
    positions = make_frame_positions(3, torch.tensor([2, 5]), 2)
    assert positions.tolist() == [0, 2, 4, 0, 5, 10]

    video = _randomise_temporal(keyframe_unet_from_t2i(image_unet, "blocks_attn1d", T))
    assert video.frame_stride == 180 // T
    x, time, context, mask = _inputs()
    with torch.no_grad():
        default = video(x, time, context, mask)
        explicit = video(x, time, context, mask, frame_positions=make_frame_positions(T, 45, B))
        slower = video(x, time, context, mask, frame_stride=torch.tensor([45, 20]))
    torch.testing.assert_close(explicit, default, rtol=0, atol=0)
    torch.testing.assert_close(slower[:T], default[:T], rtol=0, atol=0)  # video 0 keeps stride 45
    assert not torch.allclose(slower[T:], default[T:])  # video 1's frame rate changed its output


def test_official_call_signature_adapter(image_unet: KandinskyUNet) -> None:
    video = _randomise_temporal(keyframe_unet_from_t2i(image_unet, "blocks_conv1d_attn1d", T))
    x, time, context, mask = _inputs()
    positions = torch.arange(0, 180, 180 // T).repeat(B)  # per row, as the release passes temporal_embed
    with torch.no_grad():
        ours = video(x, time, context, mask)
        official = video.forward_official(x, _per_frame(time), _per_frame(context), _per_frame(mask), positions)
    torch.testing.assert_close(official, ours, rtol=0, atol=0)


def test_registry_build_is_a_converted_fresh_image_model() -> None:
    torch.manual_seed(3)
    built = build("keyframe_unet", "layers", "tiny")
    assert isinstance(built, KeyframeUNet) and built.kind == "layers" and built.num_frames == 4
    assert not any(p.requires_grad for n, p in built.named_parameters() if n in built.inherited_parameter_names)
    x, time, context, mask = _inputs()
    built(x, time, context, mask).mean().backward()  # backward through temporal layers works


def test_conversion_on_meta_device() -> None:
    with torch.device("meta"):
        unet = KandinskyUNet(**UNET_PRESETS["tiny"])
    video = keyframe_unet_from_t2i(unet, "blocks_conv3d", T, copy=False)
    assert all(p.is_meta for p in video.parameters())
    kernels = {m.kernel_size for m in video.modules() if isinstance(m, torch.nn.Conv3d)}
    assert kernels == {(1, 1, 1), (3, 3, 3)}
