"""Load released MoVQGAN / Kandinsky Video MoVQ weights from a local file into our modules.

Our module and parameter names equal the released ones (checked against the manifests in
:mod:`ff_lightning.reference`), so no key map is needed; the only layout difference, the temporal merge scalars
(``temporal_merge1`` in the release, an :class:`~ff_lightning.models.temporal.AlphaMerge` child here), is handled
inside the modules' own ``state_dict`` / ``load_state_dict`` (see :func:`~ff_lightning.models.temporal.flatten_merge_keys`).

Files: ``.safetensors`` (safetensors), anything else with ``torch.load(weights_only=True)`` (a pickle holding
arbitrary objects is refused). A nested ``state_dict`` (Lightning checkpoints) is unwrapped and a common key prefix
(``model.``, ``module.``, ``decoder.`` of a full MoVQ file when loading a decoder, ...) is detected. Training-only
entries (``loss.*`` discriminator / LPIPS, ``ema_*``) are ignored; everything else must match exactly (keys and
shapes), otherwise :class:`CheckpointError` lists the missing, unexpected and mismatched keys.

Weights are not downloaded here. Where to get them:

- image MoVQ: ``movqgan_270M.ckpt`` of ``ai-forever/MoVQGAN`` on the Hugging Face hub;
- video decoder: the MoVQ file of ``ai-forever/KandinskyVideo_1_1`` (the ``conv3x3x3_attn`` temporal decoder,
  stored with encoder / quant convs, without the quantizer: load it into a MoVQ with ``missing_ok=("quantize.",)``
  or into the decoder alone).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ff_lightning.models.movq import Decoder, MoVQ
from ff_lightning.registry import build

__all__ = [
    "CheckpointError",
    "IGNORED_PREFIXES",
    "MOVQ_DOWNLOAD_HINT",
    "VIDEO_DECODER_DOWNLOAD_HINT",
    "read_state_dict",
    "load_weights",
    "load_movqgan",
    "load_video_decoder",
]

IGNORED_PREFIXES = ("loss.", "ema_", "model_ema.")
MOVQ_DOWNLOAD_HINT = (
    "The MoVQGAN 270M weights are the file movqgan_270M.ckpt of the Hugging Face hub repository ai-forever/MoVQGAN, "
    "e.g. `hf download ai-forever/MoVQGAN movqgan_270M.ckpt --local-dir <dir>`; pass its local path."
)
VIDEO_DECODER_DOWNLOAD_HINT = (
    "The temporal video decoder (conv3x3x3_attn) is released with Kandinsky Video 1.1: the MoVQ file of the Hugging "
    "Face hub repository ai-forever/KandinskyVideo_1_1 (download it with `hf download ai-forever/KandinskyVideo_1_1 "
    "--local-dir <dir>`); pass its local path."
)
_MAX_LISTED = 20


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or does not match the model."""


def read_state_dict(path: str | Path, hint: str = MOVQ_DOWNLOAD_HINT) -> dict[str, torch.Tensor]:
    """Read the tensors of a checkpoint file (on CPU), unwrapping a nested ``state_dict``.

    Raises ``FileNotFoundError`` (naming the file and, via ``hint``, where to obtain it) and
    :class:`CheckpointError` for pickles holding arbitrary objects or files without tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}. {hint}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(path), device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"refusing to load {path}: it pickles objects other than tensors and plain containers, which "
                f"torch.load(weights_only=True) does not execute. Re-save just the state dict "
                f"(torch.save(model.state_dict(), ...)) or use safetensors. Detail: {e}"
            ) from e
    while isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    return tensors


def _detect_prefix(keys: Sequence[str], expected: Sequence[str]) -> str:
    """The prefix ``p`` maximising how many expected keys appear as ``p + key`` (ties: the shorter prefix)."""
    provided = set(keys)
    candidates = {""}
    for anchor in expected[:8]:
        candidates.update(k[: -len(anchor)] for k in provided if k.endswith("." + anchor))
    return max(sorted(candidates, key=len), key=lambda p: sum(p + k in provided for k in expected))


def _listing(title: str, items: Sequence[str]) -> str:
    shown = "\n    ".join(items[:_MAX_LISTED])
    more = f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


def load_weights(
    module: nn.Module,
    source: str | Path | Mapping[str, torch.Tensor],
    *,
    prefix: str | None = None,
    ignore_prefixes: Sequence[str] = IGNORED_PREFIXES,
    missing_ok: Sequence[str] = (),
    hint: str = MOVQ_DOWNLOAD_HINT,
) -> nn.Module:
    """Load a released (or our own) checkpoint into ``module`` with a strict key and shape check; returns it.

    ``source``: a file path or a state dict. ``prefix``: the key prefix of ``module``'s entries in the file
    (detected when None; keys outside it are ignored). ``ignore_prefixes``: file entries (after the prefix) that
    are dropped. ``missing_ok``: key prefixes of ``module`` that the file may lack (those keep their values).
    """
    raw = read_state_dict(source, hint) if isinstance(source, (str, Path)) else dict(source)
    expected = {k: v.shape for k, v in module.state_dict().items()}
    if prefix is None:
        prefix = _detect_prefix(list(raw), list(expected))
    selected = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
    selected = {k: v for k, v in selected.items() if not k.startswith(tuple(ignore_prefixes))}
    missing = [k for k in expected if k not in selected and not k.startswith(tuple(missing_ok))]
    unexpected = [k for k in selected if k not in expected]
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k])}"
        for k, v in selected.items()
        if k in expected and v.shape != expected[k]
    ]
    if missing or unexpected or mismatched:
        parts = [f"checkpoint does not match {type(module).__name__} (key prefix {prefix!r}):"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                parts.append(_listing(title, items))
        raise CheckpointError("\n".join(parts))
    strict = all(k in selected for k in expected)
    module.load_state_dict(selected, strict=strict)
    return module


def load_movqgan(
    path: str | Path, preset: str = "paper", *, device: str | torch.device | None = None, **load_kwargs
) -> MoVQ:
    """The MoVQGAN image autoencoder at ``preset`` with the weights of ``path`` (e.g. ``movqgan_270M.ckpt``)."""
    state = read_state_dict(path, MOVQ_DOWNLOAD_HINT)
    model = build("movq", "movqgan", preset, device=device)
    return load_weights(model, state, **load_kwargs)


def load_video_decoder(
    path: str | Path,
    variant: str = "conv3x3x3_attn",
    preset: str = "paper",
    *,
    attn_zq_first_frame: bool = True,
    device: str | torch.device | None = None,
    **load_kwargs,
) -> Decoder:
    """The ``variant`` video decoder with the decoder weights of ``path`` (decoder-only or full-MoVQ file).

    ``attn_zq_first_frame=True`` (default) reproduces the released decoder's forward, whose spatial-attention norms
    are conditioned on each video's first frame (see :class:`~ff_lightning.models.movq.Decoder`); pass ``False`` for
    per-frame conditioning (what our own image-initialised video decoders use).
    """
    state = read_state_dict(path, VIDEO_DECODER_DOWNLOAD_HINT)
    model = build("decoder", variant, preset, device=device, attn_zq_first_frame=attn_zq_first_frame)
    return load_weights(model, state, **load_kwargs)
