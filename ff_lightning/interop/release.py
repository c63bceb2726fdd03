"""``ff import``: a folder of released Kandinsky files -> this project's export format, checked key for key.

Released layouts (read off the public loading code of ai-forever/KandinskyVideo at the 1.0 and 1.1 releases and of
ai-forever/Kandinsky-3 at 3.1; files are ``torch.save`` pickles of plain dicts):

==========  ==============================================================================================
format      files (``weights/`` prefixes of the hub repositories may be kept or dropped)
==========  ==============================================================================================
``kv1.0``   ``kandinsky_video.pt`` ``{"unet", "projections": {"t5.0.weight", "t5.1.weight", "t5.1.bias"},
            "null_embedding"}`` (keyframe UNet, 15 frames); ``kandinsky_video_interpolation.pt`` ``{"unet",
            "null_embedding"}``; ``movq.pt`` (image MoVQ, flat); the text encoder is Flan-UL2 (``google/flan-ul2``)
``kv1.1``   ``t2v.pt`` / ``interpolation.pt`` ``{"unet", "null_embedding"}``; ``t5_projections.pt``
            ``{"projection_base": {...}, "projection_interpolation": {...}}``; ``movq.pt``; ``video_movq.pt``
            (encoder + the ``conv3x3x3_attn`` video decoder)
``k3.1``    ``kandinsky3.pt`` ``{"unet", "null_embedding"}``; ``flan_ul2_encoder/`` (the T5 encoder folder) with
            ``projection.pt`` ``{"0.weight", "1.weight", "1.bias"}``; ``movq.pt``
``movqgan`` ``movqgan_270M.ckpt`` (MoVQGAN: ``{"state_dict": {...}}`` with ``quantize.*`` and training-only ``loss.*``)
==========  ==============================================================================================

Key maps (everything else keeps its name): the projection ``Sequential(Linear, LayerNorm)`` ``0.weight``,
``1.weight``, ``1.bias`` -> our ``projection.weight``, ``norm.weight``, ``norm.bias``; ``null_embedding`` ->
``null_embedding.embedding``; the Kandinsky MoVQ files' ``encoder.*.norm_layer.*`` -> ``encoder.*.*``
(:func:`~ff_lightning.interop.movq.release_key_map`). The Kandinsky MoVQ files hold no ``quantize.*`` codebook
(Kandinsky decodes un-quantized latents): it is left out of the import and never used by the imported stages.

Output (``OUT``), one ``ff export`` folder per stage (``config.yaml`` + ``module.safetensors`` + ``export.json``; the
model-alone file of ``ff export`` is left out: the released file is that, and a paper-size copy costs ~16 GB):
``t2i/`` (k3.1), ``keyframes/`` + ``interpolation/`` (kv1.0, kv1.1), ``decoder/`` (kv1.1), plus
``movq.safetensors`` (the image MoVQ, our key layout) and ``OUT/export.json`` (format, every source file with its
sha256, the text-encoder folder, the stages). The diffusion stages' ``module.safetensors`` carry their frozen MoVQ
(``movq.*``), so a folder is self-contained. KV 1.1: ``t2v.pt`` is the ``keyframe_unet/kv1_1`` model
(:mod:`ff_lightning.models.kv11`: 9-channel ``in_layer`` + ``image_in_layer``, motion-score and noise-augmentation
embeddings, all under their released names) with ``t5_projections.pt``'s ``projection_base`` as its text
projection; its stage is sampled by :class:`~ff_lightning.pipelines.kv11.KV11KeyframeStage` (``ff generate`` /
``ff eval --pipeline``). KV 1.1's ``interpolation.pt`` is the ``interpolation_unet/kv1_1`` model
(:mod:`ff_lightning.models.kv11_interpolation`); its optional parts (the release's ``configs.json`` flags) are
inferred from the file's keys, the file is then checked key for key against that network, and the flags are recorded
in its stage (``model.overrides`` of ``config.yaml``, ``release_flags`` of ``export.json``), with
its own ``null_embedding`` and ``t5_projections.pt``'s ``projection_base`` as its text projection: the release
pipeline's ``interpolate_base_frames`` encodes the prompt with ``IMAGE_GENERATION_LABEL``, i.e. ``projection_base``,
although the file also holds a ``projection_interpolation`` (stored as ``text_projection_interpolation.*``, used with
``build_kv11_interpolation_stage(..., projection="interpolation")``); it is sampled by
:class:`~ff_lightning.pipelines.kv11_interpolation.KV11InterpolationStage`.

Every file is checked against the layout our models at ``preset`` expect (built on the meta device): a missing,
unexpected or mis-shaped key anywhere refuses the whole import with one message listing them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ff_lightning.checkpoints import CheckpointError, read_state_dict, read_tensors, save_safetensors, sha256_file
from ff_lightning.interop.movq import IGNORED_PREFIXES, release_key_map
from ff_lightning.io import atomic_write_json, atomic_write_text

__all__ = ["FORMATS", "RELEASE_FILES", "ImportSpec", "detect_format", "release_layout", "import_release"]

FORMATS = ("kv1.0", "kv1.1", "k3.1", "movqgan")

#: format -> role -> file name (relative to the release folder, or to its ``weights/`` subfolder)
RELEASE_FILES: dict[str, dict[str, str]] = {
    "kv1.0": {
        "keyframes": "kandinsky_video.pt",
        "interpolation": "kandinsky_video_interpolation.pt",
        "movq": "movq.pt",
    },
    "kv1.1": {
        "keyframes": "t2v.pt",
        "interpolation": "interpolation.pt",
        "projections": "t5_projections.pt",
        "movq": "movq.pt",
        "video_movq": "video_movq.pt",
    },
    "k3.1": {"t2i": "kandinsky3.pt", "projection": "flan_ul2_encoder/projection.pt", "movq": "movq.pt"},
    "movqgan": {"movq": "movqgan_270M.ckpt"},
}
#: format -> the parts (stages) it provides
FORMAT_PARTS: dict[str, tuple[str, ...]] = {
    "kv1.0": ("movq", "keyframes", "interpolation"),
    "kv1.1": ("movq", "keyframes", "interpolation", "decoder"),
    "k3.1": ("movq", "t2i"),
    "movqgan": ("movq",),
}
#: (format, part) -> why that released part cannot be imported
UNSUPPORTED: dict[tuple[str, str], str] = {}
#: (format, part) -> stages written but not wired into ``ff generate`` / ``ff eval`` (kept out of ``stages``)
UNWIRED: dict[tuple[str, str], str] = {}
_PROJECTION = ("0.weight", "1.weight", "1.bias")
_ENCODER_NORM = re.compile(
    r"^(encoder\..*\.(?:norm1|norm2|norm|norm_out))\.(weight|bias)$|^(encoder\.norm_out)\.(weight|bias)$"
)
_MAX_LISTED = 12


@dataclass(frozen=True)
class ImportSpec:
    """What the imported models are: size ``preset``, keyframes per clip, the text encoder and its feature width."""

    preset: str = "paper"
    num_frames: int = 15  # keyframes of the released keyframe UNet
    text_encoder: str = "t5"  # module.text_encoder of the stage configs
    text_encoder_path: str | None = None  # the Flan-UL2 folder (recorded; read when generating)
    text_dim: int = 4096  # feature width of the text encoder (Flan-UL2: 4096)
    size: tuple[int, int] = (512, 512)  # default frame size of the stage configs (ff generate --size overrides)


# ------------------------------------------------------------------------------------------------ layouts
def _meta_state(component: str, variant: str, preset: str, **kwargs: Any) -> dict[str, tuple[int, ...]]:
    from ff_lightning import registry

    model = registry.build(component, variant, preset, device="meta", **kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _release_movq_key(key: str) -> str:
    """Our MoVQ key -> the Kandinsky MoVQ files' key (encoder norms wrapped as ``norm_layer``)."""
    m = _ENCODER_NORM.match(key)
    if not m:
        return key
    head, leaf = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return f"{head}.norm_layer.{leaf}"


