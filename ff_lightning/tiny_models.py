"""The tiny text-to-video models ``ff generate`` uses when given no checkpoints (``make tiny-models``).

All three stages live in ONE MoVQ latent space: the image MoVQ and the text-to-image base that ``make
compare-temporal`` trains on the bundled captioned shapes (same prepare chain, same cache keys: a machine that ran
``compare-temporal`` reuses both). ``make ablate-decoder``'s video decoders are trained over a different image MoVQ
(the real-footage one), so they are not used here; neither are ``make bench-interpolation``'s models (trained in
memory over the same MoVQ and base, no checkpoints kept).

:func:`build_tiny_models` provides, under ``$FF_CACHE_DIR/models/tiny_pipeline/``:

- ``keyframes.ckpt``: the ``blocks`` row of ``experiments/ablations/temporal.yaml`` (copied from that sweep's run
  when ``make compare-temporal`` already trained it, otherwise trained here with the sweep's recipe);
- ``interpolation.ckpt``: ``experiments/interpolation/base.yaml`` on the shapes (``INTERPOLATION_RECIPE``: the
  blend-residual objective; ``INTERPOLATION_RECIPE_PAPER`` is the paper's);
- ``decoder.ckpt``: ``experiments/decoder/base.yaml``, the ``resblock_attn`` video decoder (``DECODER_RECIPE``);
- ``manifest.json``: the three paths, the MoVQ / t2i files, each stage's training seconds.

:func:`find_tiny_checkpoints` reads the manifest (the keyframe stage also falls back on the ``compare-temporal``
blocks run); a missing stage maps to the make target that produces it (:data:`TARGETS`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ff_lightning.paths import cache_dir

__all__ = ["TARGETS", "tiny_dir", "find_tiny_checkpoints", "build_tiny_models", "write_untrained_stages",
           "latent_scale_of", "compare_temporal_base", "INTERPOLATION_RECIPE",
           "INTERPOLATION_RECIPE_PAPER", "DECODER_RECIPE"]  # fmt: skip

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
STAGES = ("keyframes", "interpolation", "decoder")
#: the make target that produces each stage's tiny checkpoint
TARGETS = {"keyframes": "make tiny-models", "interpolation": "make tiny-models", "decoder": "make tiny-models"}

#: interpolation on 9-frame shape clips (K = 3), s = 1 (the 16-frame clips fit no larger s), from the t2i base, plus
#: module.latent_scale = 1 / std of the MoVQ latents (:func:`latent_scale_of`), with the paper's objective (the UNet
#: diffuses the middle latents themselves, 20 DDIM steps): the release-faithful recipe, kept by name. 300 steps:
#: its videos flicker (mean frame-to-frame change 0.068 on [0, 1] against 0.013 for the real clips,
#: benchmarks/results/generate.md)
INTERPOLATION_RECIPE_PAPER = [
    "data.source=bundled_shapes", "data.size=[32,32]", "data.num_frames=9", "data.stride=1", "data.batch_size=4",
    "trainer.max_steps=300", "optim.lr=5.0e-4", "optim.warmup_steps=25", "trainer.limit_val_batches=0",
    "module.log_samples_every_n_steps=0", "module.min_skip=1", "module.max_skip=1", "module.eval_skip=1",
    "module.sample_skip=1",
]  # fmt: skip
#: the default: the same data, with the objective of experiments/interpolation/blend_residual.yaml (the UNet diffuses
#: 3x the difference to the linear blend of the keyframe latents, training timesteps shifted towards high noise,
#: one DDIM step), 1500 steps (~7.6 min on one CPU thread): frame-to-frame change 0.013, as the real clips
#: (benchmarks/results/generate.md)
INTERPOLATION_RECIPE = [
    *(item for item in INTERPOLATION_RECIPE_PAPER if not item.startswith("trainer.max_steps=")),
    "trainer.max_steps=1500", "module.blend_residual=true", "module.residual_scale=3.0", "module.timestep_shift=4.0",
    "module.sample_steps=1",
]  # fmt: skip
#: the cheapest Table 3 row with temporal attention, whole decoder fine-tuned on 8-frame shape clips, ~2 min
DECODER_RECIPE = [
    "data.source=bundled_shapes", "data.size=[32,32]", "data.num_frames=8", "data.stride=1", "data.batch_size=1",
    "model.variant=resblock_attn", "module.policy=decoder", "trainer.max_steps=120", "trainer.limit_val_batches=0",
]  # fmt: skip


def tiny_dir(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "models" / "tiny_pipeline"


def _caches() -> list[Path]:
    """Where to look: ``$FF_CACHE_DIR``; when it is unset, also the checkout's ``.cache/`` (where ``make`` puts it)."""
    found = [cache_dir()]
    if not os.environ.get("FF_CACHE_DIR") and (ROOT / ".cache").resolve() != found[0].resolve():
        found.append(ROOT / ".cache")
    return found


