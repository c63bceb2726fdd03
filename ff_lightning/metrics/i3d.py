"""I3D (Inception-v1 inflated to 3-D, Carreira & Zisserman 2017), Kinetics-400, the FVD feature extractor.

The network follows the DeepMind ``kinetics-i3d`` layout: stem ``Conv3d_1a_7x7`` (stride 2), ``MaxPool3d_2a_3x3``
(1x3x3, stride 1x2x2), ``Conv3d_2b_1x1``, ``Conv3d_2c_3x3``, ``MaxPool3d_3a_3x3``, Inception blocks ``Mixed_3b``-``3c``,
``MaxPool3d_4a_3x3`` (3x3x3, stride 2), ``Mixed_4b``-``4f``, ``MaxPool3d_5a_2x2``, ``Mixed_5b``-``5c`` (1024
channels), a 2x7x7 average pool and the 1x1x1 ``logits`` convolution (400 classes), averaged over time. Every
convolution and pool uses TensorFlow "SAME" padding (computed from the input size), batch norm eps 1e-3. Module names
follow the widely used PyTorch port's checkpoints (``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1b.bn.running_mean``,
``logits.conv3d.bias``), so its ``rgb_imagenet.pt`` loads with :func:`load_i3d` (resolved as ``"i3d_kinetics400"``).

Outputs (:meth:`I3D.features`): ``pool``, the 1024-d average-pooled ``Mixed_5c`` activation, and ``logits``, the
400-d pre-softmax output (the FVD feature of the original TF-Hub implementation). With 16 frames at 224x224 the
2x7x7 pool covers the whole final map; for smaller test inputs the pool window shrinks to the map (global average).

Preprocessing (:func:`preprocess_i3d`), the one function both sides of an FVD go through (generated videos in the
runner, real clips in :mod:`ff_lightning.evaluation.reference`): the first 16 frames; 8-bit quantisation (StyleGAN-V
computes FVD on uint8 videos); the real clips' resize + centre crop
(:func:`ff_lightning.data.transforms.resize_crop`: shorter side scaled to 224, antialiased bilinear, centred
224x224 crop; nothing to do for 224x224 input); 8-bit quantisation again; values ``v / 127.5 - 1`` in [-1, 1];
layout ``(B, 3, T, 224, 224)``. Real clips reach the evaluator already resized and cropped by that same function
from their decoded uint8 frames, so the same frames given as real and as generated (at their native size) give
identical I3D input (checked in ``tests/test_metrics_networks.py``).

The protocol this implements, named ``"stylegan-v-8bit-crop"`` in :data:`FVD_PROTOCOL`: StyleGAN-V's FVD (uint8
frames, the first 16, I3D Kinetics-400 400-d features, Fréchet distance), except that frames of another size are
resized to cover 224x224 and centre-cropped, the same way for real and generated videos, where StyleGAN-V's
detector resizes (stretches) to 224x224 inside the network (its datasets are square, where the two agree up to
the interpolation filter).

:class:`I3DTorchScript` wraps StyleGAN-V's TorchScript detector (``"i3d_torchscript"``): it is given the
preprocessed 224x224 [-1, 1] clips with ``rescale=False, resize=False, return_features=True``, so the detector
changes nothing before its first layer; it returns its 400-d features.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ff_lightning.metrics.weights import require_pinned, resolve_weights

__all__ = ["FVD_PROTOCOL", "I3D", "I3DTorchScript", "load_i3d", "load_i3d_torchscript", "preprocess_i3d"]

N_FRAMES = 16
SIZE = 224
#: what :func:`preprocess_i3d` does, recorded with every FVD (see the module docstring)
FVD_PROTOCOL = (
    "stylegan-v-8bit-crop: first 16 frames, 8-bit quantised, shorter side resized to 224 (antialiased bilinear) "
    "and centre-cropped to 224x224 (the real clips' transform), quantised again, [-1, 1]; I3D Kinetics-400 features"
)


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (front, back) for one dimension."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    pads: list[int] = []
    for dim in (2, 1, 0):  # F.pad wants the last dimension first: (W, H, T)
        pads += _same_pad(x.shape[2 + dim], kernel[dim], stride[dim])
    return F.pad(x, pads) if any(pads) else x


class Unit3D(nn.Module):
    """Conv3d (SAME padding) + optional BatchNorm3d + optional ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: Sequence[int] = (1, 1, 1),
        stride: Sequence[int] = (1, 1, 1),
        bn: bool = True,
        relu: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, kernel_size=self.kernel, stride=self.stride, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    """3-D max pool with TF "SAME" padding (zero padding: inputs are post-ReLU, so zeros never win)."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four branches: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max pool -> 1x1; concatenated on channels."""

    def __init__(self, cin: int, widths: Sequence[int]) -> None:
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3 = widths
        self.b0 = Unit3D(cin, c0)
        self.b1a, self.b1b = Unit3D(cin, c1a), Unit3D(c1a, c1b, (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c2a), Unit3D(c2a, c2b, (3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c3)
        self.out_channels = c0 + c1b + c2b + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


class I3D(nn.Module):
    """Inception-v1 I3D on clips ``(B, 3, T, H, W)`` in [-1, 1]; ``forward`` returns logits ``(B, num_classes)``."""

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        layers: list[tuple[str, nn.Module]] = [
            ("Conv3d_1a_7x7", Unit3D(3, 64, (7, 7, 7), (2, 2, 2))),
            ("MaxPool3d_2a_3x3", MaxPoolSame((1, 3, 3), (1, 2, 2))),
            ("Conv3d_2b_1x1", Unit3D(64, 64)),
            ("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3))),
            ("MaxPool3d_3a_3x3", MaxPoolSame((1, 3, 3), (1, 2, 2))),
        ]
        cin = 192
        for name, widths in _MIXED.items():
            if name == "Mixed_4b":
                layers.append(("MaxPool3d_4a_3x3", MaxPoolSame((3, 3, 3), (2, 2, 2))))
            if name == "Mixed_5b":
                layers.append(("MaxPool3d_5a_2x2", MaxPoolSame((2, 2, 2), (2, 2, 2))))
            block = InceptionBlock(cin, widths)
            layers.append((name, block))
            cin = block.out_channels
        self.order = [name for name, _ in layers]
        for name, layer in layers:
            self.add_module(name, layer)
        self.dropout = nn.Dropout(0.5)
        self.logits = Unit3D(cin, num_classes, bn=False, relu=False, bias=True)
        self.weights_info: list[dict[str, object]] = []

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"pool": (B, 1024), "logits": (B, num_classes)}`` for clips ``(B, 3, T, H, W)``."""
        for name in self.order:
            x = getattr(self, name)(x)
        k = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))
        # Average of the stride-1 2x7x7 pool over its positions; the 1x1x1 logits conv is linear, so averaging before
        # it equals the reference "logits per position, then mean over time".
        pooled = F.avg_pool3d(x, k, stride=1).mean(dim=(2, 3, 4), keepdim=True)
        logits = self.logits(self.dropout(pooled)).flatten(1)
        return {"pool": pooled.flatten(1), "logits": logits}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``."""
        return self.features(x)["logits"]


def _to_uint8_levels(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> the nearest of the 256 levels ``0..255`` (float32), as an 8-bit video stores it."""
    return ((x.float() + 1.0) * 127.5).round_().clamp_(0.0, 255.0)


def preprocess_i3d(video: torch.Tensor, num_frames: int = N_FRAMES, size: int = SIZE) -> torch.Tensor:
    """Videos ``(B, T, 3, H, W)`` in [-1, 1] -> I3D input ``(B, 3, num_frames, size, size)`` in [-1, 1].

    First ``num_frames`` frames, 8-bit quantised, resized to cover ``size`` x ``size`` and centre-cropped with the
    real clips' :func:`~ff_lightning.data.transforms.resize_crop`, quantised again (see the module docstring).
    """
    from ff_lightning.data.transforms import resize_crop

    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"expected RGB videos (B, T, 3, H, W), got shape {tuple(video.shape)}")
    b, t, _, h, w = video.shape
    if t < num_frames:
        raise ValueError(f"I3D/FVD needs {num_frames} frames, got {t}")
    x = _to_uint8_levels(video[:, :num_frames].reshape(b * num_frames, 3, h, w))
    if (h, w) != (size, size):
        x = resize_crop(x, (size, size))[0].round_().clamp_(0.0, 255.0)
    x = x / 127.5 - 1.0
    return x.reshape(b, num_frames, 3, size, size).permute(0, 2, 1, 3, 4).contiguous()


def load_i3d(path: str | os.PathLike[str] | None = None, num_classes: int = 400) -> I3D:
    """:class:`I3D` with a local state dict (PyTorch-port key names), resolved as ``"i3d_kinetics400"``."""
    info = resolve_weights("i3d_kinetics400", path)
    from ff_lightning.checkpoints import load_checkpoint

    state = load_checkpoint(info.path)  # safetensors, or torch.load(weights_only=True)
    model = I3D(num_classes)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(
            f"I3D state dict {info.path} does not match: missing {missing[:8]}, unexpected {unexpected[:8]}"
        )
    model.weights_info = [info.as_dict()]
    return model.eval().requires_grad_(False)


class I3DTorchScript(nn.Module):
    """StyleGAN-V's TorchScript I3D detector: preprocessed clips ``(B, 3, T, 224, 224)`` in [-1, 1] -> ``(B, 400)``.

    Called with ``rescale=False, resize=False`` because :func:`preprocess_i3d` already did both (on 8-bit frames).
    """

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.module = module
        self.weights_info: list[dict[str, object]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x, rescale=False, resize=False, return_features=True)


def load_i3d_torchscript(path: str | os.PathLike[str] | None = None) -> I3DTorchScript:
    """Load the TorchScript detector from a local file resolved as ``"i3d_torchscript"`` (its sha256 must be pinned:
    :func:`~ff_lightning.metrics.weights.require_pinned`)."""
    info = resolve_weights("i3d_torchscript", path)
    require_pinned(info, "torch.jit.load")
    wrapper = I3DTorchScript(torch.jit.load(str(info.path), map_location="cpu"))
    wrapper.weights_info = [info.as_dict()]
    return wrapper.eval().requires_grad_(False)
