"""``blend_residual``: the interpolation models diffuse the difference to the linear blend of the keyframes."""

from __future__ import annotations

import pytest
import torch

from ff_lightning.diffusion import NoiseSchedule, SamplingSchedule
from ff_lightning.models.interpolation import interpolation_unet_from_t2i
from ff_lightning.models.interpolation_pipeline import (
    FusionFramesMethod,
    MaskedFrameMethod,
    SamplingOptions,
    interpolate,
    linear_blend,
    method_for,
    output_frames,
)
from ff_lightning.models.masked_interpolation import masked_interpolation_unet_from_t2i
from ff_lightning.models.unet import UNET_PRESETS, KandinskyUNet

HW = 8


def _blend_by_hand(keys: torch.Tensor) -> torch.Tensor:
    """Independent reference: position j of gap g is ((4 - j) key_g + j key_{g+1}) / 4."""
    b, k = keys.shape[:2]
    out = torch.empty(b, output_frames(k), *keys.shape[2:], dtype=keys.dtype)
    for pos in range(out.shape[1]):
        g, j = divmod(pos, 4)
        out[:, pos] = keys[:, g] if j == 0 else ((4 - j) * keys[:, g] + j * keys[:, g + 1]) / 4
    return out


@pytest.fixture(scope="module")
def unets() -> dict:
    torch.manual_seed(0)
    image = KandinskyUNet(**UNET_PRESETS["tiny"])
    ff, masked = interpolation_unet_from_t2i(image), masked_interpolation_unet_from_t2i(image)
    torch.manual_seed(1)
    with torch.no_grad():
        for model in (ff, masked):
            model.in_layer.weight.normal_(0.0, 0.1)
    return {"fusionframes": ff, "masked": masked}


def test_linear_blend_matches_the_formula() -> None:
    keys = torch.randn(2, 3, 4, HW, HW, generator=torch.Generator().manual_seed(0))
    blend = linear_blend(keys, 9)
    torch.testing.assert_close(blend, _blend_by_hand(keys), rtol=0, atol=1e-6)
    assert torch.equal(blend[:, ::4], keys)
    with pytest.raises(ValueError, match="make 9 frames"):
        linear_blend(keys, 10)


@pytest.mark.parametrize(("name", "scale"), [("fusionframes", 1.0), ("masked", 1.0), ("fusionframes", 3.0)])
def test_sampling_adds_the_blend_to_what_the_model_samples(unets: dict, name: str, scale: float) -> None:
    """Same UNet, same seed: the residual model's output = the plain model's output / residual_scale + the blend
    (middle frames); the keyframes are kept either way."""
    keys = torch.randn(1, 3, 4, HW, HW, generator=torch.Generator().manual_seed(3))
    null = torch.randn(32)
    sampling = SamplingOptions(SamplingSchedule.subsample(NoiseSchedule.cosine(1000), 2), "ddim")
    plain = interpolate(method_for(unets[name]), keys, null, sampling, generator=torch.Generator().manual_seed(5))
    resid = interpolate(method_for(unets[name], blend_residual=True, residual_scale=scale), keys, null, sampling,
                        generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert torch.equal(resid[:, ::4], keys)
    middle = torch.ones(9, dtype=torch.bool)
    middle[::4] = False
    torch.testing.assert_close(resid[:, middle], plain[:, middle] / scale + _blend_by_hand(keys)[:, middle], rtol=0,
                               atol=1e-5)  # fmt: skip
    assert (resid[:, middle] - plain[:, middle]).abs().max() > 0.1  # the blend is not a no-op


def test_training_target_is_the_difference_to_the_blend(unets: dict) -> None:
    """A clip whose middle frames are exactly the blend is a zero target for the residual model: the same loss as
    the plain model on the same keyframes with zero middle frames (same draws)."""
    keys = torch.randn(2, 3, 4, HW, HW, generator=torch.Generator().manual_seed(4))
    on_blend = linear_blend(keys, 9)
    zero_middles = torch.zeros_like(on_blend)
    zero_middles[:, ::4] = keys
    schedule, null = NoiseSchedule.cosine(1000), torch.randn(32)

    def loss(method: FusionFramesMethod, seq: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return method.loss(seq, 1, schedule, null, generator=torch.Generator().manual_seed(9))

    unet = unets["fusionframes"]
    resid = loss(FusionFramesMethod(unet, blend_residual=True, residual_scale=3.0), on_blend)
    torch.testing.assert_close(resid, loss(FusionFramesMethod(unet), zero_middles), rtol=1e-6, atol=1e-7)
    assert not torch.isclose(resid, loss(FusionFramesMethod(unet), on_blend))
    assert MaskedFrameMethod(unets["masked"], blend_residual=True).blend_residual


def test_stage_reads_the_option_from_its_settings(unets: dict) -> None:
    """Inference without Lightning (pipelines.stages.InterpolationStage) samples the way the run's config trained:
    module.blend_residual / residual_scale; configs written before the option exist read as off."""
    from omegaconf import OmegaConf

    from ff_lightning.pipelines.stages import InterpolationStage
    from ff_lightning.systems.interpolation import InterpolationSystemConfig

    base = OmegaConf.structured(InterpolationSystemConfig())
    old = OmegaConf.create({k: v for k, v in OmegaConf.to_container(base).items()
                            if k not in ("blend_residual", "residual_scale")})  # fmt: skip
    on = OmegaConf.merge(base, {"blend_residual": True, "residual_scale": 2.0, "sample_steps": 2})
    off = OmegaConf.merge(old, {"sample_steps": 2})
    keys = torch.randn(1, 3, 4, HW, HW, generator=torch.Generator().manual_seed(3))
    null, schedule = torch.randn(32), NoiseSchedule.cosine(1000)
    out = {}
    for name, settings in (("on", on), ("off", off)):
        stage = InterpolationStage(unets["fusionframes"], null, torch.nn.Identity(), settings, schedule)
        out[name] = stage.model_interpolate(keys, seed=1)
    middle = torch.ones(9, dtype=torch.bool)
    middle[::4] = False
    torch.testing.assert_close(out["on"][:, middle], out["off"][:, middle] / 2.0 + _blend_by_hand(keys)[:, middle],
                               rtol=0, atol=1e-5)  # fmt: skip


def test_timestep_shift_moves_training_steps_towards_high_noise() -> None:
    from ff_lightning.models.interpolation_pipeline import shift_timesteps

    t = torch.arange(1000)
    assert torch.equal(shift_timesteps(t, 1000, 1.0), t)
    shifted = shift_timesteps(t, 1000, 4.0)
    assert int(shifted.min()) >= 0 and int(shifted.max()) == 999
    assert bool((shifted >= t).all()) and bool((shifted[1:] >= shifted[:-1]).all())  # monotone, never lower
    assert abs(float(shifted.float().median()) - 800) < 5  # 4 * 0.5 / (1 + 3 * 0.5) = 0.8
    with pytest.raises(ValueError, match="must be > 0"):
        shift_timesteps(t, 1000, 0.0)
