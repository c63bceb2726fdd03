"""The shared data layer: video datasets in real on-disk layouts, the bundled offline data, and the DataModule.

Typical use::

    from ff_lightning.data import DataConfig, build_datamodule, SkippedSamplesLogger
    dm = build_datamodule(DataConfig(source="bundled_shapes", num_frames=8, size=[64, 64]))
    trainer = L.Trainer(callbacks=[SkippedSamplesLogger()])

Batches are dicts: ``video`` (B, T, C, H, W) float32 in [-1, 1], ``caption`` list[str], ``label`` int64 (B,)
(-1: none), ``meta`` list[dict], ``skipped`` list[str].
"""

import importlib
from typing import TYPE_CHECKING, Any

# Names are imported on first use (PEP 562) so that ``ff_lightning.data.config`` (needed to validate any config, and
# by ``ff --help``) does not pull in Lightning, torch's data stack and PyAV.
_WHERE = {
    "ClipDataset": "base",
    "ClipOptions": "base",
    "ClipRecord": "base",
    "NoUsableSamplesError": "base",
    "VideoFileDataset": "base",
    "build_all": "bundled",
    "bundled_root": "bundled",
    "main_build": "bundled",
    "SkippedSamplesLogger": "callbacks",
    "collate_clips": "collate",
    "DataConfig": "config",
    "VideoDataModule": "datamodule",
    "build_datamodule": "datamodule",
    "MSRVTTDataset": "msrvtt",
    "DATASETS": "registry",
    "build_dataset": "registry",
    "dataset_names": "registry",
    "EpochSampler": "samplers",
    "UCF101Dataset": "ucf101",
    "ClipReadError": "video_io",
    "probe_video": "video_io",
    "read_video_frames": "video_io",
    "write_video": "video_io",
    "VimeoSequenceDataset": "vimeo",
    "WebVidDataset": "webvid",
}

if TYPE_CHECKING:  # static analysers see the eager imports
    from .base import ClipDataset, ClipOptions, ClipRecord, NoUsableSamplesError, VideoFileDataset
    from .bundled import build_all, bundled_root, main_build
    from .callbacks import SkippedSamplesLogger
    from .collate import collate_clips
    from .config import DataConfig
    from .datamodule import VideoDataModule, build_datamodule
    from .msrvtt import MSRVTTDataset
    from .registry import DATASETS, build_dataset, dataset_names
    from .samplers import EpochSampler
    from .ucf101 import UCF101Dataset
    from .video_io import ClipReadError, probe_video, read_video_frames, write_video
    from .vimeo import VimeoSequenceDataset
    from .webvid import WebVidDataset


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = [
    "DataConfig",
    "VideoDataModule",
    "build_datamodule",
    "DATASETS",
    "build_dataset",
    "dataset_names",
    "ClipDataset",
    "ClipOptions",
    "ClipRecord",
    "VideoFileDataset",
    "WebVidDataset",
    "VimeoSequenceDataset",
    "UCF101Dataset",
    "MSRVTTDataset",
    "NoUsableSamplesError",
    "ClipReadError",
    "EpochSampler",
    "collate_clips",
    "SkippedSamplesLogger",
    "build_all",
    "bundled_root",
    "main_build",
    "probe_video",
    "read_video_frames",
    "write_video",
]
