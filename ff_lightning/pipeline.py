"""Text -> video with trained checkpoints of the three stages (what ``ff generate`` runs; inference only).

Stages, each a progress bar:

1. **keyframes** (:func:`keyframe_latents`): a ``keyframes``-system checkpoint samples ``K`` keyframe latents for the
   prompt (classifier-free guidance weight ``guidance_weight``, ``steps`` sampler steps);
2. **interpolation** (``passes`` times): an ``interpolation``-system checkpoint turns ``K`` keyframes into ``4K - 3``
   latents per pass (``4^n (K - 1) + 1`` after ``n`` passes), context guidance ``interp_guidance_weight``, keyframe
   perturbation ``tp``, skip-frame ``s`` (the last pass; earlier passes ``4`` times more, see
   :func:`~ff_lightning.models.interpolation_pipeline.pass_skips`);
3. **decoder**: a ``decoder``-system checkpoint (a video MoVQ decoder, a Table 3 row) decodes all frames at once
   (``num_frames = T``). Without one, the keyframe model's image MoVQ decoder decodes frame by frame (said in the
   output: no temporal layers smooth the frames).

Checkpoints are Lightning ``.ckpt`` files with the experiment config under ``hyper_parameters.config``; they are read
with ``torch.load(weights_only=True)`` (arbitrary pickles are refused) and loaded strictly into the system their
config names, EMA weights swapped in when the checkpoint has them. Keyframe and interpolation checkpoints leave out
their frozen image MoVQ: the ``module.movq_ckpt`` file they were trained with must still exist.

Latent spaces: the keyframes, the interpolation model and the video decoder must share one MoVQ latent space (the
same encoder). :func:`check_latent_spaces` fingerprints the encoder + ``quant_conv`` weights of each stage's MoVQ (the
decoder checkpoint carries its own encoder) and refuses mismatched stages with a message naming the ``movq_ckpt``
each was trained with; nothing is re-encoded (a decode-encode round trip through another MoVQ would change the
sample). ``latent_scale`` differences between stages are converted exactly.

:func:`generate` (what ``ff generate`` calls) runs the typed, Lightning-free stages of
:class:`ff_lightning.pipelines.VideoPipeline` (same samples, bit for bit; checkpoints or ``ff export`` / ``ff import``
folders; ``device`` and ``precision``); the functions below run the training systems themselves and remain for
reference-image keyframe models and for tests that compare both.

Random draws come from CPU generators seeded from ``seed`` (keyframes ``seed``, interpolation ``seed + 1``): the same
seed and options give identical frames.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from ff_lightning.checkpoints import CheckpointError, is_export_dir, load_checkpoint, read_export
from ff_lightning.config import ConfigError

__all__ = [
    "GenerateOptions",
    "GenerationResult",
    "Stages",
    "load_stage",
    "load_stages",
    "check_latent_spaces",
    "keyframe_latents",
    "generate_video",
    "write_outputs",
    "to_uint8_frames",
]

log = logging.getLogger(__name__)

STAGE_SYSTEMS = {"keyframes": "keyframes", "interpolation": "interpolation", "decoder": "decoder"}

# Overrides applied to a stage's stored config before building it: every weight comes from the checkpoint, so the
# initial-weight files it was built from are not needed (the frozen image MoVQ of the diffusion stages is).
_STAGE_OVERRIDES = {
    "keyframes": ["module.t2i_ckpt=null", "module.allow_random_t2i=true", "module.text_cache_dir=null"],
    "interpolation": ["module.t2i_ckpt=null", "module.allow_random_t2i=true"],
    "decoder": ["module.movq_ckpt=null", "module.allow_random_movq=true", "module.decoder_ckpt=null"],
}


@dataclass
class GenerateOptions:
    """What ``ff generate`` exposes; ``None`` takes the stage checkpoint's own ``module`` default."""

    seed: int = 0
    steps: int | None = None  # keyframe sampler steps (module.sample_steps)
    guidance_weight: float | None = None  # text guidance of the keyframes (module.guidance_weight)
    passes: int = 1  # interpolation passes: K -> 4^n (K - 1) + 1 frames
    interp_steps: int | None = None  # interpolation sampler steps
    interp_guidance_weight: float | None = None  # context guidance w of the interpolation (0.25 released)
    perturbation: int | None = None  # tp of the conditioning keyframes (0 released, 150 paper)
    skip_frames: int | None = None  # skip-frame s of the last pass (module.sample_skip, else 1)
    frame_step: float | None = None  # source-frame step of the keyframes (frame-rate conditioning)
    size: tuple[int, int] | None = None  # frame height, width (default: the keyframe model's data.size)
    fps: float | None = None  # of the written video (default: keyframe rate x 4^passes / frame step)
    progress: bool = True
    image: torch.Tensor | None = None  # reference image (3, H, W) in [-1, 1] for reference-image keyframe models
    image_guidance_weight: float | None = None  # w_img of reference-image keyframe models (module's by default)
    motion: str | None = None  # Kandinsky Video 1.1 keyframes: motion score name (low / medium / high / extreme)
    noise_augmentation: int | None = None  # Kandinsky Video 1.1 keyframes: timestep of the first frame's noise


