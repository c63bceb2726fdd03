"""Benchmark protocols: versioned yaml files (``experiments/eval/<name>_v<N>.yaml``) validated against a typed schema.

A protocol fixes everything that decides a number: which prompts (and how many per class), what the generator is asked
for, which frames each evaluator sees and how they are resized, which real clips the Fréchet distances compare
against, and how the uncertainty is computed. :func:`load_protocol` reads a file, applies ``key=value`` overrides
(omegaconf dotlist), and validates, reporting every problem at once:

- unknown keys, naming the valid keys of that section;
- values of the wrong type, naming the key;
- unknown choices (benchmark, prompt source, metric kind, evaluator weights, real dataset, ...), naming the valid ones;
- a file name that does not match ``<name>_v<version>.yaml``.

Released protocols are immutable: :data:`RELEASED` pins the SHA-256 of the canonical (parsed, comment-free) content
of every shipped protocol file, and loading a released name+version whose content differs is an error. A change of any
setting is a new file with the next version (``..._v2.yaml``); comments may be edited freely.

Overrides are recorded: a result computed with overrides says so and is never marked comparable to the paper.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = [
    "BENCHMARKS",
    "METRIC_KINDS",
    "PROMPT_SOURCES",
    "REAL_DATASETS",
    "RELEASED",
    "EvalProtocol",
    "GenerationSpec",
    "LoadedProtocol",
    "MetricSpec",
    "PromptsSpec",
    "ProtocolError",
    "RealSpec",
    "UncertaintySpec",
    "canonical_hash",
    "default_protocol_path",
    "load_protocol",
    "protocol_dir",
]


class ProtocolError(ValueError):
    """A protocol file that cannot be used; the message lists every problem and the valid choices."""


BENCHMARKS: tuple[str, ...] = ("ucf101", "msrvtt", "offline")
PROMPT_SOURCES: tuple[str, ...] = ("ucf101_classes", "msrvtt_captions", "bundled_classes")
#: metric kind -> what it measures (the evaluator weights are named per metric in the protocol)
METRIC_KINDS: dict[str, str] = {
    "is_c3d": "video Inception Score from the C3D UCF-101 classifier's logits (TGANv2)",
    "fvd_i3d": "Fréchet Video Distance on I3D Kinetics-400 features against real clips (StyleGAN-V detector)",
    "fid_inception": "frame FID: Fréchet distance of InceptionV3 pool features of single frames against real frames",
    "clipsim": "CLIPSIM: mean cosine between each frame's CLIP image embedding and its prompt's text embedding",
    "shapes_accuracy": "accuracy of an in-project classifier (trained on bundled_shapes_ucf) on the prompted classes",
    "shapes_is": "Inception Score from the logits of the same in-project bundled_shapes_ucf classifier",
    "not_applicable": "declared for the table but not measured by this protocol (``reason`` says why)",
}
REAL_DATASETS: tuple[str, ...] = ("ucf101", "bundled_shapes_ucf")
_REAL_SPLITS: tuple[str, ...] = ("train", "test", "all")
_STARTS: tuple[str, ...] = ("first", "center")
_BALANCE: tuple[str, ...] = ("class", "none")
_CAPTION: tuple[str, ...] = ("first",)
_FEATURES: tuple[str, ...] = ("logits", "pool")
_STORAGE: tuple[str, ...] = ("npz",)

#: ``<name>_v<version>`` -> :func:`canonical_hash` of the released file's parsed content (keys and values as written,
#: comments excluded). Never edit those files' settings in place: write ``_v<version + 1>`` instead.
RELEASED: dict[str, str] = {
    "ucf101_zeroshot_v1": "a59ca4e3bf71ab2c39c04e90541f479661253de9455e3f1a4c348827c7d35d8d",
    "ucf101_zeroshot_10k_v1": "3f3a2c0d749155cc928d7ae5254d8ab3118c6f50b3d8378d0ef6b3a65c6b1781",
    "msrvtt_clipsim_v1": "8df3cd79ab3a9cc893889d087a3be70b03c1450539735e5ae7f0cc05caf3beb5",
    "bundled_offline_v1": "2e8fc3f9d953931e6eefa54d6b749ae723866476572fb05cf1e9556b9129f2f5",
}


@dataclass
class PromptsSpec:
    """Where prompts come from and how samples are spread over them.

    ``ucf101_classes``: one prompt per class, ``template`` filled with the class name split into lower-case words
    (``ApplyEyeMakeup`` -> ``"a video of apply eye makeup"``); ``balance: class`` gives every class
    ``num_samples // C`` samples and one more to ``num_samples % C`` classes drawn with the protocol seed; samples are
    ordered round-robin over classes, so any run of consecutive samples is class-balanced. ``bundled_classes``: the
    same over the bundled ``bundled_shapes_ucf`` classes. ``msrvtt_captions``: caption ``caption`` (``first``: lowest
    ``sen_id``) of every video in ``split``; ``num_samples`` below the video count takes an evenly spread subset.
    """

    source: str = "ucf101_classes"
    template: str = "a video of {}"
    balance: str = "class"
    caption: str = "first"
    split: str = "test"
    split_index: int = 1


@dataclass
class GenerationSpec:
    """What each generator call is asked for; ``size`` and ``fps`` are hints the test generators follow (a trained
    pipeline generates at its own resolution; every evaluator resizes as its metric says)."""

    num_frames: int = 16
    size: list[int] = field(default_factory=lambda: [256, 256])
    fps: float = 8.0
    batch_size: int = 8
    storage: str = "npz"


@dataclass
class RealSpec:
    """The real clips the Fréchet distances compare against (statistics cached, see :mod:`.reference`).

    Clips are ``num_frames`` frames ``stride`` apart (or at ``fps``), starting at the ``start`` of each video, the
    frames resized so the shorter side covers ``size`` ([H, W]) and centre-cropped; one clip per video of ``split``
    (``all``: train and test lists of ``split_index``); ``max_videos`` takes an evenly spread subset.
    """

    dataset: str = "ucf101"
    split: str = "all"
    split_index: int = 1
    num_frames: int = 16
    stride: int = 1
    fps: float | None = None
    size: list[int] = field(default_factory=lambda: [224, 224])
    start: str = "first"
    max_videos: int | None = None
    batch_size: int = 8
    chunk_size: int = 256
    num_workers: int = 0


@dataclass
class MetricSpec:
    """One reported metric: its kind, evaluator weights and what the evaluator sees.

    ``evaluator`` names a :data:`ff_lightning.metrics.weights.KNOWN_WEIGHTS` entry, resolved with the CLI path >
    cache > error order; ``optional: true`` reports the metric as unavailable (with the reason) when the file is
    missing instead of failing. ``num_frames``: the first frames used (IS, FVD, CLIPSIM; 0 = all for CLIPSIM);
    ``frame_indices``: the frames per video used by frame FID; ``size``: the evaluator input [H, W] (FVD: resize to
    cover + centre crop, as the real clips, :func:`ff_lightning.metrics.i3d.preprocess_i3d`; the others: direct
    resize); ``splits``: Inception Score chunks; ``features``: FVD feature layer; ``mean_evaluator``: the C3D mean clip
    (missing -> per-channel mean, recorded).
    """

    kind: str = "not_applicable"
    evaluator: str | None = None
    optional: bool = False
    num_frames: int = 16
    frame_indices: list[int] | None = None
    size: list[int] = field(default_factory=lambda: [224, 224])
    splits: int = 1
    features: str = "logits"
    mean_evaluator: str | None = None
    batch_size: int = 8
    reason: str | None = None


@dataclass
class UncertaintySpec:
    """How intervals are computed (see :mod:`.results`).

    Per-sample metrics (CLIPSIM, accuracy): studentized (bootstrap-t) interval over samples, ``n_boot`` resamples. Distribution
    metrics (IS, FVD, FID): the value on all samples, a percentile-bootstrap interval over generated samples with the
    real statistics fixed (``n_boot_distribution`` resamples, recentred on the value: see :mod:`.uncertainty`), and,
    when ``repeats > 1``, mean ± std over that many disjoint consecutive (class-balanced) subsets.
    """

    alpha: float = 0.05
    n_boot: int = 1000
    n_boot_distribution: int = 200
    repeats: int = 1
    seed: int = 0


@dataclass
class EvalProtocol:
    """A benchmark protocol (see the module docstring); ``name`` + ``version`` must match the file name."""

    name: str = "unnamed"
    version: int = 1
    benchmark: str = "ucf101"
    description: str = ""
    comparable_to_paper: bool = False
    note: str = ""
    seed: int = 0
    num_samples: int = 2048
    prompts: PromptsSpec = field(default_factory=PromptsSpec)
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    real: RealSpec | None = None
    metrics: dict[str, MetricSpec] = field(default_factory=dict)
    uncertainty: UncertaintySpec = field(default_factory=UncertaintySpec)

    @property
    def full_name(self) -> str:
        """``<name>_v<version>``, the file stem and the results folder."""
        return f"{self.name}_v{self.version}"


@dataclass
class LoadedProtocol:
    """A validated protocol plus where it came from: ``resolved`` is the full JSON-ready content."""

    protocol: EvalProtocol
    path: Path | None
    overrides: list[str]
    resolved: dict[str, Any]
    content_sha256: str
    released: bool

    @property
    def comparable_to_paper(self) -> bool:
        """Only an unmodified released protocol that says so is comparable to the paper's numbers."""
        return self.protocol.comparable_to_paper and self.released and not self.overrides

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record stored in every result."""
        return {
            "name": self.protocol.name,
            "version": self.protocol.version,
            "full_name": self.protocol.full_name,
            "path": str(self.path) if self.path else None,
            "overrides": list(self.overrides),
            "released": self.released,
            "content_sha256": self.content_sha256,
            "resolved": self.resolved,
        }


def protocol_dir() -> Path:
    """``experiments/eval`` of this checkout (``$FF_PROTOCOL_DIR`` overrides)."""
    env = os.environ.get("FF_PROTOCOL_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "experiments" / "eval"


def default_protocol_path(benchmark: str) -> Path:
    """The default released protocol of a benchmark."""
    names = {"ucf101": "ucf101_zeroshot_v1", "msrvtt": "msrvtt_clipsim_v1", "offline": "bundled_offline_v1"}
    if benchmark not in names:
        raise ProtocolError(f"unknown benchmark {benchmark!r}; valid choices: {', '.join(sorted(names))}")
    return protocol_dir() / f"{names[benchmark]}.yaml"


# --------------------------------------------------------------------------------------------------------- checking
def _dataclass_of(tp: Any) -> type | None:
    """The dataclass inside ``tp`` (``X``, ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp  # type: ignore[return-value]
    if typing.get_origin(tp) is dict:
        return None
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg  # type: ignore[return-value]
    return None


def _dict_value_dataclass(tp: Any) -> type | None:
    if typing.get_origin(tp) is dict:
        args = typing.get_args(tp)
        if len(args) == 2 and dataclasses.is_dataclass(args[1]):
            return args[1]  # type: ignore[return-value]
    return None


def _check_keys(node: Any, schema: type, prefix: str, problems: list[str]) -> None:
    """Report keys of ``node`` that the dataclass ``schema`` does not define (recursively)."""
    if not isinstance(node, DictConfig):
        return
    hints = typing.get_type_hints(schema)
    for key in node.keys():
        name = f"{prefix}{key}"
        if key not in hints:
            where = prefix.rstrip(".") or "the top level"
            problems.append(f"unknown key {name!r}; valid keys of {where}: {', '.join(sorted(hints))}")
            continue
        sub = _dataclass_of(hints[key])
        if sub is not None:
            _check_keys(node[key], sub, f"{name}.", problems)
            continue
        value_cls = _dict_value_dataclass(hints[key])
        if value_cls is not None and isinstance(node[key], DictConfig):
            for k2 in node[key].keys():
                _check_keys(node[key][k2], value_cls, f"{name}.{k2}.", problems)


def _choice(problems: list[str], key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        problems.append(f"unknown {key} {value!r}; valid choices: {', '.join(sorted(choices))}")


def _check_values(p: EvalProtocol, problems: list[str]) -> None:
    from ff_lightning.evaluation.evaluators import known_evaluators

    evaluators = known_evaluators()
    _choice(problems, "benchmark", p.benchmark, BENCHMARKS)
    _choice(problems, "prompts.source", p.prompts.source, PROMPT_SOURCES)
    _choice(problems, "prompts.balance", p.prompts.balance, _BALANCE)
    _choice(problems, "prompts.caption", p.prompts.caption, _CAPTION)
    _choice(problems, "generation.storage", p.generation.storage, _STORAGE)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", p.name):
        problems.append(f"name {p.name!r} must be lower-case letters, digits and underscores")
    if p.version < 1:
        problems.append(f"version must be >= 1, got {p.version}")
    if p.num_samples < 2:
        problems.append(f"num_samples must be >= 2, got {p.num_samples}")
    if "{}" not in p.prompts.template:
        problems.append(f"prompts.template {p.prompts.template!r} needs a '{{}}' for the class name")
    g = p.generation
    if g.num_frames < 1 or g.batch_size < 1 or len(g.size) != 2 or min(g.size) < 1 or g.fps <= 0:
        problems.append(f"generation needs num_frames, batch_size >= 1, size [H, W] > 0 and fps > 0, got {g}")
    u = p.uncertainty
    if not 0.0 < u.alpha < 1.0 or u.n_boot < 0 or u.n_boot_distribution < 0 or u.repeats < 1:
        problems.append(f"uncertainty needs 0 < alpha < 1, n_boot >= 0, repeats >= 1, got {u}")
    if u.repeats > 1 and p.num_samples // u.repeats < 2:
        problems.append(f"uncertainty.repeats={u.repeats} leaves fewer than 2 samples per repeat")
    needs_real = False
    if not p.metrics:
        problems.append("metrics: at least one metric is required")
    for name, m in p.metrics.items():
        key = f"metrics.{name}"
        _choice(problems, f"{key}.kind", m.kind, list(METRIC_KINDS))
        _choice(problems, f"{key}.features", m.features, _FEATURES)
        if m.kind == "not_applicable":
            if not m.reason:
                problems.append(f"{key}: kind not_applicable needs a reason")
            continue
        if m.kind in ("fvd_i3d", "fid_inception"):
            needs_real = True
        if m.evaluator is None:
            problems.append(f"{key}.evaluator is required for kind {m.kind!r}; valid choices: {', '.join(evaluators)}")
        else:
            _choice(problems, f"{key}.evaluator", m.evaluator, evaluators)
        if m.mean_evaluator is not None:
            _choice(problems, f"{key}.mean_evaluator", m.mean_evaluator, evaluators)
        if len(m.size) != 2 or min(m.size) < 1:
            problems.append(f"{key}.size must be [H, W] with positive values, got {list(m.size)}")
        if m.num_frames < 0 or m.batch_size < 1 or m.splits < 1:
            problems.append(f"{key}: num_frames >= 0, batch_size >= 1 and splits >= 1 required")
        if m.kind != "clipsim" and m.num_frames > g.num_frames:
            problems.append(f"{key}.num_frames={m.num_frames} exceeds generation.num_frames={g.num_frames}")
        if m.frame_indices is not None and (not m.frame_indices or max(m.frame_indices) >= g.num_frames):
            problems.append(f"{key}.frame_indices must be non-empty and < generation.num_frames={g.num_frames}")
        if m.kind == "is_c3d" and list(m.size) != [112, 112]:
            problems.append(f"{key}.size must be [112, 112] for C3D (fc6 fixes the input), got {list(m.size)}")
        if m.kind == "fvd_i3d" and m.size[0] != m.size[1]:
            problems.append(f"{key}.size must be square for I3D, got {list(m.size)}")
        if m.kind == "is_c3d" and p.num_samples < m.splits:
            problems.append(f"{key}.splits={m.splits} exceeds num_samples={p.num_samples}")
    if needs_real:
        if p.real is None:
            problems.append("real: a Fréchet-distance metric needs the real-clip section")
        else:
            r = p.real
            _choice(problems, "real.dataset", r.dataset, REAL_DATASETS)
            _choice(problems, "real.split", r.split, _REAL_SPLITS)
            _choice(problems, "real.start", r.start, _STARTS)
            if r.split_index not in (1, 2, 3):
                problems.append(f"real.split_index must be 1, 2 or 3, got {r.split_index}")
            if r.num_frames < 1 or r.stride < 1 or r.batch_size < 1 or r.chunk_size < 1 or len(r.size) != 2:
                problems.append(f"real needs num_frames, stride, batch_size, chunk_size >= 1 and size [H, W], got {r}")
            for name, m in p.metrics.items():
                if m.kind in ("fvd_i3d", "fid_inception"):
                    need = max(m.frame_indices) + 1 if m.frame_indices else m.num_frames
                    if need > r.num_frames:
                        problems.append(f"metrics.{name} needs {need} frames but real.num_frames={r.num_frames}")


def canonical_hash(resolved: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys) of a validated protocol's content."""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _validate(raw: DictConfig, source: str) -> EvalProtocol:
    problems: list[str] = []
    _check_keys(raw, EvalProtocol, "", problems)
    if problems:
        raise ProtocolError(f"{source}: " + "\n  ".join(["invalid protocol:", *problems]))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(EvalProtocol), raw)
        proto = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = getattr(e, "msg", None) or str(e)
        raise ProtocolError(f"{source}: invalid value for {key!r}: {msg.splitlines()[0]}") from None
    assert isinstance(proto, EvalProtocol)
    _check_values(proto, problems)
    if problems:
        raise ProtocolError(f"{source}: " + "\n  ".join(["invalid protocol:", *problems]))
    return proto


def load_protocol(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    *,
    benchmark: str | None = None,
    raw: dict[str, Any] | None = None,
) -> LoadedProtocol:
    """Read, override and validate a protocol.

    Args:
        path: a protocol yaml (``None``: the default released protocol of ``benchmark``).
        overrides: ``key=value`` dotlist, e.g. ``["num_samples=16", "metrics.fvd.optional=true"]``.
        benchmark: the runner's benchmark; a protocol for another benchmark is an error.
        raw: a protocol given as a mapping instead of a file (tests; never counts as released).

    Raises:
        ProtocolError: every problem found (see the module docstring).
    """
    if raw is not None:
        source, file = "<protocol>", None
        node = OmegaConf.create(raw)
    else:
        file = Path(path) if path is not None else default_protocol_path(benchmark or "ucf101")
        source = str(file)
        if not file.is_file():
            raise ProtocolError(f"protocol file not found: {file} (released protocols live in {protocol_dir()})")
        node = OmegaConf.load(file)
        if not isinstance(node, DictConfig):
            raise ProtocolError(f"{source}: top level must be a mapping")
    base = _validate(node, source)
    file_hash = canonical_hash(OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]
    if file is not None:
        stem = file.stem
        if stem != base.full_name:
            raise ProtocolError(
                f"{source}: file name must be {base.full_name}.yaml (name {base.name!r}, version {base.version}); "
                "the version lives in the file name and in the version field"
            )
    released = False
    pinned = RELEASED.get(base.full_name)
    if file is not None and pinned:
        if pinned != file_hash:
            raise ProtocolError(
                f"{source}: protocol {base.full_name} is released and its content changed (sha256 {file_hash}, "
                f"released {pinned}). Released protocols are never edited in place: restore it and write "
                f"{base.name}_v{base.version + 1}.yaml with the change."
            )
        released = True
    proto = base
    if overrides:
        try:
            over = OmegaConf.from_dotlist(list(overrides))
        except OmegaConfBaseException as e:
            raise ProtocolError(f"cannot parse protocol overrides {list(overrides)}: {e}") from None
        proto = _validate(OmegaConf.merge(node, over), f"{source} with overrides {list(overrides)}")
    if benchmark is not None and proto.benchmark != benchmark:
        raise ProtocolError(f"{source}: protocol is for benchmark {proto.benchmark!r}, not {benchmark!r}")
    resolved = dataclasses.asdict(proto)
    return LoadedProtocol(
        protocol=proto,
        path=file.resolve() if file is not None else None,
        overrides=list(overrides),
        resolved=resolved,
        content_sha256=canonical_hash(resolved),
        released=released,
    )
