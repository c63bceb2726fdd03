"""Keyframe checkpoints as benchmark generators: ``ff eval ucf101|msrvtt|offline --keyframes CKPT``.

:func:`load_keyframes_generator` is registered with
:func:`~ff_lightning.evaluation.generators.register_checkpoint_loader`. It accepts a checkpoint of the ``keyframes``
system (:class:`~ff_lightning.systems.keyframes.KeyframesModule`, any preset, variant, frame count or size) or of a
system built on it (``reference_keyframes``: its reference image then comes from its own image stage, as in
``ff generate`` without ``--image``):

- the file is read with ``torch.load(weights_only=True)`` (arbitrary pickles are refused); its experiment config is
  ``hyper_parameters.config``, else the ``config.yaml`` of its run folder (``<run>/version_N/config.yaml`` next to
  ``checkpoints/``); a file that is not a keyframe checkpoint (another system, no config, no UNet weights, not a
  weights-only torch file) raises :class:`~ff_lightning.evaluation.generators.GeneratorUnavailable` saying what it is;
- the model is built as a typed stage from that config (:mod:`ff_lightning.pipelines`, no LightningModule):
  :func:`~ff_lightning.pipelines.stages.build_keyframe_stage` for ``keyframes``,
  :func:`~ff_lightning.pipelines.reference.build_reference_keyframe_stage` for ``reference_keyframes``; the weights are
  loaded strictly, with the EMA weights laid over when the run kept an EMA (what the system's ``on_load_checkpoint``
  restores and the sweep's evaluator samples with). Checkpoints hold every UNet weight, so the text-to-image file the
  run started from (``module.t2i_ckpt``) is not read; the frozen MoVQ is not in checkpoints and comes from
  ``module.movq_ckpt`` (``--movq PATH`` when the file moved);
- one generator call = one stage ``sample`` on the batch of prompts with the runner's seed for that batch (so resumed
  runs produce the same videos; the same videos as the system's ``generate`` with that seed: for
  ``reference_keyframes`` the image stage first makes the reference with seed ``seed + IMAGE_SEED_OFFSET``), then the
  stage's MoVQ decode; videos ``(B, T, 3, H, W)`` in [-1, 1] at the model's resolution (``data.size``: the protocols'
  evaluators resize to their input size);
- sampling: ``sample_steps``, ``guidance_weight`` and ``sampler`` default to the checkpoint's ``module`` settings;
  the values used are recorded in the generator identity (and so in the sample folder and the result);
- frames: a keyframe model makes ``data.num_frames`` frames. When the protocol asks for more (UCF-101: IS and FVD
  read 16 frames), each generated frame is repeated in order (frame ``i`` of the stored video is keyframe
  ``floor(i T / F)``, a ``T``-frame clip played at ``F / T`` times its length) and the result is marked not
  comparable to the paper, with the reason. With at least as many frames as asked, the videos are stored whole.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ff_lightning.evaluation.generators import GeneratorUnavailable, NamedGenerator, register_checkpoint_loader

__all__ = [
    "SAMPLING_OPTIONS",
    "adapt_frames",
    "keyframe_checkpoint_config",
    "load_keyframes_generator",
    "load_pipeline_generator",
]

log = logging.getLogger(__name__)

#: generator options a keyframe checkpoint takes (CLI: --sample-steps, --guidance-weight, --sampler, --movq)
SAMPLING_OPTIONS: tuple[str, ...] = ("sample_steps", "guidance_weight", "sampler", "movq")


def adapt_frames(videos: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Videos ``(B, T, C, H, W)`` with at least ``num_frames`` frames: unchanged when ``T >= num_frames``, else frame
    ``i`` of the output is input frame ``floor(i T / num_frames)`` (each frame repeated in order)."""
    t = videos.shape[1]
    if t >= num_frames:
        return videos
    idx = torch.div(torch.arange(num_frames) * t, num_frames, rounding_mode="floor")
    return videos[:, idx]


