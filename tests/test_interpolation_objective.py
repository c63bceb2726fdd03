"""Interpolation training objective: conditioning perturbation, unconditional videos (zeroed frames, mt = 0)."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from einops import rearrange

from ff_lightning.diffusion import NoiseSchedule
from ff_lightning.models.interpolation import interpolation_unet_from_t2i
from ff_lightning.models.interpolation_pipeline import (
    FusionFramesMethod,
    MaskedFrameMethod,
    merge_sequence,
    perturb_conditioning,
    split_sequence,
    temporal_mask,
)
from ff_lightning.models.masked_interpolation import masked_interpolation_unet_from_t2i
from ff_lightning.models.temporal import AlphaMerge
from ff_lightning.models.unet import UNET_PRESETS, Block, KandinskyUNet

HW = 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise_temporal(model: torch.nn.Module) -> torch.nn.Module:
    """Non-zero temporal convs and merges (a trained-looking model)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Block) and m.temporal_projection is not None:
                m.temporal_projection.weight.normal_(0.0, 0.2)
                m.temporal_merge.alpha.fill_(0.5)
        for name, p in model.named_parameters():
            if "context_mlp" in name or name.startswith(("perturbation_to_time_embed", "skip_embeddings")):
                p.normal_(0.0, 0.05)
        model.skip_merge.fill_(0.3)
        model.time_embed_merge.alpha.fill_(0.3)
    return model


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    image = KandinskyUNet(**UNET_PRESETS["tiny"])
    ff = _randomise_temporal(interpolation_unet_from_t2i(image))
    with torch.no_grad():  # keyframe slices of the input conv: let the keyframes matter
        ff.in_layer.weight.normal_(0.0, 0.1)
    masked = _randomise_temporal(masked_interpolation_unet_from_t2i(image))
    with torch.no_grad():
        masked.in_layer.weight.normal_(0.0, 0.1)
    return {"fusionframes": ff, "masked": masked}