@dataclass
class Stages:
    """The loaded stage systems (eval mode, CPU unless moved); ``decoder`` None: image MoVQ frame by frame."""

    keyframes: Any
    interpolation: Any | None
    decoder: Any | None
    paths: dict[str, str | None] = field(default_factory=dict)


@dataclass
class GenerationResult:
    frames: torch.Tensor  # (T, 3, H, W) in [-1, 1]
    latents: torch.Tensor  # (T, c, h, w) what the decoder decoded (unscaled MoVQ latents)
    num_keyframes: int
    decoder: str  # "video decoder (<variant>)" or "image MoVQ decoder, frame by frame"
    fps: float
    seconds: dict[str, float]
    paths: list[Path] = field(default_factory=list)
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> path, sha256, system, ...
    notes: dict[str, str] = field(default_factory=dict)  # what the pipeline ran without (e.g. no interpolation)


# ----------------------------------------------------------------------------------------------------- loading
def load_stage(stage: str, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Any:
    """Build the system a stage checkpoint was trained with and load its weights (strict; EMA swapped in).

    ``stage``: ``keyframes`` | ``interpolation`` | ``decoder``; the checkpoint's own config must name that system.
    """
    from omegaconf import OmegaConf

    from ff_lightning.config import compose
    from ff_lightning.systems import system_class

    if stage not in STAGE_SYSTEMS:
        raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(STAGE_SYSTEMS)}")
    p = Path(path).expanduser()
    if p.is_dir():
        return _load_export_stage(stage, p, device)
    if not p.is_file():
        raise FileNotFoundError(f"{stage} checkpoint not found: {p}")
    obj = load_checkpoint(p)  # safetensors or weights-only; code-needing pickles are refused
    hp = obj.get("hyper_parameters") if isinstance(obj, Mapping) else None
    stored = hp.get("config") if isinstance(hp, Mapping) else None
    if not isinstance(stored, Mapping) or not isinstance(obj.get("state_dict"), Mapping):
        raise ConfigError(
            f"{p} is not a checkpoint of the {stage} system (a Lightning .ckpt with state_dict and "
            "hyper_parameters.config, e.g. a run's checkpoints/last.ckpt)"
        )
    system = str(stored.get("system"))
    try:
        fits = issubclass(system_class(system), system_class(STAGE_SYSTEMS[stage]))  # e.g. keyframe variants
    except KeyError:
        fits = False
    if not fits:
        raise ConfigError(f"{p} is a checkpoint of the {system!r} system, not of the {stage} stage")
    movq = (stored.get("module") or {}).get("movq_ckpt")
    if stage != "decoder" and movq and not Path(movq).is_file():
        raise FileNotFoundError(
            f"{stage} checkpoint {p} was trained on the image MoVQ {movq}, which is gone (its frozen MoVQ is not "
            "stored in the checkpoint); rebuild it (e.g. `make tiny-models`) or retrain the stage"
        )
    cfg = compose(OmegaConf.create(dict(stored)), _STAGE_OVERRIDES[stage], source=str(p))
    module = system_class(cfg.system)(cfg)
    module.load_state_dict(obj["state_dict"])
    module.on_load_checkpoint(obj)
    if getattr(module, "ema", None) is not None:
        module.ema.swap_in(module.trainable_parameters())  # sample with the averaged weights
    module.ckpt_path = str(p)
    module.trained_movq_ckpt = movq  # the image MoVQ file the stage was trained with (as recorded in its config)
    return module.to(device).eval().requires_grad_(False)


