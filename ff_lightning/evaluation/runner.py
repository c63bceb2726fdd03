"""The benchmark run shared by every runner: evaluators -> real statistics -> generation -> metrics -> result file.

Order of work (so that a missing file fails before hours of generation):

1. every metric's evaluator is resolved and loaded (a missing required file raises
   :class:`~ff_lightning.metrics.weights.WeightsUnavailable` naming every missing file, its source and where to put
   it; an optional one becomes an unavailable metric with that message, and so does a required one when the run is
   made with ``allow_missing``: the samples are generated anyway, reused later when the files are there); the real
   data the Fréchet metrics need is checked in the same step (a missing dataset is named with where it comes from);
2. the real-clip statistics of the Fréchet metrics are computed or read from the cache (:mod:`.reference`);
3. missing samples are generated into the sample folder (:mod:`.samples`, resumable);
4. the stored samples are read back in batches and every evaluator runs on them;
5. the metric records (:mod:`.uncertainty`) and the result (:mod:`.results`) are written atomically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ff_lightning.evaluation.evaluators import Evaluator, EvaluatorHooks, load_evaluator
from ff_lightning.evaluation.generators import NamedGenerator
from ff_lightning.evaluation.protocol import LoadedProtocol
from ff_lightning.evaluation.reference import RealStats, real_data_problem, real_statistics
from ff_lightning.evaluation.results import (
    RESULT_SCHEMA,
    default_result_path,
    now_iso,
    package_info,
    write_result,
)
from ff_lightning.evaluation.samples import SampleStore, generate_samples
from ff_lightning.evaluation.uncertainty import (
    frechet_record,
    inception_score_record,
    per_sample_record,
    unavailable,
)
from ff_lightning.metrics.weights import WeightsUnavailable
from ff_lightning.paths import cache_dir

__all__ = ["PromptSet", "RunOptions", "RunOutput", "class_balanced_prompts", "make_generator", "run_benchmark"]

log = logging.getLogger(__name__)

NOT_COMPARABLE = (
    "NOT COMPARABLE TO THE PAPER: {why}. These numbers only compare runs made with this same protocol "
    "(and the same evaluator files)."
)


@dataclass
class PromptSet:
    """The protocol's prompts in sample order, with a stable id per sample and a class label (-1: none)."""

    prompts: list[str]
    ids: list[str]
    labels: list[int]
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.prompts) == len(self.ids) == len(self.labels)):
            raise ValueError("prompts, ids and labels differ in length")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("sample ids must be unique")


@dataclass
class RunOptions:
    """Where and how a run works; ``weights`` maps a metric kind (or ``c3d_mean``) to an explicit evaluator file.

    ``generator_options``: passed to a checkpoint loader (keyframe checkpoints: ``sample_steps``,
    ``guidance_weight``, ``sampler``, ``movq``); ``allow_missing``: report metrics whose evaluator files are missing
    as unavailable instead of failing (see the module docstring).
    """

    out: Path | None = None
    run_name: str | None = None
    resume: bool = True
    data_root: str | None = None
    weights: dict[str, str | None] = field(default_factory=dict)
    hooks: EvaluatorHooks | None = None
    device: str = "cpu"
    progress: bool = True
    real_stats_cache: Path | None = None
    generator_options: dict[str, Any] = field(default_factory=dict)
    allow_missing: bool = False


@dataclass
class RunOutput:
    """The written result and its path."""

    record: dict[str, Any]
    path: Path


