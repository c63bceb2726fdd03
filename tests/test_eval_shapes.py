"""The in-project bundled-shapes classifier: shapes, label swaps for its augmentations, file round trip."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ff_lightning.evaluation.shapes_classifier import (
    ShapesClassifier,
    _swap,
    load_shapes_classifier,
    preprocess_shapes,
    real_accuracy_of,
)


def test_classifier_shapes_and_round_trip(tmp_path: Path) -> None:
    x = preprocess_shapes(torch.rand(2, 16, 3, 64, 64) * 2 - 1)
    assert x.shape == (2, 3, 8, 32, 32)
    model = ShapesClassifier(12).eval()
    assert model(x).shape == (2, 12)
    path = tmp_path / "c.safetensors"
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"real_test_accuracy": "0.9"}
    )
    loaded = load_shapes_classifier(path)
    torch.testing.assert_close(loaded(x), model(x))
    assert real_accuracy_of(path) == 0.9


def test_augmentation_label_swaps() -> None:
    classes = ["CircleMovingLeft", "CircleMovingRight", "CircleMovingUp", "CircleMovingDown"]
    assert _swap(classes, (("Left", "Right"),)).tolist() == [1, 0, 2, 3]
    assert _swap(classes, (("Left", "Right"), ("Up", "Down"))).tolist() == [1, 0, 3, 2]