def _load_export_stage(stage: str, folder: Path, device: str | torch.device) -> Any:
    """A stage from an ``ff export`` / ``ff import`` folder (config.yaml + module.safetensors), loaded strictly: the
    only entries the folder may lack are the frozen MoVQ (then ``module.movq_ckpt`` must exist, as for checkpoints)
    and its never-used ``quantize.*`` codebook (absent from the Kandinsky releases)."""
    from ff_lightning.config import compose
    from ff_lightning.systems import system_class

    if not is_export_dir(folder):
        raise ConfigError(
            f"{folder} is not a {stage} stage folder (config.yaml + module.safetensors, as written by `ff export` or "
            "`ff import`; an import's stages are its subfolders, e.g. OUT/keyframes)"
        )
    stored, state, manifest = read_export(folder)
    system = str(stored.get("system"))
    try:
        fits = issubclass(system_class(system), system_class(STAGE_SYSTEMS[stage]))
    except KeyError:
        fits = False
    if not fits:
        raise ConfigError(f"{folder} holds the {system!r} system, not the {stage} stage")
    overrides = list(_STAGE_OVERRIDES[stage])
    has_movq = any(k.startswith("movq.encoder.") for k in state)
    movq = (stored.get("module") or {}).get("movq_ckpt")
    if has_movq:  # self-contained (ff import): the frozen MoVQ comes from the folder
        overrides += ["module.movq_ckpt=null", "module.allow_random_movq=true"]
    elif stage != "decoder" and movq and not Path(movq).is_file():
        raise FileNotFoundError(f"{stage} stage {folder} needs its image MoVQ {movq} (module.movq_ckpt), which is gone")
    cfg = compose(dict(stored), overrides, source=str(folder / "config.yaml"))
    module = system_class(cfg.system)(cfg)
    expected = set(module.state_dict())
    allowed = ("movq.quantize.",) if has_movq or stage == "decoder" else ("movq.",)
    missing = sorted(k for k in expected - set(state) if not k.startswith(allowed))
    if stage == "decoder" and cfg.module.decode_quantized and "movq.quantize.embedding.weight" not in state:
        missing.append("movq.quantize.embedding.weight (module.decode_quantized needs the codebook)")
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{folder / 'module.safetensors'} does not fit the {system} system of its config.yaml: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    full = {**module.state_dict(), **state}
    module.load_state_dict(full)
    if stage == "decoder" and (manifest.get("release_forward") or {}).get("attn_zq_first_frame"):
        module.movq.decoder.attn_zq_first_frame = True  # the released decoder's attention norms (see models.movq)
        module.movq.decoder.config["attn_zq_first_frame"] = True
    module.ckpt_path = str(folder)
    module.trained_movq_ckpt = movq or str(folder / "module.safetensors")
    module.export_manifest = manifest
    return module.to(device).eval().requires_grad_(False)


