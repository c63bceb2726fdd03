"""Every checkpoint read of the project, and the export of trained modules (``ff export``).

This module imports no torch at import time (``ff --help`` stays fast): each function imports it when called.

Reading: :func:`load_checkpoint` (one file, raw), :func:`read_state_dict` (its tensors, a nested ``state_dict``
unwrapped: MoVQ files), :func:`read_tensors` (nested dicts flattened: the released Kandinsky UNet files),
:func:`read_t2i_checkpoint` (a text-to-image model in any of the accepted layouts, the released projection and null
embedding mapped to ours) and :func:`read_export` (an ``ff export`` / ``ff import`` folder).

Loading (:func:`load_checkpoint`): ``.safetensors`` files through safetensors, anything else through
``torch.load(weights_only=True)``, which rebuilds only tensors and plain containers and never runs code from the file.
A pickle that needs arbitrary classes or functions is refused with :class:`UnsafeCheckpointError`, which says what
was found and how to re-save the file. Every checkpoint ``ff train`` writes loads this way (resuming included).

Export (:func:`export_checkpoint`): from a Lightning checkpoint of any system, into a folder:

- ``config.yaml``: the run's resolved config (from the checkpoint's hyperparameters);
- ``module.safetensors``: the LightningModule's state dict as saved (the frozen MoVQ of the diffusion systems is not
  in their checkpoints: it comes from ``module.movq_ckpt``);
- the model alone in the released key layout (our models keep the released names, so the module prefix is all there
  is to strip): ``unet.safetensors`` (``t2i``, ``keyframes``, ``interpolation``; EMA weights when the run kept an
  EMA, unless ``use_ema=False``), ``decoder.safetensors`` (``decoder``: the video decoder), ``movq.safetensors``
  (``movq``: the image MoVQ); plus ``ema.safetensors`` with every averaged parameter by name where the run kept one
  by name;
- ``export.json``: what was written, from which checkpoint (sha256), at which step.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ff_lightning.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:  # torch is imported inside the functions: `ff --help` must not pay for it
    import torch

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "load_checkpoint",
    "flatten_tensors",
    "read_state_dict",
    "read_tensors",
    "sha256_file",
    "T2IWeights",
    "read_t2i_checkpoint",
    "release_text_weights",
    "read_export",
    "is_export_dir",
    "StageSource",
    "read_stage_source",
    "save_safetensors",
    "export_checkpoint",
]

#: system -> (state-dict prefix of its model, file name of the model alone)
MODEL_FILES: dict[str, tuple[str, str]] = {
    "t2i": ("unet.", "unet.safetensors"),
    "keyframes": ("unet.", "unet.safetensors"),
    "interpolation": ("unet.", "unet.safetensors"),
    "decoder": ("movq.decoder.", "decoder.safetensors"),
    "movq": ("movq.", "movq.safetensors"),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or does not match the model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose unpickling would need arbitrary code (classes or functions named in the file)."""


