"""``ff generate "a prompt"``: text -> keyframes -> interpolation -> video decoder -> mp4 (:mod:`ff_lightning.pipeline`).

Without ``--keyframes`` / ``--interpolation`` / ``--decoder`` the tiny cached models of ``make tiny-models`` are used
(:func:`ff_lightning.tiny_models.find_tiny_checkpoints`); a missing stage exits with status 2 naming the target that
produces it. ``--no-interpolation`` / ``--no-decoder`` skip a stage on purpose (keyframes only; image-MoVQ decoding
frame by frame).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_generate_parser"]

_EPILOG = """\
examples:
  ff generate "a red circle moving left slowly" --out video.mp4 --gif video.gif     # tiny models (make tiny-models)
  ff generate "a prompt" --keyframes kf.ckpt --interpolation ip.ckpt --decoder dec.ckpt --out video.mp4 \\
      --seed 3 --steps 50 --guidance 5 --passes 2 --interp-guidance 0.25 --tp 0 --skip 1 --fps 16
  ff generate "a prompt" --pipeline imported/kv1.0 --no-decoder --device cuda --precision bf16 --info run.json
      # an `ff import` folder (released Kandinsky Video weights; see docs/reproduce.md)
  ff generate "a prompt" --keyframes ref.ckpt --image first_frame.png --guidance 5 --image-guidance 1.5 ...
      # a reference_keyframes checkpoint; without --image its image stage (the T2I base) makes the reference
