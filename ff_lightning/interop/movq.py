"""Load released MoVQGAN / Kandinsky Video MoVQ weights from a local file into our modules.

Our module and parameter names equal those of MoVQGAN (checked against the manifests in
:mod:`ff_lightning.reference`). Two layout differences, both documented and tested:

- the temporal merge scalars (``temporal_merge1`` in the release, an :class:`~ff_lightning.models.temporal.AlphaMerge`
  child here) are handled inside the modules' own ``state_dict`` / ``load_state_dict`` (see
  :func:`~ff_lightning.models.temporal.flatten_merge_keys`);
- the MoVQ files of Kandinsky 3 / 3.1 and Kandinsky Video 1.0 / 1.1 (``movq.pt``, ``video_movq.pt``) build every norm,
  the encoder's included, as ``SpatialNorm(GroupNorm)``; without a latent (``zq``) a SpatialNorm has no ``conv_y`` /
  ``conv_b`` and is a plain GroupNorm stored one level down: ``encoder.down.0.block.0.norm1.norm_layer.weight`` for
  our (and MoVQGAN's) ``encoder.down.0.block.0.norm1.weight``. :func:`release_key_map` renames those entries (every
  encoder ResnetBlock ``norm1`` / ``norm2``, attention ``norm`` and ``norm_out``). Those files also have no
  ``quantize.*`` (Kandinsky decodes un-quantized latents): load them with ``missing_ok=("quantize.",)``.

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

from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ff_lightning.checkpoints import CheckpointError
from ff_lightning.checkpoints import read_state_dict as _read_state_dict
from ff_lightning.models.movq import Decoder, MoVQ
from ff_lightning.registry import build

__all__ = [
    "CheckpointError",
    "IGNORED_PREFIXES",
    "MOVQ_DOWNLOAD_HINT",
    "VIDEO_DECODER_DOWNLOAD_HINT",
    "read_state_dict",
    "release_key_map",
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


def read_state_dict(path: str | Path, hint: str = MOVQ_DOWNLOAD_HINT) -> dict[str, torch.Tensor]:
    """Read the tensors of a checkpoint file (on CPU), unwrapping a nested ``state_dict``
    (:func:`ff_lightning.checkpoints.read_state_dict` with the MoVQ download hint)."""
    return _read_state_dict(path, hint)


def release_key_map(provided: Iterable[str], expected: Collection[str]) -> dict[str, str]:
    """``{file key: model key}`` for the released SpatialNorm-wrapped plain norms (see the module docstring):
    ``X.norm_layer.{weight,bias}`` -> ``X.{weight,bias}`` where the model has the latter, the file does not, and the
    file's ``X`` has no ``conv_y`` / ``conv_b`` (a SpatialNorm that uses a latent is never flattened)."""
    provided = list(provided)
    present = set(provided)
    out: dict[str, str] = {}
    for key in provided:
        if key in expected or ".norm_layer." not in key:
            continue
        head, _, leaf = key.rpartition(".norm_layer.")
        ours = f"{head}.{leaf}"
        if ours in expected and ours not in present and f"{head}.conv_y.weight" not in present:
            out[key] = ours
    return out


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
    Released SpatialNorm-wrapped plain norms are renamed first (:func:`release_key_map`).
    """
    raw = read_state_dict(source, hint) if isinstance(source, (str, Path)) else dict(source)
    expected = {k: v.shape for k, v in module.state_dict().items()}
    if prefix is None:
        prefix = _detect_prefix(list(raw), list(expected))
    selected = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
    selected = {k: v for k, v in selected.items() if not k.startswith(tuple(ignore_prefixes))}
    renamed = release_key_map(selected, expected)
    selected = {renamed.get(k, k): v for k, v in selected.items()}
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
