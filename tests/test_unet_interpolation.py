"""Interpolation UNet: conversion, behaviour of the untrained model, conditioning merges, temporal axis of groups."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from einops import repeat

from ff_lightning.models.interpolation import (
    InterpolationUNet,
    interpolation_unet_from_t2i,
    null_context,
    pack_interpolation_input,
    unpack_frames,
)
from ff_lightning.models.temporal import AlphaMerge
from ff_lightning.models.unet import UNET_PRESETS, KandinskyUNet, UNetConditioning
from ff_lightning.registry import build

G, B, HW = 3, 2, 8  # interpolation groups per video, videos, latent size


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
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "context_mlp" in name:
                p.normal_(0.0, 0.05)
    return unet


def _conditioning(rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    context, mask = null_context(torch.randn(32, generator=g), rows)
    return torch.randint(0, 1000, (rows,), generator=g), context, mask


def _randomise_added(model: InterpolationUNet) -> InterpolationUNet:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AlphaMerge):
                m.alpha.fill_(0.4)
        model.skip_merge.fill_(0.6)
        for name, p in model.added_parameters():
            if "temporal_projection" in name or name.startswith(("perturbation_to_time_embed.", "skip_embeddings.")):
                p.normal_(0.0, 0.1)
    return model


def test_untrained_model_predicts_three_copies_and_ignores_keyframes(image_unet: KandinskyUNet) -> None:
    model = interpolation_unet_from_t2i(image_unet)
    rows = B * G
    time, context, mask = _conditioning(rows)
    z = torch.randn(rows, 4, HW, HW)
    noisy = repeat(z, "n c h w -> n f c h w", f=3)  # the same noisy latent in the three slots
    x = pack_interpolation_input(torch.randn_like(z), noisy, torch.randn_like(z))
    out = unpack_frames(model(x, time, context, mask, num_temporal_groups=G, skip_frames=3))
    expected = image_unet(z, time, context, mask)
    for frame in range(3):
        torch.testing.assert_close(out[:, frame], expected, rtol=1e-5, atol=1e-5)
    other_keys = pack_interpolation_input(torch.randn_like(z) * 5, noisy, torch.zeros_like(z))
    same = model(other_keys, time, context, mask, num_temporal_groups=G, skip_frames=1, perturbation_time=300)
    torch.testing.assert_close(unpack_frames(same), out, rtol=0, atol=0)  # keyframes, s and tp: no effect yet


def test_middle_init_is_the_image_model_on_the_middle_frame(image_unet: KandinskyUNet) -> None:
    model = interpolation_unet_from_t2i(image_unet, noisy_init="middle")
    rows = G
    time, context, mask = _conditioning(rows)
    noisy = torch.randn(rows, 3, 4, HW, HW)
    x = pack_interpolation_input(torch.randn(rows, 4, HW, HW), noisy, torch.randn(rows, 4, HW, HW))
    out = unpack_frames(model(x, time, context, mask, num_temporal_groups=G, skip_frames=3))
    expected = image_unet(noisy[:, 1], time, context, mask)
    for frame in range(3):
        torch.testing.assert_close(out[:, frame], expected, rtol=1e-5, atol=1e-5)


def test_input_and_output_conv_layout(image_unet: KandinskyUNet) -> None:
    model = interpolation_unet_from_t2i(image_unet)
    w, w0 = model.in_layer.weight, image_unet.in_layer.weight
    assert w.shape == (16, 20, 3, 3) and torch.equal(model.in_layer.bias, image_unet.in_layer.bias)
    assert not w[:, :4].any() and not w[:, 16:].any()  # keyframe slices zero
    for frame in range(3):
        torch.testing.assert_close(w[:, 4 + 4 * frame : 8 + 4 * frame], w0 / 3, rtol=0, atol=0)
    out, out0 = model.out_layer[2], image_unet.out_layer[2]
    assert out.weight.shape == (12, 16, 3, 3)
    assert torch.equal(out.weight, torch.cat([out0.weight] * 3)) and torch.equal(out.bias, torch.cat([out0.bias] * 3))


def test_conditioning_merges_follow_the_release_formula(image_unet: KandinskyUNet) -> None:
    model = _randomise_added(interpolation_unet_from_t2i(image_unet))
    rows = B * G
    time, context, mask = _conditioning(rows)
    skip, tp = torch.tensor([3, 1]), torch.tensor([150.0, 0.0])
    captured: list[UNetConditioning] = []
    model.forward_features = lambda x, cond: captured.append(cond) or x  # type: ignore[method-assign]
    model(torch.zeros(rows, 20, HW, HW), time, context, mask, num_temporal_groups=G, skip_frames=skip,
          perturbation_time=tp)  # fmt: skip
    te = model.to_time_embed(time)
    te = te + model.feature_pooling.attention(context.mean(1, keepdim=True), context, mask)[:, 0]
    te = 0.4 * model.perturbation_to_time_embed(repeat(tp, "b -> (b g)", g=G)) + 0.6 * te
    te = 0.6 * model.skip_embeddings(repeat(skip, "b -> (b g)", g=G)) + te
    torch.testing.assert_close(captured[0].time_embed, te, rtol=1e-5, atol=1e-6)
    assert captured[0].num_frames == G


def test_temporal_convs_mix_groups_of_one_video_only(image_unet: KandinskyUNet) -> None:
    model = _randomise_added(interpolation_unet_from_t2i(image_unet))
    rows = B * G
    time, context, mask = _conditioning(rows)
    x = torch.randn(rows, 20, HW, HW)
    with torch.no_grad():
        y = model(x, time, context, mask, num_temporal_groups=G, skip_frames=3)
        x2 = x.clone()
        x2[0] += 1.0  # group 0 of video 0
        y2 = model(x2, time, context, mask, num_temporal_groups=G, skip_frames=3)
    changed = (y2 - y).flatten(1).abs().amax(1) > 1e-6
    assert changed[:G].all() and not changed[G:].any()


def test_official_call_and_registry(image_unet: KandinskyUNet) -> None:
    model = _randomise_added(interpolation_unet_from_t2i(image_unet))
    rows = B * G
    time, context, mask = _conditioning(rows)
    x = torch.randn(rows, 20, HW, HW)
    skip = torch.full((rows,), 3, dtype=torch.int32)
    with torch.no_grad():
        ours = model(x, time, context, mask, num_temporal_groups=G, skip_frames=3)
        official = model.forward_official(x, time, context, mask, None, skip, G)
    torch.testing.assert_close(official, ours, rtol=0, atol=0)
    built = build("interpolation_unet", "kandinsky_video", "tiny")
    assert isinstance(built, InterpolationUNet) and all(p.requires_grad for p in built.parameters())


def test_freeze_spatial_keeps_new_and_reshaped_weights_trainable(image_unet: KandinskyUNet) -> None:
    model = interpolation_unet_from_t2i(image_unet, freeze_spatial=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"in_layer.weight", "out_layer.2.weight", "skip_merge", "time_embed_merge.alpha"} <= trainable
    assert "skip_embeddings.weight" in trainable and "out_layer.0.weight" not in trainable
    assert trainable == {n for n, _ in model.added_parameters()}
    state = model.state_dict()
    for name in model.inherited_parameter_names:
        assert torch.equal(state[name], image_unet.state_dict()[name]), name
