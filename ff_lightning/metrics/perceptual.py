"""LPIPS (Zhang et al. 2018), AlexNet trunk, v0.1, with weights from local files only.

The network is defined here (no torchvision model construction, so nothing can trigger a download):

* trunk: AlexNet's convolutional layers with torchvision's module indices (``features.0`` ... ``features.10``), so
  torchvision's ImageNet file ``alexnet-owt-7be5be79.pth`` loads directly; it is resolved by
  :func:`ff_lightning.metrics.weights.resolve_weights` (``"alexnet"``) and never shipped;
* linear heads: the ``lpips`` package's calibrated v0.1 file ``weights/v0.1/alex.pth`` (pinned hash);
* forward, for inputs in [-1, 1]: ``(x - shift) / scale`` with the LPIPS v0.1 constants, the five post-ReLU
  activations, each unit-normalised over channels (``f / (||f||_2 + 1e-10)``), squared differences, the 1x1 head,
  spatial mean, summed over the five layers.

Without the backbone file :func:`build_lpips` raises :class:`~ff_lightning.metrics.weights.WeightsUnavailable`.
Random trunks exist only for tests: pass ``backbone_state_dict`` explicitly or ``allow_random_backbone=True`` (which
warns).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ff_lightning.metrics.frames import Reduction, as_videos, reduce_frames
from ff_lightning.metrics.weights import WeightsInfo, resolve_weights

__all__ = ["LPIPS", "AlexNetTrunk", "build_lpips", "lpips"]

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_CHANNELS = (64, 192, 384, 256, 256)
_EPS = 1e-10


class AlexNetTrunk(nn.Module):
    """AlexNet convolutional layers (torchvision indices 0-11) returning the 5 post-ReLU maps LPIPS compares."""

    TAPS = (1, 4, 7, 9, 11)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, 3, H, W)`` -> five maps ``(N, C_k, H_k, W_k)`` with ``C = 64, 192, 384, 256, 256``."""
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                taps.append(x)
        return taps


