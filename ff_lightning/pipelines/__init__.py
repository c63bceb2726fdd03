"""Inference pipelines built from export / import folders or training checkpoints (see :mod:`.video`)."""

from ff_lightning.pipelines.video import PRECISIONS, StageWeights, VideoPipeline, autocast, weights_record

__all__ = ["PRECISIONS", "StageWeights", "VideoPipeline", "autocast", "weights_record"]
