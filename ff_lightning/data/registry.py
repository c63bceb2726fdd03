"""Dataset sources by name: a plain ``name -> factory(cfg, split)`` dict (YAML names a source, never an import path).

Real layouts need ``data.root``; the ``bundled_*`` sources read the offline cache (built on first use) unless
``data.root`` points elsewhere. ``bundled_septuplet`` reads the 7-frame septuplets when a clip fits in 7 frames and the
16-frame footage clips (same Vimeo layout, same source frames and split) otherwise, so ``num_frames=8`` works.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..registry import UnknownChoiceError
from .base import ClipDataset
from .bundled import SEPTUPLET_FPS_MAX, bundled_root
from .config import SPLITS, DataConfig
from .msrvtt import MSRVTTDataset
from .sampling import frames_needed
from .ucf101 import UCF101Dataset
from .vimeo import VimeoSequenceDataset
from .webvid import WebVidDataset

__all__ = ["DatasetFactory", "DATASETS", "dataset_names", "check_source", "build_dataset"]

log = logging.getLogger(__name__)

DatasetFactory = Callable[[DataConfig, str], ClipDataset]


def _real(name: str, cls: type, bundled_alt: str) -> DatasetFactory:
    def make(cfg: DataConfig, split: str) -> ClipDataset:
        if cfg.root is None:
            raise ValueError(
                f"data.root is required for source {name!r} (or use source={bundled_alt!r}, built offline)"
            )
        return cls.from_config(cfg, split, root=Path(cfg.root).expanduser())

    make.__doc__ = f"{cls.__name__} over data.root."
    return make


def _bundled(name: str, cls: type, data_name: str | None = None) -> DatasetFactory:
    def make(cfg: DataConfig, split: str) -> ClipDataset:
        root = Path(cfg.root).expanduser() if cfg.root else bundled_root(data_name or name, cache_dir=cfg.cache_dir)
        return cls.from_config(cfg, split, root=root, source=name)

    make.__doc__ = f"{cls.__name__} over the bundled {data_name or name!r} data."
    return make


def _bundled_septuplet(cfg: DataConfig, split: str) -> ClipDataset:
    """Septuplets (7 frames) when the clip fits, else the 16-frame clips cut from the same footage."""
    span = frames_needed(cfg.num_frames, stride=cfg.stride, fps=cfg.fps, source_fps=SEPTUPLET_FPS_MAX)
    if cfg.root is None and span > 7:
        log.info(
            "bundled_septuplet: a %d-frame clip spans %d frames > 7; reading bundled_footage", cfg.num_frames, span
        )
        return _bundled("bundled_septuplet", VimeoSequenceDataset, "bundled_footage")(cfg, split)
    return _bundled("bundled_septuplet", VimeoSequenceDataset)(cfg, split)


DATASETS: dict[str, DatasetFactory] = {
    "webvid": _real("webvid", WebVidDataset, "bundled_shapes"),
    "vimeo_septuplet": _real("vimeo_septuplet", VimeoSequenceDataset, "bundled_septuplet"),
    "ucf101": _real("ucf101", UCF101Dataset, "bundled_shapes_ucf"),
    "msrvtt": _real("msrvtt", MSRVTTDataset, "bundled_shapes"),
    "bundled_septuplet": _bundled_septuplet,
    "bundled_footage": _bundled("bundled_footage", VimeoSequenceDataset),
    "bundled_shapes": _bundled("bundled_shapes", WebVidDataset),
    "bundled_shapes_ucf": _bundled("bundled_shapes_ucf", UCF101Dataset),
    "bundled_footage_long": _bundled("bundled_footage_long", WebVidDataset),  # long real clips (interpolation)
}


def dataset_names() -> list[str]:
    """Registered source names, sorted."""
    return sorted(DATASETS)


def check_source(name: str) -> None:
    """Raise :class:`~ff_lightning.registry.UnknownChoiceError` listing the valid sources if ``name`` is unknown."""
    if name not in DATASETS:
        raise UnknownChoiceError("data source", name, list(DATASETS))


def build_dataset(cfg: DataConfig, split: str) -> ClipDataset:
    """The dataset of ``cfg.source`` for ``split`` (``train``, ``val`` or ``test``).

    Raises :class:`~ff_lightning.registry.UnknownChoiceError` (a ``KeyError`` and ``ValueError``) listing the valid
    sources for an unknown name.
    """
    check_source(cfg.source)
    if split not in SPLITS:
        raise UnknownChoiceError("split", split, list(SPLITS))
    return DATASETS[cfg.source](cfg, split)
