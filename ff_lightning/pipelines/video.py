"""The text -> video inference pipeline as one object: typed stages + the weights that made them + precision.

:class:`VideoPipeline` is what ``ff generate`` (plain keyframe models) and the full-pipeline benchmark generator
(``ff eval ucf101|msrvtt --pipeline DIR``) run. It is built from

- an ``ff import`` folder (:meth:`VideoPipeline.from_folder`: its ``export.json`` names the stages),
- stage paths (:meth:`VideoPipeline.from_paths`): each an ``ff export`` / ``ff import`` stage folder or a training
  checkpoint (Lightning ``.ckpt``) of the keyframes / interpolation / decoder system.

No LightningModule is built: each stage is read once (:func:`ff_lightning.checkpoints.read_stage_source`, EMA weights
laid over) and turned into a typed stage of :mod:`.stages` (:class:`~.stages.KeyframeStage`,
:class:`~.stages.InterpolationStage`, :class:`~.stages.DecoderStage`) whose sampling reproduces its training
system's bit for bit. The stages must share one MoVQ latent space (checked as in :mod:`ff_lightning.pipeline`).
:meth:`VideoPipeline.weights` records each stage's path and sha256 (and, for imports, the release files).
Reference-image keyframe models (``reference_keyframes``) run as a
:class:`~ff_lightning.pipelines.reference.ReferenceKeyframeStage` (``GenerateOptions.image`` /
``image_guidance_weight``); Kandinsky Video 1.1 keyframes (``keyframe_unet/kv1_1``, ``ff import --format kv1.1``) as
a :class:`~ff_lightning.pipelines.kv11.KV11KeyframeStage` (first frame from the UNet's image mode, or
``GenerateOptions.image``), and their interpolation (``interpolation_unet/kv1_1``) as a
:class:`~ff_lightning.pipelines.kv11_interpolation.KV11InterpolationStage` (prompt-conditioned; passes 1 or 2, the
release's fps 'medium' / 'high'). Stages imported together from one release (same ``imported_from``) are paired by the
release itself and skip the latent-space check. What a pipeline runs without (e.g. no interpolation stage) is
recorded in :attr:`VideoPipeline.notes` and the results.

Precision: ``fp32`` (default), ``bf16`` or ``fp16``: sampling and decoding run under ``torch.autocast`` of the
pipeline's device type (weights stay float32; frames come back float32 in [-1, 1]).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ff_lightning.config import ConfigError

if TYPE_CHECKING:
    from ff_lightning.checkpoints import StageSource
    from ff_lightning.pipeline import GenerateOptions, GenerationResult
    from ff_lightning.pipelines.kv11 import KV11KeyframeStage
    from ff_lightning.pipelines.kv11_interpolation import KV11InterpolationStage
    from ff_lightning.pipelines.reference import ReferenceKeyframeStage
    from ff_lightning.pipelines.stages import DecoderStage, InterpolationStage, KeyframeStage

__all__ = ["PRECISIONS", "StageWeights", "UnsupportedStage", "VideoPipeline", "autocast", "weights_record"]

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def autocast(device: torch.device | str, precision: str) -> Iterator[None]:
    """``torch.autocast`` for ``precision`` (``fp32``: nothing) on ``device``'s type."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield


@dataclass(frozen=True)
class StageWeights:
    """Where a stage's weights came from: a file (its sha256) or a folder (sha256 of its module.safetensors)."""

    stage: str
    path: str
    sha256: str
    system: str
    variant: str
    preset: str
    imported_from: dict[str, Any] | None = None  # ff import: release format and source files (path, sha256)
    ema: bool = False  # EMA weights laid over the raw ones


def _sha256(path: Path) -> str:
    from ff_lightning.checkpoints import sha256_file

    return sha256_file(path / "module.safetensors" if path.is_dir() else path)


def weights_record(stage: str, src: StageSource) -> StageWeights:
    """The :class:`StageWeights` of a stage read from ``src``."""
    p = src.path.resolve()
    model = src.config.get("model") or {}
    return StageWeights(
        stage=stage, path=str(p), sha256=_sha256(p), system=str(src.config.get("system")),
        variant=str(model.get("variant")), preset=str(model.get("preset")),
        imported_from=src.manifest.get("imported_from"), ema=src.used_ema,
    )  # fmt: skip


