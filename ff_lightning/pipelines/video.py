"""The text -> video inference pipeline as one object: typed stages + the weights that made them + precision.

:class:`VideoPipeline` is what ``ff generate`` and the full-pipeline benchmark generator (``ff eval ucf101|msrvtt
--pipeline DIR``) run. It is built from

- an ``ff import`` folder (:meth:`VideoPipeline.from_folder`: its ``export.json`` names the stages),
- stage paths (:meth:`VideoPipeline.from_paths`): each an ``ff export`` / ``ff import`` stage folder or a training
  checkpoint (Lightning ``.ckpt``) of the keyframes / interpolation / decoder system.

Stages are loaded by :func:`ff_lightning.pipeline.load_stage` (strict; EMA weights swapped in; latent spaces checked)
and typed: :class:`~ff_lightning.systems.keyframes.KeyframesModule`,
:class:`~ff_lightning.systems.interpolation.InterpolationModule`, :class:`~ff_lightning.systems.decoder.DecoderModule`
(no ``Any``). :meth:`VideoPipeline.weights` records each stage's path and sha256 for result files.

Precision: ``fp32`` (default), ``bf16`` or ``fp16``: the sampling and decoding run under ``torch.autocast`` of the
pipeline's device type (the weights stay float32; outputs are returned as float32 in [-1, 1]).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ff_lightning.config import ConfigError

if TYPE_CHECKING:
    from ff_lightning.pipeline import GenerateOptions, GenerationResult
    from ff_lightning.systems.decoder import DecoderModule
    from ff_lightning.systems.interpolation import InterpolationModule
    from ff_lightning.systems.keyframes import KeyframesModule

__all__ = ["PRECISIONS", "StageWeights", "VideoPipeline", "autocast", "weights_record"]

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


def _sha256(path: Path) -> str:
    from ff_lightning.checkpoints import sha256_file

    return sha256_file(path / "module.safetensors" if path.is_dir() else path)


def weights_record(stage: str, path: str | os.PathLike[str], module: Any) -> StageWeights:
    """The :class:`StageWeights` of a loaded stage ``module`` read from ``path``."""
    p = Path(path).expanduser().resolve()
    manifest = getattr(module, "export_manifest", None) or {}
    return StageWeights(
        stage=stage, path=str(p), sha256=_sha256(p), system=str(module.cfg.system),
        variant=str(module.cfg.model.variant), preset=str(module.cfg.model.preset),
        imported_from=manifest.get("imported_from"),
    )  # fmt: skip


@dataclass
class VideoPipeline:
    """Keyframes -> interpolation (optional) -> video decoder (optional: else the image MoVQ frame by frame)."""

    keyframes: KeyframesModule
    interpolation: InterpolationModule | None = None
    decoder: DecoderModule | None = None
    stage_weights: dict[str, StageWeights] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"

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
        """Load the stages (folders or checkpoints) onto ``device``; the latent spaces must agree."""
        from ff_lightning.pipeline import Stages, check_latent_spaces, load_stage

        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        dev = torch.device(device)
        paths = {"keyframes": keyframes, "interpolation": interpolation, "decoder": decoder}
        loaded = {s: load_stage(s, p, dev) for s, p in paths.items() if p}
        stages = Stages(loaded["keyframes"], loaded.get("interpolation"), loaded.get("decoder"),
                        {s: str(p) if p else None for s, p in paths.items()})  # fmt: skip
        check_latent_spaces(stages)
        record = {s: weights_record(s, paths[s], m) for s, m in loaded.items()}  # type: ignore[arg-type]
        return cls(stages.keyframes, stages.interpolation, stages.decoder, record, dev, precision)

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
                f"{root} is not a pipeline folder: its export.json names no keyframes stage (an `ff import` of kv1.0 "
                "or kv1.1 writes one; for your own checkpoints pass --keyframes / --interpolation / --decoder)"
            )

        def stage(name: str, wanted: bool) -> Path | None:
            return root / stages[name] if wanted and name in stages else None

        return cls.from_paths(root / stages["keyframes"], stage("interpolation", use_interpolation),
                              stage("decoder", use_decoder), device=device, precision=precision)  # fmt: skip

    @staticmethod
    def is_pipeline_folder(path: str | os.PathLike[str]) -> bool:
        p = Path(path).expanduser() / "export.json"
        return p.is_file() and "keyframes" in (json.loads(p.read_text()).get("stages") or {})

    # ------------------------------------------------------------------------------------------------ running
    def generate(self, prompt: str, options: GenerateOptions | None = None) -> GenerationResult:
        """One video for ``prompt`` (see :func:`ff_lightning.pipeline.generate_video`), under the precision."""
        from ff_lightning.pipeline import Stages, generate_video

        stages = Stages(self.keyframes, self.interpolation, self.decoder)
        with autocast(self.device, self.precision):
            result = generate_video(stages, prompt, options)
        result.frames = result.frames.float()
        return result

    def sample(
        self, prompts: Sequence[str], seed: int, options: GenerateOptions | None = None
    ) -> torch.Tensor:
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
