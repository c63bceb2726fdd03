"""torchmetrics ``Metric`` classes for the benchmark tables, correct under DDP.

Per-sample metrics (:class:`VideoPSNR`, :class:`VideoSSIM`, :class:`VideoMSE`, :class:`VideoLPIPS`,
:class:`TemporalConsistency`, :class:`CLIPSimilarity`) keep one float64 value per sample (per video: the mean of its
per-frame values; per prompt for CLIP) in a list state with ``dist_reduce_fx="cat"``, so after the DDP gather every
rank holds all samples and ``compute()`` returns the mean with a deterministic studentized-bootstrap CI::

    {"value": mean, "ci_low": ..., "ci_high": ..., "n": number of samples}

:class:`FrechetDistance` keeps float64 sums (``n``, ``sum x``, ``sum x x^T`` for real and fake features, reduced with
``"sum"``) and :class:`InceptionScore` keeps the logits (``"cat"``). All classes set ``full_state_update = False``,
so ``merge_state`` works and split updates equal one update. Networks (LPIPS, feature extractors) are held outside the
module tree: they never enter checkpoints and are moved to the input's device on use. Their ``weights_info`` records
are returned under ``"weights"``.

Pixel metrics take frames in ``input_range`` (default [-1, 1]) and map them to [0, 1] with clamping (the decoder
table protocol); ``input_range=None`` uses the values as given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from ff_lightning.metrics import functional as MF
from ff_lightning.metrics.bootstrap import bootstrap_ci
from ff_lightning.metrics.distribution import frechet_distance, inception_score, statistics_from_sums
from ff_lightning.metrics.perceptual import LPIPS, build_lpips

__all__ = [
    "CLIPSimilarity",
    "FrechetDistance",
    "InceptionScore",
    "PerSampleMetric",
    "TemporalConsistency",
    "VideoLPIPS",
    "VideoMSE",
    "VideoPSNR",
    "VideoSSIM",
]

Range = tuple[float, float] | None


def _weights_of(obj: Any) -> list[dict[str, Any]]:
    return list(getattr(obj, "weights_info", []) or [])


class PerSampleMetric(Metric):
    """Base: accumulates per-sample values ``(B,)``; ``compute()`` -> mean and bootstrap CI (see module doc)."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_boot, self.alpha, self.seed = n_boot, alpha, seed
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def _append(self, per_sample: torch.Tensor) -> None:
        self.values.append(per_sample.detach().to(torch.float64).reshape(-1))

    def per_sample(self) -> torch.Tensor:
        """All accumulated per-sample values ``(N,)`` (after the DDP gather inside ``compute``)."""
        if isinstance(self.values, list) and not self.values:
            return torch.zeros(0, dtype=torch.float64, device=self.device)
        return dim_zero_cat(self.values)

    def _extra(self) -> dict[str, Any]:
        return {}

    def compute(self) -> dict[str, Any]:
        values = self.per_sample()
        if values.numel() == 0:
            raise ValueError(f"{type(self).__name__}.compute() called before any update")
        ci = bootstrap_ci(values, n_boot=self.n_boot, alpha=self.alpha, seed=self.seed)
        return {"value": ci.mean, "ci_low": ci.low, "ci_high": ci.high, "n": int(values.numel()), **self._extra()}


