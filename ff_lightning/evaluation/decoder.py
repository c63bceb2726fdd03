"""Decoder evaluation (Table 3 protocol) and the sweep's *prepare* step that provides the frozen image MoVQ.

Protocol, on every held-out sequence of ``cfg.data`` (the test split; ``data.max_val_samples`` caps it, unset by
default; ``trainer.limit_val_batches`` limits only validation during training, never this):
frames -> frozen encoder -> video decoder over the whole clip at once -> reconstruction. ``ff ablate`` passes the
sweep's test data here (``data.test``); with ``num_frames: all`` a clip is the whole sequence, so on Vimeo-90k
septuplets all 7 frames of every listed septuplet are decoded together and scored (every decoder variant takes any
frame count: temporal convolutions zero-pad at the clip's ends, attention spans the clip). Clips shorter than the
sequence are taken from its centre (``data.eval_start``). Per sequence, the mean over its
frames of: PSNR on [0, 1] after clamping (``data_range=1``), SSIM (Gaussian window 11, sigma 1.5), MSE on [0, 1],
LPIPS (AlexNet, v0.1, inputs in [-1, 1]) and *flicker* = mean ``|Δ reconstruction - Δ target|`` of consecutive
frames on [0, 1] (temporal consistency: what the temporal layers exist to fix). Every figure is reported as the mean
over sequences with a studentized-bootstrap 95% interval (1000 resamples, seed 0). LPIPS needs the AlexNet backbone
file; without it the column is ``None`` with the reason and how to supply the file, never a number from random
weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ff_lightning.metrics.functional import bootstrap_ci, mse, psnr, ssim, temporal_consistency, to_unit

log = logging.getLogger(__name__)

__all__ = ["evaluate_decoder", "prepare_movq", "summarize"]


def summarize(values: torch.Tensor | None, reason: str | None = None, *, proportion: bool = False) -> dict[str, Any]:
    """Per-sample values -> ``{"value", "ci_low", "ci_high", "n", "per_sample"}`` (bootstrap 95%, Wilson for 0/1
    ``proportion`` values; the per-sample values, in held-out order, allow paired comparisons between rows); None ->
    unavailable + reason."""
    if values is None:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0, "reason": reason}
    ci = bootstrap_ci(values, proportion=proportion)
    return {
        "value": ci.mean,
        "ci_low": ci.low,
        "ci_high": ci.high,
        "n": int(values.numel()),
        "per_sample": [float(v) for v in values.reshape(-1).tolist()],
    }


def _lpips_model(path: str | None) -> tuple[Any, str | None]:
    from ff_lightning.metrics.perceptual import build_lpips
    from ff_lightning.metrics.weights import WeightsUnavailable

    try:
        return build_lpips(backbone_path=path), None
    except WeightsUnavailable as e:
        msg = f"LPIPS not computed: {e}"
        log.warning(msg)
        return None, msg


def _eval_device(cfg: DictConfig) -> torch.device:
    """The GPU when the run may use one (``trainer.accelerator`` auto / gpu / cuda), else the CPU."""
    use_gpu = str(cfg.trainer.accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if use_gpu else "cpu")


@torch.no_grad()
def evaluate_decoder(module: Any, cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Reconstruct every held-out sequence with ``module`` (a DecoderModule) and summarise the metrics."""
    from ff_lightning.data import build_datamodule
    from ff_lightning.metrics.perceptual import lpips as lpips_fn
    from ff_lightning.models.video_decoder import decode_video

    dm = build_datamodule(cfg.data)
    dm.setup("validate")
    loader = dm.val_dataloader()
    lp_model, lp_reason = _lpips_model(cfg.module.lpips_weights)
    device = _eval_device(cfg)
    module.to(device).eval()  # Lightning hands a trained module back on the CPU
    if lp_model is not None:
        lp_model.to(device)
    params = module.trainable_parameters()
    if module.ema is not None:
        module.ema.swap_in(params)
    vals: dict[str, list[torch.Tensor]] = {k: [] for k in ("psnr", "ssim", "mse", "lpips", "flicker")}
    try:
        for batch in tqdm(loader, desc="evaluate decoder", leave=False):
            video = batch["video"].to(device)  # b t c h w in [-1, 1]
            b, t = video.shape[:2]
            frames = rearrange(video, "b t c h w -> (b t) c h w")  # fold frames into the batch
            latent = module.encode(frames)
            rec = decode_video(module.movq, latent, t, chunk_frames=cfg.module.eval_chunk_frames)
            rec = rearrange(rec, "(b t) c h w -> b t c h w", b=b, t=t).clamp(-1, 1)  # unfold per video
            p, y = to_unit(rec), to_unit(video)
            vals["psnr"].append(psnr(p, y, reduction="none"))
            vals["ssim"].append(ssim(p, y, reduction="none"))
            vals["mse"].append(mse(p, y, reduction="none"))
            vals["flicker"].append(temporal_consistency(p, y, reduction="none"))
            if lp_model is not None:
                vals["lpips"].append(lpips_fn(rec, video, reduction="none", model=lp_model))
    finally:
        if module.ema is not None:
            module.ema.swap_out(params)
    out = {k: summarize(torch.cat(v).cpu()) for k, v in vals.items() if v}
    if lp_model is None:
        out["lpips"] = summarize(None, lp_reason)
    return out


