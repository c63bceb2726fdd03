"""The ``ff`` command line: ``ff train | params | data | ablate | eval``.

Every subcommand validates its inputs before doing any work; a bad config or name exits with status 2 and a message
that lists the valid choices.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from ff_lightning.cli_errors import known_error_message

__all__ = ["main", "build_parser"]

_EPILOG_TRAIN = """\
examples:
  ff train experiments/decoder/base.yaml
  ff train experiments/decoder/base.yaml model.variant=conv3x1x1 trainer.max_steps=200 run.name=c311
  ff train experiments/decoder/base.yaml trainer.fast_dev_run=true
  ff train experiments/decoder/base.yaml run.checkpoint_every_n_steps=100 resume=auto   # continue after a crash
overrides use omegaconf dotlist syntax (section.key=value); unknown keys are errors that list the valid keys.
"""

_EPILOG_PARAMS = """\
examples:
  ff params decoder conv3x3x3_attn --preset paper
  ff params movq movqgan --preset paper --json
  ff params --list            # every component with its variants and presets
models are built on the meta device: paper-size models cost no memory.
"""


def _cmd_train(args: argparse.Namespace) -> int:
    from ff_lightning.config import load_config, to_yaml
    from ff_lightning.train import fit

    # "resume=auto" / "resume=PATH" is short for run.resume=...
    overrides = [f"run.{o}" if o.startswith("resume=") else o for o in args.overrides]
    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(to_yaml(cfg))
        return 0
    result = fit(cfg)
    if not result.trainer.is_global_zero:  # torchrun / srun: one process per device; rank 0 reports
        return 0
    print(f"run directory: {result.run_dir}")
    if result.checkpoint:
        print(f"last checkpoint: {result.checkpoint}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ff_lightning.checkpoints import export_checkpoint

    manifest = export_checkpoint(args.checkpoint, args.out, use_ema=not args.no_ema)
    for name, what in manifest["files"].items():
        print(f"{args.out}/{name}: {what}")
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    from ff_lightning import registry

    if args.list or not args.component:
        for comp in registry.components():
            print(
                f"{comp}: variants [{', '.join(registry.variants(comp))}], presets [{', '.join(registry.presets(comp))}]"
            )
        return 0
    if not args.variant:
        print(f"variants of {args.component}: {', '.join(registry.variants(args.component))}")
        return 0
    model = registry.build(args.component, args.variant, args.preset, device="meta")
    counts = registry.param_counts(model)
    row = {"component": args.component, "variant": args.variant, "preset": args.preset, **counts}
    if args.json:
        print(json.dumps(row))
    else:
        print(f"{args.component}/{args.variant} @ {args.preset}")
        for k in ("total", "trainable", "frozen"):
            print(f"  {k:<10} {counts[k]:>15,}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from ff_lightning.data.bundled import build_all

    paths = build_all(args.cache, force=args.force)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from ff_lightning.ablate import run_sweep

    run_sweep(args.sweep, args.overrides, redo=args.redo, only=args.only, jobs=args.jobs)
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ff",
        description="ff_lightning: FusionFrames text-to-video architecture ablations on PyTorch Lightning.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'ff COMMAND --help' for a command's options. Nothing here downloads weights or data.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="Lightning fit from an experiment yaml",
        description="Train the system named by an experiment config (yaml under experiments/).",
        epilog=_EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("config", help="experiment yaml (may name a base: yaml and state only what differs)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=10")
    t.add_argument("--print-config", action="store_true", help="print the resolved, validated config and exit")
    t.set_defaults(fn=_cmd_train)

    ex = sub.add_parser(
        "export",
        help="export a training checkpoint as safetensors + config.yaml",
        description="Write a checkpoint's weights as safetensors (the module, and the model alone in the released key "
        "layout) with its resolved config.yaml. The checkpoint is read with weights_only=True.",
    )
    ex.add_argument("checkpoint", help="a .ckpt written by ff train")
    ex.add_argument("--out", required=True, help="output folder")
    ex.add_argument("--no-ema", action="store_true", help="export the raw weights even where the run kept an EMA")
    ex.set_defaults(fn=_cmd_export)

    pa = sub.add_parser(
        "params",
        help="parameter counts of a registered model variant",
        description="Print total, trainable and frozen parameter counts of COMPONENT/VARIANT at a size preset.",
        epilog=_EPILOG_PARAMS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pa.add_argument("component", nargs="?", help="e.g. decoder, movq, t2i_unet, keyframe_unet, interpolation_unet")
    pa.add_argument("variant", nargs="?", help="a registered variant of the component")
    pa.add_argument("--preset", default="tiny", help="size preset (tiny, small, paper; default tiny)")
    pa.add_argument("--json", action="store_true", help="print one JSON object")
    pa.add_argument("--list", action="store_true", help="list components, variants and presets")
    pa.set_defaults(fn=_cmd_params)

    d = sub.add_parser("data", help="build the bundled offline datasets", description="Bundled offline datasets.")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    db = dsub.add_parser("build", help="build real-footage septuplets and captioned shapes into the cache")
    db.add_argument("--cache", default=None, help="cache folder (default $FF_CACHE_DIR or ~/.cache/ff_lightning)")
    db.add_argument("--force", action="store_true", help="rebuild even if present")
    db.set_defaults(fn=_cmd_data)

    a = sub.add_parser(
        "ablate",
        help="run a sweep of registered variants through train + evaluate and render tables",
        description="Run every row of a sweep yaml (cached by resolved config) and write md/csv/png tables.",
    )
    a.add_argument("sweep", help="sweep yaml, e.g. experiments/ablations/decoder.yaml")
    a.add_argument("overrides", nargs="*", help="key=value overrides applied to the sweep (e.g. preset=paper)")
    a.add_argument("--redo", action="store_true", help="recompute rows whose results already exist")
    a.add_argument("--only", action="append", default=None, help="run only the named row(s)")
    a.add_argument(
        "--jobs", type=_positive_int, default=1, metavar="N",
        help="train / evaluate up to N rows at a time in worker processes (default 1; the make targets use every "
        "CPU with OMP_NUM_THREADS=1 per row); the results equal a one-at-a-time run",
    )  # fmt: skip
    a.set_defaults(fn=_cmd_ablate)

    from ff_lightning.evaluation.cli import add_eval_parser

    add_eval_parser(sub)  # ff eval ucf101 | msrvtt | offline | compare | table
    from ff_lightning.generate_cli import add_generate_parser

    add_generate_parser(sub)  # ff generate "a prompt" [--keyframes CKPT --interpolation CKPT --decoder CKPT]
    from ff_lightning.import_cli import add_import_parser

    add_import_parser(sub)  # ff import SRC --out DIR: released Kandinsky weights -> export folders
    return p


def _setup_logging(verbose: bool) -> None:
    """One root handler; log lines are printed once.

    ``import lightning`` adds its own console handler to the ``lightning`` logger while leaving it propagating to the
    root logger, so every Lightning line ("Seed set to 0", "GPU available", ...) was printed twice, once per handler.
    Lightning's logger stops propagating here (its own handler prints each of its lines once); the setting holds for
    the logger object Lightning configures later, when it is imported.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("lightning").propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `ff ablate SWEEP --only ROW steps=5`: key=value overrides may follow the flags (argparse's intermixed parsing
    # does not support subcommands)
    if extra and getattr(args, "command", None) == "ablate" and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _setup_logging(args.verbose)
    fn: Callable[[argparse.Namespace], int] | None = getattr(args, "fn", None)
    if fn is None:
        parser.print_help()
        return 0
    try:
        return fn(args)
    except FloatingPointError as e:  # a non-finite loss: the notes say where and which checkpoint was saved
        print(f"ff {args.command}: error: {e}", *getattr(e, "__notes__", []), sep="\n  ", file=sys.stderr)
        return 1
    except Exception as e:  # known error classes (ff_lightning.cli_errors): one line with the fix, exit 2
        message = known_error_message(e)
        if message is None:
            raise
        print(f"ff {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
