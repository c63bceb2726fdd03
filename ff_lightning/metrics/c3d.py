"""C3D UCF-101 classifier for the video Inception Score, as used by TGANv2 (Saito et al. 2020).

Architecture (input ``(B, 3, 16, 112, 112)``, BGR, preprocessed by :func:`preprocess_c3d`): eight 3x3x3 convolutions
with ReLU (64, 128, 256, 256, 512, 512, 512, 512 channels; names ``conv1a conv2a conv3a conv3b conv4a conv4b conv5a
conv5b``), max pools ``pool1`` 1x2x2 and ``pool2``-``pool5`` 2x2x2, all with Chainer's ``cover_all`` rounding (ceil
mode: ``pool5`` maps 2x7x7 to 1x4x4), then ``fc6`` 8192->4096, ``fc7`` 4096->4096 (ReLU, dropout) and ``fc8``
4096->101 logits. No weights are shipped: :func:`load_c3d` reads the TGANv2 Chainer file ``conv3d_deepnetA_ucf.npz``
(keys ``conv1a/W``, ``conv1a/b``, ...) or a PyTorch state dict with this module's names, via
:func:`~ff_lightning.metrics.weights.resolve_weights` (``"c3d_ucf101"``).

Preprocessing, as TGANv2's Chainer model does it (its ``pre`` 1x1x1 convolution, resize and ``mean`` bias), for RGB
videos in [-1, 1] (clamped):

1. the first 16 frames;
2. each frame resized directly (no crop, aspect ratio not kept) to 112x112, bilinear with ``align_corners=True``
   (Chainer's ``F.resize_images`` default);
3. channels reversed to BGR and scaled by 128, plus 128: ``128 * x + 128`` (0..256);
4. the C3D mean subtracted. TGANv2 uses the per-pixel mean clip ``mean2.npz`` (key ``mean``, ``(3, 16, 128, 171)``
   BGR) cropped to rows and columns ``8:120`` (:func:`load_c3d_mean`). Without that file a per-channel BGR mean is
   used (:data:`C3D_CHANNEL_MEAN_BGR`, the per-channel values in TGANv2's code); this is an approximation, and
   results must say which mean was used.

The Inception Score itself is :func:`ff_lightning.metrics.functional.inception_score` on the logits (TGANv2: 2048
samples, ``splits=1``, repeated 10 times).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ff_lightning.metrics.weights import resolve_weights

__all__ = [
    "C3D",
    "C3D_CHANNEL_MEAN_BGR",
    "c3d_state_dict_from_chainer",
    "load_c3d",
    "load_c3d_mean",
    "preprocess_c3d",
]

C3D_CHANNEL_MEAN_BGR = (90.25164795, 97.65701294, 101.4083252)
N_FRAMES = 16
SIZE = 112

_CONVS = (
    ("conv1a", 3, 64),
    ("conv2a", 64, 128),
    ("conv3a", 128, 256),
    ("conv3b", 256, 256),
    ("conv4a", 256, 512),
    ("conv4b", 512, 512),
    ("conv5a", 512, 512),
    ("conv5b", 512, 512),
)
_POOL_AFTER = {"conv1a": (1, 2, 2), "conv2a": (2, 2, 2), "conv3b": (2, 2, 2), "conv4b": (2, 2, 2), "conv5b": (2, 2, 2)}
_FCS = ("fc6", "fc7", "fc8")


class C3D(nn.Module):
    """C3D (UCF-101 fine-tuned layout); ``forward`` maps preprocessed clips ``(B, 3, 16, 112, 112)`` to logits."""

    def __init__(self, num_classes: int = 101) -> None:
        super().__init__()
        for name, cin, cout in _CONVS:
            self.add_module(name, nn.Conv3d(cin, cout, kernel_size=3, padding=1))
        self.fc6 = nn.Linear(512 * 4 * 4, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.dropout = nn.Dropout(0.5)
        self.weights_info: list[dict[str, object]] = []

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"fc7": (B, 4096) post-ReLU, "logits": (B, num_classes)}`` for clips ``(B, 3, 16, 112, 112)``."""
        h = x
        for name, _, _ in _CONVS:
            h = F.relu(getattr(self, name)(h))
            if name in _POOL_AFTER:
                k = _POOL_AFTER[name]
                h = F.max_pool3d(h, kernel_size=k, stride=k, ceil_mode=True)
        h = self.dropout(h.flatten(1))
        h = self.dropout(F.relu(self.fc6(h)))
        fc7 = F.relu(self.fc7(h))
        return {"fc7": fc7, "logits": self.fc8(self.dropout(fc7))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``."""
        return self.features(x)["logits"]


def c3d_state_dict_from_chainer(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map Chainer npz keys (``[prefix/]conv1a/W``, ``.../b``) to :class:`C3D` names (``conv1a.weight``, ``.bias``).

    Chainer's ``ConvolutionND`` and ``Linear`` store weights in the same layouts as PyTorch (``(out, in, kT, kH, kW)``
    and ``(out, in)``), so only names change. Keys of other links are ignored.
    """
    wanted = {name for name, _, _ in _CONVS} | set(_FCS)
    out: dict[str, torch.Tensor] = {}
    for key, value in arrays.items():
        parts = key.strip("/").split("/")
        if len(parts) < 2 or parts[-2] not in wanted or parts[-1] not in ("W", "b"):
            continue
        suffix = "weight" if parts[-1] == "W" else "bias"
        out[f"{parts[-2]}.{suffix}"] = torch.from_numpy(np.asarray(value, dtype=np.float32).copy())
    return out


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return c3d_state_dict_from_chainer({k: z[k] for k in z.files})
    from ff_lightning.checkpoints import load_checkpoint

    return load_checkpoint(path)  # safetensors, or torch.load(weights_only=True)


def load_c3d(path: str | os.PathLike[str] | None = None, num_classes: int = 101) -> C3D:
    """Build :class:`C3D` with weights from a local file (Chainer ``.npz``, ``.safetensors`` or a torch state dict).

    The file is resolved by ``resolve_weights("c3d_ucf101", path)``; its record is in ``model.weights_info``.
    """
    info = resolve_weights("c3d_ucf101", path)
    model = C3D(num_classes)
    model.load_state_dict(_read_state(info.path), strict=True)
    model.weights_info = [info.as_dict()]
    return model.eval().requires_grad_(False)


def load_c3d_mean(path: str | os.PathLike[str] | None = None) -> torch.Tensor:
    """TGANv2's mean clip ``(3, 16, 112, 112)`` (BGR, 0..255): ``mean2.npz['mean'][:, :, 8:120, 8:120]``."""
    info = resolve_weights("c3d_ucf101_mean", path)
    with np.load(info.path, allow_pickle=False) as z:
        mean = np.asarray(z["mean"], dtype=np.float32)
    if mean.ndim != 4 or mean.shape[0] != 3 or mean.shape[1] < N_FRAMES or min(mean.shape[2:]) < 8 + SIZE:
        raise ValueError(f"unexpected C3D mean shape {mean.shape} in {info.path}; expected (3, 16, 128, 171)")
    return torch.from_numpy(mean[:, :N_FRAMES, 8 : 8 + SIZE, 8 : 8 + SIZE].copy())


def preprocess_c3d(video: torch.Tensor, mean: torch.Tensor | None = None, num_frames: int = N_FRAMES) -> torch.Tensor:
    """RGB videos ``(B, T, 3, H, W)`` in [-1, 1] -> C3D input ``(B, 3, 16, 112, 112)`` (see the module docstring).

    Args:
        video: RGB frames in [-1, 1] (clamped), ``T >= num_frames``; the first ``num_frames`` are used.
        mean: ``(3, 16, 112, 112)`` mean clip from :func:`load_c3d_mean`, or a ``(3,)`` BGR per-channel mean;
            ``None`` uses :data:`C3D_CHANNEL_MEAN_BGR`.
    """
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"expected RGB videos (B, T, 3, H, W), got shape {tuple(video.shape)}")
    b, t, _, h, w = video.shape
    if t < num_frames:
        raise ValueError(f"C3D needs {num_frames} frames, got {t}")
    x = video[:, :num_frames].float().clamp(-1.0, 1.0).reshape(b * num_frames, 3, h, w)
    if (h, w) != (SIZE, SIZE):
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=True)
    x = x.flip(1)  # RGB -> BGR
    x = 128.0 * x + 128.0
    x = x.view(b, num_frames, 3, SIZE, SIZE).permute(0, 2, 1, 3, 4)  # (B, 3, T, H, W)
    if mean is None:
        mean = torch.tensor(C3D_CHANNEL_MEAN_BGR)
    mean = mean.to(x)
    if mean.ndim == 1:
        mean = mean.view(3, 1, 1, 1)
    return (x - mean).contiguous()