def _read(path: Path) -> Any:
    from ff_lightning.checkpoints import load_checkpoint

    if path.is_dir():
        raise GeneratorUnavailable(f"{path} is a folder, not a keyframe checkpoint file")
    try:
        return load_checkpoint(path, "cpu", mmap=True)
    except Exception as e:  # not a torch file, or a pickle that weights_only refuses
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GeneratorUnavailable(
            f"{path} is not a keyframe checkpoint: torch.load(weights_only=True) cannot read it ({first}). "
            "Expected a Lightning .ckpt of the keyframes system (runs/<name>/version_N/checkpoints/last.ckpt)."
        ) from None


def keyframe_checkpoint_config(path: str | Path, obj: Any = None) -> dict[str, Any]:
    """The experiment config of a keyframe checkpoint (see the module docstring); raises
    :class:`GeneratorUnavailable` when the file is not one."""
    p = Path(path)
    obj = _read(p) if obj is None else obj
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise GeneratorUnavailable(
            f"{p} is not a keyframe checkpoint: no 'state_dict' (a bare state dict or another format; expected a "
            "Lightning .ckpt of the keyframes system)"
        )
    hp = obj.get("hyper_parameters")
    config = hp.get("config") if isinstance(hp, dict) else None
    where = "hyper_parameters.config"
    if not isinstance(config, dict):
        run_yaml = p.resolve().parent.parent / "config.yaml"
        if not run_yaml.is_file():
            raise GeneratorUnavailable(
                f"{p} has no experiment config: neither hyper_parameters.config in the checkpoint nor {run_yaml}"
            )
        config = OmegaConf.to_container(OmegaConf.load(run_yaml), resolve=True)
        where = str(run_yaml)
    system = config.get("system") if isinstance(config, dict) else None
    if not _is_keyframe_system(system):
        raise GeneratorUnavailable(
            f"{p} is a checkpoint of the {system!r} system ({where}), not a keyframe checkpoint: --keyframes takes a "
            "checkpoint of the keyframes system or of a system built on it (reference_keyframes; ff train "
            "experiments/keyframes/<variant>.yaml ...)"
        )
    if not any(k.startswith("unet.") for k in obj["state_dict"]):
        raise GeneratorUnavailable(f"{p}: the checkpoint's state_dict holds no UNet weights ('unet.*')")
    return dict(config)


def _is_keyframe_system(system: Any) -> bool:
    """Whether the registered system ``system`` is :class:`KeyframesModule` or built on it."""
    from ff_lightning.systems import system_class
    from ff_lightning.systems.keyframes import KeyframesModule

    try:
        cls = system_class(str(system))
    except (KeyError, ValueError, ImportError):  # an unknown name
        return False
    return isinstance(cls, type) and issubclass(cls, KeyframesModule)


