"""Safe checkpoint loading and export of trained modules (``ff export``).

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
from pathlib import Path
from typing import Any

import torch

from ff_lightning.interop.movq import CheckpointError
from ff_lightning.io import atomic_open, atomic_write_json, atomic_write_text

__all__ = ["UnsafeCheckpointError", "CheckpointError", "load_checkpoint", "save_safetensors", "export_checkpoint"]

#: system -> (state-dict prefix of its model, file name of the model alone)
MODEL_FILES: dict[str, tuple[str, str]] = {
    "t2i": ("unet.", "unet.safetensors"),
    "keyframes": ("unet.", "unet.safetensors"),
    "interpolation": ("unet.", "unet.safetensors"),
    "decoder": ("movq.decoder.", "decoder.safetensors"),
    "movq": ("movq.", "movq.safetensors"),
}


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose unpickling would need arbitrary code (classes or functions named in the file)."""


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """The contents of a checkpoint file, loaded without executing code from it.

    ``.safetensors``: a ``{name: tensor}`` dict. Anything else: ``torch.load(path, weights_only=True)``. Raises
    ``FileNotFoundError`` for a missing file and :class:`UnsafeCheckpointError` for a pickle that needs arbitrary code.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        device = map_location if isinstance(map_location, str) else "cpu"
        try:
            return load_file(str(path), device=device)
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: unpickling it would need code named in the file (classes or functions other "
            "than tensors and plain containers), and checkpoints are loaded with torch.load(weights_only=True), "
            "which never runs such code. If the file comes from a source you trust, load it yourself with "
            "torch.load(..., weights_only=False) and re-save only tensors and plain containers (e.g. "
            f"torch.save(model.state_dict(), ...)) or safetensors. Detail: {str(e).splitlines()[0]}"
        ) from e


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    """Write ``{name: tensor}`` as a safetensors file, atomically (tensors are copied: shared storage is allowed)."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()})
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def export_checkpoint(ckpt: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, use_ema: bool = True) -> dict:
    """Export a training checkpoint of any system into ``out_dir`` (see the module docstring); returns the manifest
    written to ``export.json``."""
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
        "checkpoint_sha256": _sha256(ckpt),
        "system": system,
        "global_step": int(obj.get("global_step", -1)),
        "epoch": int(obj.get("epoch", -1)),
        "used_ema": used_ema,
        "files": files,
    }
    atomic_write_json(out / "export.json", manifest)
    return manifest