def load_stages(
    keyframes: str | os.PathLike[str],
    interpolation: str | os.PathLike[str] | None,
    decoder: str | os.PathLike[str] | None,
    device: str | torch.device = "cpu",
) -> Stages:
    """Load the stages and check they share one latent space (:func:`check_latent_spaces`)."""
    stages = Stages(
        keyframes=load_stage("keyframes", keyframes, device),
        interpolation=load_stage("interpolation", interpolation, device) if interpolation else None,
        decoder=load_stage("decoder", decoder, device) if decoder else None,
        paths={"keyframes": str(keyframes), "interpolation": _opt(interpolation), "decoder": _opt(decoder)},
    )
    check_latent_spaces(stages)
    return stages


def _opt(p: str | os.PathLike[str] | None) -> str | None:
    return str(p) if p else None


def movq_fingerprint(movq: nn.Module) -> str:
    """sha256 of the encoder and ``quant_conv`` weights of a MoVQ: equal fingerprints = the same latent space."""
    h = hashlib.sha256()
    for name, t in sorted(movq.state_dict().items()):
        if name.startswith(("encoder.", "quant_conv.")):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def check_latent_spaces(stages: Stages) -> None:
    """Refuse stages whose MoVQ encoders differ (see the module docstring)."""
    found = {"keyframes": stages.keyframes, "interpolation": stages.interpolation, "decoder": stages.decoder}
    prints = {name: movq_fingerprint(m.movq) for name, m in found.items() if m is not None}
    if len(set(prints.values())) <= 1:
        return
    lines = [
        f"  {name}: {stages.paths.get(name)} (trained on module.movq_ckpt={found[name].trained_movq_ckpt}; "
        f"encoder fingerprint {fp})"
        for name, fp in prints.items()
    ]
    raise ConfigError(
        "the stages were trained in different MoVQ latent spaces (different image-MoVQ encoders), so latents of one "
        "mean nothing to the next:\n" + "\n".join(lines) + "\nUse stages trained on the same image MoVQ (e.g. all "
        "three from `make tiny-models`), or go without the video decoder (`ff generate --no-decoder`: the keyframe "
        "model's own image MoVQ decodes frame by frame)."
    )


# ------------------------------------------------------------------------------------------------------- stages
@contextlib.contextmanager
def _stage_bar(name: str, total: int, module: nn.Module | None, enabled: bool) -> Iterator[Any]:
    """A tqdm bar advanced by every forward of ``module`` (one per sampler step: guidance batches both branches)."""
    from tqdm import tqdm  # text bars on stderr, also inside notebooks (no widget dependency)

    bar = tqdm(total=total, desc=name, unit="step", disable=not enabled, leave=True)

    def tick(*_: Any) -> None:  # a forward hook that returns None leaves the output alone
        bar.update(1)

    handle = module.register_forward_hook(tick) if module is not None else None
    try:
        yield bar
    finally:
        if handle is not None:
            handle.remove()
        bar.close()


