"""ff_lightning: FusionFrames text-to-video ablations on PyTorch Lightning."""

__version__ = "0.1.0"