def load_checkpoint(
    path: str | os.PathLike[str], map_location: Any = "cpu", *, hint: str = "", mmap: bool = False
) -> Any:
    """The contents of a checkpoint file, loaded without executing code from it.

    ``.safetensors``: a ``{name: tensor}`` dict. Anything else: ``torch.load(path, weights_only=True)`` (memory-mapped
    with ``mmap=True`` where the file allows it). Raises ``FileNotFoundError`` for a missing file (``hint``: where to
    get it) and :class:`UnsafeCheckpointError` for a pickle that needs arbitrary code.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}" + (f". {hint}" if hint else ""))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        device = map_location if isinstance(map_location, str) else "cpu"
        try:
            return load_file(str(path), device=device)
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    import torch

    try:
        if mmap:
            try:
                return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
                pass
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: unpickling it would need code named in the file (classes or functions other "
            "than tensors and plain containers), and checkpoints are loaded with torch.load(weights_only=True), "
            "which never runs such code. If the file comes from a source you trust, load it yourself with "
            "torch.load(..., weights_only=False) and re-save only tensors and plain containers (e.g. "
            f"torch.save(model.state_dict(), ...)) or safetensors. Detail: {str(e).splitlines()[0]}"
        ) from e


def flatten_tensors(obj: Mapping[Any, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """Nested mappings -> ``{"a.b.c": tensor}``; non-tensor leaves (epochs, configs, ...) are dropped."""
    import torch

    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, Mapping):
            out.update(flatten_tensors(value, f"{name}."))
    return out


def read_state_dict(path: str | os.PathLike[str], hint: str = "", mmap: bool = False) -> dict[str, torch.Tensor]:
    """The top-level tensors of a checkpoint file on CPU, a nested ``state_dict`` (Lightning) unwrapped first.

    Raises ``FileNotFoundError`` (with ``hint``), :class:`UnsafeCheckpointError` and :class:`CheckpointError` for
    files without tensors.
    """
    import torch

    obj = load_checkpoint(path, hint=hint, mmap=mmap)
    while isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    return tensors


def read_tensors(path: str | os.PathLike[str], hint: str = "", mmap: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file on CPU, nested dicts flattened to dotted keys (the released Kandinsky files
    ``{"unet": {...}, "null_embedding": t, "projections": {...}}`` become ``unet.*``, ``null_embedding``, ...).
    ``mmap``: memory-map the file where its format allows (multi-GB files are then paged in, not copied)."""
    obj = load_checkpoint(path, hint=hint, mmap=mmap)
    tensors = flatten_tensors(obj) if isinstance(obj, Mapping) else {}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors (a {type(obj).__name__})")
    return tensors


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------- text-to-image checkpoints
@dataclass
class T2IWeights:
    """What a text-to-image checkpoint provides: UNet state dict, optional projection / null embedding state dicts
    (our layout: ``projection.weight``, ``norm.weight``, ``norm.bias`` / ``embedding``), and the experiment config it
    was trained with (None for bare and released state dicts)."""

    unet: dict[str, torch.Tensor]
    text_projection: dict[str, torch.Tensor] | None
    null_embedding: dict[str, torch.Tensor] | None
    config: dict[str, Any] | None
    used_ema: bool = False
    release: bool = False  # a released Kandinsky file ({"unet": ..., "null_embedding": ...})


T2I_CKPT_HINT = (
    "Train one with the t2i system (`ff train experiments/t2i/tiny.yaml module.movq_ckpt=...`; its "
    "checkpoints/last.ckpt), or import a released Kandinsky model (`ff import DIR --out OUT`) and pass "
    "OUT/<stage>/module.safetensors, or pass a Kandinsky 3 UNet state dict (see ff_lightning.interop.unet)."
)

#: released text projection ``Sequential(Linear, LayerNorm)`` -> our :class:`~ff_lightning.models.text.TextProjection`
_RELEASE_PROJECTION = {"0.weight": "projection.weight", "1.weight": "norm.weight", "1.bias": "norm.bias"}


def release_text_weights(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor] | None:
    """Our ``TextProjection`` state dict from the released ``Sequential(Linear(bias=False), LayerNorm)`` keys under
    ``prefix`` (``projections.t5.`` in Kandinsky Video 1.0 files, ``""`` in Kandinsky 3.1's ``projection.pt``,
    ``projection_base.`` in Kandinsky Video 1.1's ``t5_projections.pt``); None when none of them is there. A file with
    some but not all three keys is a :class:`CheckpointError`."""
    found = {ours: state[prefix + theirs] for theirs, ours in _RELEASE_PROJECTION.items() if prefix + theirs in state}
    if not found:
        return None
    if len(found) != len(_RELEASE_PROJECTION):
        missing = [prefix + k for k in _RELEASE_PROJECTION if prefix + k not in state]
        raise CheckpointError(f"incomplete released text projection: missing {', '.join(missing)}")
    return found


