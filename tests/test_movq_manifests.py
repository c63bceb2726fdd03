"""Paper-size MoVQ and video decoders match the released state-dict manifests (built on the meta device)."""

from __future__ import annotations

import pytest
import torch

from ff_lightning.models.movq import MoVQ
from ff_lightning.models.video_decoder import VARIANTS, temporal_parameter_names
from ff_lightning.reference import available_manifests, manifest, manifest_entries
from ff_lightning.registry import build, param_counts, presets, variants

IMAGE_DECODER_PARAMS = 161_118_211
EXPECTED_COUNTS = {
    "image": 161_118_211,
    "conv3x1x1": 203_210_271,
    "conv3x3x3": 539_803_167,
    "conv3x1x1_attn": 220_053_023,
    "conv3x3x3_attn": 556_645_919,
    "resblock": 203_425_283,
    "resblock_attn": 220_268_035,
    "2d_to_3d": 419_461_123,
}
# conv_y / conv_b (1024 x 4 weights + 1024 biases each) of the 4 temporal-attention norms: kept, never used.
UNUSED_ATTN_NORM_PARAMS = 4 * 2 * (1024 * 4 + 1024)


def _entries(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def test_registry_lists_components() -> None:
    assert variants("movq") == ["movqgan"]
    assert sorted(variants("decoder")) == sorted(VARIANTS)
    assert presets("movq") == presets("decoder") == ["tiny", "small", "paper"]
    for name in ["movqgan_270m", "movqgan_270m_decoder", *(f"video_movq_decoder_{v}" for v in VARIANTS)]:
        assert name in available_manifests()


def test_paper_movq_matches_manifest() -> None:
    model = build("movq", "movqgan", "paper", device="meta")
    assert isinstance(model, MoVQ)
    ref = manifest("movqgan_270m")
    assert param_counts(model)["total"] == ref["num_parameters"] == 270_669_103
    assert _entries(model) == manifest_entries("movqgan_270m")  # same keys, shapes and order
    decoder_entries = [(k[len("decoder.") :], s) for k, s in _entries(model) if k.startswith("decoder.")]
    assert decoder_entries == manifest_entries("movqgan_270m_decoder")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_paper_decoder_matches_manifest(variant: str) -> None:
    decoder = build("decoder", variant, "paper", device="meta")
    name = f"video_movq_decoder_{variant}"
    counts = param_counts(decoder)
    assert counts["total"] == manifest(name)["num_parameters"] == EXPECTED_COUNTS[variant]
    assert _entries(decoder) == manifest_entries(name)  # identical keys (no key map), shapes, order
    unused = UNUSED_ATTN_NORM_PARAMS if VARIANTS[variant].attention else 0
    assert counts["trainable"] == counts["total"] - unused  # default policy "decoder"


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "image"])
def test_paper_temporal_policy_counts(variant: str) -> None:
    decoder = build("decoder", variant, "paper", device="meta", policy="temporal")
    counts = param_counts(decoder)
    unused = UNUSED_ATTN_NORM_PARAMS if VARIANTS[variant].attention else 0
    if variant == "2d_to_3d":  # the inflated conv1/conv2 kernels are what trains
        convs = sum(p.numel() for n, p in decoder.named_parameters() if n.split(".")[-2] in ("conv1", "conv2"))
        assert counts["trainable"] == convs
    else:  # exactly the parameters the variant adds to the image decoder
        assert counts["trainable"] == EXPECTED_COUNTS[variant] - IMAGE_DECODER_PARAMS - unused
    added = set(temporal_parameter_names(decoder))
    assert sum(p.numel() for n, p in decoder.named_parameters() if n in added) == counts["trainable"] + unused


def test_temporal_policy_rejects_image_decoder() -> None:
    with pytest.raises(ValueError, match="no"):
        build("decoder", "image", "tiny", policy="temporal")


def test_unknown_decoder_argument_is_an_error() -> None:
    with pytest.raises(TypeError, match="chmult"):
        build("decoder", "image", "tiny", chmult=(1, 2))


def test_small_preset_builds() -> None:
    movq = build("movq", "movqgan", "small", device="meta")
    decoder = build("decoder", "conv3x3x3_attn", "small", device="meta")
    assert 0 < param_counts(movq)["total"] < 270_669_103
    assert movq.decoder.config == decoder.config