def release_layout(fmt: str, spec: ImportSpec = ImportSpec()) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{role: {flattened file key: shape}}`` of the released files of ``fmt`` as our models at ``spec.preset``
    expect them (derived from our models on the meta device and the key maps of the module docstring; the UNet and
    MoVQ parts equal the manifests in :mod:`ff_lightning.reference` at ``preset="paper"``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown release format {fmt!r}; valid: {', '.join(FORMATS)}")
    movq = _meta_state("movq", "movqgan", spec.preset)
    from ff_lightning import registry

    ctx = int(registry.preset_config("t2i_unet", spec.preset)["context_dim"])
    projection = {"0.weight": (ctx, spec.text_dim), "1.weight": (ctx,), "1.bias": (ctx,)}
    kandinsky_movq = {_release_movq_key(k): s for k, s in movq.items() if not k.startswith("quantize.")}
    if fmt == "movqgan":
        return {"movq": movq}
    out: dict[str, dict[str, tuple[int, ...]]] = {"movq": kandinsky_movq}

    def unet_file(component: str, variant: str, **kwargs: Any) -> dict[str, tuple[int, ...]]:
        unet = _meta_state(component, variant, spec.preset, **kwargs)
        return {**{f"unet.{k}": s for k, s in unet.items()}, "null_embedding": (ctx,)}

    keyframes = unet_file("keyframe_unet", "blocks_conv1d_attn1d", num_frames=spec.num_frames)
    interpolation = unet_file("interpolation_unet", "kandinsky_video")
    if fmt == "kv1.0":
        keyframes.update({f"projections.t5.{k}": s for k, s in projection.items()})
        out.update(keyframes=keyframes, interpolation=interpolation)
    elif fmt == "kv1.1":
        out["keyframes"] = unet_file("keyframe_unet", "kv1_1")
        out["interpolation"] = kv11_interpolation_layout(spec)
        out["projections"] = {f"{p}.{k}": s for p in ("projection_base", "projection_interpolation")
                              for k, s in projection.items()}  # fmt: skip
        video = _meta_state("decoder", "conv3x3x3_attn", spec.preset)
        out["video_movq"] = {**{k: s for k, s in kandinsky_movq.items() if not k.startswith("decoder.")},
                             **{f"decoder.{k}": s for k, s in video.items()}}  # fmt: skip
    else:  # k3.1
        out["t2i"] = unet_file("t2i_unet", "kandinsky3")
        out["projection"] = projection
    return out


def kv11_interpolation_layout(spec: ImportSpec = ImportSpec(), flags: Any = None) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a 1.1 ``interpolation.pt`` (``unet.*`` + ``null_embedding``) at ``spec.preset`` with the
    optional parts ``flags`` (a :class:`~ff_lightning.models.kv11_interpolation.KV11InterpolationFlags`; None: the
    release constructor's defaults). The real file's flags are read off its keys at import (:func:`infer_flags
    <ff_lightning.models.kv11_interpolation.infer_flags>`)."""
    from ff_lightning import registry

    overrides = {} if flags is None else flags.as_config()
    unet = _meta_state("interpolation_unet", "kv1_1", spec.preset, **overrides)
    ctx = int(registry.preset_config("t2i_unet", spec.preset)["context_dim"])
    return {**{f"unet.{k}": s for k, s in unet.items()}, "null_embedding": (ctx,)}


# ------------------------------------------------------------------------------------------------ reading
def _locate(src: Path, name: str) -> Path | None:
    for folder in (src, src / "weights"):
        if (folder / name).is_file():
            return folder / name
    return None


def detect_format(src: str | Path) -> str:
    """The release format of folder ``src`` from the files it holds (raises ``CheckpointError`` when none fits)."""
    src = Path(src).expanduser()
    for fmt, key in (("kv1.1", "keyframes"), ("kv1.0", "keyframes"), ("k3.1", "t2i"), ("movqgan", "movq")):
        if _locate(src, RELEASE_FILES[fmt][key]) is not None:
            return fmt
    known = "; ".join(f"{f}: {RELEASE_FILES[f][k]}" for f, k in
                      (("kv1.0", "keyframes"), ("kv1.1", "keyframes"), ("k3.1", "t2i"), ("movqgan", "movq")))  # fmt: skip
    raise CheckpointError(f"no released Kandinsky files in {src} (looked for {known}); pass --format and the folder")


def _read(role: str, path: Path) -> dict[str, torch.Tensor]:
    if role == "movq" and path.suffix == ".ckpt":  # MoVQGAN: {"state_dict": ...} with training-only entries
        state = read_state_dict(path, mmap=True)
        return {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    return read_tensors(path, mmap=True)  # paper-size UNet files are ~16 GB: paged in, not copied


def _listing(title: str, items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"    {title} ({len(items)}): {shown}{more}"


def _check(role: str, path: Path, found: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> str:
    """'' when ``found`` matches ``expected`` key for key and shape for shape, else a report of the differences."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} file {tuple(v.shape)} vs model {expected[k]}" for k, v in found.items()
              if k in expected and tuple(v.shape) != expected[k]]  # fmt: skip
    if not (missing or unexpected or shapes):
        return ""
    lines = [f"  {role}: {path}"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            lines.append(_listing(title, items))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ writing
def _stage_config(system: str, spec: ImportSpec) -> dict[str, Any]:
    """The run config of an imported stage: weights all come from its module.safetensors."""
    text = {"text_encoder": spec.text_encoder, "text_encoder_path": spec.text_encoder_path}
    frozen = {"movq_ckpt": None, "allow_random_movq": True, "movq_preset": spec.preset, "latent_scale": 1.0}
    size = list(spec.size)
    if system == "decoder":
        return {"system": "decoder", "model": {"component": "decoder", "variant": "conv3x3x3_attn",
                                               "preset": spec.preset},
                "data": {"num_frames": 8, "size": size},
                "module": {"movq_ckpt": None, "allow_random_movq": True, "policy": "none"}}  # fmt: skip
    if system == "interpolation":
        return {"system": "interpolation",
                "model": {"component": "interpolation_unet", "variant": "kandinsky_video", "preset": spec.preset},
                "data": {"num_frames": 4 * spec.num_frames - 3, "size": size},
                "module": {**frozen, "t2i_ckpt": None, "allow_random_t2i": True, "sampler": "ddpm",
                           "guidance_weight": 0.25, "inference_perturbation": 0, "sample_steps": 50, "sample_spacing": "release"}}  # fmt: skip
    common = {**frozen, **text, "t2i_ckpt": None, "prediction": "eps", "sampler": "ddpm", "sample_steps": 50,
              "dynamic_threshold": 0.98, "sample_spacing": "release", "text_max_length": 128 if spec.text_encoder == "t5" else None}  # fmt: skip
    common = {k: v for k, v in common.items() if v is not None or k in ("t2i_ckpt", "movq_ckpt")}
    if system == "t2i":
        common.pop("t2i_ckpt")
        return {"system": "t2i", "model": {"component": "t2i_unet", "variant": "kandinsky3", "preset": spec.preset},
                "data": {"size": size, "num_frames": 1}, "module": {**common, "guidance_weight": 3.0}}  # fmt: skip
    return {"system": "keyframes",
            "model": {"component": "keyframe_unet", "variant": "blocks_conv1d_attn1d", "preset": spec.preset},
            "data": {"num_frames": spec.num_frames, "size": size},
            "module": {**common, "allow_random_t2i": True, "guidance_weight": 5.0}}  # fmt: skip


def _stage_yaml(name: str, spec: ImportSpec, fmt: str = "", model_overrides: Mapping[str, Any] | None = None) -> str:
    """The stage's run config as yaml, validated like any run config (``model_overrides``: ``model.overrides``)."""
    from omegaconf import OmegaConf

    from ff_lightning.config import compose

    config = _stage_config(name, spec)
    if model_overrides:
        config["model"]["overrides"] = dict(model_overrides)
    if fmt == "kv1.1" and name == "interpolation":  # 1.1: three frames per pair of its 12 keyframes, 10 steps
        from ff_lightning.models.kv11 import KV11_NUM_FRAMES

        config["model"]["variant"] = "kv1_1"
        config["data"]["num_frames"] = 4 * KV11_NUM_FRAMES - 3
        config["module"].update(guidance_weight=0.5, sample_steps=10, sample_spacing="trailing")
    if fmt == "kv1.1" and name == "keyframes":  # the 1.1 keyframe UNet: 12 keyframes, positions 0..11
        from ff_lightning.models.kv11 import KV11_NUM_FRAMES

        config["model"]["variant"] = "kv1_1"
        config["data"]["num_frames"] = KV11_NUM_FRAMES
    return OmegaConf.to_yaml(compose(config, source=f"imported {name} stage"))


def _write_stage(
    out: Path,
    name: str,
    state: Mapping[str, torch.Tensor],
    config_yaml: str,
    spec: ImportSpec,
    fmt: str,
    sources: dict[str, Any],
) -> dict[str, Any]:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.yaml", config_yaml)
    save_safetensors(state, folder / "module.safetensors")
    manifest = {
        "system": name,
        "imported_from": {"format": fmt, "files": sources},
        "preset": spec.preset,
        "files": {"config.yaml": "run config of the stage (every weight comes from module.safetensors)",
                  "module.safetensors": f"the {name} system's state dict ({len(state)} tensors, frozen MoVQ "
                                        "included; quantize.* absent: never used)"},
    }  # fmt: skip
    if (fmt, name) in UNWIRED:
        manifest["not_wired"] = UNWIRED[(fmt, name)]
    if name == "decoder":  # the released decoder conditions its attention norms on each video's first frame
        manifest["release_forward"] = {"attn_zq_first_frame": True}
    atomic_write_json(folder / "export.json", manifest)
    return manifest


def import_release(
    src: str | Path,
    out: str | Path,
    fmt: str | None = None,
    spec: ImportSpec = ImportSpec(),
    parts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Import the released files of folder ``src`` (format ``fmt``, detected when None) into ``out``; returns the
    manifest written to ``out/export.json``. ``parts``: a subset of the format's stages (default all of them).

    Raises :class:`CheckpointError` (nothing written) when a file is missing or any key / shape does not match.
    """
    src, out = Path(src).expanduser(), Path(out).expanduser()
    fmt = fmt or detect_format(src)
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown release format {fmt!r}; valid: {', '.join(FORMATS)}")
    wanted = tuple(parts or FORMAT_PARTS[fmt])
    refused = [UNSUPPORTED[(fmt, p)] for p in wanted if (fmt, p) in UNSUPPORTED]
    if refused:
        raise CheckpointError(f"{fmt} import refused: " + "; ".join(refused))
    bad = [p for p in wanted if p not in FORMAT_PARTS[fmt]]
    if bad:
        raise CheckpointError(f"format {fmt} has no part(s) {', '.join(bad)}; valid: {', '.join(FORMAT_PARTS[fmt])}")
    roles = {"movq"} | {r for r in RELEASE_FILES[fmt] if r in wanted}
    if "decoder" in wanted:
        roles.add("video_movq")
    if fmt == "kv1.1" and ("keyframes" in wanted or "interpolation" in wanted):
        roles.add("projections")
    if fmt == "k3.1" and "t2i" in wanted:
        roles.add("projection")
    paths = {r: _locate(src, RELEASE_FILES[fmt][r]) for r in sorted(roles)}
    absent = [RELEASE_FILES[fmt][r] for r, p in paths.items() if p is None]
    if absent:
        raise CheckpointError(f"{fmt} import from {src}: missing file(s) {', '.join(absent)} (looked in {src} and "
                              f"{src / 'weights'}); see docs/reproduce.md for where to download them")  # fmt: skip
    layout = release_layout(fmt, spec)
    files = {r: _read(r, p) for r, p in paths.items() if p is not None}
    kv11_flags = None
    if fmt == "kv1.1" and "interpolation" in files:  # its optional parts: read off the file's keys
        from ff_lightning.models.kv11_interpolation import infer_flags

        kv11_flags = infer_flags([k for k in files["interpolation"] if k.startswith("unet.")])
        layout["interpolation"] = kv11_interpolation_layout(spec, kv11_flags)
    for role, tensors in files.items():  # the null embedding's stored shape is not documented: (C,) or (1, C) both fit
        null, want = tensors.get("null_embedding"), layout[role].get("null_embedding")
        if null is not None and want is not None and null.ndim > 1 and tuple(null.shape[-1:]) == want and \
                null.numel() == want[0]:  # fmt: skip
            tensors["null_embedding"] = null.reshape(-1)
    problems = [_check(r, paths[r], files[r], layout[r]) for r in files]  # type: ignore[arg-type]
    problems = [p for p in problems if p]
    if problems:
        hint = ""
        raise CheckpointError(f"{fmt} import from {src} refused: the files do not match our models at "
                              f"preset={spec.preset!r} key for key:\n" + "\n".join(problems) + hint)  # fmt: skip
    sources = {r: {"path": str(p.resolve()), "sha256": sha256_file(p)} for r, p in paths.items() if p is not None}
    if fmt == "k3.1" and spec.text_encoder_path is None and paths.get("projection") is not None:
        spec = replace(spec, text_encoder_path=str(paths["projection"].parent.resolve()))  # type: ignore[union-attr]
    configs = {stage: _stage_yaml(stage, spec, fmt) for stage in wanted if stage != "movq"}  # before writing anything
    if kv11_flags is not None:
        configs["interpolation"] = _stage_yaml("interpolation", spec, fmt, kv11_flags.as_config())
    movq_expected = _meta_state("movq", "movqgan", spec.preset)
    movq_file = files["movq"]
    renamed = release_key_map(movq_file, movq_expected)
    image_movq = {renamed.get(k, k): v for k, v in movq_file.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(image_movq, out / "movq.safetensors")
    frozen = {f"movq.{k}": v for k, v in image_movq.items()}
    stages: dict[str, Any] = {}

    def text_parts(projection: Mapping[str, torch.Tensor], null: torch.Tensor) -> dict[str, torch.Tensor]:
        ours = dict(zip(("projection.weight", "norm.weight", "norm.bias"), (projection[k] for k in _PROJECTION)))
        return {**{f"text_projection.{k}": v for k, v in ours.items()}, "null_embedding.embedding": null.reshape(-1)}

    def sub(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}  # fmt: skip

    for stage in wanted:
        if stage == "movq":
            continue
        if stage == "decoder":
            video = files["video_movq"]
            ren = release_key_map(video, movq_expected)  # the encoder's wrapped norms
            state = {f"movq.{ren.get(k, k)}": v for k, v in video.items()}
        else:
            f = files[stage]
            state = {**{f"unet.{k}": v for k, v in sub(f, "unet.").items()}, **frozen}
            if stage == "interpolation" and fmt == "kv1.1":  # 1.1 conditions on the prompt (see the docstring)
                state.update(text_parts(sub(files["projections"], "projection_base."), f["null_embedding"]))
                intended = text_parts(sub(files["projections"], "projection_interpolation."), f["null_embedding"])
                state.update({f"text_projection_interpolation.{k[len('text_projection.'):]}": v
                              for k, v in intended.items() if k.startswith("text_projection.")})  # fmt: skip
            elif stage == "interpolation":
                state["null_embedding.embedding"] = f["null_embedding"].reshape(-1)
            else:
                if fmt == "kv1.0":
                    proj = sub(f, "projections.t5.")
                elif fmt == "kv1.1":
                    proj = sub(files["projections"], "projection_base.")
                else:
                    proj = files["projection"]
                state.update(text_parts(proj, f["null_embedding"]))
        stages[stage] = _write_stage(out, stage, state, configs[stage], spec, fmt, sources)
        if stage == "interpolation" and kv11_flags is not None:  # the inferred optional parts, for the record
            stages[stage]["release_flags"] = kv11_flags.as_config()
            atomic_write_json(out / stage / "export.json", stages[stage])
    text_path = spec.text_encoder_path
    manifest = {
        "format": fmt,
        "source": str(src.resolve()),
        "files": sources,
        "text_encoder": {"name": spec.text_encoder, "path": text_path},
        "preset": spec.preset,
        "num_frames": 12 if fmt == "kv1.1" else spec.num_frames,  # kv1.1: the 1.1 keyframe UNet's 12 frames
        "stages": {s: f"{s}/" for s in stages if (fmt, s) not in UNWIRED},
        "unwired_stages": {s: f"{s}/: {UNWIRED[(fmt, s)]}" for s in stages if (fmt, s) in UNWIRED},
        "movq": "movq.safetensors (image MoVQ, our key layout; quantize.* absent unless MoVQGAN)",
    }
    atomic_write_json(out / "export.json", manifest)
    return manifest