def prepare_movq(probe: DictConfig, experiment: Path | None, redo: bool) -> dict[str, Any]:
    """Provide the frozen image MoVQ for every decoder row: ``{"module.movq_ckpt": path}``.

    If the sweep sets ``module.movq_ckpt`` (``make ablate-decoder MOVQ_CKPT=...``), the file must exist and is used
    as is. Otherwise an image MoVQ at the rows' preset is trained with ``experiment`` (the sweep's
    ``prepare_experiment``, e.g. ``experiments/movq/tiny.yaml``; same data source as the rows) and cached under
    ``$FF_CACHE_DIR/models/`` keyed by its resolved config.
    """
    from ff_lightning.ablate import config_hash
    from ff_lightning.config import ConfigError, load_config
    from ff_lightning.io import atomic_open
    from ff_lightning.paths import cache_dir
    from ff_lightning.train import fit

    given = probe.module.movq_ckpt
    if given:
        if not Path(given).is_file():
            raise ConfigError(
                f"movq_ckpt={given}: file not found (an image MoVQ state dict: ours or movqgan_270M.ckpt)"
            )
        return {}
    if experiment is None:
        raise ConfigError("the sweep sets neither movq_ckpt nor prepare_experiment (the image-MoVQ experiment yaml)")
    exp = experiment
    data_over = [
        f"data.{k}={_fmt(v)}"
        for k, v in OmegaConf.to_container(probe.data, resolve=True).items()
        if k in ("source", "root", "annotations", "size", "seed", "cache_dir") and v is not None
    ]
    data_over = [d.replace("'", "") for d in data_over]
    cfg = load_config(exp, [*data_over, f"model.preset={probe.model.preset}", f"run.output_dir={probe.run.output_dir}"])
    key = config_hash(cfg)
    target = cache_dir() / "models" / f"movq-{cfg.model.preset}-{key}.safetensors"
    if target.is_file() and not redo:
        log.info("image MoVQ: cached %s", target)
        return {"module.movq_ckpt": str(target)}
    log.info("image MoVQ: training %s (%d steps) -> %s", exp, cfg.trainer.max_steps, target)
    result = fit(cfg)
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in result.module.movq.state_dict().items()}
    with atomic_open(target, "wb") as f:
        f.write(save(state, metadata={"config_hash": key, "preset": cfg.model.preset}))
    return {"module.movq_ckpt": str(target)}


def _fmt(v: Any) -> str:
    return str(list(v)) if isinstance(v, (list, tuple)) else str(v)