def _check_latent_spaces(movqs: dict[str, Any], paths: dict[str, Any], trained: dict[str, Any]) -> None:
    """Refuse stages whose image-MoVQ encoders differ (see :func:`ff_lightning.pipeline.check_latent_spaces`)."""
    from ff_lightning.pipeline import movq_fingerprint

    prints = {name: movq_fingerprint(m) for name, m in movqs.items() if m is not None}
    if len(set(prints.values())) > 1:
        lines = "\n".join(f"  {n}: {paths.get(n)} (trained on module.movq_ckpt={trained.get(n)}; encoder "
                          f"fingerprint {fp})" for n, fp in prints.items())  # fmt: skip
        raise ConfigError(
            "the stages were trained in different MoVQ latent spaces (different image-MoVQ encoders):\n"
            f"{lines}\nUse stages trained on the same image MoVQ (e.g. all three from `make tiny-models`), or go "
            "without the video decoder (`ff generate --no-decoder`: the keyframe model's own image MoVQ "
            "decodes frame by frame)."
        )


class UnsupportedStage(ConfigError):
    """A stage kind the typed pipeline does not run (a keyframes stage of another system)."""


def _one_release(sources: Any) -> bool:
    """Whether every stage was imported by one ``ff import`` (equal ``imported_from``: format and source files)."""
    origins = [src.manifest.get("imported_from") for src in sources]
    return bool(origins) and origins[0] is not None and all(o == origins[0] for o in origins)


def _is_kv11(stage: Any) -> bool:
    from ff_lightning.pipelines.kv11 import KV11KeyframeStage

    return isinstance(stage, KV11KeyframeStage)


def _is_kv11_interpolation(stage: Any) -> bool:
    from ff_lightning.pipelines.kv11_interpolation import KV11InterpolationStage

    return isinstance(stage, KV11InterpolationStage)


def _fitted_image(image: torch.Tensor | None, size: Sequence[int]) -> torch.Tensor | None:
    """A reference image ``(3, H, W)`` resized to the frame ``size`` (cover + centre crop); latents pass unchanged."""
    if image is None or image.ndim != 3 or image.shape[0] != 3:
        return image
    from ff_lightning.pipelines.reference import fit_reference_image

    return fit_reference_image(image, size)


