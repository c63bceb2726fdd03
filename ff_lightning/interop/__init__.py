"""Loading released checkpoints (MoVQGAN, Kandinsky Video) from local files into ff_lightning modules."""

from ff_lightning.interop.movq import (
    CheckpointError,
    load_movqgan,
    load_video_decoder,
    load_weights,
    read_state_dict,
)

__all__ = ["CheckpointError", "load_movqgan", "load_video_decoder", "load_weights", "read_state_dict"]
