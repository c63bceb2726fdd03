"""The shared data layer: video datasets in real on-disk layouts, the bundled offline data, and the DataModule.

Typical use::

    from ff_lightning.data import DataConfig, build_datamodule, SkippedSamplesLogger
    dm = build_datamodule(DataConfig(source="bundled_shapes", num_frames=8, size=[64, 64]))
    trainer = L.Trainer(callbacks=[SkippedSamplesLogger()])

Batches are dicts: ``video`` (B, T, C, H, W) float32 in [-1, 1], ``caption`` list[str], ``label`` int64 (B,)
(-1: none), ``meta`` list[dict], ``skipped`` list[str].
"""

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
