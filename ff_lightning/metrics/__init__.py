"""Metric layer of the benchmark: functions, torchmetrics classes, evaluator networks and the weights resolver.

* :mod:`.functional`: PSNR, SSIM, MSE, LPIPS, Fréchet distance, Inception Score, CLIP similarity, temporal
  consistency, bootstrap CIs (stateless, per-sample values via ``reduction="none"``);
* :mod:`.classes`: the same as ``torchmetrics.Metric`` subclasses (DDP-safe, mean + bootstrap CI);
* :mod:`.c3d`, :mod:`.i3d`, :mod:`.inception`: evaluator networks (video IS, FVD, frame FID), weights from local
  files only;
* :mod:`.weights`: :func:`resolve_weights`, the table of known evaluator files, pinned hashes and the ledger.

The evaluator network modules are not imported here (import them explicitly).
"""

from ff_lightning.metrics.bootstrap import BootstrapCI, bootstrap_ci
from ff_lightning.metrics.classes import (
    CLIPSimilarity,
    FrechetDistance,
    InceptionScore,
    TemporalConsistency,
    VideoLPIPS,
    VideoMSE,
    VideoPSNR,
    VideoSSIM,
)
from ff_lightning.metrics.weights import (
    KNOWN_WEIGHTS,
    WeightsChecksumError,
    WeightsInfo,
    WeightsUnavailable,
    resolve_weights,
)

__all__ = [
    "KNOWN_WEIGHTS",
    "BootstrapCI",
    "CLIPSimilarity",
    "FrechetDistance",
    "InceptionScore",
    "TemporalConsistency",
    "VideoLPIPS",
    "VideoMSE",
    "VideoPSNR",
    "VideoSSIM",
    "WeightsChecksumError",
    "WeightsInfo",
    "WeightsUnavailable",
    "bootstrap_ci",
    "resolve_weights",
]
