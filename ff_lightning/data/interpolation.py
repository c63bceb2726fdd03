"""Interpolation training samples: ``K`` keyframes and the three frames between each pair, at a random frame step.

Sample layout (our reading of FusionFrames Sec. 3.3 / Appendix A). The interpolation model predicts three frames
between every pair of neighbouring keyframes, so a sample of ``K`` keyframes is the sequence

    keyframe, target, target, target, keyframe, target, target, target, keyframe, ..., keyframe

of ``L = 4 (K - 1) + 1`` frames taken ``s`` source frames apart (times ``data.stride``): sequence position ``j`` is
source frame ``start + j * s * stride``; keyframes sit at positions ``0, 4, 8, ...`` (source frames ``4 s`` apart),
targets at the others. The paper's 33-frame samples are ``K = 9`` keyframes and 8 gaps of 3 targets; the CPU
defaults use fewer keyframes (``data.num_frames = L`` chooses ``K``: 9 frames = 3 keyframes). ``s`` is drawn
uniformly from ``[min_skip, max_skip]`` (1..12 in the paper) per sample; it is what the model's skip embedding
sees, so ``s = 1`` means consecutive source frames.

Videos too short for the drawn ``s`` (span ``4 (K - 1) s stride + 1`` source frames): with ``too_short="resample"``
(default) ``s`` is drawn again uniformly among the steps that fit (``meta["skip_resampled"]``); a video too short
even for ``min_skip``, or any too-short video with ``too_short="skip"``, raises
:class:`~ff_lightning.data.video_io.ClipReadError` inside the wrapped dataset, which replaces the sample with another
record and reports the path in ``batch["skipped"]`` (counted by
:class:`~ff_lightning.data.callbacks.SkippedSamplesLogger`). Both are also counted per process in
:attr:`InterpolationSequenceDataset.counts` (``planned``, ``resampled``, ``too_short``).

Augmentations (training split only, each drawn per sample from ``(seed, epoch, index)``):

- whole sequence: frames are loaded at ``crop_scale * size`` and cropped to ``size``: a random crop, or with
  probability ``slide_prob`` a *sliding* crop whose window moves linearly from one random position to another over
  the sequence (a simulated camera pan); horizontal flip (``flip_prob``); time reversal (``reverse_prob``; keyframes
  stay at positions ``0, 4, ...``). The random start inside the video is the loader's usual random start.
- conditioning frames only (each keyframe independently, targets untouched): with ``average_prob`` the keyframe is
  replaced by the mean of itself and the next source frame (ghosting, as generated keyframes of fast motion show);
  with ``blur_prob`` a Gaussian blur of ``sigma`` uniform in ``blur_sigma`` (output pixels).

Outside training the crop is centred (same ``crop_scale``, so the field of view matches) and nothing else changes.

The sample's ``video`` is the sequence ``(L, C, H, W)`` in [-1, 1] with the *augmented* keyframes in place (what the
model is conditioned on); targets are the clean frames. ``meta`` adds ``skip_frames``, ``drawn_skip``,
``skip_resampled``, ``num_keyframes``, ``keyframe_positions``, ``keyframe_indices``, ``target_indices`` (source
frame indices, in sequence order after any reversal) and ``augment`` (what was applied).

:class:`InterpolationSequenceDataset` wraps any :class:`~ff_lightning.data.base.ClipDataset` of the registry: it
replaces the wrapped dataset's clip planner (:meth:`ClipDataset.plan`, an instance attribute set here) so that only
the frames of the sequence (plus the keyframes' neighbours when averaging) are read, and keeps its skip-and-replace
logic. :func:`install_interpolation_data` puts the wrapped datasets into a
:class:`~ff_lightning.data.datamodule.VideoDataModule` (the ``interpolation`` system does this in its ``setup``).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .base import ClipDataset
from .config import DataConfig
from .sampling import ClipPlan, sample_rng
from .video_io import ClipReadError

__all__ = [
    "FRAMES_PER_GAP",
    "TOO_SHORT_POLICIES",
    "InterpolationDataOptions",
    "SkipChoice",
    "SequencePlan",
    "sequence_length",
    "num_keyframes_for",
    "keyframe_positions",
    "target_positions",
    "sequence_span",
    "max_fitting_skip",
    "choose_skip",
    "plan_sequence",
    "gaussian_blur",
    "crop_origins",
    "crop_frames",
    "InterpolationSequenceDataset",
    "install_interpolation_data",
]

#: frames generated between two keyframes (the interpolation UNet's output groups)
FRAMES_PER_GAP = 3
#: what happens to a video too short for the drawn skip
TOO_SHORT_POLICIES = ("resample", "skip")
_AUG_SALT = 7001


@dataclass(frozen=True)
class InterpolationDataOptions:
    """Skip-frame sampling and augmentations of interpolation samples (see the module docstring)."""

    min_skip: int = 1
    max_skip: int = 12
    too_short: str = "resample"  # resample | skip
    eval_skip: int | None = None  # fixed s outside training (None: drawn like in training, fixed per index)
    augment: bool = True  # training split only
    crop_scale: float = 1.25  # frames are loaded at crop_scale * size, then cropped to size
    slide_prob: float = 0.25
    flip_prob: float = 0.5
    reverse_prob: float = 0.5
    average_prob: float = 0.1  # per keyframe
    blur_prob: float = 0.1  # per keyframe
    blur_sigma: tuple[float, float] = (0.3, 1.5)

    def __post_init__(self) -> None:
        if not 1 <= self.min_skip <= self.max_skip:
            raise ValueError(f"need 1 <= min_skip <= max_skip, got {self.min_skip}, {self.max_skip}")
        if self.too_short not in TOO_SHORT_POLICIES:
            raise ValueError(f"too_short must be one of {TOO_SHORT_POLICIES}, got {self.too_short!r}")
        if self.eval_skip is not None and self.eval_skip < 1:
            raise ValueError(f"eval_skip must be >= 1, got {self.eval_skip}")
        if self.crop_scale < 1.0:
            raise ValueError(f"crop_scale must be >= 1, got {self.crop_scale}")
        for name in ("slide_prob", "flip_prob", "reverse_prob", "average_prob", "blur_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        lo, hi = self.blur_sigma
        if not 0.0 < lo <= hi:
            raise ValueError(f"blur_sigma must be (low, high) with 0 < low <= high, got {self.blur_sigma}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> InterpolationDataOptions:
        """From a config section holding (some of) these field names; other keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: values[k] for k in names if k in values and values[k] is not None}
        if "eval_skip" in values:
            kwargs["eval_skip"] = values["eval_skip"]
        if "blur_sigma" in kwargs:
            kwargs["blur_sigma"] = tuple(float(v) for v in kwargs["blur_sigma"])
        return cls(**kwargs)


