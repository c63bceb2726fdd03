"""LPIPS (Zhang et al. 2018), AlexNet trunk, v0.1: the ``lpips`` package's network, with weights from local files only.

The computation is the ``lpips`` package's own :class:`lpips.LPIPS` (``net="alex"``, ``version="0.1"``): scaling
layer, the five post-ReLU AlexNet activations, channel unit-normalisation, squared differences, the calibrated 1x1
heads, spatial mean, summed. Only where its weights come from differs, so that nothing is ever downloaded:

* the package is built with ``pnet_rand=True`` (torchvision's AlexNet constructed without weights: no download) and
  its trunk is then filled from torchvision's ImageNet file ``alexnet-owt-7be5be79.pth``, resolved by
  :func:`ff_lightning.metrics.weights.resolve_weights` (``"alexnet"``, hash-prefix pinned) and never shipped;
* the linear heads are the package's v0.1 file ``weights/v0.1/alex.pth``, resolved (and sha256-pinned) the same way
  and handed to the package as ``model_path``.

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

__all__ = ["LPIPS", "TRUNK_KEYS", "build_lpips", "lpips"]

#: torchvision AlexNet ``features`` indices of the convolutions, and the ``lpips`` package slice holding each
_SLICE_OF = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
#: the trunk keys a backbone state dict must provide (torchvision names)
TRUNK_KEYS = tuple(f"features.{i}.{kind}" for i in _SLICE_OF for kind in ("weight", "bias"))


class LPIPS(nn.Module):
    """LPIPS distance between image batches ``(N, 3, H, W)`` in [-1, 1] -> ``(N,)``; frozen, eval mode.

    Wraps :class:`lpips.LPIPS` (``self.net``) built from the v0.1 head file ``heads_path`` with an unloaded trunk
    (see the module docstring); :meth:`load_backbone` fills the trunk.
    """

    def __init__(self, heads_path: str | os.PathLike[str]) -> None:
        super().__init__()
        import lpips as lpips_pkg

        with warnings.catch_warnings():  # torchvision's "pretrained is deprecated" notes from inside the package
            warnings.simplefilter("ignore")
            self.net = lpips_pkg.LPIPS(
                net="alex", version="0.1", pretrained=True, pnet_rand=True, model_path=str(heads_path), verbose=False
            )
        self.weights_info: list[dict[str, Any]] = []

    def load_backbone(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load torchvision-AlexNet keys ``features.{i}.weight|bias`` (``classifier.*`` is ignored) into the trunk."""
        missing = [k for k in TRUNK_KEYS if k not in state_dict]
        if missing:
            raise KeyError(f"AlexNet state dict lacks {missing}; expected torchvision's features.* keys")
        sd = {}
        for key in TRUNK_KEYS:
            _, idx, kind = key.split(".")
            sd[f"slice{_SLICE_OF[int(idx)]}.{idx}.{kind}"] = state_dict[key]
        self.net.net.load_state_dict(sd, strict=True)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """Distances ``(N,)`` between ``x0`` and ``x1`` ``(N, 3, H, W)`` in [-1, 1] (H, W >= 32)."""
        return self.net(x0, x1, normalize=False).flatten()


def _load_torch_file(info: WeightsInfo) -> dict[str, torch.Tensor]:
    from ff_lightning.checkpoints import load_checkpoint

    return load_checkpoint(info.path)


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
    heads = resolve_weights("lpips_alex_v0.1", heads_path)
    model = LPIPS(heads.path)
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