def read_t2i_checkpoint(path: str | os.PathLike[str], use_ema: bool = True) -> T2IWeights:
    """Read a text-to-image checkpoint: a ``t2i`` system checkpoint (Lightning ``.ckpt``: ``state_dict`` with
    ``unet.*``, ``text_projection.*``, ``null_embedding.*``; ``ema_state_dict``; ``hyper_parameters.config``), an
    export / import folder's ``module.safetensors`` (the same keys), a released Kandinsky 3 / Kandinsky Video file
    (``{"unet", "null_embedding"}`` + ``projections`` in KV 1.0, mapped to our layout) or a bare UNet state dict.

    Files are read with ``torch.load(weights_only=True)`` (or safetensors): arbitrary pickles are refused.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"module.t2i_ckpt not found: {path}. {T2I_CKPT_HINT}")
    obj = load_checkpoint(path, hint=T2I_CKPT_HINT)
    config: Any = None
    used_ema = False
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state = flatten_tensors(obj["state_dict"])
        ema = obj.get("ema_state_dict") if use_ema else None
        used_ema = bool(ema)
        if ema:
            state.update({k: v for k, v in flatten_tensors(ema).items() if k in state})
        hp = obj.get("hyper_parameters") or {}
        config = hp.get("config") if isinstance(hp, Mapping) else None
    else:
        state = flatten_tensors(obj) if isinstance(obj, Mapping) else {}
        if not state:
            raise CheckpointError(f"{path} holds no tensors (a {type(obj).__name__}). {T2I_CKPT_HINT}")
    release = "null_embedding" in state  # released layout: a bare tensor next to {"unet": ...}
    unet = _strip(state, "unet.")
    if not unet:  # a bare UNet state dict
        unet = {k: v for k, v in state.items() if not k.startswith(("text_projection.", "null_embedding"))}
    projection = _strip(state, "text_projection.") or release_text_weights(state, "projections.t5.")
    null = _strip(state, "null_embedding.") or None
    if null is None and "null_embedding" in state:
        null = {"embedding": state["null_embedding"].reshape(-1)}
    return T2IWeights(
        unet=unet,
        text_projection=projection,
        null_embedding=null,
        config=dict(config) if isinstance(config, Mapping) else None,
        used_ema=used_ema,
        release=release,
    )


# ------------------------------------------------------------------------------------------ export folders
def is_export_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder written by ``ff export`` / ``ff import`` (config.yaml + module.safetensors)."""
    p = Path(path).expanduser()
    return p.is_dir() and (p / "config.yaml").is_file() and (p / "module.safetensors").is_file()