def load_keyframes_generator(
    path: str | Path,
    *,
    num_frames: int = 16,
    size: Any = None,
    fps: float | None = None,
    device: str = "cpu",
    sample_steps: int | None = None,
    guidance_weight: float | None = None,
    sampler: str | None = None,
    movq: str | None = None,
    precision: str = "fp32",
    passes: int | None = None,
) -> NamedGenerator:
    """A generator from a keyframe checkpoint (see the module docstring); ``precision``: autocast of the sampling.

    ``num_frames`` / ``size`` / ``fps`` are the protocol's generation hints: ``num_frames`` decides the frame
    adaptation; the size is the module's own (``size`` is recorded, not used). Raises :class:`GeneratorUnavailable`
    for a file that is not a keyframe checkpoint or whose MoVQ is missing.
    """
    from ff_lightning.config import compose
    from ff_lightning.metrics.weights import sha256_file
    from ff_lightning.pipelines import autocast

    p = Path(path)
    obj = _read(p)
    if passes is not None:
        raise GeneratorUnavailable(f"{p}: --passes applies to a --pipeline folder, not to keyframe checkpoints")
    raw = keyframe_checkpoint_config(p, obj)
    step = obj.get("global_step")
    m = raw.get("module") or {}
    movq_path = movq or m.get("movq_ckpt")
    if not movq_path or not Path(movq_path).expanduser().is_file():
        raise GeneratorUnavailable(
            f"{p}: the frozen MoVQ the keyframe model was trained with is missing (module.movq_ckpt={movq_path}); "
            "checkpoints leave the MoVQ out. Pass its file with --movq PATH."
        )
    # every UNet weight is in the checkpoint (loaded strictly below): the t2i file it started from is not needed
    items = ["module.t2i_ckpt=null", "module.allow_random_t2i=true", f"module.movq_ckpt={movq_path}",
             "module.allow_random_movq=false"]  # fmt: skip
    cfg = compose(raw, items, source=f"keyframe checkpoint {p}")
    dev = torch.device(device)
    h, w = (int(s) for s in cfg.data.size)
    sample_videos, t, latent_hw, used_ema = _typed_keyframes(p, obj, cfg, dev, (h, w))  # no LightningModule
    del obj
    mc = cfg.module
    steps = int(sample_steps) if sample_steps is not None else int(mc.sample_steps)
    weight = float(guidance_weight) if guidance_weight is not None else float(mc.guidance_weight)
    method = str(sampler) if sampler is not None else str(mc.sampler)
    frame_step = float(mc.sample_frame_step or cfg.data.stride)
    wanted = int(num_frames)
    stored = max(t, wanted)
    adaptation = None
    if t < wanted:
        adaptation = (f"the model makes {t} frames, the protocol reads {wanted}: each frame repeated in order "
                      f"(stored frame i = generated frame floor(i * {t} / {wanted}))")  # fmt: skip

    def fn(prompts: list[str], seed: int) -> torch.Tensor:
        with autocast(dev, precision):
            v = sample_videos(list(prompts), latent_hw, steps, method, weight, int(seed))  # (B, T, 3, H, W)
        return adapt_frames(v.float().clamp(-1, 1).cpu(), wanted)

    sha = sha256_file(p)
    mv = Path(movq_path).expanduser().resolve()
    defaults = (int(m.get("sample_steps") or 0), float(m.get("guidance_weight") or 0.0), str(m.get("sampler")))
    suffix = "" if (steps, weight, method) == defaults else f"-{method}{steps}-w{_short(weight)}"
    name = f"keyframes-{cfg.model.variant}-{cfg.model.preset}-{sha[:8]}{suffix}"
    identity: dict[str, Any] = {
        "name": name,
        "kind": "keyframes_checkpoint",
        "system": str(cfg.system),
        "variant": str(cfg.model.variant),
        "preset": str(cfg.model.preset),
        "global_step": int(step) if step is not None else None,
        "ema": used_ema,
        "text_encoder": str(mc.text_encoder),
        "movq_ckpt": str(mv),
        "movq_sha256": sha256_file(mv),
        "sampling": {
            "sampler": method,
            "sample_steps": steps,
            "guidance_weight": weight,
            "sample_spacing": str(mc.sample_spacing),
            "ddim_eta": float(mc.ddim_eta),
            "dynamic_threshold": mc.dynamic_threshold,
            "frame_step": frame_step,
            "prediction": str(mc.prediction),
        },  # fmt: skip
        "frames": {"generated": t, "stored": stored, "protocol": wanted, "adaptation": adaptation},
        "size": [h, w],
        "precision": precision,
        "device": str(dev),
        "protocol_size_hint": list(size) if size is not None else None,
        "fps_hint": fps,
    }
    if str(cfg.system) == "reference_keyframes":  # the reference: the image stage's, seed + IMAGE_SEED_OFFSET
        identity["sampling"].update(reference="image stage", image_guidance_weight=float(mc.image_guidance_weight),
                                    image_steps=mc.image_steps, reference_frame=int(mc.sample_reference_frame),
                                    reference_level=int(mc.reference_sample_level))  # fmt: skip
    if adaptation is not None:
        identity["not_comparable"] = adaptation
    log.info("keyframe generator %s: %s/%s, %d frames at %dx%d, %s %d steps, guidance %g%s", name,
             cfg.model.variant, cfg.model.preset, t, h, w, method, steps, weight,
             f"; {adaptation}" if adaptation else "")  # fmt: skip
    return NamedGenerator(name, fn, identity)


