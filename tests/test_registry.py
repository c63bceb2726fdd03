"""Registry: named variants, presets, meta-device builds, the never-redefine rule and errors naming choices."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ff_lightning import registry
from ff_lightning.registry import UnknownChoiceError


def _toy(width: int, depth: int, frozen_first: bool = False) -> nn.Module:
    m = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])
    if frozen_first:
        m[0].requires_grad_(False)
    return m


registry.register_component("test_toy", {"tiny": {"width": 4, "depth": 2}, "paper": {"width": 1024, "depth": 8}})
registry.register_variant("test_toy", "plain", _toy)
registry.register_variant("test_toy", "half_frozen", _toy, frozen_first=True)


def test_build_uses_preset_and_variant_defaults() -> None:
    m = registry.build("test_toy", "half_frozen", "tiny")
    counts = registry.param_counts(m)
    assert counts == {"total": 2 * (16 + 4), "trainable": 20, "frozen": 20}


def test_meta_device_build_allocates_nothing_and_counts_exactly() -> None:
    m = registry.build("test_toy", "plain", "paper", device="meta")
    assert all(p.device.type == "meta" for p in m.parameters())
    assert registry.param_counts(m)["total"] == 8 * (1024 * 1024 + 1024)


def test_overrides_win_over_preset() -> None:
    m = registry.build("test_toy", "plain", "tiny", depth=3)
    assert len(m) == 3


def test_shared_parameters_counted_once() -> None:
    lin = nn.Linear(3, 3)
    m = nn.Sequential(lin, lin)
    assert registry.param_counts(m)["total"] == 12


@pytest.mark.parametrize(
    "call, expect",
    [
        (lambda: registry.build("no_such_component", "x"), "valid choices"),
        (lambda: registry.build("test_toy", "nope"), "half_frozen, plain"),
        (lambda: registry.build("test_toy", "plain", "huge"), "paper, tiny"),
    ],
)
def test_unknown_names_list_valid_choices(call, expect: str) -> None:
    with pytest.raises(UnknownChoiceError, match=expect):
        call()


def test_registered_variant_is_never_redefined() -> None:
    registry.register_variant("test_toy", "plain", _toy)  # identical re-registration is harmless
    with pytest.raises(ValueError, match="new name"):
        registry.register_variant("test_toy", "plain", _toy, depth=5)
    with pytest.raises(ValueError, match="different presets"):
        registry.register_component("test_toy", {"tiny": {"width": 8, "depth": 1}})


def test_builtin_components_are_registered() -> None:
    comps = registry.components()
    for name in ("movq", "decoder"):
        assert name in comps
    assert set(registry.presets("decoder")) >= {"tiny", "paper"}
    assert torch.is_tensor(next(registry.build("decoder", "image", "tiny").parameters()))
