"""``ff import SRC --out DIR``: released Kandinsky files -> this project's export folders (see
:mod:`ff_lightning.interop.release`). Imports no torch until the command runs."""

from __future__ import annotations

import argparse

__all__ = ["add_import_parser"]

_EPILOG = """\
examples:
  ff import ~/KandinskyVideo --format kv1.0 --text-encoder-path ~/flan-ul2 --out imported/kv1.0
  ff import ~/Kandinsky3.1 --out imported/k3.1                  # format detected; text encoder: weights/flan_ul2_encoder
  ff import ~/KandinskyVideo_1_1 --format kv1.1 --out imported/kv1.1   # keyframes, interpolation, decoder (1.1)
  ff import ~/MoVQGAN --format movqgan --out imported/movqgan
then: ff generate "a prompt" --keyframes imported/kv1.0/keyframes --interpolation imported/kv1.0/interpolation \\
        --no-decoder --device cuda --precision bf16
formats and file names: docs/reproduce.md. Every key of every file is checked against our models at --preset; any
missing, unexpected or mis-shaped key refuses the whole import and lists them (nothing is written).
"""


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size takes HxW, e.g. 512x512, got {text!r}") from None
    return h, w


def add_import_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    g = sub.add_parser(
        "import",
        help="released Kandinsky weights (KV 1.0 / 1.1, Kandinsky 3.1, MoVQGAN) -> export folders for ff generate",
        description="Import a folder of released Kandinsky files into this project's export format, key for key.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("src", help="folder with the released files (a hub download; weights/ is looked into)")
    g.add_argument("--out", required=True, help="output folder (one export folder per stage + movq.safetensors)")
    g.add_argument("--format", choices=("kv1.0", "kv1.1", "k3.1", "movqgan"), default=None,
                   help="release format (default: detected from the file names)")  # fmt: skip
    g.add_argument("--parts", default=None, help="comma-separated subset of the format's stages (default: all)")
    g.add_argument("--preset", default="paper", help="model size preset the files must fit (default paper)")
    g.add_argument("--num-frames", type=int, default=15, help="keyframes of the keyframe UNet (release: 15)")
    g.add_argument("--text-encoder", default="t5", help="module.text_encoder of the stages (release: t5)")
    g.add_argument("--text-encoder-path", default=None, help="local Flan-UL2 (T5) folder, recorded in the configs")
    g.add_argument("--text-dim", type=int, default=4096, help="text-encoder feature width (Flan-UL2: 4096)")
    g.add_argument("--size", type=_size, default=(512, 512), help="default frame size HxW of the stages")
    g.set_defaults(fn=_cmd_import)


def _cmd_import(args: argparse.Namespace) -> int:
    from ff_lightning.interop.release import ImportSpec, import_release

    spec = ImportSpec(
        preset=args.preset, num_frames=args.num_frames, text_encoder=args.text_encoder,
        text_encoder_path=args.text_encoder_path, text_dim=args.text_dim, size=tuple(args.size),
    )  # fmt: skip
    parts = [p.strip() for p in args.parts.split(",") if p.strip()] if args.parts else None
    manifest = import_release(args.src, args.out, args.format, spec, parts)
    print(f"imported {manifest['format']} from {manifest['source']} into {args.out}")
    for role, info in manifest["files"].items():
        print(f"  {role}: {info['path']} (sha256 {info['sha256'][:16]})")
    for stage, folder in manifest["stages"].items():
        print(f"  stage {stage}: {args.out}/{folder}")
    print(
        f"  text encoder: {manifest['text_encoder']['name']} {manifest['text_encoder']['path'] or '(path not given)'}"
    )
    return 0
