"""Tiny released-Kandinsky files for tests: the same keys and nesting as the real files, random weights.

Keys come from :func:`ff_lightning.interop.release.release_layout` at the ``tiny`` preset (our tiny models on the meta
device + the documented key maps); ``tests/test_import_release.py`` checks that layout against the manifests of
``ff_lightning/reference`` at the ``paper`` preset, so the tiny files differ from the real ones in sizes only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ff_lightning.interop.release import RELEASE_FILES, ImportSpec, release_layout

TINY = ImportSpec(preset="tiny", num_frames=4, text_encoder="tiny", text_dim=64, size=(32, 32))


def nest(flat: dict[str, torch.Tensor], top: tuple[str, ...]) -> dict:
    """``{"unet.a.b": t, "null_embedding": t}`` -> ``{"unet": {"a.b": t}, "null_embedding": t}`` for the top-level
    groups ``top`` (the released files nest the UNet / projections one level down, flat state dicts below)."""
    out: dict = {}
    for key, value in flat.items():
        group = next((g for g in top if key.startswith(g + ".")), None)
        if group is None:
            out[key] = value
        else:
            out.setdefault(group, {})[key[len(group) + 1 :]] = value
    return out


def random_tensors(layout: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*s, generator=g) * 0.1 for k, s in layout.items()}


#: role -> top-level groups nested in the released file
NESTING = {
    "keyframes": ("unet", "projections"),
    "interpolation": ("unet",),
    "t2i": ("unet",),
    "projections": ("projection_base", "projection_interpolation"),
}


def write_release(folder: Path, fmt: str, spec: ImportSpec = TINY, weights_subdir: bool = True) -> dict[str, dict]:
    """Write the files of ``fmt`` into ``folder`` (under ``weights/`` like the hub repositories); returns the flat
    tensors of each role."""
    layout = release_layout(fmt, spec)
    base = folder / "weights" if weights_subdir else folder
    flat = {}
    for i, (role, keys) in enumerate(sorted(layout.items())):
        tensors = random_tensors(keys, seed=100 + i)
        flat[role] = tensors
        path = base / RELEASE_FILES[fmt][role]
        path.parent.mkdir(parents=True, exist_ok=True)
        obj = nest(tensors, NESTING.get(role, ()))
        if fmt == "movqgan":
            obj = {"state_dict": {**tensors, "loss.discriminator.main.0.weight": torch.zeros(2)}, "global_step": 1}
        torch.save(obj, path)
    return flat
