"""Flow-based temporal upsampling: a training-free interpolation arm (registry component ``interpolation_arm``).

Same frame layout as the diffusion interpolators of :mod:`ff_lightning.models.interpolation_pipeline`: one pass turns
``K`` keyframes ``(B, K, c, h, w)`` into ``4K - 3`` frames, three middle frames per neighbouring pair at ``t = 1/4,
1/2, 3/4`` (keyframes kept as given); ``passes = n`` repeats it (``4^n (K - 1) + 1`` frames). Per pair ``(I0, I1)``:

1. **Flow** both ways, ``F01 = flow(I0 -> I1)`` and ``F10``, ``(N, 2, H, W)`` in pixels, channel 0 = x (width), 1 = y,
   with the backward-warp convention ``I1(p + F01(p)) ~ I0(p)``. Estimators: :class:`FarnebackFlow` (OpenCV's dense
   Farneback on grayscale uint8; no parameters) and :class:`RaftFlow` (torchvision's ``raft_small`` from a local
   weights file only).
2. **Intermediate flows by linear scaling** (constant motion along each path, and the flow at the target pixel taken
   from the same pixel of the keyframe's flow field, the usual first-order approximation): ``F_t0 ~ -t F01``,
   ``F_t1 ~ -(1 - t) F10``. Exact for a uniform translation; wrong by up to the motion at motion boundaries.
3. **Backward warping** of both keyframes to ``t`` (:func:`backward_warp`: ``grid_sample``, bilinear, border padding,
   ``align_corners=True`` so integer flows sample pixels exactly).
4. **Occlusion-aware blending.** Forward-backward consistency of each keyframe's flow, ``e0(p) = |F01(p) +
   F10(p + F01(p))|``, gives a soft visibility ``v0 = exp(-e0^2 / (alpha (|F01|^2 + |F10(p + F01)|^2) + beta))``
   (:func:`flow_visibility`; low where the pixel has no consistent match in the other frame: occluded there, or a flow
   error), ``v1`` likewise. The visibilities are warped along with the frames and the blend is ``(w0 W0 + w1 W1) /
   (w0 + w1)`` with ``w0 = (1 - t)(v0 + eps)``, ``w1 = t (v1 + eps)`` (:func:`blend_weights`): the time weights of a
   linear blend, shifted towards the side whose sample is consistent.

Spaces (``space``): ``pixel`` warps the frames themselves. ``latent`` warps latents ``(B, K, c, h, w)`` on their own
grid: the flow is computed on images ``(H, W)`` - the decoded keyframes (``flow_from="decoded"``, ``decode`` passed to
``forward``) or a grayscale visualisation of the latents (``flow_from="latent"``: channel mean, min-max normalised) -
then resized to ``(h, w)`` with the vectors scaled by ``w / W`` and ``h / H`` (:func:`resize_flow`); the caller
decodes the warped latents.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ff_lightning.models.interpolation_pipeline import merge_sequence, output_frames
from ff_lightning.registry import register_component, register_variant

__all__ = [
    "MIDDLE_TIMES",
    "RAFT_SMALL_FILE",
    "FlowEstimator",
    "FarnebackFlow",
    "RaftFlow",
    "FlowInterpolator",
    "backward_warp",
    "resize_flow",
    "flow_visibility",
    "blend_weights",
    "build_flow_interpolator",
]

#: the times of the three middle frames of a keyframe pair
MIDDLE_TIMES: tuple[float, ...] = (0.25, 0.5, 0.75)
#: torchvision's file name of the RAFT-small weights (C+T training schedule, v2)
RAFT_SMALL_FILE = "raft_small_C_T_V2-01064c6d.pth"
RAFT_SMALL_URL = f"https://download.pytorch.org/models/{RAFT_SMALL_FILE}"
_OPENCV_PIN = "opencv-python-headless==5.0.0.93"


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            f"the Farneback flow estimator needs OpenCV: pip install -c constraints.txt {_OPENCV_PIN} "
            "(part of the project's pinned install)"
        ) from e
    return cv2


# ---------------------------------------------------------------------------------------------------- warping
def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``out(p) = image(p + flow(p))``: ``image`` ``(N, C, H, W)``, ``flow`` ``(N, 2, H, W)`` in pixels (x, y).

    Bilinear, border padding (outside samples take the nearest edge pixel), pixel centres at integer coordinates
    (``align_corners=True``): an integer flow moves pixels exactly. Returns ``(N, C, H, W)``.
    """
    n, _, h, w = image.shape
    if flow.shape != (n, 2, h, w):
        raise ValueError(f"flow {tuple(flow.shape)} does not match image {tuple(image.shape)}: need (N, 2, H, W)")
    ys, xs = torch.meshgrid(
        torch.arange(h, device=flow.device, dtype=flow.dtype),
        torch.arange(w, device=flow.device, dtype=flow.dtype),
        indexing="ij",
    )
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    gx = 2 * x / max(w - 1, 1) - 1  # align_corners=True normalisation
    gy = 2 * y / max(h - 1, 1) - 1
    grid = torch.stack([gx, gy], dim=-1).to(image.dtype)  # N H W 2
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Flow ``(N, 2, H, W)`` -> ``(N, 2, h, w)``: bilinear resampling, x vectors times ``w / W``, y times ``h / H``."""
    h, w = size
    src_h, src_w = flow.shape[-2:]
    if (h, w) == (src_h, src_w):
        return flow
    out = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
    scale = torch.tensor([w / src_w, h / src_h], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
    return out * scale


def flow_visibility(
    flow_ab: torch.Tensor, flow_ba: torch.Tensor, *, alpha: float = 0.01, beta: float = 0.5
) -> torch.Tensor:
    """Soft forward-backward consistency of ``flow_ab`` ``(N, 2, H, W)`` against ``flow_ba``: ``(N, 1, H, W)`` in
    ``(0, 1]``, 1 where going a -> b -> a returns to the start pixel (see the module docstring; ``alpha``, ``beta``
    as in the classic hard check ``e^2 < alpha (|F|^2 + |F'|^2) + beta``)."""
    back = backward_warp(flow_ba, flow_ab)  # F_ba at p + F_ab(p)
    err = (flow_ab + back).square().sum(1, keepdim=True)
    tol = alpha * (flow_ab.square().sum(1, keepdim=True) + back.square().sum(1, keepdim=True)) + beta
    return torch.exp(-err / tol)


def blend_weights(
    vis0: torch.Tensor, vis1: torch.Tensor, t: float, eps: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised weights of the two warped samples at time ``t``: ``(1 - t)(v0 + eps)`` and ``t (v1 + eps)`` over
    their sum; ``vis*`` ``(N, 1, H, W)``. Equal visibilities give the linear-blend weights ``1 - t`` and ``t``."""
    w0 = (1 - t) * (vis0 + eps)
    w1 = t * (vis1 + eps)
    total = w0 + w1
    return w0 / total, w1 / total


# -------------------------------------------------------------------------------------------------- estimators
class FlowEstimator(nn.Module):
    """Dense optical flow: ``forward(src, dst)`` with images ``(N, C, H, W)`` in ``[-1, 1]`` -> ``(N, 2, H, W)``
    float flow in pixels such that ``dst(p + flow(p)) ~ src(p)`` (so ``backward_warp(dst, flow) ~ src``)."""

    def forward(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def _gray_uint8(images: torch.Tensor) -> Any:
    """``(N, C, H, W)`` in [-1, 1] -> numpy uint8 ``(N, H, W)`` (ITU-R 601 luma for 3 channels, mean otherwise)."""
    x = images.detach().float().cpu()
    if x.shape[1] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    else:
        x = x.mean(1)
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


class FarnebackFlow(FlowEstimator):
    """OpenCV's dense Farneback flow (``cv2.calcOpticalFlowFarneback``) on grayscale uint8 frames; no parameters.

    Arguments are OpenCV's: ``pyr_scale`` (scale between pyramid levels), ``levels`` (pyramid levels, lowered
    automatically on small frames), ``winsize`` (averaging window), ``iterations`` (per level), ``poly_n`` /
    ``poly_sigma`` (neighbourhood and Gaussian of the polynomial expansion: 5 / 1.1 or 7 / 1.5), ``gaussian`` (Gaussian
    instead of box window). ``winsize`` 15: on train-split windows of the bundled footage (16 and 64 px) it gave
    about 1 dB PSNR more than 9 or 5 (larger windows smooth the flow of small, noisy frames).
    """

    def __init__(
        self,
        pyr_scale: float = 0.5,
        levels: int = 3,
        winsize: int = 15,
        iterations: int = 5,
        poly_n: int = 5,
        poly_sigma: float = 1.1,
        gaussian: bool = True,
    ) -> None:
        super().__init__()
        self.options = dict(pyr_scale=pyr_scale, levels=levels, winsize=winsize, iterations=iterations,
                            poly_n=poly_n, poly_sigma=poly_sigma, gaussian=gaussian)  # fmt: skip

    def forward(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        cv2 = _cv2()
        o = self.options
        a, b = _gray_uint8(src), _gray_uint8(dst)
        side = min(a.shape[1:])
        levels = max(1, min(o["levels"], int(torch.tensor(side / 8).log2().floor()) + 1))  # coarsest level >= 8 px
        flags = cv2.OPTFLOW_FARNEBACK_GAUSSIAN if o["gaussian"] else 0
        flows = [
            cv2.calcOpticalFlowFarneback(
                a[i],
                b[i],
                None,
                o["pyr_scale"],
                levels,
                o["winsize"],
                o["iterations"],
                o["poly_n"],
                o["poly_sigma"],
                flags,
            )  # fmt: skip
            for i in range(a.shape[0])
        ]
        out = torch.stack([torch.from_numpy(f) for f in flows])  # N H W 2
        return rearrange(out, "n h w two -> n two h w").to(device=src.device, dtype=torch.float32)


class RaftFlow(FlowEstimator):
    """torchvision's RAFT-small (``torchvision.models.optical_flow.raft_small``), weights from a local file only.

    ``weights``: path of a state dict (torchvision's ``raft_small_C_T_V2-01064c6d.pth``), read with
    ``weights_only=True`` at the first ``forward`` (building costs nothing, e.g. on the meta device for ``ff
    params``). Frames are resized to at least ``min_side`` (RAFT needs >= 128 px: its correlation pyramid works at
    1/8 resolution) and to multiples of 8; the flow is resized back (:func:`resize_flow`). Parameters are frozen.
    """

    def __init__(self, weights: str | os.PathLike[str] | None = None, num_flow_updates: int = 12,
                 min_side: int = 128) -> None:  # fmt: skip
        super().__init__()
        try:
            from torchvision.models.optical_flow import raft_small
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("the RAFT flow estimator needs torchvision (torchvision.models.optical_flow)") from e
        self.net = raft_small(weights=None, progress=False)
        self.net.requires_grad_(False)
        self.net.eval()
        self.weights = None if weights is None else str(weights)
        self.num_flow_updates = num_flow_updates
        self.min_side = min_side
        self._loaded = False

    def load_weights(self) -> None:
        """Load the state dict from ``weights`` (``weights_only=True``); a clear error when it is missing."""
        path = Path(self.weights) if self.weights else None
        if path is not None and path.is_dir():
            path = path / RAFT_SMALL_FILE
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"RAFT-small weights not found ({'no path given' if path is None else path}): the flow arm never "
                f"downloads. Get {RAFT_SMALL_FILE} (torchvision's RAFT-small, {RAFT_SMALL_URL}) on a machine with "
                "network access, copy it here and pass its path (or its folder) as `weights`, e.g. "
                f"$FF_CACHE_DIR/weights/{RAFT_SMALL_FILE}"
            )
        from ff_lightning.checkpoints import load_checkpoint

        self.net.load_state_dict(load_checkpoint(path))
        self._loaded = True

    def train(self, mode: bool = True) -> RaftFlow:
        super().train(mode)
        self.net.eval()  # inference only: BatchNorm/dropout stay in eval mode
        return self

    @torch.no_grad()
    def forward(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        if not self._loaded:
            self.load_weights()
        h, w = src.shape[-2:]
        scale = max(1.0, self.min_side / min(h, w))
        size = (8 * max(1, round(h * scale / 8)), 8 * max(1, round(w * scale / 8)))

        def prep(x: torch.Tensor) -> torch.Tensor:
            x = x.float()
            if x.shape[1] != 3:
                x = x.mean(1, keepdim=True).expand(-1, 3, -1, -1)
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(-1, 1)

        flows = self.net(prep(src), prep(dst), num_flow_updates=self.num_flow_updates)
        return resize_flow(flows[-1], (h, w))


def _latent_visualisation(latents: torch.Tensor) -> torch.Tensor:
    """Latents ``(N, c, h, w)`` -> grayscale ``(N, 1, h, w)`` in [-1, 1]: channel mean, min-max over each frame."""
    g = latents.float().mean(1, keepdim=True)
    lo = g.amin(dim=(1, 2, 3), keepdim=True)
    hi = g.amax(dim=(1, 2, 3), keepdim=True)
    return 2 * (g - lo) / (hi - lo).clamp_min(1e-6) - 1


# ------------------------------------------------------------------------------------------------ interpolator
class FlowInterpolator(nn.Module):
    """Flow-based interpolation arm (see the module docstring).

    ``estimator``: a :class:`FlowEstimator`. ``space``: ``pixel`` or ``latent``; ``flow_from`` (latent space):
    ``decoded`` (flow on ``decode(latents)``) or ``latent`` (on a grayscale visualisation of the latents).
    ``times``: the middle-frame times (the diffusion arms' three). ``alpha`` / ``beta``: the consistency tolerance
    (:func:`flow_visibility`); ``occlusion=False`` blends with the plain time weights.

    ``forward(keyframes, passes=1, decode=None)``: ``(B, K, c, h, w)`` -> ``(B, 4^n (K - 1) + 1, c, h, w)``.
    """

    def __init__(
        self,
        estimator: FlowEstimator,
        *,
        space: str = "pixel",
        flow_from: str = "decoded",
        times: tuple[float, ...] = MIDDLE_TIMES,
        occlusion: bool = True,
        alpha: float = 0.01,
        beta: float = 0.5,
    ) -> None:
        super().__init__()
        if space not in ("pixel", "latent"):
            raise ValueError(f"space must be 'pixel' or 'latent', got {space!r}")
        if flow_from not in ("decoded", "latent"):
            raise ValueError(f"flow_from must be 'decoded' or 'latent', got {flow_from!r}")
        if len(times) != 3:
            raise ValueError("the interpolation layout has three middle frames per keyframe pair")
        self.estimator = estimator
        self.space, self.flow_from, self.times = space, flow_from, tuple(times)
        self.occlusion, self.alpha, self.beta = occlusion, alpha, beta

    def _flow_images(self, frames: torch.Tensor, decode: Any) -> torch.Tensor:
        if self.space == "pixel":
            return frames
        if self.flow_from == "latent":
            return _latent_visualisation(frames)
        if decode is None:
            raise ValueError("latent space with flow_from='decoded' needs `decode` (latents -> images in [-1, 1])")
        return decode(frames)

    def pair_flows(
        self, left: torch.Tensor, right: torch.Tensor, decode: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flows ``F01``, ``F10`` ``(N, 2, h, w)`` on the grid of ``left`` / ``right`` ``(N, c, h, w)``."""
        images = self._flow_images(torch.cat([left, right]), decode)
        a, b = images.chunk(2)
        f01, f10 = self.estimator(a, b), self.estimator(b, a)
        size = tuple(left.shape[-2:])
        return resize_flow(f01.to(left.device), size), resize_flow(f10.to(left.device), size)

    def middle_frames(
        self, left: torch.Tensor, right: torch.Tensor, f01: torch.Tensor, f10: torch.Tensor
    ) -> torch.Tensor:
        """The frames at ``times`` between ``left`` and ``right`` ``(N, c, h, w)``: ``(N, 3, c, h, w)``."""
        f01, f10 = f01.float(), f10.float()
        if self.occlusion:
            v0 = flow_visibility(f01, f10, alpha=self.alpha, beta=self.beta)
            v1 = flow_visibility(f10, f01, alpha=self.alpha, beta=self.beta)
        out = []
        for t in self.times:
            ft0, ft1 = -t * f01, -(1 - t) * f10  # linear scaling of the keyframe flows
            w0_img, w1_img = backward_warp(left.float(), ft0), backward_warp(right.float(), ft1)
            if self.occlusion:
                a, b = blend_weights(backward_warp(v0, ft0), backward_warp(v1, ft1), t)
            else:
                a, b = 1 - t, t
            out.append((a * w0_img + b * w1_img).to(left.dtype))
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def interpolate_once(self, keys: torch.Tensor, *_: Any, decode: Any = None, **__: Any) -> torch.Tensor:
        """One pass: keyframes ``(B, K, c, h, w)`` -> ``(B, 4K - 3, c, h, w)`` (keyframes kept as given).

        Extra positional / keyword arguments of the diffusion arms' ``interpolate_once`` (null embedding, sampling,
        skip frames, guidance, generator) are accepted and ignored, so the arms can be swapped."""
        if keys.ndim != 5 or keys.shape[1] < 2:
            raise ValueError(f"keyframes must be (B, K >= 2, c, h, w), got {tuple(keys.shape)}")
        b = keys.shape[0]
        left = rearrange(keys[:, :-1], "b g c h w -> (b g) c h w")  # every keyframe pair a row
        right = rearrange(keys[:, 1:], "b g c h w -> (b g) c h w")
        f01, f10 = self.pair_flows(left, right, decode)
        middles = self.middle_frames(left, right, f01, f10)  # (b g) 3 c h w
        return merge_sequence(keys, rearrange(middles, "(b g) f c h w -> b g f c h w", b=b))

    @torch.no_grad()
    def forward(self, keyframes: torch.Tensor, passes: int = 1, decode: Any = None) -> torch.Tensor:
        """``(B, K, c, h, w)`` -> ``(B, 4^n (K - 1) + 1, c, h, w)`` after ``passes = n`` passes."""
        if passes < 1:
            raise ValueError(f"passes must be >= 1, got {passes}")
        seq = keyframes
        for _ in range(passes):
            seq = self.interpolate_once(seq, decode=decode)
        assert seq.shape[1] == output_frames(keyframes.shape[1], passes)
        return seq


# ---------------------------------------------------------------------------------------------------- registry
ESTIMATORS = {"farneback": FarnebackFlow, "raft": RaftFlow}


def build_flow_interpolator(
    estimator: str = "farneback",
    space: str = "pixel",
    flow_from: str = "decoded",
    occlusion: bool = True,
    **estimator_options: Any,
) -> FlowInterpolator:
    """A :class:`FlowInterpolator` with a named estimator (``farneback`` | ``raft``); ``estimator_options`` go to the
    estimator (e.g. ``weights=PATH`` for RAFT, ``winsize=15`` for Farneback)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown flow estimator {estimator!r}; valid choices: {', '.join(ESTIMATORS)}")
    est = ESTIMATORS[estimator](**estimator_options)
    return FlowInterpolator(est, space=space, flow_from=flow_from, occlusion=occlusion)


register_component(
    "interpolation_arm",
    {"tiny": {}, "small": {}, "paper": {}},
    "training-free interpolation arms (4K - 3 frames from K keyframes, like interpolation_unet)",
)
register_variant(
    "interpolation_arm", "flow_farneback", build_flow_interpolator, estimator="farneback", space="pixel",
    description="OpenCV Farneback flow both ways, linear-scaled intermediate flows, occlusion-aware blend (pixels)",
)  # fmt: skip
register_variant(
    "interpolation_arm", "flow_farneback_latent", build_flow_interpolator, estimator="farneback", space="latent",
    description="Farneback flow on the decoded keyframes resized to the latent grid; warps latents before decoding",
)  # fmt: skip
register_variant(
    "interpolation_arm", "flow_raft", build_flow_interpolator, estimator="raft", space="pixel",
    description="torchvision RAFT-small flow (local weights file, frozen), occlusion-aware blend (pixels)",
)  # fmt: skip
