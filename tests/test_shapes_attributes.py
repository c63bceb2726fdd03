"""Caption attributes of the bundled captioned shapes and the attribute classifier's plumbing (fast: no training)."""

from __future__ import annotations

import pytest
import torch

from ff_lightning.data.bundled.shapes import COLOURS, DIRECTIONS, RADIUS, SHAPES, ShapeClip, render_clip
from ff_lightning.data.motion_words import MIRROR_SWAP, REVERSE_SWAP
from ff_lightning.evaluation.shapes_classifier import (
    ATTRIBUTES,
    AttributeClassifier,
    _swap_directions,
    attribute_hits,
    caption_attributes,
    predicted_shares,
)


def test_caption_attributes_parse_every_caption_word() -> None:
    clip = ShapeClip(shape="triangle", colour="orange", direction="down", speed="quickly", seed=0)
    got = caption_attributes(clip.caption)
    assert got == {"colour": list(COLOURS).index("orange"), "shape": SHAPES.index("triangle"),
                   "motion": list(DIRECTIONS).index("down")}  # fmt: skip
    with pytest.raises(ValueError, match="not a bundled-shapes caption"):
        caption_attributes("a cat sleeping")


def test_direction_swaps() -> None:
    names = list(DIRECTIONS)
    y = torch.tensor([names.index(d) for d in ("left", "right", "up", "down")])
    flipped = _swap_directions(y, MIRROR_SWAP)
    assert [names[i] for i in flipped] == ["right", "left", "up", "down"]
    reversed_ = _swap_directions(y, REVERSE_SWAP)
    assert [names[i] for i in reversed_] == ["right", "left", "down", "up"]


def test_attribute_hits_compare_predictions_with_the_captions() -> None:
    model = AttributeClassifier(frames=4).eval()
    videos = torch.rand(3, 4, 3, 32, 32) * 2 - 1
    captions = [
        "a red circle moving left slowly",
        "a blue square moving up quickly",
        "a white triangle moving down slowly",
    ]
    logits = model(videos)
    assert {k: tuple(v.shape) for k, v in logits.items()} == {"colour": (3, 7), "shape": (3, 3), "motion": (3, 4)}
    hits = attribute_hits(model, videos, captions)
    for k in ATTRIBUTES:
        want = torch.tensor([caption_attributes(c)[k] for c in captions])
        assert torch.equal(hits[k], (logits[k].argmax(1) == want).double())
    with pytest.raises(ValueError, match="takes 4 frames"):
        model(videos[:, :2])
    shares = predicted_shares(model, videos, "motion")
    assert list(shares) == list(DIRECTIONS) and abs(sum(shares.values()) - 1) < 1e-12
    assert shares == {d: (logits["motion"].argmax(1) == i).double().mean().item() for i, d in enumerate(DIRECTIONS)}


def test_rendered_shape_covers_a_fifth_of_the_frame() -> None:
    # the captioned object must matter to a model's loss: a circle of the radius range covers 13-22% of the frame
    clip = ShapeClip(shape="circle", colour="white", direction="left", speed="slowly", seed=5)
    frames = render_clip(clip, size=64, num_frames=2)
    white = (frames[0].astype(int) >= 140).all(axis=-1).mean()  # shading keeps the circle >= 0.6 * 240; the
    assert RADIUS == (13.0, 17.0)  # background stays below 110 + 12 + grain
    assert 0.12 < white < 0.25


def test_attribute_classifier_trains_under_no_grad(bundled_cache: object) -> None:
    # the keyframes evaluator runs under torch.no_grad and trains the classifier on first use
    from ff_lightning.evaluation.shapes_classifier import train_attribute_classifier

    with torch.no_grad():
        model, acc = train_attribute_classifier({"source": "bundled_shapes", "size": [32, 32]}, 4, 2, epochs=1)
    assert set(acc) == set(ATTRIBUTES) and all(0.0 <= v <= 1.0 for v in acc.values())
    assert not model.training
