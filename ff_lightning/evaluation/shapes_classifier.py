"""A small in-project video classifier for the offline benchmark: the 12 ``bundled_shapes_ucf`` classes.

The offline data has no pretrained evaluator (C3D and I3D know UCF-101 and Kinetics, not procedural shapes), so the
offline protocol trains its own: a small early-fusion CNN on 8 frames (every other one of the first 16) at 32x32,
trained on the train list of split 1 of ``bundled_shapes_ucf`` (144 clips, fixed seed, a few CPU minutes) and cached as
``$FF_CACHE_DIR/models/shapes_classifier-<key>.safetensors``, keyed by the bundled data marker and
:data:`RECIPE_VERSION`. Its accuracy on the real test list is stored in the file's metadata and reported next to the
generated-video accuracy (what a perfect generator would score).

Metrics (offline protocol only; meaningless for real benchmarks): *shapes accuracy*, the fraction of generated videos
classified as their prompt's class (shape and motion direction), and *shapes IS*, the Inception Score of its logits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ff_lightning.data.motion_words import MIRROR_SWAP, REVERSE_SWAP
from ff_lightning.io import atomic_open

__all__ = [
    "RECIPE_VERSION",
    "ShapesClassifier",
    "ensure_shapes_classifier",
    "load_shapes_classifier",
    "preprocess_shapes",
    "train_shapes_classifier",
    "ATTRIBUTES",
    "AttributeClassifier",
    "caption_attributes",
    "train_attribute_classifier",
    "ensure_attribute_classifier",
    "attribute_hits",
    "predicted_shares",
]

log = logging.getLogger(__name__)

RECIPE_VERSION = 2
NUM_FRAMES = 16
FRAME_STEP = 2  # the classifier sees frames 0, 2, ..., 14
SIZE = (32, 32)


class ShapesClassifier(nn.Module):
    """Clips ``(B, 3, T, H, W)`` in [-1, 1] -> logits ``(B, num_classes)``.

    Early fusion: the T frames are stacked on the channel axis (``3 T`` channels) and a 2-D CNN (batch norm, ReLU)
    sees them at once, so its first filters can respond to displacement between frames (the motion direction) as well
    as to shape.
    """

    def __init__(self, num_classes: int = 12, frames: int = NUM_FRAMES // FRAME_STEP, width: int = 32) -> None:
        super().__init__()
        self.frames = frames
        self.conv1, self.bn1 = nn.Conv2d(3 * frames, width, 3, padding=1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width)
        self.conv3, self.bn3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if t != self.frames:
            raise ValueError(f"the classifier takes {self.frames} frames, got {t}")
        z = x.permute(0, 2, 1, 3, 4).reshape(b, t * c, h, w)
        z = F.max_pool2d(F.relu(self.bn1(self.conv1(z))), 2)
        z = F.max_pool2d(F.relu(self.bn2(self.conv2(z))), 2)
        z = F.relu(self.bn3(self.conv3(z)))
        # mean and max over positions: the moving shape is small, an average alone dilutes it
        return self.head(torch.cat([z.mean(dim=(2, 3)), z.amax(dim=(2, 3))], dim=1))


def preprocess_shapes(video: torch.Tensor, size: tuple[int, int] = SIZE) -> torch.Tensor:
    """Videos ``(B, T, 3, H, W)`` in [-1, 1] -> ``(B, 3, T / 2, h, w)``: every other frame, resized (bilinear,
    antialiased)."""
    video = video[:, ::FRAME_STEP]
    b, t, c, h, w = video.shape
    x = video.float().clamp(-1, 1).reshape(b * t, c, h, w)
    if (h, w) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return x.view(b, t, c, *size).permute(0, 2, 1, 3, 4).contiguous()


def _clips(split: str, cache: str | Path | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from ff_lightning.data import DataConfig, build_dataset

    cfg = DataConfig(
        source="bundled_shapes_ucf",
        num_frames=NUM_FRAMES,
        size=list(SIZE),
        random_crop=False,
        random_start=False,
        eval_start="first",
        cache_dir=str(cache) if cache else None,
    )
    ds = build_dataset(cfg, split)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([s["video"] for s in items]), torch.tensor([s["label"] for s in items]), list(ds.classes)


def _swap(classes: list[str], pairs: tuple[tuple[str, str], ...]) -> torch.Tensor:
    """Label permutation mapping each class to the one with the words of ``pairs`` swapped (identity if absent)."""
    out = []
    for name in classes:
        new = name
        for a, b in pairs:
            if name.endswith(a):
                new = name[: -len(a)] + b
            elif name.endswith(b):
                new = name[: -len(b)] + a
        out.append(classes.index(new) if new in classes else classes.index(name))
    return torch.tensor(out)


def train_shapes_classifier(
    cache: str | Path | None = None, epochs: int = 60, seed: int = 0
) -> tuple[nn.Module, float]:
    """Train on the bundled train list (split 1); returns the model and its accuracy on the test list.

    Augmentations that keep the label computable: horizontal flips (left <-> right), time reversal (left <-> right,
    up <-> down) and colour-channel permutations (the class does not depend on colour).
    """
    torch.manual_seed(seed)
    xtr, ytr, classes = _clips("train", cache)
    xte, yte, _ = _clips("test", cache)
    xtr, xte = preprocess_shapes(xtr), preprocess_shapes(xte)
    hflip = _swap(classes, (("Left", "Right"),))
    reverse = _swap(classes, (("Left", "Right"), ("Up", "Down")))
    model = ShapesClassifier(len(classes))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for s in range(0, len(perm), 16):
            idx = perm[s : s + 16]
            x, y = xtr[idx], ytr[idx]
            if torch.rand((), generator=gen) < 0.5:
                x, y = x.flip(-1), hflip[y]
            if torch.rand((), generator=gen) < 0.5:
                x, y = x.flip(2), reverse[y]
            x = x[:, torch.randperm(3, generator=gen)]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xte).argmax(1) == yte).float().mean())
    return model, acc


def _cache_key(cache: str | Path | None) -> str:
    from ff_lightning.data.bundled import bundled_root
    from ff_lightning.data.bundled.cache import read_marker

    root = bundled_root("bundled_shapes_ucf", cache)
    marker = read_marker(root) or {}
    content = json.dumps({"marker": marker, "recipe": RECIPE_VERSION}, sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def ensure_shapes_classifier(cache: str | Path | None = None) -> Path:
    """The cached classifier file for the current bundled data, trained first when missing."""
    from safetensors.torch import save

    from ff_lightning.paths import cache_dir

    target = cache_dir(cache) / "models" / f"shapes_classifier-{_cache_key(cache)}.safetensors"
    if target.is_file():
        return target
    log.info("training the bundled-shapes classifier (once; cached at %s)", target)
    t0 = time.perf_counter()
    model, acc = train_shapes_classifier(cache)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "recipe": str(RECIPE_VERSION),
        "real_test_accuracy": f"{acc:.6f}",
        "seconds": f"{time.perf_counter() - t0:.1f}",
        "num_classes": str(model.head.out_features),
    }
    with atomic_open(target, "wb") as f:
        f.write(save(state, metadata=meta))
    log.info("shapes classifier: real test accuracy %.3f", acc)
    return target


def load_shapes_classifier(path: str | Path) -> ShapesClassifier:
    """Load a classifier file written by :func:`ensure_shapes_classifier` (``real_test_accuracy`` attribute set)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    width = int(state["conv1.weight"].shape[0])
    model = ShapesClassifier(int(state["head.weight"].shape[0]), int(state["conv1.weight"].shape[1]) // 3, width)
    model.load_state_dict(state)
    model.real_test_accuracy = float(meta.get("real_test_accuracy", "nan"))  # type: ignore[attr-defined]
    return model.eval().requires_grad_(False)


def real_accuracy_of(path: str | Path) -> float | None:
    """The stored real-test accuracy of a classifier file (None if absent or unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            v = (f.metadata() or {}).get("real_test_accuracy")
    except Exception:  # not a safetensors file with our metadata
        return None
    return float(v) if v is not None and np.isfinite(float(v)) else None


# ------------------------------------------------------------------------------ caption attributes (captioned shapes)
ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "motion")
ATTRIBUTE_RECIPE = 1  # bump when the attribute classifier's training changes


def _attribute_names() -> dict[str, list[str]]:
    from ff_lightning.data.bundled.shapes import COLOURS, DIRECTIONS, SHAPES

    return {"colour": list(COLOURS), "shape": list(SHAPES), "motion": list(DIRECTIONS)}


def caption_attributes(caption: str) -> dict[str, int]:
    """``"a red circle moving left slowly"`` -> class index per attribute (colour, shape, motion direction)."""
    words = caption.split()
    names = _attribute_names()
    try:
        return {"colour": names["colour"].index(words[1]), "shape": names["shape"].index(words[2]),
                "motion": names["motion"].index(words[4])}  # fmt: skip
    except (IndexError, ValueError):
        raise ValueError(f"not a bundled-shapes caption: {caption!r}") from None


class AttributeClassifier(nn.Module):
    """Clips ``(B, T, 3, H, W)`` in [-1, 1] -> logits per attribute ``{colour: (B, 7), shape: (B, 3), motion:
    (B, 4)}``: an early-fusion CNN (the ``T`` frames on the channel axis, so displacement is visible to its first
    filters) with one linear head per attribute."""

    def __init__(self, frames: int, width: int = 32) -> None:
        super().__init__()
        self.frames = frames
        self.body = nn.Sequential(
            nn.Conv2d(3 * frames, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({k: nn.Linear(4 * width, len(v)) for k, v in _attribute_names().items()})

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        b, t, c, h, w = video.shape
        if t != self.frames:
            raise ValueError(f"the classifier takes {self.frames} frames, got {t}")
        z = self.body(video.float().clamp(-1, 1).reshape(b, t * c, h, w))
        z = torch.cat([z.mean(dim=(2, 3)), z.amax(dim=(2, 3))], dim=1)
        return {k: head(z) for k, head in self.heads.items()}


def _swap_directions(y: torch.Tensor, swap: dict[str, str]) -> torch.Tensor:
    """Direction labels ``y`` ``(B,)`` after the words swap as ``swap`` says (``ff_lightning.data.motion_words``:
    ``MIRROR_SWAP`` for a left-right mirror, ``REVERSE_SWAP`` for a clip played backwards)."""
    names = _attribute_names()["motion"]
    return torch.tensor([names.index(swap.get(n, n)) for n in names])[y]


def _window_clips(data: Any, split: str, frames: int, stride: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Every clip of ``split`` whole (``(N, S, 3, H, W)``, first frame on) and its caption attributes ``(N,)``."""
    from omegaconf import OmegaConf

    from ff_lightning.data import DataConfig, build_dataset

    d = OmegaConf.to_container(data, resolve=True) if not isinstance(data, dict) else dict(data)
    span = (frames - 1) * stride + 1
    cfg = DataConfig(source=str(d.get("source", "bundled_shapes")), size=list(d.get("size") or SIZE),
                     num_frames=max(span, 16), stride=1, random_crop=False, random_start=False, eval_start="first",
                     cache_dir=d.get("cache_dir"), root=d.get("root"), seed=int(d.get("seed") or 0))  # fmt: skip
    ds = build_dataset(cfg, split)
    items = [ds[i] for i in range(len(ds))]
    labels = [caption_attributes(s["caption"]) for s in items]
    return torch.stack([s["video"] for s in items]), {k: torch.tensor([lab[k] for lab in labels]) for k in ATTRIBUTES}


def train_attribute_classifier(
    data: Any, frames: int, stride: int, epochs: int = 40, seed: int = 0
) -> tuple[AttributeClassifier, dict[str, float]]:
    """Train on windows of ``frames`` frames ``stride`` apart of the train clips of ``data`` (a data config of the
    captioned shapes); returns the model and its accuracy per attribute on the test clips (first window).

    Augmentations that keep the labels computable: random window start, horizontal flip (left <-> right) and time
    reversal (left <-> right, up <-> down); colours are never changed.
    """
    torch.manual_seed(seed)
    xtr, ytr = _window_clips(data, "train", frames, stride)
    xte, yte = _window_clips(data, "test", frames, stride)
    span = (frames - 1) * stride + 1
    model = AttributeClassifier(frames)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():  # also when called from an evaluator running under no_grad
        _fit_attributes(model, opt, sched, xtr, ytr, epochs, span, stride, gen)
    model.eval()
    with torch.no_grad():
        pred = model(xte[:, :span:stride])
    return model, {k: float((pred[k].argmax(1) == yte[k]).float().mean()) for k in ATTRIBUTES}


def _fit_attributes(
    model: AttributeClassifier,
    opt: torch.optim.Optimizer,
    sched: Any,
    xtr: torch.Tensor,
    ytr: dict[str, torch.Tensor],
    epochs: int,
    span: int,
    stride: int,
    gen: torch.Generator,
) -> None:
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for s in range(0, len(perm), 16):
            idx = perm[s : s + 16]
            start = int(torch.randint(0, xtr.shape[1] - span + 1, (), generator=gen))
            x = xtr[idx, start : start + span : stride]
            y = {k: v[idx] for k, v in ytr.items()}
            if torch.rand((), generator=gen) < 0.5:
                x, y["motion"] = x.flip(-1), _swap_directions(y["motion"], MIRROR_SWAP)
            if torch.rand((), generator=gen) < 0.5:
                x, y["motion"] = x.flip(1), _swap_directions(y["motion"], REVERSE_SWAP)
            logits = model(x)
            loss = sum(F.cross_entropy(logits[k], y[k]) for k in ATTRIBUTES)
            opt.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            opt.step()
        sched.step()


def ensure_attribute_classifier(data: Any, frames: int, stride: int) -> AttributeClassifier:
    """The cached attribute classifier for these clips (``$FF_CACHE_DIR/models/shapes_attributes-<key>``), trained
    first when missing (keyed by the bundled data marker, the window and :data:`ATTRIBUTE_RECIPE`)."""
    from safetensors.torch import load_file, save

    from ff_lightning.data.bundled import bundled_root
    from ff_lightning.data.bundled.cache import read_marker
    from ff_lightning.paths import cache_dir

    d = dict(data)
    marker = read_marker(bundled_root(str(d.get("source", "bundled_shapes")), d.get("cache_dir"))) or {}
    content = json.dumps({"marker": marker, "recipe": ATTRIBUTE_RECIPE, "frames": frames, "stride": stride,
                          "size": list(d.get("size") or SIZE)}, sort_keys=True, default=str)  # fmt: skip
    key = hashlib.sha256(content.encode()).hexdigest()[:16]
    target = cache_dir(d.get("cache_dir")) / "models" / f"shapes_attributes-{key}.safetensors"
    model = AttributeClassifier(frames)
    if target.is_file():
        model.load_state_dict(load_file(str(target)))
        return model.eval().requires_grad_(False)
    log.info("training the shapes attribute classifier (once; cached at %s)", target)
    t0 = time.perf_counter()
    model, acc = train_attribute_classifier(d, frames, stride)
    meta = {f"real_test_{k}": f"{v:.4f}" for k, v in acc.items()}
    meta["seconds"] = f"{time.perf_counter() - t0:.1f}"
    with atomic_open(target, "wb") as f:
        f.write(save({k: v.detach().contiguous() for k, v in model.state_dict().items()}, metadata=meta))
    log.info("shapes attribute classifier: real test accuracy %s", acc)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def attribute_hits(model: AttributeClassifier, videos: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
    """Per clip, whether the classifier finds each caption attribute: videos ``(B, T, 3, H, W)`` in [-1, 1] ->
    ``{colour, shape, motion}: (B,)`` float 0 / 1."""
    logits = model(videos)
    labels = [caption_attributes(c) for c in captions]
    return {k: (logits[k].argmax(1) == torch.tensor([lab[k] for lab in labels])).double() for k in ATTRIBUTES}


@torch.no_grad()
def predicted_shares(model: AttributeClassifier, videos: torch.Tensor, attribute: str) -> dict[str, float]:
    """Share of ``videos`` ``(B, T, 3, H, W)`` classified as each value of ``attribute`` (``{value name: share}``)."""
    pred = model(videos)[attribute].argmax(1)  # (B,)
    names = _attribute_names()[attribute]
    return {name: float((pred == i).double().mean()) for i, name in enumerate(names)}
