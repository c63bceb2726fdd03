"""MSR-VTT CLIPSIM benchmark (paper Table 1), protocol ``msrvtt_clipsim_v1``.

Prompts: the first caption (lowest ``sen_id``) of every MSR-VTT test video (``video7010`` .. ``video9999``, or the
``split`` field of ``MSRVTT_data.json``), one generated video per caption, in video-number order; a protocol asking
for fewer samples than there are test videos takes an evenly spread subset. Only the annotation file is read (no
real video is needed for CLIPSIM). Each sample's id is its video id, so runs pair up in ``ff eval compare``.
"""

from __future__ import annotations

from pathlib import Path

from ff_lightning.evaluation.generators import NamedGenerator
from ff_lightning.evaluation.protocol import LoadedProtocol, load_protocol
from ff_lightning.evaluation.runner import PromptSet, RunOptions, RunOutput, make_generator, run_benchmark

__all__ = ["OBTAIN_MSRVTT", "evaluate_msrvtt", "msrvtt_prompts"]

#: where the annotation file comes from (never downloaded by ff_lightning)
OBTAIN_MSRVTT = (
    "it is not shipped and never downloaded here; the copy most text-video retrieval code uses is inside "
    "msrvtt_data.zip of the CLIP4Clip release v0.0, https://github.com/ArrowLuo/CLIP4Clip/releases; the official "
    "page was http://ms-multimedia-challenge.com/2017/dataset"
)


def msrvtt_prompts(loaded: LoadedProtocol, data_root: str | Path | None) -> PromptSet:
    """One caption per test video (see the module docstring)."""
    from ff_lightning.data.base import ClipOptions, subsample
    from ff_lightning.data.msrvtt import MSRVTTDataset

    p = loaded.protocol
    if data_root is None or not (Path(data_root) / "MSRVTT_data.json").is_file():
        where = "no --data-root given" if data_root is None else f"{Path(data_root) / 'MSRVTT_data.json'} not found"
        raise FileNotFoundError(
            f"MSR-VTT captions missing ({where}): pass --data-root MSRVTT_ROOT, the folder holding MSRVTT_data.json "
            f"(the annotation file of the MSR-VTT release, Xu et al. CVPR 2016, with 'videos' and 'sentences'; "
            f"{OBTAIN_MSRVTT}). Only the captions are read; no MSR-VTT video is needed for CLIPSIM."
        )
    ds = MSRVTTDataset(data_root, p.prompts.split, ClipOptions())
    records = [r for r in ds.records if r.captions or r.caption]
    available = len(records)
    if p.num_samples > available:
        raise ValueError(
            f"protocol {p.full_name} asks for {p.num_samples} captions but {Path(data_root) / 'MSRVTT_data.json'} "
            f"lists {available} captioned {p.prompts.split} videos (override num_samples for a subset)"
        )
    records = subsample(records, p.num_samples)
    prompts = [(r.captions[0] if r.captions else r.caption) for r in records]
    ids = [r.key for r in records]
    return PromptSet(
        prompts,
        ids,
        [-1] * len(ids),
        {
            "source": "msrvtt_captions",
            "annotations": str((Path(data_root) / "MSRVTT_data.json").resolve()),
            "split": p.prompts.split,
            "caption": p.prompts.caption,
            "videos_available": available,
            "subset": "all" if len(records) == available else "evenly spread subset",
        },
    )


def evaluate_msrvtt(
    generator: str | NamedGenerator | None = None,
    *,
    checkpoint: str | Path | None = None,
    protocol: str | Path | None = None,
    overrides: list[str] | None = None,
    options: RunOptions | None = None,
) -> RunOutput:
    """Run the MSR-VTT protocol (default ``experiments/eval/msrvtt_clipsim_v1.yaml``); returns the written result."""
    opts = options or RunOptions()
    loaded = load_protocol(protocol, overrides or [], benchmark="msrvtt")
    prompts = msrvtt_prompts(loaded, opts.data_root)  # data problems show before a checkpoint is loaded
    gen = generator if isinstance(generator, NamedGenerator) else make_generator(loaded, generator, checkpoint, opts)
    return run_benchmark(loaded, gen, prompts, opts)