def _no_temporal(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose temporal merges are all 0: what mt = 0 must give."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for m in other.modules():
            if isinstance(m, Block) and m.temporal_merge is not None:
                m.temporal_merge.alpha.zero_()
    return other


def test_perturbation_level_zero_leaves_latents_unchanged() -> None:
    schedule = NoiseSchedule.cosine(1000)
    x = torch.randn(6, 4, HW, HW)
    noise = torch.randn_like(x)
    assert torch.equal(perturb_conditioning(x, 0, schedule, noise), x)
    tp = torch.tensor([0, 1, 150, 0, 250, 1000])
    out = perturb_conditioning(x, tp, schedule, noise)
    assert torch.equal(out[0], x[0]) and torch.equal(out[3], x[3])  # tp = 0 rows: bit-exact
    expected = schedule.q_sample(x[[1, 2, 4, 5]], tp[[1, 2, 4, 5]] - 1, noise[[1, 2, 4, 5]])  # tp forward steps
    torch.testing.assert_close(out[[1, 2, 4, 5]], expected, rtol=0, atol=0)
    assert (out[2] - x[2]).abs().mean() < (out[4] - x[4]).abs().mean()  # more noise at a higher level
    with pytest.raises(ValueError, match="perturbation levels"):
        perturb_conditioning(x, 1001, schedule, noise)


def test_split_and_merge_sequence_round_trip() -> None:
    seq = torch.arange(2 * 13).float().reshape(2, 13, 1, 1, 1)
    keys, middles = split_sequence(seq)
    assert keys.shape == (2, 4, 1, 1, 1) and middles.shape == (2, 3, 3, 1, 1, 1)
    assert keys[0, :, 0, 0, 0].tolist() == [0, 4, 8, 12]
    assert middles[1, 2, :, 0, 0, 0].tolist() == [13 + 9, 13 + 10, 13 + 11]
    assert torch.equal(merge_sequence(keys, middles), seq)


@pytest.mark.parametrize("method", ["fusionframes", "masked"])
def test_temporal_mask_switches_temporal_layers_off_per_row(models: dict, method: str) -> None:
    model = models[method]
    off = _no_temporal(model)
    t = 3  # temporal axis: groups (fusionframes) or frames (masked)
    rows = 2 * t
    torch.manual_seed(2)
    x = torch.randn(rows, model.in_layer.in_channels, HW, HW)
    time = torch.full((rows,), 500.0)
    context, mask = torch.randn(2, 2, 32), torch.tensor([[True, False]] * 2)
    kwargs = {"num_temporal_groups": t} if method == "fusionframes" else {"num_frames": t}
    kwargs.update(skip_frames=2, perturbation_time=torch.tensor([0, 100]))

    def run(m: torch.nn.Module, tmask: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad(), temporal_mask(m, tmask):
            return m(x, time, context, mask, **kwargs)

    full, spatial = run(model), run(off)
    assert not torch.allclose(full, spatial)  # the temporal layers do something
    assert torch.equal(run(model, torch.ones(rows)), full)  # mt = 1: unchanged
    torch.testing.assert_close(run(model, torch.zeros(rows)), spatial, rtol=1e-4, atol=1e-5)  # mt = 0: alpha = 0
    mixed = run(model, torch.tensor([1.0] * t + [0.0] * t))  # video 0 conditional, video 1 unconditional
    torch.testing.assert_close(mixed[:t], full[:t], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed[t:], spatial[t:], rtol=1e-4, atol=1e-5)
    assert all(not m._forward_hooks for m in model.modules() if isinstance(m, AlphaMerge))  # hooks removed


class Recorder:
    """Records the UNet's inputs and whether its temporal merges were masked."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.inputs: list[torch.Tensor] = []
        self.handle = model.register_forward_pre_hook(lambda mod, args: self.inputs.append(args[0].detach().clone()))

    def close(self) -> None:
        self.handle.remove()


def _sequence(b: int = 2, length: int = 9) -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randn(b, length, 4, HW, HW)


@pytest.mark.parametrize("method", ["fusionframes", "masked"])
def test_loss_conditioning_clean_perturbed_and_unconditional(models: dict, method: str) -> None:
    model = models[method]
    cls = FusionFramesMethod if method == "fusionframes" else MaskedFrameMethod
    seq = _sequence()
    keys, _ = split_sequence(seq)
    schedule = NoiseSchedule.cosine(1000)
    null = torch.randn(32)
    rec = Recorder(model)
    try:
        cls(model).loss(seq, torch.tensor([1, 5]), schedule, null, max_perturbation=0, uncond_prob=0.0,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
        cls(model).loss(seq, 3, schedule, null, max_perturbation=250, uncond_prob=0.0,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
        cls(model).loss(seq, 3, schedule, null, max_perturbation=250, uncond_prob=1.0,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    finally:
        rec.close()
    clean, perturbed, uncond = rec.inputs
    c = 4
    if method == "fusionframes":  # rows (b g): [left | 3 noisy | right]
        left = rearrange(keys[:, :-1], "b g c h w -> (b g) c h w")  # left keyframe of each gap
        right = rearrange(keys[:, 1:], "b g c h w -> (b g) c h w")  # right keyframe of each gap
        assert torch.equal(clean[:, :c], left) and torch.equal(clean[:, 4 * c :], right)  # tp = 0: unchanged
        assert not torch.allclose(perturbed[:, :c], left)  # tp > 0 drawn (seeded): noised
        assert torch.equal(uncond[:, :c], torch.zeros_like(left)) and torch.equal(uncond[:, 4 * c :], 0 * right)
    else:  # rows (b t): [noisy | known | mask]
        known = rearrange(clean[:, c : 2 * c], "(b t) c h w -> b t c h w", b=2)  # rows back to videos
        mask = rearrange(clean[:, 2 * c], "(b t) h w -> b t h w", b=2)
        assert torch.equal(known[:, ::4], keys) and torch.equal(known[:, 1::4], torch.zeros_like(known[:, 1::4]))
        assert torch.equal(mask[:, ::4], torch.ones_like(mask[:, ::4])) and mask[:, 1::4].abs().sum() == 0
        assert not torch.allclose(perturbed[:, c : 2 * c], clean[:, c : 2 * c])
        assert uncond[:, c:].abs().sum() == 0  # known frames and mask zeroed: nothing is known
    # unconditional videos also run with mt = 0: same loss as the model without temporal layers
    args = (seq, 3, schedule, null)
    loss_uncond = cls(model).loss(*args, uncond_prob=1.0, generator=torch.Generator().manual_seed(4))
    loss_spatial = cls(_no_temporal(model)).loss(*args, uncond_prob=1.0, generator=torch.Generator().manual_seed(4))
    loss_cond = cls(model).loss(*args, uncond_prob=0.0, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(loss_uncond, loss_spatial, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(loss_uncond, loss_cond)


def test_loss_is_v_prediction_on_generated_frames_only(models: dict) -> None:
    """The masked baseline's loss ignores its outputs at the known frames."""
    model = models["masked"]
    seq = _sequence(1, 5)
    schedule = NoiseSchedule.cosine(1000)
    null = torch.randn(32)
    handle = model.register_forward_hook(lambda mod, args, out: out.index_fill(0, torch.tensor([0, 4]), 1e3))
    try:
        poisoned = MaskedFrameMethod(model).loss(seq, 1, schedule, null, generator=torch.Generator().manual_seed(5))
    finally:
        handle.remove()
    plain = MaskedFrameMethod(model).loss(seq, 1, schedule, null, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(poisoned, plain)
