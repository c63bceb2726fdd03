"""Video and frame-image IO with PyAV, numpy and PIL.

Frames are ``uint8`` arrays of shape ``(T, H, W, 3)`` (RGB). Decoding reads sequentially from the start of the stream
and stops after the last requested frame, so only as many frames as needed are decoded. Any failure to read (missing
file, corrupt container, too few frames) raises :class:`ClipReadError`, which the datasets count and skip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

__all__ = ["ClipReadError", "VideoInfo", "probe_video", "read_video_frames", "read_image_frames", "write_video"]


class ClipReadError(RuntimeError):
    """A clip that cannot be used: missing, unreadable, or shorter than the request. ``path`` names it."""

    def __init__(self, path: str | Path, reason: str, num_frames: int | None = None) -> None:
        self.path, self.reason, self.num_frames = str(path), reason, num_frames
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    """Container metadata. ``num_frames`` is the container's count (0 when unknown), ``fps`` its average rate."""

    num_frames: int
    fps: float
    width: int
    height: int


def probe_video(path: str | Path) -> VideoInfo:
    """Read the container header of ``path`` (no frame is decoded)."""
    path = Path(path)
    if not path.is_file():
        raise ClipReadError(path, "missing file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipReadError(path, "no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            n = int(stream.frames or 0)
            if n <= 0:  # no count in the header (some avi/webm): count the stream's packets (no decoding)
                n = sum(1 for packet in container.demux(stream) if packet.size)
            return VideoInfo(num_frames=n, fps=fps, width=stream.width, height=stream.height)
    except ClipReadError:
        raise
    except Exception as e:  # PyAV raises many error types for corrupt input
        raise ClipReadError(path, f"unreadable container ({type(e).__name__}: {e})") from e


def read_video_frames(path: str | Path, indices: Sequence[int]) -> np.ndarray:
    """Decode the frames at ``indices`` (0-based decode order, any order, repeats allowed) from ``path``.

    Returns ``(len(indices), H, W, 3)`` uint8. Raises :class:`ClipReadError` (with ``num_frames`` set to the true
    frame count when the stream ended early) if a requested frame does not exist or the file cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise ClipReadError(path, "missing file")
    wanted = {int(i) for i in indices}
    if not wanted or min(wanted) < 0:
        raise ValueError(f"frame indices must be non-negative and non-empty, got {list(indices)[:8]}")
    last = max(wanted)
    found: dict[int, np.ndarray] = {}
    count = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipReadError(path, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if count in wanted:
                    found[count] = frame.to_ndarray(format="rgb24")
                count += 1
                if count > last:
                    break
    except ClipReadError:
        raise
    except Exception as e:
        raise ClipReadError(path, f"decode error after {count} frames ({type(e).__name__}: {e})") from e
    if count <= last:
        raise ClipReadError(path, f"too short: {count} frames, frame {last} requested", num_frames=count)
    return np.stack([found[int(i)] for i in indices])


def read_image_frames(paths: Sequence[str | Path]) -> np.ndarray:
    """Load RGB images of equal size; returns ``(len(paths), H, W, 3)`` uint8. Raises :class:`ClipReadError`."""
    frames = []
    for p in paths:
        try:
            with Image.open(p) as im:
                frames.append(np.asarray(im.convert("RGB")))
        except FileNotFoundError as e:
            raise ClipReadError(p, "missing frame") from e
        except Exception as e:
            raise ClipReadError(p, f"unreadable image ({type(e).__name__}: {e})") from e
    if any(f.shape != frames[0].shape for f in frames):
        raise ClipReadError(paths[0], "frames of a sequence differ in size")
    return np.stack(frames)


def write_video(path: str | Path, frames: np.ndarray, fps: float, codec: str | None = None, quality: int = 18) -> None:
    """Encode ``frames`` ``(T, H, W, 3)`` uint8 (H, W even) to ``path`` (mp4 or avi, chosen by the suffix).

    ``codec`` None picks ``libx264`` for mp4 when this PyAV build has the encoder, else ``mpeg4`` (always built in).
    ``quality`` is x264's CRF (other codecs are written at a fixed high bit rate).
    """
    path = Path(path)
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape}")
    if codec is None:
        codec = "libx264" if path.suffix.lower() == ".mp4" and _has_encoder("libx264") else "mpeg4"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = int(frames.shape[1]), int(frames.shape[2])
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(quality), "preset": "veryfast", "threads": "1"}
        else:
            stream.codec_context.bit_rate = 4_000_000  # high for the small clips written here: near-lossless
        for f in frames:
            # convert to the stream's pixel format here: with PyAV's own conversion inside encode() the same frames
            # came out as different bytes (decoded up to 19 levels apart) in about a third of the bundled clips from
            # build to build; converted here, it still happens, rarely (10 of 60 encodes of one clip in one run of
            # 2026-12-06, 0 of 60 in another): the cause is not found, builds are not guaranteed to be identical
            frame = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format=stream.pix_fmt)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


_ENCODERS: dict[str, bool] = {}


def _has_encoder(name: str) -> bool:
    if name not in _ENCODERS:
        try:
            av.codec.Codec(name, "w")
            _ENCODERS[name] = True
        except Exception:
            _ENCODERS[name] = False
    return _ENCODERS[name]