def latent_size(keyframes: Any, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """Latent ``(h, w)`` of frames ``size`` (default the keyframe model's ``data.size``) through its MoVQ."""
    h, w = size or tuple(keyframes.cfg.data.size)
    with torch.no_grad():
        z = keyframes.movq.encode(torch.zeros(1, 3, int(h), int(w), device=keyframes.device))
    return int(z.shape[-2]), int(z.shape[-1])


def _fitted_image(keyframes: Any, o: GenerateOptions) -> torch.Tensor | None:
    """``o.image`` resized to the frame size when it is an RGB image ``(3, H, W)`` (latents pass unchanged)."""
    if o.image is None or o.image.ndim != 3 or o.image.shape[0] != 3:
        return o.image
    from ff_lightning.systems.reference_keyframes import fit_reference_image

    return fit_reference_image(o.image, o.size or tuple(keyframes.cfg.data.size))


@torch.no_grad()
def keyframe_latents(
    keyframes: Any,
    prompt: str,
    *,
    latent_hw: tuple[int, int],
    steps: int | None = None,
    guidance_weight: float | None = None,
    seed: int = 0,
    frame_step: float | None = None,
    image: torch.Tensor | None = None,
    image_guidance_weight: float | None = None,
) -> torch.Tensor:
    """Stage 1: keyframe latents ``(1, K, c, h, w)`` (unscaled MoVQ latents) for ``prompt``.

    ``image``: a reference image ``(3, H, W)`` in [-1, 1] (or its latents) for keyframe models that take one (the
    ``reference_keyframes`` system's ``generate(reference=...)``; ``ff generate --image PATH``: read, resized to the
    frame size by :func:`generate_video`). ``image_guidance_weight``: their image guidance weight (with or without
    ``image``: without one they make the reference with their image stage).
    """
    kwargs: dict[str, Any] = {"steps": steps, "guidance_weight": guidance_weight, "seed": seed}
    for name, value, key in (("image", image, "reference"), ("image guidance", image_guidance_weight,
                                                              "image_guidance_weight")):  # fmt: skip
        if value is None:
            continue
        if key not in inspect.signature(keyframes.generate).parameters:
            raise ConfigError(
                f"this keyframe model ({keyframes.cfg.system} system) takes no reference image ({name} given); a "
                "reference_keyframes checkpoint does"
            )
        kwargs[key] = value
    out = keyframes.generate([prompt], latent_hw, decode=False, frame_step=frame_step, **kwargs)  # 1 K c h w
    return out / keyframes.m.latent_scale


@torch.no_grad()
def generate_video(stages: Stages, prompt: str, options: GenerateOptions | None = None) -> GenerationResult:
    """Text -> frames ``(T, 3, H, W)`` through the loaded stages (see the module docstring)."""
    o = options or GenerateOptions()
    if o.motion is not None or o.noise_augmentation is not None:
        raise ConfigError("motion / noise augmentation apply to Kandinsky Video 1.1 keyframes only (an `ff import "
                          "--format kv1.1` pipeline)")  # fmt: skip
    kf, ip, dec = stages.keyframes, stages.interpolation, stages.decoder
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    kf_steps = int(o.steps or kf.m.sample_steps)
    with _stage_bar("keyframes", kf_steps, kf.unet, o.progress):
        lat = keyframe_latents(
            kf, prompt, latent_hw=latent_size(kf, o.size), steps=kf_steps, guidance_weight=o.guidance_weight,
            seed=o.seed, frame_step=o.frame_step, image=_fitted_image(kf, o),
            image_guidance_weight=o.image_guidance_weight,
        )  # fmt: skip
    seconds["keyframes"] = time.perf_counter() - t0
    num_keyframes = lat.shape[1]
    passes = 0
    if ip is not None and o.passes > 0:
        t0 = time.perf_counter()
        ip_steps = int(o.interp_steps or ip.m.sample_steps)
        with _stage_bar("interpolation", ip_steps * o.passes, ip.unet, o.progress):
            seq = ip.interpolate_latents(
                lat * ip.m.latent_scale, passes=o.passes, skip_frames=o.skip_frames,
                guidance_weight=o.interp_guidance_weight, perturbation_time=o.perturbation, steps=ip_steps,
                seed=o.seed + 1,
            )  # fmt: skip
        lat = seq / ip.m.latent_scale
        passes = o.passes
        seconds["interpolation"] = time.perf_counter() - t0
    latents = lat[0]  # T c h w
    t = latents.shape[0]
    t0 = time.perf_counter()
    if dec is not None:
        what = f"video decoder ({dec.cfg.model.variant})"
        with _stage_bar("decoder", 1, None, o.progress) as bar:
            z = dec.movq.quantize(latents)[0] if dec.m.decode_quantized else latents
            frames = dec.movq.decode(z, num_frames=t)  # (b t) 3 H W with b = 1
            bar.update(1)
    else:
        what = "image MoVQ decoder, frame by frame"
        with _stage_bar("decoder (image MoVQ, frame by frame)", t, None, o.progress) as bar:
            out = []
            for i in range(t):
                out.append(kf.movq.decode(latents[i : i + 1], num_frames=1))
                bar.update(1)
            frames = torch.cat(out)
    seconds["decoder"] = time.perf_counter() - t0
    fps = float(o.fps) if o.fps else _default_fps(kf, passes, o.frame_step)
    return GenerationResult(frames.float().clamp(-1, 1).cpu(), latents.cpu(), num_keyframes, what, fps, seconds)


def _default_fps(keyframes: Any, passes: int, frame_step: float | None) -> float:
    """Frame rate of the output: the source rate over the keyframes' source-frame step, times 4 per pass (falls back
    to the training data's ``fps`` or 8 when the source rate is unknown)."""
    data = keyframes.cfg.data
    source = float(getattr(data, "fps", None) or 8.0)
    step = float(frame_step or keyframes.m.sample_frame_step or data.stride or 1)
    return max(1.0, source / step * 4**passes)


# -------------------------------------------------------------------------------------------------------- output
def to_uint8_frames(frames: torch.Tensor) -> np.ndarray:
    """``(T, 3, H, W)`` in [-1, 1] -> ``(T, H, W, 3)`` uint8."""
    u8 = ((frames.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(u8, "t c h w -> t h w c").contiguous().numpy()


def write_outputs(
    frames: torch.Tensor, out: str | os.PathLike[str], fps: float, gif: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Write ``frames`` ``(T, 3, H, W)`` to ``out`` (mp4 through PyAV; odd sizes padded to even) and optionally a
    GIF, each atomically (a temporary sibling renamed over the target)."""
    from PIL import Image

    from ff_lightning.data.video_io import write_video
    from ff_lightning.io import atomic_open

    video = to_uint8_frames(frames)
    padded = np.pad(video, ((0, 0), (0, video.shape[1] % 2), (0, video.shape[2] % 2), (0, 0)), mode="edge")
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{target.suffix or '.mp4'}")
    try:
        write_video(tmp, padded, fps)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    paths = [target]
    if gif:
        images = [Image.fromarray(f) for f in video]
        with atomic_open(gif, "wb") as f:
            images[0].save(
                f, format="GIF", save_all=True, append_images=images[1:], duration=max(1, int(1000 / fps)), loop=0
            )
        paths.append(Path(gif))
    return paths


def generate(
    prompt: str,
    keyframes: str | os.PathLike[str],
    interpolation: str | os.PathLike[str] | None = None,
    decoder: str | os.PathLike[str] | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    gif: str | os.PathLike[str] | None = None,
    options: GenerateOptions | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> GenerationResult:
    """Load the stages (checkpoints or export / import folders) onto ``device``, generate under ``precision``
    (``fp32`` | ``bf16`` | ``fp16`` autocast), and write ``out`` (mp4) / ``gif`` when given. The result's ``weights``
    record each stage's path and sha256."""
    from ff_lightning.pipelines import VideoPipeline, autocast
    from ff_lightning.pipelines.video import UnsupportedStage

    o = options or GenerateOptions()
    try:
        pipe = VideoPipeline.from_paths(keyframes, interpolation, decoder, device=device, precision=precision)
    except UnsupportedStage:  # a keyframes stage of another system: through its system
        stages = load_stages(keyframes, interpolation, decoder, device=device)
        with autocast(device, precision):
            result = generate_video(stages, prompt, o)
    else:
        result = pipe.generate(prompt, o)
    if out is not None or gif is not None:
        if out is None:
            raise ValueError("gif needs out (the mp4) too")
        result.paths = write_outputs(result.frames, out, result.fps, gif)
    return result


def describe(result: GenerationResult, prompts: Sequence[str] = ()) -> str:
    """One line per fact of a generation (what ``ff generate`` prints)."""
    t, _, h, w = result.frames.shape
    lines = [
        f"{t} frames {h}x{w} at {result.fps:g} fps from {result.num_keyframes} keyframes",
        f"decoded with the {result.decoder}",
        "seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()),
    ]
    lines += [f"{k}: {v}" for k, v in result.notes.items()]
    lines += [f"wrote {p}" for p in result.paths]
    return "\n".join(lines)