def _manifest(cache: Path | None = None) -> dict[str, Any]:
    p = tiny_dir(cache) / "manifest.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def _compare_temporal_blocks(cache: Path) -> Path | None:
    """The ``blocks`` row checkpoint of the newest cached ``make compare-temporal`` run, if its files still exist."""
    records = sorted((cache / "ablations" / "temporal").glob("blocks-*.json"), key=lambda p: p.stat().st_mtime)
    for rec in reversed(records):
        try:
            run_dir = json.loads(rec.read_text()).get("run_dir")
        except (OSError, ValueError):
            continue
        if not run_dir:
            continue
        for base in (Path(run_dir), ROOT / run_dir, Path.cwd() / run_dir):
            ckpt = base / "checkpoints" / "last.ckpt"
            if ckpt.is_file():
                return ckpt
    return None


def find_tiny_checkpoints() -> dict[str, Path | None]:
    """Stage -> the tiny cached checkpoint, or None when that stage has none yet (first cache of :func:`_caches`
    with a complete manifest, else the first one's partial findings)."""
    results = []
    for cache in _caches():
        manifest = _manifest(cache)
        found: dict[str, Path | None] = {}
        for stage in STAGES:
            p = manifest.get(stage)
            found[stage] = Path(p) if p and Path(p).is_file() else None
        if found["keyframes"] is None:
            found["keyframes"] = _compare_temporal_blocks(cache)
        if all(found.values()):
            return found
        results.append(found)
    return results[0]


# --------------------------------------------------------------------------------------------------------- build
def _copy(src: Path, dst: Path) -> Path:
    from ff_lightning.io import atomic_open

    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    return dst


def _fit_last(cfg: Any) -> Path:
    from ff_lightning.train import fit

    result = fit(cfg)
    if result.checkpoint is None or result.trainer.global_step < cfg.trainer.max_steps:
        raise RuntimeError(f"{cfg.run.name}: training stopped at step {result.trainer.global_step}")
    return result.checkpoint


def _recipe_key(experiment: Path, items: list[str]) -> str:
    """A stage's cache key: its experiment file and overrides (not the resolved config, which changes whenever the
    schema gains a field; ``make tiny-models REDO=1`` retrains after an experiment yaml changed)."""
    import hashlib

    text = json.dumps([experiment.relative_to(ROOT).as_posix(), sorted(items)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def latent_scale_of(movq_ckpt: str | Path, clips: int = 16, size: int = 32) -> float:
    """``1 / std`` of the tiny MoVQ's latents of the first bundled shape clips (8 frames each, ``size`` px), to 3
    significant digits: the ``latent_scale`` that gives the diffusion unit-variance latents."""
    import torch

    from ff_lightning import registry
    from ff_lightning.data.video_io import read_video_frames
    from ff_lightning.interop.movq import load_weights

    movq = registry.build("movq", "movqgan", "tiny")
    load_weights(movq, str(movq_ckpt))
    files = sorted((cache_dir() / "data" / "shapes").glob("train_*/*.mp4"))[:clips]
    if not files:
        raise FileNotFoundError(f"no bundled shape clips under {cache_dir() / 'data' / 'shapes'}: run `make data`")
    frames = torch.cat([torch.from_numpy(read_video_frames(f, list(range(8)))) for f in files])  # (n t) H W 3
    x = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2).float() / 127.5 - 1, size=(size, size), mode="area")
    with torch.no_grad():
        std = float(movq.eval().encode(x).std())
    return float(f"{1.0 / std:.3g}")


def _base_latent_scale(t2i_ckpt: str | Path) -> float | None:
    """The ``module.latent_scale`` a t2i checkpoint was trained with (None when it records none)."""
    from ff_lightning.systems.keyframes import read_t2i_checkpoint

    config = read_t2i_checkpoint(t2i_ckpt).config or {}
    value = (config.get("module") or {}).get("latent_scale")
    return float(value) if value is not None else None