def read_export(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """``(config, state_dict, manifest)`` of an export folder (``ff export`` / ``ff import``): the run config of
    ``config.yaml``, the system's state dict of ``module.safetensors`` and ``export.json`` ({} when absent)."""
    import json

    from omegaconf import OmegaConf

    p = Path(path).expanduser()
    if not is_export_dir(p):
        raise CheckpointError(f"{p} is not an export folder (config.yaml + module.safetensors, see `ff export`)")
    config = OmegaConf.to_container(OmegaConf.load(p / "config.yaml"), resolve=True)
    if not isinstance(config, dict):
        raise CheckpointError(f"{p / 'config.yaml'} holds no config mapping")
    state = load_checkpoint(p / "module.safetensors")
    manifest_path = p / "export.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return config, dict(state), manifest


@dataclass
class StageSource:
    """A trained or imported stage as read from disk: its run ``config``, its system ``state`` dict (EMA weights laid
    over the raw ones when the source kept an EMA and ``use_ema``), the ``manifest`` of a folder and the path."""

    path: Path
    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    manifest: dict[str, Any]
    used_ema: bool = False


def read_stage_source(path: str | os.PathLike[str], use_ema: bool = True) -> StageSource:
    """Read a stage from an ``ff export`` / ``ff import`` folder (``config.yaml`` + ``module.safetensors`` [+
    ``ema.safetensors``]) or a Lightning training checkpoint (``state_dict`` + ``hyper_parameters.config`` [+
    ``ema_state_dict``]). Raises ``FileNotFoundError`` or :class:`CheckpointError` saying what the path is instead."""
    import torch

    p = Path(path).expanduser()
    if p.is_dir():
        config, state, manifest = read_export(p)
        ema_path = p / "ema.safetensors"
        ema: Any = load_checkpoint(ema_path) if use_ema and ema_path.is_file() else {}
    else:
        obj = load_checkpoint(p)
        hp = obj.get("hyper_parameters") if isinstance(obj, Mapping) else None
        stored = hp.get("config") if isinstance(hp, Mapping) else None
        if not isinstance(stored, Mapping) or not isinstance(obj.get("state_dict"), Mapping):
            raise CheckpointError(
                f"{p} is not a stage checkpoint (a Lightning .ckpt with state_dict and hyper_parameters.config, e.g. "
                "a run's checkpoints/last.ckpt) nor an export folder"
            )
        config, manifest = dict(stored), {}
        module = dict(config.get("module") or {})
        if "latent_scale" in module and module["latent_scale"] is None:  # as the systems' on_load_checkpoint
            if obj.get("latent_scale") is not None:  # measured during the run
                module["latent_scale"] = float(obj["latent_scale"])
            elif not obj.get("global_step"):  # an untrained checkpoint
                module["latent_scale"] = 1.0
            config["module"] = module
        state = {k: v for k, v in obj["state_dict"].items() if isinstance(v, torch.Tensor)}
        ema = obj.get("ema_state_dict") if use_ema else None
    averaged = {k: v for k, v in dict(ema or {}).items() if k in state}
    state.update(averaged)
    return StageSource(p, dict(config), state, manifest, used_ema=bool(averaged))


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    """Write ``{name: tensor}`` as a safetensors file, atomically (a temporary sibling renamed over ``path``).

    Written straight to disk (no in-memory copy of the whole file: paper-size UNets are ~16 GB); only tensors that
    share storage with another one (which safetensors refuses) or are not contiguous are copied.
    """
    from safetensors.torch import save_file

    seen: set[int] = set()
    out = {}
    for name, value in tensors.items():
        t = value.detach().cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen or not t.is_contiguous():
            t = t.clone().contiguous()
        elif ptr != -1:
            seen.add(ptr)
        out[name] = t
    import tempfile

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(out, tmp)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp creates 0600; results are meant to be shared like any file
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def export_checkpoint(ckpt: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, use_ema: bool = True) -> dict:
    """Export a training checkpoint of any system into ``out_dir`` (see the module docstring); returns the manifest
    written to ``export.json``."""
    import torch
    from omegaconf import OmegaConf

    ckpt = Path(ckpt)
    out = Path(out_dir)
    obj = load_checkpoint(ckpt)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("state_dict"), Mapping):
        raise CheckpointError(f"{ckpt} is not a Lightning training checkpoint (no state_dict)")
    state = {k: v for k, v in obj["state_dict"].items() if isinstance(v, torch.Tensor)}
    hparams = obj.get("hyper_parameters") or {}
    config = hparams.get("config") if isinstance(hparams, Mapping) else None
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{ckpt} has no run config in its hyperparameters (not written by ff train?)")
    system = str(config.get("system", ""))
    files: dict[str, str] = {}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(dict(config))))
    files["config.yaml"] = "the run's resolved config"
    save_safetensors(state, out / "module.safetensors")
    files["module.safetensors"] = f"LightningModule state dict ({len(state)} tensors)"
    ema = obj.get("ema_state_dict")
    ema = {k: v for k, v in ema.items() if isinstance(v, torch.Tensor)} if isinstance(ema, Mapping) else {}
    if ema:
        save_safetensors(ema, out / "ema.safetensors")
        files["ema.safetensors"] = f"EMA of the trained parameters by name ({len(ema)} tensors)"
    used_ema = False
    if system in MODEL_FILES:
        prefix, name = MODEL_FILES[system]
        model = _strip(state, prefix)
        if use_ema and ema:
            averaged = _strip(ema, prefix)
            used_ema = bool(averaged)
            model.update(averaged)
        if model:
            save_safetensors(model, out / name)
            files[name] = f"{system} model alone, released key layout{' (EMA weights)' if used_ema else ''}"
    manifest = {
        "checkpoint": str(ckpt.resolve()),
        "checkpoint_sha256": sha256_file(ckpt),
        "system": system,
        "global_step": int(obj.get("global_step", -1)),
        "epoch": int(obj.get("epoch", -1)),
        "used_ema": used_ema,
        "files": files,
    }
    atomic_write_json(out / "export.json", manifest)
    return manifest
