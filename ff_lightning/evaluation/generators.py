"""Video generators the benchmark runners call, by name.

A *generator* is any callable ``fn(prompts: list[str], seed: int) -> videos`` returning a float tensor
``(B, T, 3, H, W)`` in [-1, 1] with ``B == len(prompts)``; the same prompts and seed must give the same videos (the
runners call it with one seed per fixed batch of the protocol, see :mod:`.samples`). Runners receive a
:class:`NamedGenerator`: the callable plus an ``identity`` record stored in every result and in the sample manifest
(resuming with another identity is refused).

Registered generators (:data:`GENERATORS`, ``name -> factory(**hints)``; hints are the protocol's ``generation``
section: ``num_frames``, ``size`` [H, W], ``fps``):

- ``test_noise``: smooth coloured noise, drawn from ``(seed, position in batch, SHA-256 of the prompt)``;
- ``test_shapes``: the bundled procedural shapes (:mod:`ff_lightning.data.bundled.shapes`): the prompt's shape,
  colour, direction and speed words (``"a video of circle moving left"``) are rendered, missing ones drawn from the
  same hash, over a random textured background. It is what the offline benchmark's real clips look like, so frame FID
  and the shapes classifier have something to measure before any model is trained.

Checkpoints: :func:`from_checkpoint` hands a checkpoint file to the loaders registered with
:func:`register_checkpoint_loader`; the built-in one (:mod:`.keyframe_generator`, imported on first use) takes
checkpoints of the ``keyframes`` system. A loader returns None or raises :class:`GeneratorUnavailable` (with what
the file is) when a file is not its kind; when no loader accepts the file, the error lists every loader's reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ff_lightning.registry import UnknownChoiceError

__all__ = [
    "GENERATORS",
    "GeneratorFn",
    "GeneratorUnavailable",
    "NamedGenerator",
    "build_generator",
    "from_checkpoint",
    "generator_names",
    "register_checkpoint_loader",
    "register_generator",
]

GeneratorFn = Callable[[list[str], int], torch.Tensor]


class GeneratorUnavailable(RuntimeError):
    """A generator that cannot be built here (e.g. a checkpoint kind without a registered loader)."""


@dataclass
class NamedGenerator:
    """A generator callable and what identifies it in results (name, kind, parameters, checkpoint hash)."""

    name: str
    fn: GeneratorFn
    identity: dict[str, Any] = field(default_factory=dict)

    def __call__(self, prompts: list[str], seed: int) -> torch.Tensor:
        return self.fn(prompts, seed)


def _prompt_key(prompt: str) -> int:
    return int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "little")


def _sample_rng(seed: int, position: int, prompt: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & (2**64 - 1), position, _prompt_key(prompt)]))


def make_test_noise(num_frames: int = 16, size: Sequence[int] = (64, 64), fps: float = 8.0) -> NamedGenerator:
    """Smooth deterministic noise videos ``(B, num_frames, 3, H, W)`` (see the module docstring)."""
    h, w = int(size[0]), int(size[1])

    def fn(prompts: list[str], seed: int) -> torch.Tensor:
        out = []
        for i, p in enumerate(prompts):
            rng = _sample_rng(seed, i, p)
            coarse = rng.standard_normal((3, max(2, num_frames // 4), 6, 6)).astype(np.float32)
            vid = F.interpolate(torch.from_numpy(coarse)[None], size=(num_frames, h, w), mode="trilinear")
            out.append(torch.tanh(vid[0]).permute(1, 0, 2, 3))  # (T, 3, H, W)
        return torch.stack(out)

    params = {"num_frames": num_frames, "size": [h, w], "fps": fps}
    return NamedGenerator("test_noise", fn, {"name": "test_noise", "kind": "registered", "params": params})


def make_test_shapes(num_frames: int = 16, size: Sequence[int] = (64, 64), fps: float = 8.0) -> NamedGenerator:
    """Rendered shape clips following the prompt's words (see the module docstring)."""
    from ff_lightning.data.bundled.shapes import COLOURS, DIRECTIONS, SHAPES, SPEEDS, ShapeClip, render_clip

    h, w = int(size[0]), int(size[1])
    side = max(h, w)

    def pick(words: set[str], options: Sequence[str], rng: np.random.Generator) -> str:
        found = [o for o in options if o in words]
        return found[0] if found else options[int(rng.integers(len(options)))]

    def fn(prompts: list[str], seed: int) -> torch.Tensor:
        out = []
        for i, p in enumerate(prompts):
            rng = _sample_rng(seed, i, p)
            words = set(p.lower().replace(",", " ").split())
            clip = ShapeClip(
                shape=pick(words, SHAPES, rng),
                colour=pick(words, list(COLOURS), rng),
                direction=pick(words, list(DIRECTIONS), rng),
                speed=pick(words, list(SPEEDS), rng),
                seed=int(rng.integers(0, 2**31 - 1)),
            )
            frames = render_clip(clip, side, num_frames)  # (T, S, S, 3) uint8
            top, left = (side - h) // 2, (side - w) // 2
            frames = frames[:, top : top + h, left : left + w]
            out.append(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0)
        return torch.stack(out)

    params = {"num_frames": num_frames, "size": [h, w], "fps": fps}
    return NamedGenerator("test_shapes", fn, {"name": "test_shapes", "kind": "registered", "params": params})


