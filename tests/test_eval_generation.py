"""Generators by name, the checkpoint hook, and batched resumable generation into a sample folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ff_lightning.evaluation.generators import (
    GeneratorUnavailable,
    NamedGenerator,
    build_generator,
    from_checkpoint,
    generator_names,
)
from ff_lightning.evaluation.runner import class_balanced_prompts
from ff_lightning.evaluation.samples import SampleStore, SampleStoreMismatch, batch_seed, generate_samples
from ff_lightning.registry import UnknownChoiceError

HINTS = {"num_frames": 4, "size": [16, 16], "fps": 8.0}


def test_test_generators_are_deterministic_videos_in_range() -> None:
    assert {"test_noise", "test_shapes"} <= set(generator_names())
    for name in ("test_noise", "test_shapes"):
        g = build_generator(name, **HINTS)
        prompts = ["a video of circle moving left", "a video of apply eye makeup", "a video of circle moving left"]
        a, b = g(prompts, 3), g(prompts, 3)
        assert a.shape == (3, 4, 3, 16, 16) and a.dtype == torch.float32
        assert a.min() >= -1 and a.max() <= 1 and torch.equal(a, b)
        assert not torch.equal(a[0], a[2]), "the same prompt twice in a batch must give two different videos"
        assert not torch.equal(a, g(prompts, 4))
        assert g.identity["name"] == name and g.identity["params"]["size"] == [16, 16]
    with pytest.raises(UnknownChoiceError, match="valid choices: .*test_noise"):
        build_generator("nope", **HINTS)


def test_checkpoint_generator_refuses_what_is_not_a_keyframe_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="keyframe checkpoint not found"):
        from_checkpoint(tmp_path / "missing.ckpt")
    ckpt = tmp_path / "k.ckpt"
    ckpt.write_bytes(b"weights")
    with pytest.raises(GeneratorUnavailable, match="not a keyframe checkpoint: torch.load\\(weights_only=True\\)"):
        from_checkpoint(ckpt, **HINTS)
    torch.save({"state_dict": {"unet.w": torch.zeros(1)}}, ckpt)  # no config in it nor in a run folder
    with pytest.raises(GeneratorUnavailable, match="has no experiment config"):
        from_checkpoint(ckpt, **HINTS)


def test_class_balanced_prompts_round_robin() -> None:
    ps = class_balanced_prompts(["ApplyEyeMakeup", "YoYo", "Biking"], 8, "a video of {}", seed=0)
    assert sorted(ps.source["per_class"]) == [2, 3, 3] and len(ps.prompts) == 8
    assert ps.prompts[0] == "a video of apply eye makeup" and ps.prompts[1] == "a video of yo yo"
    assert ps.labels[:3] == [0, 1, 2] and len(set(ps.ids)) == 8 and ps.ids[0] == "ApplyEyeMakeup/00000"


class Counting:
    """Wraps a generator, records every prompt it is asked for, and can fail after some calls."""

    def __init__(self, inner: NamedGenerator, fail_after: int | None = None) -> None:
        self.inner, self.fail_after, self.calls, self.prompts = inner, fail_after, 0, []

    def __call__(self, prompts: list[str], seed: int) -> torch.Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.prompts += prompts
        return self.inner(prompts, seed)


def test_generation_resumes_and_only_generates_missing_samples(tmp_path: Path) -> None:
    inner = build_generator("test_noise", **HINTS)
    prompts = [f"prompt {i}" for i in range(10)]
    ids = [f"id{i}" for i in range(10)]
    header = {"protocol": "t_v1", "generation": HINTS}
    store = SampleStore(tmp_path / "samples")

    first = Counting(inner, fail_after=2)  # batches of 3: samples 0..5 written, then interrupted
    with pytest.raises(KeyboardInterrupt):
        generate_samples(
            store,
            NamedGenerator("test_noise", first, inner.identity),
            prompts,
            ids,
            seed=1,
            batch_size=3,
            header=header,
            progress=False,
        )
    assert sorted(store.entries()) == list(range(6))

    second = Counting(inner)
    rep = generate_samples(
        store,
        NamedGenerator("test_noise", second, inner.identity),
        prompts,
        ids,
        seed=1,
        batch_size=3,
        header=header,
        progress=False,
    )
    assert second.prompts == prompts[6:] and second.calls == 2
    assert (rep.reused, rep.generated, rep.calls) == (6, 4, 2)
    resumed = store.load(range(10))

    # the same as one uninterrupted run, and a rerun generates nothing
    fresh = SampleStore(tmp_path / "fresh")
    generate_samples(fresh, inner, prompts, ids, seed=1, batch_size=3, header=header, progress=False)
    assert torch.equal(resumed, fresh.load(range(10)))
    third = Counting(inner)
    rep = generate_samples(
        store,
        NamedGenerator("test_noise", third, inner.identity),
        prompts,
        ids,
        seed=1,
        batch_size=3,
        header=header,
        progress=False,
    )
    assert third.calls == 0 and rep.reused == 10
    # stored as 8-bit: what the generator returned, quantised
    direct = inner(prompts[:3], batch_seed(1, 0))
    assert (resumed[:3] - direct).abs().max() <= 1 / 127.5 + 1e-6

    # another generator or seed in the same folder is refused; --no-resume replaces the samples
    other = build_generator("test_shapes", **HINTS)
    with pytest.raises(SampleStoreMismatch, match="different generator"):
        generate_samples(store, other, prompts, ids, seed=1, batch_size=3, header=header, progress=False)
    with pytest.raises(SampleStoreMismatch, match="--no-resume"):
        generate_samples(store, inner, prompts, ids, seed=2, batch_size=3, header=header, progress=False)
    rep = generate_samples(
        store, other, prompts, ids, seed=1, batch_size=3, header=header, resume=False, progress=False
    )
    assert rep.generated == 10 and rep.reused == 0


def test_generator_output_is_checked(tmp_path: Path) -> None:
    bad = NamedGenerator("bad", lambda prompts, seed: torch.zeros(len(prompts), 4, 16, 16), {"name": "bad"})
    with pytest.raises(ValueError, match="must return \\(B=2, T, 3, H, W\\)"):
        generate_samples(
            SampleStore(tmp_path), bad, ["a", "b"], ["a", "b"], seed=0, batch_size=2, header={}, progress=False
        )
