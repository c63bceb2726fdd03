"""Load released Kandinsky 3 / Kandinsky Video 1.0 UNet weights from a local file into our UNets.

Our module and parameter names equal the released ones, in the released order (tests compare every model against
the manifests in :mod:`ff_lightning.reference`), so no key map is needed: the merge scalars (bare ``temporal_merge``
/ ``time_embed_merge`` in the release, :class:`~ff_lightning.models.temporal.AlphaMerge` children here) are saved and
loaded under the released keys by the modules themselves.

Files: ``.safetensors``, or anything else through ``torch.load(weights_only=True)`` (a pickle holding arbitrary
objects is refused, never executed). Nested dicts are flattened to dotted keys (the released files hold
``{"unet": {...}, "null_embedding": ..., "projections": {...}}``; Lightning checkpoints hold ``{"state_dict":
{...}}``) and the key prefix of the UNet's entries (``unet.``, ``state_dict.model.``, ...) is detected, or given as
``prefix``. The check is strict: :class:`CheckpointError` lists missing, unexpected and mis-shaped keys.

Weights are never downloaded here. Where to get them (then pass the local path):

- text-to-image UNet: the Hugging Face hub repository ``ai-forever/Kandinsky3.1`` (Kandinsky 3 UNet checkpoint);
- keyframe and interpolation UNets: the Hugging Face hub repository ``ai-forever/KandinskyVideo`` (Kandinsky Video
  1.0: the keyframe UNet with temporal blocks and the interpolation UNet).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ff_lightning.checkpoints import CheckpointError, flatten_tensors, read_tensors
from ff_lightning.interop.movq import load_weights
from ff_lightning.io import atomic_torch_save
from ff_lightning.models.interpolation import InterpolationUNet
from ff_lightning.models.keyframes import KeyframeUNet
from ff_lightning.models.unet import KandinskyUNet
from ff_lightning.registry import build

__all__ = [
    "CheckpointError",
    "T2I_UNET_DOWNLOAD_HINT",
    "VIDEO_UNET_DOWNLOAD_HINT",
    "read_unet_checkpoint",
    "read_null_embedding",
    "load_unet_weights",
    "load_t2i_unet",
    "load_keyframe_unet",
    "load_interpolation_unet",
    "load_kv11_interpolation_unet",
    "save_unet_weights",
]

T2I_UNET_DOWNLOAD_HINT = (
    "The Kandinsky 3 text-to-image UNet weights are in the Hugging Face hub repository ai-forever/Kandinsky3.1 "
    "(e.g. `hf download ai-forever/Kandinsky3.1 --local-dir <dir>`); pass the local path of the UNet checkpoint."
)
VIDEO_UNET_DOWNLOAD_HINT = (
    "The Kandinsky Video 1.0 keyframe and interpolation UNet weights are in the Hugging Face hub repository "
    "ai-forever/KandinskyVideo (e.g. `hf download ai-forever/KandinskyVideo --local-dir <dir>`); pass the local path "
    "of the keyframe or interpolation UNet checkpoint."
)


def _hint_for(model: nn.Module) -> str:
    return VIDEO_UNET_DOWNLOAD_HINT if isinstance(model, (KeyframeUNet, InterpolationUNet)) else T2I_UNET_DOWNLOAD_HINT


def _flatten(obj: Mapping[Any, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """Nested mappings -> ``{"a.b.c": tensor}`` (:func:`ff_lightning.checkpoints.flatten_tensors`)."""
    return flatten_tensors(obj, prefix)


def read_unet_checkpoint(path: str | Path, hint: str = T2I_UNET_DOWNLOAD_HINT) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file on CPU, nested dicts flattened to dotted keys
    (:func:`ff_lightning.checkpoints.read_tensors`).

    Raises ``FileNotFoundError`` naming the file and (``hint``) where to get it, and :class:`CheckpointError` for a
    pickle holding arbitrary Python objects (refused by ``weights_only``) or a file without tensors.
    """
    return read_tensors(path, hint)