def _typed_keyframes(p: Path, obj: Any, cfg: Any, dev: torch.device, size: tuple[int, int]) -> tuple[Any, ...]:
    """``(sample_videos, frames, latent_hw, used_ema)`` from a typed stage (:mod:`ff_lightning.pipelines`):
    :class:`~ff_lightning.pipelines.stages.KeyframeStage` for ``keyframes``,
    :class:`~ff_lightning.pipelines.reference.ReferenceKeyframeStage` for ``reference_keyframes`` (its image stage makes
    the reference, as the system's ``generate`` without one). EMA weights are laid over when the run kept an EMA, as
    the system's ``on_load_checkpoint`` does."""
    from einops import rearrange

    from ff_lightning.checkpoints import CheckpointError, StageSource
    from ff_lightning.pipelines.reference import build_reference_keyframe_stage
    from ff_lightning.pipelines.stages import build_keyframe_stage

    builders = {"keyframes": build_keyframe_stage, "reference_keyframes": build_reference_keyframe_stage}
    build = builders.get(str(cfg.system))
    if build is None:
        raise GeneratorUnavailable(f"{p}: sampling a {cfg.system!r} checkpoint is not wired (keyframes and "
                                   "reference_keyframes are)")  # fmt: skip
    state = {k: v for k, v in obj["state_dict"].items() if isinstance(v, torch.Tensor)}
    ema = obj.get("ema_state_dict") if cfg.optim.ema_decay else None
    averaged = {k: v for k, v in dict(ema or {}).items() if k in state}
    state.update(averaged)
    config = OmegaConf.to_container(cfg, resolve=True)
    try:
        stage = build(StageSource(p, dict(config), state, {}, bool(averaged))).to(dev)  # type: ignore[arg-type]
    except CheckpointError as e:  # strict load: missing / unexpected keys or shapes that do not fit the config
        raise GeneratorUnavailable(f"{p}: its weights do not fit the model its config describes: {e}") from None
    t = stage.num_frames

    def sample_videos(prompts: list[str], latent_hw: Any, steps: int, method: str, weight: float, seed: int) -> Any:
        lat = stage.sample(prompts, latent_hw, steps=steps, sampler=method, guidance_weight=weight, seed=seed)
        frames = stage.movq.decode(rearrange(lat, "b t c h w -> (b t) c h w"), num_frames=t)
        return rearrange(frames, "(b t) c h w -> b t c h w", t=t)

    return sample_videos, t, stage.latent_size(size), bool(averaged)


def _short(x: float) -> str:
    return f"{x:g}" if math.isfinite(x) else str(x)