@dataclass
class VideoPipeline:
    """Keyframes -> interpolation (optional) -> video decoder (optional: else the image MoVQ frame by frame)."""

    keyframes: KeyframeStage | ReferenceKeyframeStage | KV11KeyframeStage
    interpolation: InterpolationStage | KV11InterpolationStage | None = None
    decoder: DecoderStage | None = None
    stage_weights: dict[str, StageWeights] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    notes: dict[str, str] = field(default_factory=dict)  # what this pipeline runs without, and why

    # ------------------------------------------------------------------------------------------------ building
    @classmethod
    def from_paths(
        cls,
        keyframes: str | os.PathLike[str],
        interpolation: str | os.PathLike[str] | None = None,
        decoder: str | os.PathLike[str] | None = None,
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ) -> VideoPipeline:
        """Read and build the stages (folders or checkpoints) onto ``device``; the latent spaces must agree."""
        from ff_lightning.checkpoints import read_stage_source
        from ff_lightning.pipelines.stages import build_decoder_stage, build_interpolation_stage, build_keyframe_stage

        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        dev = torch.device(device)
        paths = {"keyframes": keyframes, "interpolation": interpolation, "decoder": decoder}
        sources = {}
        for stage, path in paths.items():
            if not path:
                continue
            p = Path(path).expanduser()
            if not p.exists():
                raise FileNotFoundError(f"{stage} checkpoint not found: {p}")
            sources[stage] = read_stage_source(p)
        system = str(sources["keyframes"].config.get("system"))
        if system not in ("keyframes", "reference_keyframes"):
            raise UnsupportedStage(f"{keyframes}: a {system!r} stage, not a keyframes or reference_keyframes stage")
        if system == "reference_keyframes":
            from ff_lightning.pipelines.reference import build_reference_keyframe_stage

            kf: Any = build_reference_keyframe_stage(sources["keyframes"]).to(dev)
        elif str((sources["keyframes"].config.get("model") or {}).get("variant")) == "kv1_1":
            from ff_lightning.pipelines.kv11 import build_kv11_keyframe_stage

            kf = build_kv11_keyframe_stage(sources["keyframes"]).to(dev)
        else:
            kf = build_keyframe_stage(sources["keyframes"]).to(dev)
        ip: Any = None
        if "interpolation" in sources:
            ip_src = sources["interpolation"]
            if str((ip_src.config.get("model") or {}).get("variant")) == "kv1_1":
                if not _is_kv11(kf):
                    raise UnsupportedStage(
                        f"{interpolation}: the Kandinsky Video 1.1 interpolation stage runs after 1.1 keyframes (it "
                        "shares their text encoder); pass the keyframes of the same `ff import --format kv1.1`"
                    )
                from ff_lightning.pipelines.kv11_interpolation import build_kv11_interpolation_stage

                ip = build_kv11_interpolation_stage(ip_src, kf.text.cache).to(dev)
            else:
                ip = build_interpolation_stage(ip_src).to(dev)
        dec = build_decoder_stage(sources["decoder"]).to(dev) if "decoder" in sources else None
        trained = {s: (src.config.get("module") or {}).get("movq_ckpt") or "its own (in the stage)"
                   for s, src in sources.items()}  # fmt: skip
        notes = {}
        if _one_release(sources.values()):
            if len(sources) > 1:
                notes["latent_spaces"] = "stages imported together from one release: paired as the release pairs them"
        else:
            _check_latent_spaces({"keyframes": kf.movq, "interpolation": ip.movq if ip else None,
                                  "decoder": dec.movq if dec else None}, paths, trained)  # fmt: skip
        if ip is None and _is_kv11(kf):
            notes["interpolation"] = ("none: no Kandinsky Video 1.1 interpolation stage given; the 12 keyframes are "
                                      "the video (the release's fps='low')")  # fmt: skip
        record = {s: weights_record(s, src) for s, src in sources.items()}
        return cls(kf, ip, dec, record, dev, precision, notes)

    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike[str], *, device: str | torch.device = "cpu", precision: str = "fp32",
        use_interpolation: bool = True, use_decoder: bool = True,
    ) -> VideoPipeline:  # fmt: skip
        """The pipeline of an ``ff import`` folder (``export.json`` with ``stages``: keyframes [+ interpolation]
        [+ decoder])."""
        root = Path(folder).expanduser()
        manifest_path = root / "export.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        stages = manifest.get("stages") or {}
        if "keyframes" not in stages:
            raise ConfigError(
                f"{root} is not a pipeline folder: its export.json names no keyframes stage (an `ff import` of kv1.0 or "
                "kv1.1 writes one; for your own checkpoints pass --keyframes / --interpolation / --decoder)"
            )

        def stage(name: str, wanted: bool) -> Path | None:
            return root / stages[name] if wanted and name in stages else None

        return cls.from_paths(root / stages["keyframes"], stage("interpolation", use_interpolation),
                              stage("decoder", use_decoder), device=device, precision=precision)  # fmt: skip

    @staticmethod
    def is_pipeline_folder(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is an ``ff import`` folder naming a keyframes stage."""
        return VideoPipeline.folder_has_stage(path, "keyframes")

    @staticmethod
    def folder_has_stage(path: str | os.PathLike[str], stage: str) -> bool:
        """Whether ``path`` is an ``ff import`` folder whose ``export.json`` names ``stage`` among its stages."""
        p = Path(path).expanduser() / "export.json"
        return p.is_file() and stage in (json.loads(p.read_text()).get("stages") or {})

    # ------------------------------------------------------------------------------------------------ running
    def generate(self, prompt: str, options: GenerateOptions | None = None) -> GenerationResult:
        """One video for ``prompt``: the stages of :func:`ff_lightning.pipeline.generate_video` (same seeds: keyframes
        ``seed``, interpolation ``seed + 1``; same defaults), under the pipeline's precision."""
        from ff_lightning.pipeline import GenerateOptions, GenerationResult, _stage_bar
        from ff_lightning.pipelines.kv11 import KV11KeyframeStage
        from ff_lightning.pipelines.reference import ReferenceKeyframeStage

        o = options or GenerateOptions()
        kf, ip, dec = self.keyframes, self.interpolation, self.decoder
        size = o.size or tuple(kf.config.data.size)
        reference: dict[str, Any] = {}
        if isinstance(kf, ReferenceKeyframeStage):
            reference = {"reference": _fitted_image(o.image, size), "image_guidance_weight": o.image_guidance_weight}
        elif isinstance(kf, KV11KeyframeStage):  # the release fits a given first frame itself
            reference = {"image": o.image, "image_guidance_weight": o.image_guidance_weight, "motion": o.motion,
                         "noise_augmentation": o.noise_augmentation}  # fmt: skip
        else:
            for name, value in (("image", o.image), ("image guidance", o.image_guidance_weight)):
                if value is not None:
                    raise ConfigError(f"this keyframe model ({kf.config.system} system) takes no reference image "
                                      f"({name} given); a reference_keyframes checkpoint does")  # fmt: skip
        if not isinstance(kf, KV11KeyframeStage):
            for name, value in (("motion", o.motion), ("noise augmentation", o.noise_augmentation)):
                if value is not None:
                    raise ConfigError(f"{name} applies to Kandinsky Video 1.1 keyframes only (an `ff import --format "
                                      f"kv1.1` pipeline), not to this {kf.config.system} stage")  # fmt: skip
        seconds: dict[str, float] = {}
        with autocast(self.device, self.precision):
            t0 = time.perf_counter()
            steps = int(o.steps or kf.settings.sample_steps)
            with _stage_bar("keyframes", steps, kf.unet, o.progress):
                lat = kf.sample([prompt], kf.latent_size(size), steps=steps, guidance_weight=o.guidance_weight,
                                seed=o.seed, frame_step=o.frame_step, **reference)  # fmt: skip
            seconds["keyframes"] = time.perf_counter() - t0
            num_keyframes, passes = lat.shape[1], 0
            if ip is not None and o.passes > 0:
                t0 = time.perf_counter()
                ip_steps = int(o.interp_steps or ip.settings.sample_steps)
                text = {"prompts": [prompt]} if _is_kv11_interpolation(ip) else {}  # 1.1 conditions on the prompt
                with _stage_bar("interpolation", ip_steps * o.passes, ip.unet, o.progress):
                    lat = ip.interpolate(lat, passes=o.passes, skip_frames=o.skip_frames,
                                         guidance_weight=o.interp_guidance_weight, perturbation_time=o.perturbation,
                                         steps=ip_steps, seed=o.seed + 1, **text)  # fmt: skip
                passes = o.passes
                seconds["interpolation"] = time.perf_counter() - t0
            latents = lat[0]
            t0 = time.perf_counter()
            if dec is not None:
                what = f"video decoder ({dec.variant})"
                with _stage_bar("decoder", 1, None, o.progress) as bar:
                    frames = dec.decode(latents)
                    bar.update(1)
            else:
                from ff_lightning.pipelines.stages import DecoderStage

                what = "image MoVQ decoder, frame by frame"
                with _stage_bar("decoder (image MoVQ, frame by frame)", latents.shape[0], None, o.progress) as bar:
                    frames = DecoderStage(kf.movq, video=False).decode(latents)
                    bar.update(latents.shape[0])
            seconds["decoder"] = time.perf_counter() - t0
        data = kf.config.data
        fps = (
            float(o.fps)
            if o.fps
            else float(kf.fps) * latents.shape[0] / kf.num_frames  # 1.1: every video over the release's 5.5 s
            if isinstance(kf, KV11KeyframeStage)
            else max(
                1.0,
                float(getattr(data, "fps", None) or 8.0)
                / float(o.frame_step or kf.default_frame_step or 1)
                * 4**passes,
            )
        )
        return GenerationResult(frames.float().clamp(-1, 1).cpu(), latents.float().cpu(), num_keyframes, what, fps,
                                seconds, weights=self.weights(), notes=dict(self.notes))  # fmt: skip

    def sample(self, prompts: Sequence[str], seed: int, options: GenerateOptions | None = None) -> torch.Tensor:
        """Videos ``(B, T, 3, H, W)`` float32 in [-1, 1]; prompt ``i`` uses seed ``seed * 1009 + i`` (a batch's
        videos are reproducible from the batch seed alone)."""
        from ff_lightning.pipeline import GenerateOptions

        base = options or GenerateOptions(progress=False)
        videos = [self.generate(p, replace(base, seed=int(seed) * 1009 + i)).frames for i, p in enumerate(prompts)]
        return torch.stack(videos)

    def weights(self) -> dict[str, dict[str, Any]]:
        """``{stage: {path, sha256, system, variant, preset[, imported_from]}}`` for result files."""
        out = {}
        for name, w in self.stage_weights.items():
            rec = {k: v for k, v in w.__dict__.items() if v is not None and k != "stage"}
            out[name] = rec
        return out

    def fingerprint(self) -> str:
        """Short hash of the stages' weights (names result folders)."""
        text = json.dumps({k: v["sha256"] for k, v in self.weights().items()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]
