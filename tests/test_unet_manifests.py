"""Paper-size UNets (on the meta device) against the released state-dict manifests; registry wiring."""

from __future__ import annotations

import pytest
import torch

from ff_lightning.models.keyframes import KEYFRAME_DESIGNS, KEYFRAME_PRESETS
from ff_lightning.models.unet import UNET_PRESETS
from ff_lightning.reference import manifest, manifest_entries
from ff_lightning.registry import build, param_counts, presets, variants

T2I_PARAMS = 3_038_562_820
KEYFRAME_PARAMS = 4_143_739_012
INTERPOLATION_PARAMS = 3_872_572_046

CASES = [
    ("t2i_unet", "kandinsky3", "kandinsky3_unet", T2I_PARAMS),
    ("keyframe_unet", "blocks_conv1d_attn1d", "kandinsky_video_1_0_keyframe_unet", KEYFRAME_PARAMS),
    ("interpolation_unet", "kandinsky_video", "kandinsky_video_1_0_interpolation_unet", INTERPOLATION_PARAMS),
]


def _entries(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize(("component", "variant", "name", "count"), CASES)
def test_paper_preset_matches_manifest(component: str, variant: str, name: str, count: int) -> None:
    model = build(component, variant, "paper", device="meta")
    assert manifest(name)["num_parameters"] == count
    assert param_counts(model)["total"] == count
    ours, released = _entries(model), manifest_entries(name)
    assert len(ours) == len(released)
    first_diff = next(((a, b) for a, b in zip(ours, released) if a != b), None)
    assert first_diff is None, f"first differing entry (ours, released): {first_diff}"


def test_paper_presets_are_the_released_configs() -> None:
    released = manifest("kandinsky3_unet")["config"]
    for key, value in released.items():
        expected = tuple(value) if isinstance(value, list) else value
        assert UNET_PRESETS["paper"][key] == expected, key
    keyframe = manifest("kandinsky_video_1_0_keyframe_unet")["config"]
    assert KEYFRAME_PRESETS["paper"]["num_frames"] == keyframe["num_frames"] == 15
    interp = manifest("kandinsky_video_1_0_interpolation_unet")["config"]
    model = build("interpolation_unet", "kandinsky_video", "paper", device="meta")
    assert (model.config["num_channels"], model.config["out_channels"]) == (interp["num_channels"], 12)


def test_keyframe_paper_counts_freeze_exactly_the_image_model() -> None:
    for kind in KEYFRAME_DESIGNS:
        counts = param_counts(build("keyframe_unet", kind, "paper", device="meta"))
        assert counts["frozen"] == T2I_PARAMS, kind
        assert counts["trainable"] == counts["total"] - T2I_PARAMS > 0, kind


def test_registry_lists_every_variant_and_preset() -> None:
    assert variants("t2i_unet") == ["kandinsky3"]
    assert variants("keyframe_unet") == sorted([*KEYFRAME_DESIGNS, "kv1_1"])  # + Kandinsky Video 1.1 (models/kv11.py)
    # + Kandinsky Video 1.1 (models/kv11_interpolation.py) and the masked-frame baseline
    assert variants("interpolation_unet") == ["kandinsky_video", "kv1_1", "masked_frame"]
    for component in ("t2i_unet", "keyframe_unet", "interpolation_unet"):
        assert presets(component) == ["tiny", "small", "paper"]


@pytest.mark.parametrize("kind", sorted(KEYFRAME_DESIGNS))
def test_small_preset_builds_on_meta(kind: str) -> None:
    model = build("keyframe_unet", kind, "small", device="meta")
    assert all(p.is_meta for p in model.parameters())