# ------------------------------------------------------------------------------------------------- the layout
def sequence_length(num_keyframes: int) -> int:
    """Frames of a sample with ``num_keyframes`` keyframes: ``4 (K - 1) + 1`` (also ``4K - 3``)."""
    if num_keyframes < 2:
        raise ValueError(f"an interpolation sample needs at least 2 keyframes, got {num_keyframes}")
    return (FRAMES_PER_GAP + 1) * (num_keyframes - 1) + 1


def num_keyframes_for(length: int) -> int:
    """Inverse of :func:`sequence_length`: ``L = 4K - 3`` frames -> ``K`` (``ValueError`` for other lengths)."""
    if length < 5 or (length - 1) % (FRAMES_PER_GAP + 1):
        raise ValueError(
            f"an interpolation sample has 4K - 3 frames (5, 9, 13, ..., 33 for the paper's 9 keyframes), got {length}"
        )
    return (length - 1) // (FRAMES_PER_GAP + 1) + 1


def keyframe_positions(num_keyframes: int) -> tuple[int, ...]:
    """Sequence positions of the keyframes: ``0, 4, ..., 4 (K - 1)``."""
    return tuple(range(0, sequence_length(num_keyframes), FRAMES_PER_GAP + 1))


def target_positions(num_keyframes: int) -> tuple[int, ...]:
    """Sequence positions of the frames to generate (three after each keyframe but the last)."""
    return tuple(j for j in range(sequence_length(num_keyframes)) if j % (FRAMES_PER_GAP + 1))


