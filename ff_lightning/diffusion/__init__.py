"""Gaussian diffusion for the Kandinsky UNets: cosine noise schedule, eps / v parameterisations, classifier-free
guidance and samplers (the release's ancestral DDPM with dynamic thresholding, and DDIM).

Typical use::

    from ff_lightning.diffusion import NoiseSchedule, SamplingSchedule, guided_denoiser, sample

    schedule = NoiseSchedule.cosine(1000)
    x_t = schedule.q_sample(x0, t, noise)  # training
    denoise = guided_denoiser(lambda x, t, c, m: unet(x, t, c, m), cond, uncond, weight=5.0)
    latents = sample(denoise, (n, 4, h, w), SamplingSchedule.release(50), method="ddpm", threshold=0.98,
                     generator=torch.Generator().manual_seed(0))
"""

from ff_lightning.diffusion.guidance import (
    Condition,
    Denoiser,
    ModelFn,
    combine_guidance,
    concat_conditions,
    expand_condition,
    guided_denoiser,
    pad_condition,
)
from ff_lightning.diffusion.parameterization import (
    PREDICTIONS,
    eps_from_v,
    eps_from_x0,
    prediction_target,
    v_from_x0_eps,
    x0_eps_from_prediction,
    x0_from_eps,
    x0_from_v,
)
from ff_lightning.diffusion.samplers import (
    SAMPLERS,
    SPACINGS,
    SamplingSchedule,
    ddim_step,
    ddpm_step,
    dynamic_threshold,
    quantile_rows,
    sample,
)
from ff_lightning.diffusion.schedule import NoiseSchedule, cosine_alpha_bar, cosine_betas

__all__ = [
    "NoiseSchedule",
    "cosine_alpha_bar",
    "cosine_betas",
    "PREDICTIONS",
    "prediction_target",
    "x0_eps_from_prediction",
    "x0_from_eps",
    "eps_from_x0",
    "v_from_x0_eps",
    "x0_from_v",
    "eps_from_v",
    "Condition",
    "ModelFn",
    "Denoiser",
    "combine_guidance",
    "pad_condition",
    "expand_condition",
    "concat_conditions",
    "guided_denoiser",
    "SAMPLERS",
    "SPACINGS",
    "SamplingSchedule",
    "quantile_rows",
    "dynamic_threshold",
    "ddpm_step",
    "ddim_step",
    "sample",
]
