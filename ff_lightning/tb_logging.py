"""The TensorBoard logger of ``ff train``: Lightning's, with sample videos that survive a missing or broken moviepy.

``torch.utils.tensorboard.SummaryWriter.add_video`` encodes its GIF with moviepy (< 2.0, ``moviepy.editor``; pinned
in ``constraints.txt``). Where moviepy cannot be imported it prints one line and writes nothing, so sample videos
would silently go missing. :class:`VideoSummaryWriter` then encodes the animated GIF with Pillow instead (what
TensorBoard's image plugin shows as a moving image); :class:`TensorBoardLogger` hands it to the systems as
``logger.experiment``.
"""

from __future__ import annotations

import functools
import io
from typing import Any

import numpy as np
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import TensorBoardLogger as _LightningTensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.tensorboard import SummaryWriter

__all__ = ["VideoSummaryWriter", "TensorBoardLogger", "video_gif", "moviepy_works"]


def video_gif(video: torch.Tensor | np.ndarray, fps: float = 4) -> tuple[bytes, int, int]:
    """Videos ``(N, T, C, H, W)`` (float in [0, 1] or uint8; C = 1 or 3) -> an animated GIF of the N clips side by
    side, with its ``(height, width)``."""
    from PIL import Image

    v = torch.as_tensor(video).detach().cpu()
    if v.dtype != torch.uint8:
        v = (v.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if v.ndim != 5:
        raise ValueError(f"expected videos (N, T, C, H, W), got shape {tuple(v.shape)}")
    if v.shape[2] == 1:
        v = v.expand(-1, -1, 3, -1, -1)
    frames = v.permute(1, 3, 0, 4, 2).flatten(2, 3).numpy()  # T H (N W) C: the clips side by side
    images = [Image.fromarray(np.ascontiguousarray(f[..., :3])) for f in frames]
    buf = io.BytesIO()
    duration = max(1, int(round(1000 / max(fps, 1e-3))))
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return buf.getvalue(), frames.shape[1], frames.shape[2]


@functools.cache
def moviepy_works() -> bool:
    """Whether torch's ``add_video`` can encode (``moviepy.editor`` imports)."""
    try:
        from moviepy import editor  # noqa: F401
    except Exception:
        return False
    return True


class VideoSummaryWriter(SummaryWriter):
    """A SummaryWriter whose ``add_video`` falls back to a Pillow-encoded GIF where moviepy cannot encode."""

    def add_video(
        self, tag: str, vid_tensor: Any, global_step: int | None = None, fps: float = 4, walltime: float | None = None
    ) -> None:
        if moviepy_works():
            return super().add_video(tag, vid_tensor, global_step=global_step, fps=fps, walltime=walltime)
        from tensorboard.compat.proto.summary_pb2 import Summary

        gif, height, width = video_gif(vid_tensor, fps)
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif)
        self._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), global_step, walltime)


class TensorBoardLogger(_LightningTensorBoardLogger):
    """Lightning's TensorBoard logger with :class:`VideoSummaryWriter` as its ``experiment``."""

    @property
    @rank_zero_experiment
    def experiment(self) -> SummaryWriter:
        if self._experiment is not None:
            return self._experiment
        assert rank_zero_only.rank == 0, "tried to init log dirs in non global_rank=0"
        if self.root_dir:
            self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = VideoSummaryWriter(log_dir=self.log_dir, **self._kwargs)
        return self._experiment