stages are Lightning .ckpt files of the keyframes / interpolation / decoder systems (e.g. runs/.../last.ckpt) or
`ff export` / `ff import` stage folders;
all three must share one image-MoVQ latent space (checked: a mismatch is an error that names each stage's MoVQ).
"""


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size takes HxW, e.g. 32x32, got {text!r}") from None
    return h, w


def add_generate_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    g = sub.add_parser(
        "generate",
        help="text -> video with trained stage checkpoints (tiny cached models by default)",
        description="Generate a video: keyframes -> interpolation (n passes) -> video decoder; writes mp4 (+ gif).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("prompt", help="the text prompt")
    g.add_argument("--keyframes", metavar="CKPT", help="keyframes-system checkpoint (default: tiny cached)")
    g.add_argument("--interpolation", metavar="CKPT", help="interpolation-system checkpoint (default: tiny cached)")
    g.add_argument(
        "--decoder", metavar="CKPT", help="decoder-system checkpoint: the video MoVQ decoder (default: tiny cached)"
    )
    g.add_argument("--no-interpolation", action="store_true", help="keyframes only")
    g.add_argument("--no-decoder", action="store_true", help="decode with the image MoVQ, frame by frame")
    g.add_argument("--out", default="video.mp4", help="mp4 to write (default video.mp4)")
    g.add_argument("--gif", default=None, help="also write this GIF")
    g.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    g.add_argument("--steps", type=int, default=None, help="keyframe sampler steps (default: the model's)")
    g.add_argument("--guidance", type=float, default=None, help="text guidance weight of the keyframes")
    g.add_argument("--passes", type=int, default=1, help="interpolation passes: K -> 4^n (K-1) + 1 frames")
    g.add_argument("--interp-steps", type=int, default=None, help="interpolation sampler steps")
    g.add_argument("--interp-guidance", type=float, default=None, help="interpolation context guidance w")
    g.add_argument("--tp", type=int, default=None, help="keyframe perturbation tp (0 released, 150 paper)")
    g.add_argument("--skip", type=int, default=None, help="skip-frame s of the last interpolation pass")
    g.add_argument("--frame-step", type=float, default=None, help="source-frame step of the keyframes (frame rate)")
    g.add_argument("--size", type=_size, default=None, help="frame size HxW (default: the keyframe model's)")
    g.add_argument("--fps", type=float, default=None, help="frame rate of the written video")
    g.add_argument(
        "--image", metavar="PATH", default=None,
        help="reference image (resized to the frame size): for reference_keyframes checkpoints, or a kv1.1 first frame",
    )  # fmt: skip
    g.add_argument(
        "--image-guidance", type=float, default=None,
        help="image guidance weight of reference-image keyframe models (--guidance is the text weight)",
    )  # fmt: skip
    g.add_argument("--motion", choices=("low", "medium", "high", "extreme"), default=None,
                   help="Kandinsky Video 1.1 keyframes: motion score (default medium, the release's)")  # fmt: skip
    g.add_argument("--noise-augmentation", type=int, default=None, metavar="T",
                   help="Kandinsky Video 1.1 keyframes: timestep of the first frame's noise (default 20)")  # fmt: skip
    g.add_argument(
        "--pipeline", metavar="DIR", default=None,
        help="an `ff import` folder: its keyframes / interpolation / decoder stages (explicit stage flags win)",
    )  # fmt: skip
    g.add_argument("--device", default="cpu", help="torch device (default cpu), e.g. cuda or cuda:1")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast precision of sampling and decoding (default fp32)")  # fmt: skip
    g.add_argument(
        "--info",
        metavar="JSON",
        default=None,
        help="also write what was generated with which stages and weights (path + sha256) to this file",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.set_defaults(fn=_cmd_generate)


def _resolve(args: argparse.Namespace) -> dict[str, str | None]:
    """The checkpoint of each stage: given, skipped (None) or the tiny cached one; exits 2 naming a make target."""
    from ff_lightning.config import ConfigError  # lazy: `ff --help` imports no omegaconf
    from ff_lightning.tiny_models import TARGETS, find_tiny_checkpoints

    wanted = {
        "keyframes": args.keyframes,
        "interpolation": None if args.no_interpolation else args.interpolation,
        "decoder": None if args.no_decoder else args.decoder,
    }
    skipped = {"interpolation": args.no_interpolation, "decoder": args.no_decoder}
    if getattr(args, "pipeline", None):
        import json

        root = Path(args.pipeline).expanduser()
        manifest = root / "export.json"
        stages = (json.loads(manifest.read_text()).get("stages") or {}) if manifest.is_file() else {}
        if "keyframes" not in stages:
            raise ConfigError(f"--pipeline {root}: not an `ff import` folder with a keyframes stage (no export.json "
                              "naming one); pass the stages with --keyframes / --interpolation / --decoder")  # fmt: skip
        for stage in wanted:
            if wanted[stage] is None and not skipped.get(stage):
                wanted[stage] = str(root / stages[stage]) if stage in stages else None
                skipped[stage] = skipped.get(stage, False) or stage not in stages
    missing = [s for s, p in wanted.items() if p is None and not skipped.get(s)]
    if missing:
        tiny = find_tiny_checkpoints()
        for stage in missing:
            if tiny[stage] is None:
                raise ConfigError(
                    f"no {stage} checkpoint: pass --{stage} CKPT, or run `{TARGETS[stage]}` first (it trains the tiny "
                    f"{stage} model ff generate uses by default into $FF_CACHE_DIR/models/tiny_pipeline/; make sets "
                    "FF_CACHE_DIR=.cache, which is also looked at when FF_CACHE_DIR is unset)"
                )
            wanted[stage] = str(tiny[stage])
            print(f"{stage}: tiny cached model {tiny[stage]}", file=sys.stderr)
    return wanted


def _cmd_generate(args: argparse.Namespace) -> int:
    from ff_lightning.config import ConfigError
    from ff_lightning.pipeline import GenerateOptions, describe, generate

    image = None
    if args.image:
        from ff_lightning.pipelines.reference import read_reference_image

        try:
            image = read_reference_image(args.image)
        except (FileNotFoundError, OSError) as e:  # missing or unreadable: a usage error (exit 2)
            raise ConfigError(f"--image {args.image}: {e}") from None
    ckpts = _resolve(args)
    if ckpts["decoder"] is None:
        print("no video decoder: decoding with the keyframe model's image MoVQ, frame by frame", file=sys.stderr)
    options = GenerateOptions(
        seed=args.seed, steps=args.steps, guidance_weight=args.guidance, passes=args.passes,
        interp_steps=args.interp_steps, interp_guidance_weight=args.interp_guidance, perturbation=args.tp,
        skip_frames=args.skip, frame_step=args.frame_step, size=args.size, fps=args.fps,
        progress=not args.no_progress, image=image, image_guidance_weight=args.image_guidance, motion=args.motion,
        noise_augmentation=args.noise_augmentation,
    )  # fmt: skip
    if args.passes < 1 and ckpts["interpolation"]:
        raise ConfigError("--passes must be >= 1 (use --no-interpolation for keyframes only)")
    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise ConfigError(f"--out must name an .mp4 file, got {args.out}")
    result = generate(
        args.prompt, ckpts["keyframes"] or "", ckpts["interpolation"], ckpts["decoder"], out=out, gif=args.gif,
        options=options, device=args.device, precision=args.precision,
    )  # fmt: skip
    print(describe(result))
    if args.info:
        from ff_lightning.io import atomic_write_json

        t, _, h, w = result.frames.shape
        atomic_write_json(args.info, {
            "prompt": args.prompt, "frames": t, "size": [h, w], "fps": result.fps, "decoder": result.decoder,
            "device": args.device, "precision": args.precision, "seed": args.seed, "stages": result.weights,
            "outputs": [str(p) for p in result.paths], "notes": result.notes,
            **{k: v for k, v in (("motion", args.motion), ("noise_augmentation", args.noise_augmentation))
               if v is not None},
        })  # fmt: skip
        print(f"wrote {args.info}")
    return 0
