"""Stateless metric functions on videos ``(B, T, C, H, W)`` or images ``(N, C, H, W)``.

Pixel metrics (PSNR, SSIM, MSE, temporal consistency) are computed per frame, averaged over the frames of a video to
one value per sample, then over samples. ``reduction`` picks what comes back:

* ``"mean"``: a scalar, the mean over samples of the per-sample values;
* ``"none"``: per-sample values ``(B,)`` (bootstrap confidence intervals are drawn over these);
* ``"frames"``: per-frame values ``(B, T)`` (images count as ``T == 1``).

Results are float64 tensors. Inputs are not clamped; the decoder-table protocol is
``psnr(to_unit(pred), to_unit(target))``: frames mapped from [-1, 1] to [0, 1] and clamped, ``data_range=1``.

This module also re-exports the distribution metrics (:func:`frechet_distance`, :func:`feature_statistics`,
:func:`inception_score`), LPIPS (:func:`lpips`) and :func:`bootstrap_ci`, so that ``functional`` is the one import for
every metric function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ff_lightning.metrics.bootstrap import BootstrapCI, bootstrap_ci
from ff_lightning.metrics.distribution import feature_statistics, frechet_distance, inception_score
from ff_lightning.metrics.frames import Reduction, as_videos, reduce_frames
from ff_lightning.metrics.perceptual import lpips

__all__ = [
    "BootstrapCI",
    "Reduction",
    "bootstrap_ci",
    "clip_similarity",
    "feature_statistics",
    "frechet_distance",
    "gaussian_window",
    "inception_score",
    "lpips",
    "mse",
    "psnr",
    "reduce_frames",
    "ssim",
    "temporal_consistency",
    "to_unit",
]

# PSNR of a frame pair with zero error would be +inf; the MSE is floored at data_range**2 * 1e-10 (a 100 dB cap).
PSNR_MSE_FLOOR = 1e-10


def to_unit(x: torch.Tensor, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """Map values from ``[low, high]`` (default [-1, 1]) to [0, 1] and clamp; any shape."""
    return ((x - low) / (high - low)).clamp(0.0, 1.0)


def _frame_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame mean squared error ``(B, T)`` in float64 from videos ``(B, T, C, H, W)``."""
    diff = pred.to(torch.float64) - target.to(torch.float64)
    return diff.square().mean(dim=(2, 3, 4))