#: registered generator factories (``factory(num_frames=, size=, fps=) -> NamedGenerator``)
GENERATORS: dict[str, Callable[..., NamedGenerator]] = {
    "test_noise": make_test_noise,
    "test_shapes": make_test_shapes,
}

#: checkpoint loaders: ``loader(path, **hints) -> NamedGenerator`` or ``None`` when the file is not its kind
_CHECKPOINT_LOADERS: list[Callable[..., NamedGenerator | None]] = []


def register_generator(name: str, factory: Callable[..., NamedGenerator]) -> None:
    """Register a named generator factory; a name is never redefined with another factory."""
    if name in GENERATORS and GENERATORS[name] is not factory:
        raise ValueError(f"generator {name!r} is already registered")
    GENERATORS[name] = factory


def register_checkpoint_loader(loader: Callable[..., NamedGenerator | None]) -> None:
    """Register a loader tried by :func:`from_checkpoint` (the keyframe pipeline's, once it exists)."""
    if loader not in _CHECKPOINT_LOADERS:
        _CHECKPOINT_LOADERS.append(loader)


def generator_names() -> list[str]:
    """Registered generator names, sorted."""
    return sorted(GENERATORS)


def build_generator(name: str, **hints: Any) -> NamedGenerator:
    """The registered generator ``name`` built with the protocol's generation hints.

    Raises :class:`~ff_lightning.registry.UnknownChoiceError` listing the registered names.
    """
    if name not in GENERATORS:
        raise UnknownChoiceError("generator", name, list(GENERATORS))
    return GENERATORS[name](**hints)


#: modules that register the built-in checkpoint loaders when imported
_BUILTIN_LOADERS: tuple[str, ...] = ("ff_lightning.evaluation.keyframe_generator",)


def from_checkpoint(path: str | Path, **hints: Any) -> NamedGenerator:
    """A generator from a checkpoint (today: a keyframe checkpoint), through the registered loaders.

    ``hints``: the protocol's generation hints (``num_frames``, ``size``, ``fps``) plus the loader options
    (``device``, and for keyframe checkpoints ``sample_steps``, ``guidance_weight``, ``sampler``, ``movq``).
    The identity gets the checkpoint's resolved path and sha256.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        GeneratorUnavailable: no registered loader accepts it (the message says why each one refused it).
    """
    import importlib

    for module in _BUILTIN_LOADERS:
        importlib.import_module(module)
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"keyframe checkpoint not found (nor a pipeline folder): {p}")
    reasons = []
    for loader in _CHECKPOINT_LOADERS:
        try:
            gen = loader(p, **hints)
        except GeneratorUnavailable as e:
            reasons.append(str(e))
            continue
        if gen is not None:
            from ff_lightning.metrics.weights import sha256_file

            gen.identity.setdefault("kind", "checkpoint")
            gen.identity.update(
                {"checkpoint": str(p.resolve()), "checkpoint_sha256": sha256_file(p) if p.is_file() else None}
            )
            return gen
        reasons.append(f"{getattr(loader, '__name__', loader)}: not its kind")
    if len(reasons) == 1:
        raise GeneratorUnavailable(reasons[0])
    raise GeneratorUnavailable(f"no checkpoint loader accepts {p}:\n  " + "\n  ".join(reasons))