def read_null_embedding(path: str | Path, hint: str = T2I_UNET_DOWNLOAD_HINT) -> torch.Tensor | None:
    """The learned null text embedding stored next to the UNet in the released files (key ``null_embedding``)."""
    tensors = read_unet_checkpoint(path, hint)
    keys = sorted((k for k in tensors if k == "null_embedding" or k.endswith(".null_embedding")), key=len)
    return tensors[keys[0]] if keys else None


def load_unet_weights(
    model: KandinskyUNet, source: str | Path | Mapping[str, torch.Tensor], *, prefix: str | None = None
) -> KandinskyUNet:
    """Load a released (or our own) UNet checkpoint into ``model`` (image, keyframe or interpolation UNet).

    ``source``: a file path or a (possibly nested) state dict. ``prefix``: the key prefix of the UNet's entries
    (detected when None). Every key and shape must match; returns ``model``. Frozen / trainable flags are kept.
    """
    hint = _hint_for(model)
    tensors = read_unet_checkpoint(source, hint) if isinstance(source, (str, Path)) else _flatten(source)
    return load_weights(model, tensors, prefix=prefix, ignore_prefixes=(), hint=hint)


def load_t2i_unet(
    path: str | Path, preset: str = "paper", *, device: str | torch.device | None = None, prefix: str | None = None
) -> KandinskyUNet:
    """The Kandinsky 3 UNet at ``preset`` with the weights of ``path``."""
    return load_unet_weights(build("t2i_unet", "kandinsky3", preset, device=device), path, prefix=prefix)


def load_keyframe_unet(
    path: str | Path,
    variant: str = "blocks_conv1d_attn1d",
    preset: str = "paper",
    *,
    device: str | torch.device | None = None,
    prefix: str | None = None,
    **overrides: Any,
) -> KeyframeUNet:
    """The keyframe UNet ``variant`` at ``preset`` (the release: ``blocks_conv1d_attn1d``, 15 frames) from ``path``."""
    model = build("keyframe_unet", variant, preset, device=device, **overrides)
    return load_unet_weights(model, path, prefix=prefix)


def load_interpolation_unet(
    path: str | Path, preset: str = "paper", *, device: str | torch.device | None = None, prefix: str | None = None
) -> InterpolationUNet:
    """The interpolation UNet at ``preset`` with the weights of ``path``."""
    model = build("interpolation_unet", "kandinsky_video", preset, device=device)
    return load_unet_weights(model, path, prefix=prefix)


def load_kv11_interpolation_unet(
    path: str | Path, preset: str = "paper", *, device: str | torch.device | None = None, prefix: str | None = None
) -> nn.Module:
    """The Kandinsky Video 1.1 interpolation UNet (``interpolation_unet/kv1_1``) at ``preset`` with the weights of
    ``path`` (a released ``interpolation.pt``); its optional parts are inferred from the file's keys."""
    from ff_lightning.models.kv11_interpolation import infer_flags

    tensors = read_unet_checkpoint(path, VIDEO_UNET_DOWNLOAD_HINT)
    unet_keys = [k for k in tensors if k != "null_embedding" and not k.endswith(".null_embedding")]
    model = build("interpolation_unet", "kv1_1", preset, device=device, **infer_flags(unet_keys).as_config())
    return load_weights(model, tensors, prefix=prefix, ignore_prefixes=(), hint=VIDEO_UNET_DOWNLOAD_HINT)


def save_unet_weights(model: nn.Module, path: str | Path) -> Path:
    """Write ``model.state_dict()`` (released key layout) as ``.safetensors`` or, for other suffixes, a plain
    ``torch.save`` state dict that ``weights_only`` loading accepts. The write is atomic."""
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(state, str(tmp))
        tmp.replace(path)
        return path
    return atomic_torch_save(state, path)