def compare_temporal_base() -> dict[str, Any]:
    """The image MoVQ and text-to-image base of ``make compare-temporal`` (its prepare chain for the ``blocks`` row,
    with its cache keys: cached files are reused, missing ones trained). Returns ``{"module.movq_ckpt": path,
    "module.t2i_ckpt": path}``."""
    from ff_lightning.ablate import _PREPARES, _lookup, _prepare_steps, _row_config, load_sweep

    sw, sweep_path = load_sweep(EXPERIMENTS / "ablations" / "temporal.yaml")
    row = next(r for r in sw.rows if r.name == "blocks")
    injected: dict[str, Any] = {}
    for step in _prepare_steps(sw, sweep_path):  # image MoVQ, then the t2i base on its latents
        probe = _row_config(sw, sweep_path, row, injected)
        kwargs = {"overrides": step.overrides} if step.overrides else {}
        injected.update(_lookup(_PREPARES, "prepare step", step.name)(probe, step.experiment, False, **kwargs))
    return injected


def build_tiny_models(redo: bool = False, paper_interpolation: bool = False) -> dict[str, Any]:
    """Provide the three tiny stages (see the module docstring); returns the manifest. Stages already built are
    reused unless ``redo``. ``paper_interpolation``: also the interpolation stage trained with the paper's objective
    (:data:`INTERPOLATION_RECIPE_PAPER`) at ``interpolation_paper.ckpt``, for comparison (``make bench-generate``)."""
    from ff_lightning.ablate import _row_config, _row_key, load_sweep
    from ff_lightning.config import load_config
    from ff_lightning.io import atomic_write_json

    out = tiny_dir()
    runs = out / "runs"
    manifest = {} if redo else _manifest()
    seconds: dict[str, float] = dict(manifest.get("seconds") or {})

    sw, sweep_path = load_sweep(EXPERIMENTS / "ablations" / "temporal.yaml")
    row = next(r for r in sw.rows if r.name == "blocks")
    t0 = time.time()
    injected: dict[str, Any]
    if all(manifest.get(k) and Path(manifest[k]).is_file() for k in ("movq_ckpt", "t2i_ckpt")):
        # the base this manifest was built on still exists: keep it (the prepare chain's cache keys hash the whole
        # resolved config, so a new schema field elsewhere would otherwise retrain MoVQ and t2i from scratch)
        injected = {"module.movq_ckpt": manifest["movq_ckpt"], "module.t2i_ckpt": manifest["t2i_ckpt"]}
    else:
        injected = compare_temporal_base()
        seconds["prepare"] = round(time.time() - t0, 1)
    movq, t2i = injected["module.movq_ckpt"], injected["module.t2i_ckpt"]
    if manifest.get("movq_ckpt") not in (None, movq):
        manifest = {}  # built over another MoVQ: rebuild every stage
    common = [f"module.movq_ckpt={movq}", f"module.t2i_ckpt={t2i}", f"run.output_dir={runs}"]

    hashes: dict[str, str] = dict(manifest.get("config_hash") or {})

    def done(stage: str, key: str | None = None) -> bool:
        p = manifest.get(stage)
        return bool(p) and Path(p).is_file() and (key is None or hashes.get(stage) == key)

    if not done("keyframes"):
        t0 = time.time()
        kf_cfg = _row_config(sw, sweep_path, row, injected)
        record = cache_dir() / "ablations" / sw.name / f"{row.name}-{_row_key(sw, kf_cfg, row)}.json"
        src = None
        if record.is_file():
            run_dir = json.loads(record.read_text()).get("run_dir")
            for base in (Path(run_dir or "-"), ROOT / (run_dir or "-")):
                if (base / "checkpoints" / "last.ckpt").is_file():
                    src = base / "checkpoints" / "last.ckpt"
                    break
        if src is None:
            from ff_lightning.config import compose

            log.info("tiny keyframes: training the compare-temporal blocks recipe (%d steps)", kf_cfg.trainer.max_steps)
            kf_cfg = compose(kf_cfg, [f"run.output_dir={runs}", "run.name=keyframes"], source="tiny keyframes")
            src = _fit_last(kf_cfg)
        else:
            log.info("tiny keyframes: the compare-temporal blocks run %s", src)
        manifest["keyframes"] = str(_copy(src, out / "keyframes.ckpt"))
        seconds["keyframes"] = round(time.time() - t0, 1)

    scale = _base_latent_scale(t2i) or latent_scale_of(movq)  # the interpolation UNet starts from the t2i base
    interpolation = EXPERIMENTS / "interpolation" / "base.yaml"
    stages = [
        ("interpolation", interpolation, [*INTERPOLATION_RECIPE, f"module.latent_scale={scale}"]),
        ("decoder", EXPERIMENTS / "decoder" / "base.yaml", DECODER_RECIPE),
    ]  # fmt: skip
    if paper_interpolation:
        stages.append(
            ("interpolation_paper", interpolation, [*INTERPOLATION_RECIPE_PAPER, f"module.latent_scale={scale}"])
        )
    for stage, exp, recipe in stages:
        items = [*recipe, *(c for c in common if stage != "decoder" or "t2i_ckpt" not in c), f"run.name={stage}"]
        cfg = load_config(exp, items)
        key = _recipe_key(exp, items)
        if done(stage, key):
            continue
        t0 = time.time()
        log.info("tiny %s: training %s (%d steps)", stage, exp.name, cfg.trainer.max_steps)
        manifest[stage] = str(_copy(_fit_last(cfg), out / f"{stage}.ckpt"))
        hashes[stage] = key
        seconds[stage] = round(time.time() - t0, 1)

    manifest.update({"movq_ckpt": movq, "t2i_ckpt": t2i, "seconds": seconds, "config_hash": hashes})
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def write_untrained_stages(
    folder: str | Path,
    *,
    seed: int = 0,
    movq_seed: int | None = None,
    num_keyframes: int = 4,
    stages: tuple[str, ...] = STAGES,
) -> dict[str, Path]:
    """Checkpoints of the three stages at their initial weights (no training; seconds): for tests and for notebooks
    on a clean clone (``stages``: which ones). One random tiny image MoVQ (``movq.safetensors``, seeded ``movq_seed``, default ``seed``) is the
    latent space of all three; UNets start from a random text-to-image model (``allow_random_t2i``). Each checkpoint
    is what Lightning writes for the fields the loaders read (``state_dict`` after the system's
    ``on_save_checkpoint``, ``hyper_parameters.config``). Returns stage -> path (and ``movq``)."""
    import lightning as L
    import torch
    from safetensors.torch import save_file

    from ff_lightning import registry
    from ff_lightning.config import load_config
    from ff_lightning.io import atomic_torch_save
    from ff_lightning.train import build_system

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed if movq_seed is None else movq_seed)
    movq = folder / "movq.safetensors"
    save_file({k: v.contiguous() for k, v in registry.build("movq", "movqgan", "tiny").state_dict().items()}, movq)
    common = [f"module.movq_ckpt={movq}", "run.output_dir=" + str(folder / "runs")]
    configs = {
        "keyframes": (EXPERIMENTS / "keyframes" / "base.yaml",
                      ["module.allow_random_t2i=true", "module.sample_steps=2", f"data.num_frames={num_keyframes}",
                       "module.latent_scale=1.0"]),  # untrained: nothing to measure
        "interpolation": (EXPERIMENTS / "interpolation" / "base.yaml",
                          ["module.allow_random_t2i=true", "module.sample_steps=2"]),
        "decoder": (EXPERIMENTS / "decoder" / "base.yaml", []),
    }  # fmt: skip
    paths = {"movq": movq}
    for i, (stage, (exp, items)) in enumerate(configs.items()):
        if stage not in stages:
            continue
        torch.manual_seed(seed * 10 + i + 1)
        module = build_system(load_config(exp, [*items, *common]))
        ckpt: dict[str, Any] = {
            "epoch": 0, "global_step": 0, "pytorch-lightning_version": L.__version__,
            "state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
        }  # fmt: skip
        module.on_save_checkpoint(ckpt)
        paths[stage] = atomic_torch_save(ckpt, folder / f"{stage}.ckpt")
    return paths


def main() -> None:  # pragma: no cover - `make tiny-models`
    import argparse

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("lightning").propagate = False  # Lightning adds its own console handler: print lines once
    p = argparse.ArgumentParser(description="train the tiny text-to-video stages ff generate uses by default")
    p.add_argument("--redo", action="store_true", help="retrain every stage")
    p.add_argument("--paper-interpolation", action="store_true",
                   help="also train the interpolation stage with the paper's objective (interpolation_paper.ckpt)")  # fmt: skip
    args = p.parse_args()
    t0 = time.time()
    manifest = build_tiny_models(redo=args.redo, paper_interpolation=args.paper_interpolation)
    for stage in (*STAGES, "interpolation_paper") if args.paper_interpolation else STAGES:
        print(f"{stage}: {manifest[stage]}")
    print(f"seconds per stage: {manifest['seconds']}; total {time.time() - t0:.0f}s")


if __name__ == "__main__":  # pragma: no cover
    main()