def sequence_span(num_keyframes: int, skip: int, stride: int = 1) -> int:
    """Source frames a sample spans: ``4 (K - 1) s stride + 1``."""
    return (sequence_length(num_keyframes) - 1) * skip * stride + 1


def max_fitting_skip(num_available: int, num_keyframes: int, stride: int = 1) -> int:
    """The largest ``s`` whose sample fits in ``num_available`` source frames (0 when even ``s = 1`` does not)."""
    return max(0, (num_available - 1) // ((sequence_length(num_keyframes) - 1) * stride))


@dataclass(frozen=True)
class SkipChoice:
    """The frame step used (``skip``), the one first drawn, and whether it had to be drawn again (too short)."""

    skip: int
    drawn: int
    resampled: bool


def choose_skip(
    num_available: int,
    num_keyframes: int,
    rng: np.random.Generator,
    *,
    min_skip: int = 1,
    max_skip: int = 12,
    stride: int = 1,
    too_short: str = "resample",
    fixed: int | None = None,
) -> SkipChoice | None:
    """Draw ``s`` uniformly in ``[min_skip, max_skip]`` (or take ``fixed``) for a video of ``num_available`` frames.

    If the sample does not fit: ``too_short="resample"`` draws again uniformly in ``[min_skip, largest fitting s]``;
    returns None when nothing fits or with ``too_short="skip"``.
    """
    if too_short not in TOO_SHORT_POLICIES:
        raise ValueError(f"too_short must be one of {TOO_SHORT_POLICIES}, got {too_short!r}")
    drawn = int(fixed) if fixed is not None else int(rng.integers(min_skip, max_skip + 1))
    fit = max_fitting_skip(num_available, num_keyframes, stride)
    if drawn <= fit:
        return SkipChoice(drawn, drawn, False)
    if too_short == "skip" or fit < min_skip:
        return None
    return SkipChoice(int(rng.integers(min_skip, fit + 1)), drawn, True)


@dataclass(frozen=True)
class SequencePlan:
    """Source frames of one sample: ``indices`` (``L``, sequence order) and, when averaging keyframes may happen,
    ``neighbours`` (``K``: the source frame after each keyframe, or before it at the end of the video)."""

    num_keyframes: int
    choice: SkipChoice
    step: int  # source frames between consecutive sequence frames: skip * stride
    start: int
    indices: tuple[int, ...]
    neighbours: tuple[int, ...] = ()

    @property
    def skip(self) -> int:
        return self.choice.skip

    @property
    def keyframe_indices(self) -> tuple[int, ...]:
        return tuple(self.indices[j] for j in keyframe_positions(self.num_keyframes))

    @property
    def target_indices(self) -> tuple[int, ...]:
        return tuple(self.indices[j] for j in target_positions(self.num_keyframes))

    @property
    def read_indices(self) -> tuple[int, ...]:
        """What the loader reads: the sequence, then the neighbours."""
        return self.indices + self.neighbours


def plan_sequence(
    num_available: int,
    num_keyframes: int,
    choice: SkipChoice,
    *,
    stride: int = 1,
    start: str = "random",
    rng: np.random.Generator | None = None,
    neighbours: bool = False,
) -> SequencePlan:
    """Place a sample of step ``choice.skip * stride`` in a video of ``num_available`` frames (it must fit).

    ``start``: ``random`` (uniform over the valid starts, ``rng``), ``center`` or ``first``.
    """
    step = choice.skip * stride
    length = sequence_length(num_keyframes)
    span = (length - 1) * step + 1
    if span > num_available:
        raise ValueError(f"a {num_keyframes}-keyframe sample at step {step} spans {span} > {num_available} frames")
    max_start = num_available - span
    if start == "random":
        if rng is None:
            raise ValueError("a random start needs rng")
        first = int(rng.integers(0, max_start + 1))
    elif start == "center":
        first = max_start // 2
    elif start == "first":
        first = 0
    else:
        raise ValueError(f"start must be 'random', 'center' or 'first', got {start!r}")
    indices = tuple(first + j * step for j in range(length))
    near: tuple[int, ...] = ()
    if neighbours:
        keys = (indices[j] for j in keyframe_positions(num_keyframes))
        near = tuple(k + 1 if k + 1 < num_available else max(k - 1, 0) for k in keys)
    return SequencePlan(num_keyframes, choice, step, first, indices, near)


# ----------------------------------------------------------------------------------------------- augmentations
def gaussian_blur(frames: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (reflected borders, radius ``ceil(3 sigma)``): ``(n, c, h, w)`` -> same shape."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=frames.dtype, device=frames.device)
    taps = torch.exp(-(x**2) / (2.0 * sigma**2))
    taps = taps / taps.sum()
    c = frames.shape[1]
    pad_h, pad_w = min(radius, frames.shape[-2] - 1), min(radius, frames.shape[-1] - 1)
    out = F.pad(frames, (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    kh = taps[radius - pad_h : radius + pad_h + 1].view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kw = taps[radius - pad_w : radius + pad_w + 1].view(1, 1, 1, -1).expand(c, 1, 1, -1)
    out = F.conv2d(out, kh / kh.sum(dim=2, keepdim=True), groups=c)
    return F.conv2d(out, kw / kw.sum(dim=3, keepdim=True), groups=c)


def crop_origins(
    num_frames: int, spare: tuple[int, int], mode: str, rng: np.random.Generator | None = None
) -> list[tuple[int, int]]:
    """``(top, left)`` of the crop of each of ``num_frames`` frames with ``spare = (H' - H, W' - W)`` pixels to spare.

    ``mode``: ``center``; ``random`` (one random origin for all frames); ``slide`` (from one random origin to another,
    linearly over the frames).
    """
    sh, sw = spare
    if mode == "center":
        return [(sh // 2, sw // 2)] * num_frames
    if rng is None:
        raise ValueError(f"crop mode {mode!r} needs rng")
    a = (int(rng.integers(0, sh + 1)), int(rng.integers(0, sw + 1)))
    if mode == "random":
        return [a] * num_frames
    if mode != "slide":
        raise ValueError(f"crop mode must be 'center', 'random' or 'slide', got {mode!r}")
    b = (int(rng.integers(0, sh + 1)), int(rng.integers(0, sw + 1)))
    u = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    return [(round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t)) for t in u]


def crop_frames(frames: torch.Tensor, size: tuple[int, int], origins: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Crop frame ``i`` of ``(T, C, H', W')`` at ``origins[i]`` to ``size = (H, W)``: ``(T, C, H, W)``."""
    h, w = size
    return torch.stack([f[:, top : top + h, left : left + w] for f, (top, left) in zip(frames, origins, strict=True)])


# ------------------------------------------------------------------------------------------------- the dataset
class _SequencePlanner:
    """Installed as the wrapped dataset's ``plan``: chooses ``s`` and the source frames; keeps the last plan."""

    def __init__(
        self, num_keyframes: int, options: InterpolationDataOptions, *, stride: int, train: bool, start: str
    ) -> None:
        self.num_keyframes, self.options, self.stride, self.train, self.start = (
            num_keyframes, options, stride, train, start,
        )  # fmt: skip
        self.neighbours = train and options.augment and options.average_prob > 0
        self.last: SequencePlan | None = None
        self.counts: Counter[str] = Counter()

    def __call__(self, record_path: str, num_available: int, source_fps: float, rng: np.random.Generator) -> ClipPlan:
        o = self.options
        choice = choose_skip(
            num_available, self.num_keyframes, rng, min_skip=o.min_skip, max_skip=o.max_skip, stride=self.stride,
            too_short=o.too_short, fixed=None if self.train else o.eval_skip,
        )  # fmt: skip
        if choice is None:
            self.counts["too_short"] += 1
            span = sequence_span(self.num_keyframes, o.min_skip, self.stride)
            raise ClipReadError(
                record_path,
                f"too short for {self.num_keyframes} keyframes: {num_available} frames (s={o.min_skip} needs {span}; "
                f"too_short={o.too_short})",
            )
        plan = plan_sequence(
            num_available, self.num_keyframes, choice, stride=self.stride, start=self.start, rng=rng,
            neighbours=self.neighbours,
        )  # fmt: skip
        self.counts["planned"] += 1
        self.counts["resampled"] += int(choice.resampled)
        self.last = plan
        return ClipPlan(plan.read_indices, plan.start, float(plan.step), None, plan.step)


def as_data_config(cfg: Any) -> DataConfig:
    """A :class:`DataConfig` from a DataConfig or an omegaconf ``data`` section."""
    if isinstance(cfg, DataConfig):
        return cfg
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    assert isinstance(values, dict)
    return DataConfig(**values)


class InterpolationSequenceDataset(Dataset):
    """Interpolation samples drawn from a wrapped clip dataset (see the module docstring).

    ``base`` must load frames at ``crop_scale * size`` (what :meth:`from_config` builds); ``num_keyframes`` ``K``
    gives samples of ``L = 4K - 3`` frames. Items are ``base``'s sample dicts with ``video`` ``(L, C, H, W)``.
    """

    def __init__(
        self,
        base: ClipDataset,
        num_keyframes: int,
        options: InterpolationDataOptions,
        *,
        size: tuple[int, int],
        stride: int = 1,
        train: bool = False,
        seed: int = 0,
        start: str | None = None,
    ) -> None:
        self.base = base
        self.num_keyframes = num_keyframes
        self.length = sequence_length(num_keyframes)
        self.options = options
        self.size = (int(size[0]), int(size[1]))
        self.train, self.seed = train, seed
        self.augment = train and options.augment
        start = start or base.options.start_mode
        self.planner = _SequencePlanner(num_keyframes, options, stride=stride, train=train, start=start)
        base.plan = self.planner  # type: ignore[method-assign]  # read only the sample's frames

    @classmethod
    def from_config(
        cls, cfg: DataConfig | Any, split: str, options: InterpolationDataOptions
    ) -> InterpolationSequenceDataset:
        """Wrap the registry dataset of ``cfg.source`` for ``split``; ``cfg.num_frames`` must be ``4K - 3``."""
        from .registry import build_dataset

        cfg = as_data_config(cfg)
        if cfg.fps is not None:
            raise ValueError("interpolation samples step through source frames: data.fps is not supported (use stride)")
        num_keyframes = num_keyframes_for(cfg.num_frames)
        size = (int(cfg.size[0]), int(cfg.size[1]))
        load = [max(s, round(s * options.crop_scale)) for s in size]
        base = build_dataset(dataclasses.replace(cfg, size=load), split)
        return cls(base, num_keyframes, options, size=size, stride=cfg.stride, train=split == "train", seed=cfg.seed)

    @property
    def counts(self) -> Counter[str]:
        """Per-process counts: ``planned`` samples, ``resampled`` skips, ``too_short`` videos passed over."""
        return self.planner.counts

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (self.base.epoch, int(key))
        sample = self.base[(epoch, index)]
        plan = self.planner.last
        assert plan is not None
        frames = sample["video"]  # (L [+ K], C, H', W') at the load size
        seq, near = frames[: self.length], frames[self.length :]
        rng = sample_rng(self.seed, epoch, index, salt=_AUG_SALT)
        video, applied = self._transform(seq, near, rng)
        order = list(range(self.length))
        if applied.get("reverse"):
            order.reverse()
        indices = [plan.indices[j] for j in order]
        keys = keyframe_positions(self.num_keyframes)
        sample["video"] = video
        sample["meta"].update(
            indices=indices,
            skip_frames=plan.skip,
            drawn_skip=plan.choice.drawn,
            skip_resampled=plan.choice.resampled,
            stride=plan.step,
            start=plan.start,
            num_keyframes=self.num_keyframes,
            keyframe_positions=list(keys),
            keyframe_indices=[indices[j] for j in keys],
            target_indices=[indices[j] for j in target_positions(self.num_keyframes)],
            augment=applied,
        )
        return sample

    def _transform(
        self, seq: torch.Tensor, near: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Crop (and augment in training): ``seq`` ``(L, C, H', W')``, ``near`` ``(K or 0, C, H', W')`` ->
        ``(L, C, H, W)`` and what was applied."""
        o = self.options
        spare = (seq.shape[-2] - self.size[0], seq.shape[-1] - self.size[1])
        if min(spare) < 0:
            raise ValueError(f"loaded frames {tuple(seq.shape[-2:])} are smaller than data.size {self.size}")
        if not self.augment:
            return crop_frames(seq, self.size, crop_origins(self.length, spare, "center")), {}
        mode = "slide" if rng.random() < o.slide_prob else "random"
        origins = crop_origins(self.length, spare, mode, rng)
        video = crop_frames(seq, self.size, origins)
        keys = keyframe_positions(self.num_keyframes)
        averaged: list[int] = []
        if near.shape[0]:
            near = crop_frames(near, self.size, [origins[j] for j in keys])  # each neighbour as its keyframe
            for i, j in enumerate(keys):
                if rng.random() < o.average_prob:
                    video[j] = 0.5 * (video[j] + near[i])
                    averaged.append(j)
        blurred: list[int] = []
        for j in keys:
            if rng.random() < o.blur_prob:
                sigma = float(rng.uniform(*o.blur_sigma))
                video[j] = gaussian_blur(video[j : j + 1], sigma)[0]
                blurred.append(j)
        flip = bool(rng.random() < o.flip_prob)
        if flip:
            video = video.flip(-1)
        reverse = bool(rng.random() < o.reverse_prob)
        if reverse:
            video = video.flip(0)
            averaged = sorted(self.length - 1 - j for j in averaged)
            blurred = sorted(self.length - 1 - j for j in blurred)
        applied = {"crop": mode, "flip": flip, "reverse": reverse, "averaged": averaged, "blurred": blurred}
        return video.contiguous(), applied


def install_interpolation_data(
    datamodule: Any, options: InterpolationDataOptions, splits: Sequence[str] = ("train", "val")
) -> dict[str, InterpolationSequenceDataset]:
    """Put interpolation datasets for ``splits`` into a :class:`~ff_lightning.data.datamodule.VideoDataModule`'s
    dataset cache (its loaders then serve interpolation samples); idempotent. Returns them by split."""
    from .datamodule import VideoDataModule

    if not isinstance(datamodule, VideoDataModule):
        raise TypeError(f"expected a VideoDataModule, got {type(datamodule).__name__}")
    out = {}
    for split in splits:
        ds = datamodule.datasets.get(split)
        if not isinstance(ds, InterpolationSequenceDataset):
            ds = InterpolationSequenceDataset.from_config(datamodule.cfg, split, options)
            datamodule.datasets[split] = ds  # type: ignore[assignment]
        out[split] = ds
    return out