def load_pipeline_generator(
    path: str | Path,
    *,
    num_frames: int = 16,
    size: Any = None,
    fps: float | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    sample_steps: int | None = None,
    guidance_weight: float | None = None,
    sampler: str | None = None,
    movq: str | None = None,
    passes: int | None = None,
) -> NamedGenerator:
    """A full-pipeline generator (keyframes -> interpolation -> decoder) from an ``ff import`` folder
    (:class:`~ff_lightning.pipelines.VideoPipeline`): the paper's Table 1 protocol scores the pipeline's video.

    Each video is the pipeline's output (``K`` keyframes -> ``4^passes (K - 1) + 1`` frames); the protocol's
    ``num_frames`` (16 for IS / FVD) are its first ``num_frames`` consecutive frames. Shorter videos are repeated in
    order and marked not comparable. The identity records every stage's weights (path + sha256), the release files
    an import came from, device and precision.
    """
    from ff_lightning.checkpoints import is_export_dir
    from ff_lightning.pipeline import GenerateOptions
    from ff_lightning.pipelines import VideoPipeline

    p = Path(path).expanduser()
    stage_only = p.is_dir() and is_export_dir(p) and not VideoPipeline.is_pipeline_folder(p)
    if not (p.is_dir() and (VideoPipeline.is_pipeline_folder(p) or stage_only)):
        raise GeneratorUnavailable(f"{p} is not a pipeline folder (an `ff import` folder whose export.json names a "
                                   "keyframes stage) nor an exported keyframes stage (ff export)")  # fmt: skip
    if sampler is not None or movq is not None:
        raise GeneratorUnavailable(f"{p}: --sampler / --movq apply to keyframe checkpoints, not to folders")
    if passes is None:  # keyframes only for a stage alone or a folder without interpolation (e.g. kv1.1)
        passes = 0 if stage_only or not VideoPipeline.folder_has_stage(p, "interpolation") else 1
    passes = int(passes)
    if passes < 0:
        raise GeneratorUnavailable(f"--passes must be >= 0, got {passes}")
    if stage_only:  # an exported keyframes stage alone: keyframes decoded by its image MoVQ
        pipe = VideoPipeline.from_paths(p, device=device, precision=precision)
    else:
        pipe = VideoPipeline.from_folder(p, device=device, precision=precision, use_interpolation=passes > 0)
    if passes > 0 and pipe.interpolation is None:
        raise GeneratorUnavailable(f"{p} has no interpolation stage: use --passes 0 (keyframes only)")
    options = GenerateOptions(steps=sample_steps, guidance_weight=guidance_weight, passes=passes, progress=False)
    wanted = int(num_frames)
    k = int(pipe.keyframes.num_frames)
    made = 4**passes * (k - 1) + 1
    adaptation = None
    if made < wanted:
        adaptation = f"the pipeline makes {made} frames, the protocol reads {wanted}: each frame repeated in order"

    def fn(prompts: list[str], seed: int) -> torch.Tensor:
        videos = pipe.sample(prompts, seed, options)  # (B, T, 3, H, W)
        return adapt_frames(videos, wanted)[:, :wanted] if made < wanted else videos[:, :wanted]

    h, w = (int(s) for s in pipe.keyframes.config.data.size)
    name = f"pipeline-{pipe.keyframes.config.model.preset}-{pipe.fingerprint()}"
    identity: dict[str, Any] = {
        "name": name,
        "kind": "pipeline",
        "stages": pipe.weights(),
        "decoder": "video decoder" if pipe.decoder is not None else "image MoVQ decoder, frame by frame",
        "sampling": {
            "sampler": str(pipe.keyframes.settings.sampler),
            "sample_steps": sample_steps or int(pipe.keyframes.settings.sample_steps),
            "guidance_weight": guidance_weight
            if guidance_weight is not None
            else float(pipe.keyframes.settings.guidance_weight),
            "passes": passes,
            "seed_rule": "prompt i of a batch: batch seed * 1009 + i",
        },  # fmt: skip
        "frames": {
            "keyframes": k,
            "generated": made,
            "protocol": wanted,
            "clip": f"frames 0..{wanted - 1}",
            "adaptation": adaptation,
        },  # fmt: skip
        "size": [h, w],
        "device": str(device),
        "precision": precision,
        "protocol_size_hint": list(size) if size is not None else None,
        "fps_hint": fps,
    }
    if pipe.notes:
        identity["notes"] = dict(pipe.notes)
    kv11 = getattr(pipe.keyframes, "options", None)  # Kandinsky Video 1.1: the release's sampling settings
    if kv11 is not None:
        from dataclasses import asdict

        identity["sampling"].update(procedure="kv1.1 release (first frame, 3-branch guidance)", **asdict(kv11))
        identity["sampling"]["guidance_weight"] = (
            guidance_weight if guidance_weight is not None else kv11.guidance_weight
        )
    if adaptation is not None:
        identity["not_comparable"] = adaptation
    log.info("pipeline generator %s: %d keyframes -> %d frames at %dx%d (%s, %s)", name, k, made, h, w, device,
             precision)  # fmt: skip
    return NamedGenerator(name, fn, identity)


register_checkpoint_loader(load_pipeline_generator)
register_checkpoint_loader(load_keyframes_generator)