def mse(pred: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Mean squared error over ``(C, H, W)`` per frame, then averaged (see module doc for ``reduction``)."""
    p, t = as_videos(pred, target)
    return reduce_frames(_frame_mse(p, t), reduction)


def psnr(
    pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range**2 / MSE)`` per frame, then averaged.

    Matches ``skimage.metrics.peak_signal_noise_ratio`` per frame (MSE over all channels and pixels of the frame),
    except that the MSE is floored at ``data_range**2 * 1e-10`` so identical frames give 100 dB instead of +inf.
    """
    p, t = as_videos(pred, target)
    peak = float(data_range) ** 2
    frame_mse = _frame_mse(p, t).clamp_min(peak * PSNR_MSE_FLOOR)
    return reduce_frames(10.0 * torch.log10(peak / frame_mse), reduction)


def gaussian_window(kernel_size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``(kernel_size,)`` centred on the middle tap."""
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    x = torch.arange(kernel_size, dtype=dtype) - (kernel_size - 1) / 2
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _ssim_maps(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor, c1: float, c2: float) -> torch.Tensor:
    """SSIM means over the valid region for planes ``(N, H, W)`` (float64) -> ``(N,)``."""
    k = win.numel()
    wh, ww = win.view(1, 1, k, 1), win.view(1, 1, 1, k)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(z, wh), ww)  # separable Gaussian, 'valid' (no padding)

    x, y = x.unsqueeze(1), y.unsqueeze(1)
    stats = blur(torch.cat([x, y, x * x, y * y, x * y], dim=1).view(-1, 1, *x.shape[-2:]))
    stats = stats.view(x.shape[0], 5, *stats.shape[-2:])
    mx, my, mxx, myy, mxy = stats.unbind(dim=1)
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my  # population (co)variances
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(-2, -1))


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    kernel_size: int = 11,
    sigma: float = 1.5,
    reduction: Reduction = "mean",
    k1: float = 0.01,
    k2: float = 0.03,
    chunk_frames: int = 64,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per frame, then averaged (see module doc for ``reduction``).

    Gaussian window ``kernel_size`` x ``kernel_size`` with std ``sigma`` (11 and 1.5), ``C1 = (k1 L)^2``,
    ``C2 = (k2 L)^2`` with ``L = data_range``, population (not sample) covariances, each channel separately, the
    frame's SSIM being the mean over channels.

    Border convention: local statistics are computed only where the whole window lies inside the frame ("valid"
    region, ``(H - kernel_size + 1) x (W - kernel_size + 1)`` positions) and the SSIM map is averaged there. This is
    exactly ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=L, channel_axis=...)``: scikit-image filters with reflected borders but
    then crops ``(win_size - 1) // 2`` pixels from every side before averaging, which leaves the same valid region
    (its window is 11 taps for sigma 1.5: radius ``int(3.5 * sigma + 0.5) = 5``). Computed in float64, in chunks of
    ``chunk_frames`` frames to bound memory.
    """
    p, t = as_videos(pred, target)
    b, n_t, c, h, w = p.shape
    if h < kernel_size or w < kernel_size:
        raise ValueError(f"frames {h}x{w} are smaller than the SSIM window {kernel_size}")
    win = gaussian_window(kernel_size, sigma).to(p.device)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    pf, tf = p.reshape(b * n_t, c, h, w), t.reshape(b * n_t, c, h, w)
    out = []
    for start in range(0, b * n_t, max(1, chunk_frames)):
        xs = pf[start : start + chunk_frames].to(torch.float64).reshape(-1, h, w)
        ys = tf[start : start + chunk_frames].to(torch.float64).reshape(-1, h, w)
        out.append(_ssim_maps(xs, ys, win, c1, c2).view(-1, c).mean(dim=1))
    return reduce_frames(torch.cat(out).view(b, n_t), reduction)


def temporal_consistency(pred: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Flicker error: mean absolute difference between the frame-to-frame changes of ``pred`` and ``target``.

    For videos ``(B, T, C, H, W)`` with ``T >= 2``: ``d(x)_t = x_{t+1} - x_t`` and the per-sample value is the mean of
    ``|d(pred)_t - d(target)_t|`` over ``t < T - 1`` and all channels and pixels (in the inputs' units; use [0, 1]
    frames to compare with the PSNR table). 0 means the prediction changes over time exactly as the target does,
    whatever its per-frame error; a constant per-frame offset also scores 0. ``"frames"`` gives the ``(B, T - 1)``
    values of the frame transitions.
    """
    if pred.ndim != 5:
        raise ValueError(f"temporal_consistency needs videos (B, T, C, H, W), got shape {tuple(pred.shape)}")
    p, t = as_videos(pred, target)
    if p.shape[1] < 2:
        raise ValueError("temporal_consistency needs at least 2 frames")
    dp = p[:, 1:].to(torch.float64) - p[:, :-1].to(torch.float64)
    dt = t[:, 1:].to(torch.float64) - t[:, :-1].to(torch.float64)
    return reduce_frames((dp - dt).abs().mean(dim=(2, 3, 4)), reduction)


def clip_similarity(image_emb: torch.Tensor, text_emb: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """CLIP similarity: cosine between each frame's image embedding and its prompt's text embedding.

    Args:
        image_emb: ``(B, T, D)`` frame embeddings (``(B, D)`` counts as one frame).
        text_emb: ``(B, D)`` prompt embeddings.
        reduction: ``"frames"`` -> ``(B, T)`` cosines, ``"none"`` -> ``(B,)`` per prompt (mean over frames),
            ``"mean"`` -> mean over prompts.

    Raw cosine in [-1, 1]: neither multiplied by 100 nor clipped at 0 (unlike CLIPScore).
    """
    if image_emb.ndim == 2:
        image_emb = image_emb.unsqueeze(1)
    if image_emb.ndim != 3 or text_emb.ndim != 2:
        raise ValueError(
            f"expected image_emb (B, T, D) and text_emb (B, D), got {tuple(image_emb.shape)}, {tuple(text_emb.shape)}"
        )
    if image_emb.shape[0] != text_emb.shape[0] or image_emb.shape[-1] != text_emb.shape[-1]:
        raise ValueError(f"batch or embedding sizes differ: {tuple(image_emb.shape)} vs {tuple(text_emb.shape)}")
    img = F.normalize(image_emb.to(torch.float64), dim=-1)
    txt = F.normalize(text_emb.to(torch.float64), dim=-1)
    return reduce_frames((img * txt.unsqueeze(1)).sum(dim=-1), reduction)