class LPIPS(nn.Module):
    """LPIPS distance between image batches in [-1, 1]; see the module docstring. Frozen, eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = AlexNetTrunk()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.weights_info: list[dict[str, Any]] = []

    def load_backbone(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load torchvision-AlexNet keys ``features.{i}.weight|bias`` (``classifier.*`` is ignored)."""
        sd = {k: v for k, v in state_dict.items() if k.startswith("features.")}
        self.trunk.load_state_dict(sd, strict=True)

    def load_heads(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load the ``lpips`` package's head keys ``lin{k}.model.1.weight`` (``(1, C_k, 1, 1)``)."""
        sd = {f"{k}.weight": state_dict[f"lin{k}.model.1.weight"] for k in range(len(_CHANNELS))}
        self.heads.load_state_dict(sd, strict=True)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """Distances ``(N,)`` between ``x0`` and ``x1`` ``(N, 3, H, W)`` in [-1, 1] (H, W >= 32)."""
        f0 = self.trunk((x0 - self.shift) / self.scale)
        f1 = self.trunk((x1 - self.shift) / self.scale)
        total = x0.new_zeros(x0.shape[0])
        for a, b, head in zip(f0, f1, self.heads, strict=True):
            a = a / (a.square().sum(dim=1, keepdim=True).sqrt() + _EPS)
            b = b / (b.square().sum(dim=1, keepdim=True).sqrt() + _EPS)
            total = total + head((a - b).square()).mean(dim=(1, 2, 3))
        return total


def _load_torch_file(info: WeightsInfo) -> dict[str, torch.Tensor]:
    return torch.load(info.path, map_location="cpu", weights_only=True)


def build_lpips(
    net: str = "alex",
    version: str = "0.1",
    *,
    backbone_path: str | os.PathLike[str] | None = None,
    backbone_state_dict: Mapping[str, torch.Tensor] | None = None,
    heads_path: str | os.PathLike[str] | None = None,
    allow_random_backbone: bool = False,
) -> LPIPS:
    """Build a frozen LPIPS model from local files.

    Args:
        net, version: only ``"alex"`` / ``"0.1"`` are implemented.
        backbone_path: the torchvision AlexNet file (else resolved: ``$FF_WEIGHTS_DIR``, ``$FF_CACHE_DIR/weights``,
            torch hub cache).
        backbone_state_dict: use these trunk weights instead of a file (torchvision key names).
        heads_path: override the ``lpips`` package's v0.1 head file.
        allow_random_backbone: TEST ONLY: keep a randomly initialised trunk when no state dict is given (warns).

    ``model.weights_info`` lists the resolved files (:meth:`WeightsInfo.as_dict`) for result records.
    """
    if net != "alex" or version != "0.1":
        raise ValueError(f"only LPIPS net='alex' version='0.1' is implemented, got net={net!r} version={version!r}")
    model = LPIPS()
    heads = resolve_weights("lpips_alex_v0.1", heads_path)
    model.load_heads(_load_torch_file(heads))
    model.weights_info.append(heads.as_dict())
    if backbone_state_dict is not None:
        model.load_backbone(backbone_state_dict)
        model.weights_info.append({"name": "alexnet", "source": "caller-supplied state dict"})
    elif allow_random_backbone:
        warnings.warn(
            "LPIPS with a RANDOM AlexNet trunk (allow_random_backbone=True): for tests only, the values are not LPIPS",
            stacklevel=2,
        )
        model.weights_info.append({"name": "alexnet", "source": "random init (test only)"})
    else:
        info = resolve_weights("alexnet", backbone_path)
        model.load_backbone(_load_torch_file(info))
        model.weights_info.append(info.as_dict())
    model.eval().requires_grad_(False)
    return model


_CACHE: dict[tuple[str, str, str], LPIPS] = {}


def _cached_model(backbone_path: str | os.PathLike[str] | None) -> LPIPS:
    info = resolve_weights("alexnet", backbone_path)
    key = (str(info.path), info.sha256, str(backbone_path))
    if key not in _CACHE:
        _CACHE[key] = build_lpips(backbone_path=info.path)
    return _CACHE[key]


@torch.no_grad()
def lpips(
    pred: torch.Tensor,
    target: torch.Tensor,
    net: str = "alex",
    version: str = "0.1",
    reduction: Reduction = "mean",
    *,
    model: LPIPS | None = None,
    backbone_path: str | os.PathLike[str] | None = None,
    backbone_state_dict: Mapping[str, torch.Tensor] | None = None,
    allow_random_backbone: bool = False,
    chunk_frames: int = 32,
) -> torch.Tensor:
    """LPIPS per frame on videos ``(B, T, 3, H, W)`` or images ``(N, 3, H, W)`` in [-1, 1], then averaged.

    ``reduction`` as in :mod:`ff_lightning.metrics.functional` (``"none"`` -> per-sample ``(B,)``). Pass ``model`` to
    reuse a built network; otherwise one is built from local files (and cached) or from the test-only arguments
    (see :func:`build_lpips`). Returns float64.
    """
    p, t = as_videos(pred, target)
    if model is None:
        if backbone_state_dict is not None or allow_random_backbone:
            model = build_lpips(
                net, version, backbone_state_dict=backbone_state_dict, allow_random_backbone=allow_random_backbone
            )
        elif net == "alex" and version == "0.1":
            model = _cached_model(backbone_path)
        else:
            model = build_lpips(net, version, backbone_path=backbone_path)
    model = model.to(p.device)
    b, n_t = p.shape[:2]
    pf, tf = p.reshape(b * n_t, *p.shape[2:]), t.reshape(b * n_t, *t.shape[2:])
    step = max(1, chunk_frames)
    dist = torch.cat([model(pf[i : i + step].float(), tf[i : i + step].float()) for i in range(0, b * n_t, step)])
    return reduce_frames(dist.to(torch.float64).view(b, n_t), reduction)
