"""Stages over a live training system (its modules shared, not copied): what TensorBoard samples and the systems'
``generate`` run, so the training-time samples come from the same code as ``ff generate`` / ``ff eval``.

The stages hold the system's own ``nn.Module`` s, so whatever weights the system holds when they sample are used
(EMA weights while they are swapped in for validation). Building one is cheap; build it when sampling.
The systems are duck-typed here (no import of :mod:`ff_lightning.systems`): a ``LatentDiffusionSystem``
(``unet``, ``text_cache``, ``text_projection``, ``null_embedding``, ``movq``, ``schedule``, ``m``, ``cfg``) or an
``InterpolationModule`` (``unet``, ``null_embedding``, ``movq``, ``schedule``, ``m``).
"""

from __future__ import annotations

from typing import Any

from ff_lightning.pipelines.stages import ImageStage, InterpolationStage, KeyframeStage, TextConditioner

__all__ = ["text_conditioner_of", "image_stage_of", "keyframe_stage_of", "interpolation_stage_of"]


def text_conditioner_of(system: Any) -> TextConditioner:
    """The system's text encoder cache, projection and null embedding as a :class:`TextConditioner`."""
    return TextConditioner(system.text_cache, system.text_projection, system.null_embedding, system.m.negative_prompt)


def image_stage_of(system: Any) -> ImageStage:
    """A t2i system's UNet as an :class:`ImageStage`."""
    return ImageStage(system.unet, text_conditioner_of(system), system.m, system.schedule)


def keyframe_stage_of(system: Any) -> KeyframeStage:
    """A keyframes (or reference_keyframes) system's UNet as a :class:`KeyframeStage`."""
    m = system.m
    return KeyframeStage(
        unet=system.unet, text=text_conditioner_of(system), movq=system.movq, settings=m, schedule=system.schedule,
        num_frames=int(system.num_frames), position_unit=float(system.position_unit),
        default_frame_step=float(m.sample_frame_step or system.cfg.data.stride), source=None, config=system.cfg,
    )  # fmt: skip


def interpolation_stage_of(system: Any) -> InterpolationStage:
    """An interpolation system's UNet and null embedding as an :class:`InterpolationStage`."""
    return InterpolationStage(system.unet, system.null_embedding.embedding, system.movq, system.m, system.schedule)