class _PixelMetric(PerSampleMetric):
    def __init__(self, input_range: Range = (-1.0, 1.0), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.input_range = input_range

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_range is None else MF.to_unit(x, *self.input_range)


class VideoPSNR(_PixelMetric):
    """Mean per-frame PSNR (dB) on [0, 1] frames, ``data_range`` 1; update with ``(B, T, C, H, W)`` or images."""

    higher_is_better = True

    def __init__(self, data_range: float = 1.0, input_range: Range = (-1.0, 1.0), **kwargs: Any) -> None:
        super().__init__(input_range=input_range, **kwargs)
        self.data_range = data_range

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self._append(MF.psnr(self._prep(pred), self._prep(target), self.data_range, reduction="none"))


class VideoSSIM(_PixelMetric):
    """Mean per-frame SSIM (Gaussian 11 / 1.5, valid region; see :func:`functional.ssim`)."""

    higher_is_better = True

    def __init__(
        self,
        data_range: float = 1.0,
        kernel_size: int = 11,
        sigma: float = 1.5,
        input_range: Range = (-1.0, 1.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(input_range=input_range, **kwargs)
        self.data_range, self.kernel_size, self.sigma = data_range, kernel_size, sigma

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self._append(
            MF.ssim(
                self._prep(pred), self._prep(target), self.data_range, self.kernel_size, self.sigma, reduction="none"
            )
        )


class VideoMSE(_PixelMetric):
    """Mean per-frame MSE (on [0, 1] frames by default)."""

    higher_is_better = False

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self._append(MF.mse(self._prep(pred), self._prep(target), reduction="none"))


class TemporalConsistency(_PixelMetric):
    """Flicker error ``mean |Δpred - Δtarget|`` over frame transitions (:func:`functional.temporal_consistency`)."""

    higher_is_better = False

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self._append(MF.temporal_consistency(self._prep(pred), self._prep(target), reduction="none"))


class VideoLPIPS(PerSampleMetric):
    """Mean per-frame LPIPS (AlexNet, v0.1) on frames in [-1, 1]; weights from local files (:func:`build_lpips`).

    ``backbone_state_dict`` / ``allow_random_backbone`` are for tests only; ``model`` reuses a built network.
    """

    higher_is_better = False

    def __init__(
        self,
        net: str = "alex",
        version: str = "0.1",
        backbone_path: str | os.PathLike[str] | None = None,
        *,
        model: LPIPS | None = None,
        backbone_state_dict: Mapping[str, torch.Tensor] | None = None,
        allow_random_backbone: bool = False,
        chunk_frames: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if model is None:
            model = build_lpips(
                net,
                version,
                backbone_path=backbone_path,
                backbone_state_dict=backbone_state_dict,
                allow_random_backbone=allow_random_backbone,
            )
        object.__setattr__(self, "_lpips", model)  # outside the module tree: not in state_dict / checkpoints
        self.chunk_frames = chunk_frames

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self._append(MF.lpips(pred, target, reduction="none", model=self._lpips, chunk_frames=self.chunk_frames))

    def _extra(self) -> dict[str, Any]:
        return {"weights": _weights_of(self._lpips)}


class FrechetDistance(Metric):
    """Fréchet distance between real and fake feature distributions (FVD with I3D, frame FID with Inception).

    ``update(x, real)`` takes features ``(N, num_features)``, or raw inputs when ``feature_extractor`` is given
    (e.g. ``lambda v: i3d.features(preprocess_i3d(v))["logits"]`` or an :class:`InceptionFeatures`). Sums are float64
    and reduced with ``"sum"`` under DDP. ``compute()`` -> ``{"value", "n_real", "n_fake", "weights"}``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(
        self, num_features: int, feature_extractor: Callable[[torch.Tensor], torch.Tensor] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.num_features = num_features
        object.__setattr__(self, "_extractor", feature_extractor)
        d = num_features
        for side in ("real", "fake"):
            self.add_state(f"{side}_n", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", default=torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", default=torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, x: torch.Tensor, real: bool) -> None:
        if self._extractor is not None:
            if isinstance(self._extractor, torch.nn.Module):
                self._extractor.to(x.device)
            with torch.no_grad():
                x = self._extractor(x)
        feats = x.detach().to(torch.float64).reshape(x.shape[0], -1)
        if feats.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features}-d features, got {feats.shape[1]}")
        side = "real" if real else "fake"
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + feats.shape[0])
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + feats.sum(dim=0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + feats.T @ feats)

    def statistics(self, real: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of the real or fake features seen so far."""
        side = "real" if real else "fake"
        return statistics_from_sums(
            getattr(self, f"{side}_n"), getattr(self, f"{side}_sum"), getattr(self, f"{side}_outer")
        )

    def compute(self) -> dict[str, Any]:
        mu_r, sig_r = self.statistics(real=True)
        mu_f, sig_f = self.statistics(real=False)
        return {
            "value": frechet_distance(mu_r, sig_r, mu_f, sig_f),
            "n_real": int(self.real_n),
            "n_fake": int(self.fake_n),
            "weights": _weights_of(self._extractor),
        }


class InceptionScore(Metric):
    """Inception Score of accumulated classifier logits ``(N, K)`` (or inputs, with ``classifier``).

    Splits are consecutive chunks of the gathered logits; under DDP the gather order is rank-major, so with
    ``splits > 1`` the chunks differ from a single-process run (``splits=1``, the TGANv2 video protocol, is
    order-independent). ``compute()`` -> ``{"value", "std", "n", "splits", "weights"}``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self,
        splits: int = 10,
        classifier: Callable[[torch.Tensor], torch.Tensor] | None = None,
        from_logits: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.splits, self.from_logits = splits, from_logits
        object.__setattr__(self, "_classifier", classifier)
        self.add_state("logits", default=[], dist_reduce_fx="cat")

    def update(self, x: torch.Tensor) -> None:
        if self._classifier is not None:
            if isinstance(self._classifier, torch.nn.Module):
                self._classifier.to(x.device)
            with torch.no_grad():
                x = self._classifier(x)
        self.logits.append(x.detach().to(torch.float64))

    def compute(self) -> dict[str, Any]:
        logits = dim_zero_cat(self.logits)
        mean, std = inception_score(logits, splits=self.splits, from_logits=self.from_logits)
        return {
            "value": mean,
            "std": std,
            "n": int(logits.shape[0]),
            "splits": self.splits,
            "weights": _weights_of(self._classifier),
        }


class CLIPSimilarity(PerSampleMetric):
    """Mean CLIP cosine similarity per prompt (frames averaged), from precomputed embeddings.

    ``update(image_emb (B, T, D) or (B, D), text_emb (B, D))``; raw cosine, not x100 (see
    :func:`functional.clip_similarity`). ``weights`` can record the CLIP checkpoint used to embed.
    """

    higher_is_better = True

    def __init__(self, weights: list[dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weights = list(weights or [])

    def update(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
        self._append(MF.clip_similarity(image_emb, text_emb, reduction="none"))

    def _extra(self) -> dict[str, Any]:
        return {"weights": self.weights}