def class_balanced_prompts(
    class_names: Sequence[str], n: int, template: str, seed: int, *, balance: str = "class"
) -> PromptSet:
    """``n`` prompts over classes: ``n // C`` each, one more for ``n % C`` classes drawn with ``seed``.

    Samples are ordered round-robin over classes (class-index order within a pass), so consecutive runs of samples
    are class-balanced; a sample's id is ``<ClassName>/<k>``, its k-th sample of that class. ``balance="none"`` cycles
    the classes the same way without the seeded remainder (the first ``n % C`` classes get one more).
    """
    from ff_lightning.data.ucf101 import class_prompt

    c = len(class_names)
    if c == 0:
        raise ValueError("no classes")
    counts = np.full(c, n // c, dtype=np.int64)
    extra = np.random.default_rng(seed).permutation(c)[: n % c] if balance == "class" else np.arange(n % c)
    counts[extra] += 1
    prompts, ids, labels = [], [], []
    for p in range(int(counts.max()) if n else 0):
        for j, name in enumerate(class_names):
            if counts[j] > p:
                prompts.append(class_prompt(name, template))
                ids.append(f"{name}/{p:05d}")
                labels.append(j)
    return PromptSet(prompts, ids, labels, {"classes": len(class_names), "per_class": [int(x) for x in counts]})


def _explicit(options: RunOptions, kind: str) -> str | None:
    key = {"shapes_accuracy": "shapes_classifier", "shapes_is": "shapes_classifier"}.get(kind, kind)
    return options.weights.get(key)


def _load_all(loaded: LoadedProtocol, options: RunOptions) -> tuple[dict[str, Evaluator], dict[str, dict[str, Any]]]:
    """Load every metric's evaluator; returns ``(evaluators, unavailable records)``."""
    evaluators: dict[str, Evaluator] = {}
    missing: dict[str, dict[str, Any]] = {}
    required_missing: list[str] = []
    shared: dict[tuple[Any, ...], Evaluator] = {}
    for name, spec in loaded.protocol.metrics.items():
        if spec.kind == "not_applicable":
            missing[name] = unavailable(f"not measured by protocol {loaded.protocol.full_name}: {spec.reason}")
            continue
        share_key = (spec.kind.split("_")[0], spec.evaluator, spec.num_frames, tuple(spec.size))
        if spec.kind.startswith("shapes_") and share_key in shared:
            evaluators[name] = Evaluator(
                spec.kind,
                shared[share_key].evaluator,
                shared[share_key].fn,
                shared[share_key].weights,
                shared[share_key].details,
            )
            continue
        try:
            ev = load_evaluator(
                spec,
                path=_explicit(options, spec.kind),
                mean_path=options.weights.get("c3d_mean"),
                hooks=options.hooks,
                device=options.device,
            )
        except WeightsUnavailable as e:
            if not spec.optional and not options.allow_missing:
                required_missing.append(f"metric {name!r}: {e}")
                continue
            log.warning("metric %s unavailable: %s", name, e)
            why = "" if spec.optional else " (required by the protocol; run with allow_missing)"
            missing[name] = unavailable(f"evaluator weights unavailable{why}: {e}")
            continue
        evaluators[name] = ev
        if spec.kind.startswith("shapes_"):
            shared[share_key] = ev
    p = loaded.protocol
    if p.real is not None:  # Fréchet metrics that will run (or would, given their files) need the real clips
        frechet = [n for n, spec in p.metrics.items() if spec.kind in ("fvd_i3d", "fid_inception") and n not in missing]
        problem = real_data_problem(p.real, options.data_root) if frechet else None
        if problem is not None and options.allow_missing:
            for name in frechet:
                log.warning("metric %s unavailable: %s", name, problem)
                evaluators.pop(name, None)
                missing[name] = unavailable(f"real data unavailable (run with allow_missing): {problem}")
        elif problem is not None:
            if not required_missing:
                raise FileNotFoundError(problem)
            required_missing.append(f"metric {frechet[0]!r} also needs data: {problem}")
    if required_missing:
        raise WeightsUnavailable(
            "\n".join(required_missing) + "\nNothing was generated. Place the files (or pass their paths), or run "
            "with --allow-missing (allow_missing=True) to generate the samples now and report these metrics "
            "unavailable; the samples are reused when the run is repeated with the files."
        )
    return evaluators, missing


def _sample_dir(loaded: LoadedProtocol, options: RunOptions, run_name: str) -> Path:
    if options.out is not None:
        return Path(options.out) / "samples"
    return cache_dir() / "eval" / "samples" / loaded.protocol.full_name / run_name


def _result_path(loaded: LoadedProtocol, options: RunOptions, run_name: str) -> Path:
    if options.out is not None:
        return Path(options.out) / f"{run_name}.json"
    return default_result_path(loaded.protocol.full_name, run_name)


def _why_not_comparable(
    loaded: LoadedProtocol, evaluators: dict[str, Evaluator], generator: NamedGenerator | None = None
) -> str | None:
    """Every reason the run's numbers are not comparable to the paper, joined with ``"; "`` (None: comparable)."""
    p = loaded.protocol
    why: list[str] = []
    if not p.comparable_to_paper:
        why.append(f"protocol {p.full_name} is not the paper's protocol ({p.note.strip() or p.description.strip()})")
    if not loaded.released:
        why.append(f"protocol {p.full_name} is not a released protocol file")
    if loaded.overrides:
        why.append(f"protocol {p.full_name} was run with overrides {loaded.overrides}")
    for name, ev in evaluators.items():
        if ev.details.get("substituted"):
            why.append(f"{name} used {ev.evaluator} instead of the protocol's {p.metrics[name].evaluator}")
        if "approximation" in str(ev.details.get("mean", "")):
            why.append(f"{name} used the per-channel C3D mean instead of TGANv2's mean clip")
        if ev.changed:
            why.append(f"{name}'s evaluator file changed since its first use")
    if generator is not None and generator.identity.get("not_comparable"):
        why.append(f"generator {generator.name}: {generator.identity['not_comparable']}")
    return "; ".join(why) or None


def run_benchmark(
    loaded: LoadedProtocol,
    generator: NamedGenerator,
    prompt_set: PromptSet,
    options: RunOptions,
    *,
    extra: dict[str, Any] | None = None,
) -> RunOutput:
    """Run a protocol end to end with ``generator`` on ``prompt_set`` (see the module docstring)."""
    p = loaded.protocol
    started, t_start = now_iso(), time.perf_counter()
    n = len(prompt_set.prompts)
    run_name = options.run_name or generator.name
    evaluators, metrics = _load_all(loaded, options)

    # real statistics (Fréchet metrics) before generation: missing data fails early
    reference: dict[str, RealStats] = {}
    for name, ev in evaluators.items():
        if ev.kind in ("fvd_i3d", "fid_inception"):
            assert p.real is not None
            reference[name] = real_statistics(
                p.real,
                p.metrics[name],
                ev,
                options.data_root,
                cache=options.real_stats_cache,
                progress=options.progress,
            )

    # generation (resumable)
    store = SampleStore(_sample_dir(loaded, options, run_name))
    header = {"protocol": p.full_name, "generation": loaded.resolved["generation"]}
    t_gen = time.perf_counter()
    report = generate_samples(
        store,
        generator,
        prompt_set.prompts,
        prompt_set.ids,
        seed=p.seed,
        batch_size=p.generation.batch_size,
        header=header,
        resume=options.resume,
        progress=options.progress,
    )
    gen_s = time.perf_counter() - t_gen

    # evaluation on the stored samples
    t_eval = time.perf_counter()
    outputs: dict[str, list[torch.Tensor]] = {k: [] for k in evaluators}
    if evaluators:
        bs = min(p.metrics[k].batch_size for k in evaluators)
        for idx, videos in tqdm(
            store.iter_batches(n, bs),
            total=(n + bs - 1) // bs,
            desc="evaluate",
            unit="batch",
            disable=not options.progress,
        ):
            prompts = [prompt_set.prompts[i] for i in idx]
            for k, ev in evaluators.items():
                outputs[k].append(ev.fn(videos, prompts))
    u = p.uncertainty
    per_sample: dict[str, dict[str, Any]] = {}
    for k, ev in evaluators.items():
        spec = p.metrics[k]
        out = torch.cat(outputs[k])
        if ev.kind == "is_c3d" or ev.kind == "shapes_is":
            metrics[k] = inception_score_record(
                out, splits=spec.splits, alpha=u.alpha, n_boot=u.n_boot_distribution, repeats=u.repeats, seed=u.seed
            )
        elif ev.kind in ("fvd_i3d", "fid_inception"):
            ref = reference[k]
            metrics[k] = frechet_record(
                ref.mu, ref.sigma, out, alpha=u.alpha, n_boot=u.n_boot_distribution, repeats=u.repeats, seed=u.seed
            )
            metrics[k]["reference_rows"] = ref.n_rows
        elif ev.kind in ("clipsim", "shapes_accuracy"):
            values = out if ev.kind == "clipsim" else (out.argmax(dim=1) == torch.tensor(prompt_set.labels)).double()
            metrics[k] = per_sample_record(values, alpha=u.alpha, n_boot=u.n_boot, seed=u.seed)
            metrics[k]["higher_is_better"] = True
            per_sample[k] = {"ids": list(prompt_set.ids), "values": [float(v) for v in values]}
        metrics[k]["kind"] = ev.kind
    eval_s = time.perf_counter() - t_eval
    metrics = {k: metrics[k] for k in p.metrics}  # protocol order

    why = _why_not_comparable(loaded, evaluators, generator)
    comparable = why is None
    notice = (
        f"Protocol {p.full_name}: the paper's protocol, unmodified; comparable to the paper's Table 1 within the "
        "stated intervals (note the generator: a test generator's numbers mean nothing)."
        if comparable
        else NOT_COMPARABLE.format(why=why)
    )
    record: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "benchmark": p.benchmark,
        "run_name": run_name,
        "protocol": loaded.as_dict(),
        "comparable_to_paper": comparable,
        "notice": notice,
        "generator": generator.identity,
        "seed": p.seed,
        "num_samples": n,
        "prompts": prompt_set.source,
        "samples": {"folder": str(store.folder), **report.as_dict()},
        "evaluators": {
            k: {"kind": ev.kind, "evaluator": ev.evaluator, "weights": ev.weights, "details": ev.details}
            for k, ev in evaluators.items()
        }
        | {k: {"available": False, "reason": m["reason"]} for k, m in metrics.items() if m.get("value") is None},
        "weights_changed": any(ev.changed for ev in evaluators.values()),
        "allow_missing": options.allow_missing,
        "metrics": metrics,
        "per_sample": per_sample,
        "reference": {k: r.as_dict() for k, r in reference.items()},
        "timestamps": {
            "started": started,
            "finished": now_iso(),
            "generation_s": round(gen_s, 3),
            "evaluation_s": round(eval_s, 3),
            "total_s": round(time.perf_counter() - t_start, 3),
        },
        "package": package_info(),
        **(extra or {}),
    }
    path = write_result(record, _result_path(loaded, options, run_name))
    log.info("result written to %s", path)
    return RunOutput(record, path)


def make_generator(
    loaded: LoadedProtocol,
    name: str | None = None,
    checkpoint: str | Path | None = None,
    options: RunOptions | None = None,
) -> NamedGenerator:
    """The generator of a run: a registered ``name`` or a ``checkpoint`` (exactly one), built with the protocol's
    generation hints; a checkpoint loader also gets ``options.device`` and ``options.generator_options``."""
    from ff_lightning.evaluation.generators import build_generator, from_checkpoint

    if (name is None) == (checkpoint is None):
        raise ValueError("give exactly one of a generator name or a keyframe checkpoint")
    g = loaded.protocol.generation
    hints: dict[str, Any] = {"num_frames": g.num_frames, "size": list(g.size), "fps": g.fps}
    extra = dict(options.generator_options) if options is not None else {}
    if checkpoint is not None:
        device = options.device if options is not None else "cpu"
        return from_checkpoint(checkpoint, **hints, device=device, **extra)
    if extra:
        raise ValueError(f"generator options {sorted(extra)} apply to checkpoints (--keyframes), not to {name!r}")
    return build_generator(str(name), **hints)
