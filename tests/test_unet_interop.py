"""Loading UNet checkpoints from local files: released layouts round-trip, clear errors otherwise."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ff_lightning.interop.unet import (
    CheckpointError,
    load_keyframe_unet,
    load_unet_weights,
    read_null_embedding,
    save_unet_weights,
)
from ff_lightning.models.temporal import AlphaMerge
from ff_lightning.registry import build

REFERENCE = Path(__file__).resolve().parents[1] / "ff_lightning" / "reference"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: on the shared 2-core CI box extra OpenMP threads only oversubscribe (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trained(component: str, variant: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build(component, variant, "tiny")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AlphaMerge):
                m.alpha.fill_(0.25)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # every tensor, zero-initialised ones included, differs by seed
    return model


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(11)
    ctx, mask = torch.randn(4, 3, 32), torch.tensor([[True, True, False]] * 4)
    t = torch.tensor([5, 50, 500, 900])
    with torch.no_grad():
        if model.config.get("interpolation"):
            return model(torch.randn(4, 20, 8, 8), t, ctx, mask, num_temporal_groups=2, skip_frames=3)
        return model(torch.randn(4, 4, 8, 8), t, ctx, mask)  # image rows, or one video of 4 frames (tiny preset)


MODELS = [
    ("t2i_unet", "kandinsky3"),
    ("keyframe_unet", "blocks_conv1d_attn1d"),
    ("interpolation_unet", "kandinsky_video"),
]


@pytest.mark.parametrize(("component", "variant"), MODELS)
def test_released_nested_pt_round_trip(tmp_path: Path, component: str, variant: str) -> None:
    source = _trained(component, variant, seed=1)
    state = source.state_dict()
    if component == "interpolation_unet":
        assert (
            "time_embed_merge" in state
            and "down_samples.0.resnet_attn_blocks.0.0.resnet_blocks.0.temporal_merge" in state
        )
    null = torch.randn(32)
    path = tmp_path / "unet.pt"
    torch.save({"unet": state, "null_embedding": null, "projections": {"0.weight": torch.ones(2, 2)}}, path)
    target = _trained(component, variant, seed=2)
    assert not torch.equal(_outputs(target), _outputs(source))
    load_unet_weights(target, path)
    torch.testing.assert_close(_outputs(target), _outputs(source), rtol=0, atol=0)
    assert torch.equal(read_null_embedding(path), null)


@pytest.mark.parametrize(("component", "variant"), MODELS[1:])
def test_safetensors_and_lightning_layouts(tmp_path: Path, component: str, variant: str) -> None:
    source = _trained(component, variant, seed=1)
    st = save_unet_weights(source, tmp_path / "unet.safetensors")
    target = load_unet_weights(_trained(component, variant, seed=2), st)
    torch.testing.assert_close(_outputs(target), _outputs(source), rtol=0, atol=0)
    lightning = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "state_dict": {f"model.unet.{k}": v for k, v in source.state_dict().items()}}, lightning)
    target = load_unet_weights(_trained(component, variant, seed=3), lightning)
    torch.testing.assert_close(_outputs(target), _outputs(source), rtol=0, atol=0)


def test_load_keyframe_unet_from_file_keeps_the_freezing(tmp_path: Path) -> None:
    source = _trained("keyframe_unet", "blocks_conv1d_attn1d", seed=1)
    path = save_unet_weights(source, tmp_path / "kf.pt")
    model = load_keyframe_unet(path, preset="tiny")
    torch.testing.assert_close(_outputs(model), _outputs(source), rtol=0, atol=0)
    assert not model.in_layer.weight.requires_grad and model.to_temporal_embed[1].weight.requires_grad


def test_missing_file_names_the_file_and_where_to_get_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "kandinsky3.pt"
    with pytest.raises(FileNotFoundError) as err:
        load_unet_weights(build("t2i_unet", "kandinsky3", "tiny"), missing)
    assert str(missing) in str(err.value) and "ai-forever/Kandinsky3.1" in str(err.value)
    with pytest.raises(FileNotFoundError, match="ai-forever/KandinskyVideo"):
        load_unet_weights(build("interpolation_unet", "kandinsky_video", "tiny"), missing)


def test_wrong_keys_and_shapes_are_listed(tmp_path: Path) -> None:
    model = build("t2i_unet", "kandinsky3", "tiny")
    state = dict(model.state_dict())
    state.pop("in_layer.bias")
    state["extra.weight"] = torch.zeros(1)
    state["out_layer.2.weight"] = torch.zeros(12, 16, 3, 3)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_unet_weights(model, path)
    message = str(err.value)
    assert "in_layer.bias" in message and "extra.weight" in message and "out_layer.2.weight" in message
    assert "missing" in message and "unexpected" in message and "shape" in message


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"unet": torch.nn.Linear(2, 2)}, path)  # a pickled module, not a state dict
    with pytest.raises(CheckpointError, match="weights_only"):
        load_unet_weights(build("t2i_unet", "kandinsky3", "tiny"), path)
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(CheckpointError, match="no tensors"):
        load_unet_weights(build("t2i_unet", "kandinsky3", "tiny"), empty)


def _release_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The released key layout, written by hand from the module tree (``named_parameters`` / ``named_buffers``, not
    our ``state_dict``): merge scalars are plain parameters of their block (``...temporal_merge``,
    ``time_embed_merge``), where our modules keep them in an ``AlphaMerge`` child's ``alpha``."""
    out = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        key = re.sub(r"(^|\.)((?:temporal|time_embed)_merge\d?)\.alpha$", r"\1\2", name)
        out[key] = t.detach().clone()
    return out


def test_release_layout_built_by_hand_loads(tmp_path: Path) -> None:
    """A file in the release layout, not written by our save code, loads into the interpolation UNet exactly."""
    manifest = json.loads((REFERENCE / "kandinsky_video_1_0_interpolation_unet.json").read_text())
    released = {k for k, _ in manifest["state_dict"]}
    assert "time_embed_merge" in released  # the layout rule above, as the release has it
    assert any(k.endswith(".resnet_blocks.0.temporal_merge") for k in released)
    source = _trained("interpolation_unet", "kandinsky_video", seed=1)
    state = _release_layout(source)
    merges = [k for k in state if k.endswith("_merge")]
    assert "time_embed_merge" in merges and len(merges) > 4
    assert any(k in released for k in merges if k != "time_embed_merge")  # tiny shares the first blocks' names
    path = tmp_path / "interpolation_unet.pt"
    torch.save({"unet": state, "null_embedding": torch.zeros(32)}, path)
    target = _trained("interpolation_unet", "kandinsky_video", seed=2)
    load_unet_weights(target, path)
    torch.testing.assert_close(_outputs(target), _outputs(source), rtol=0, atol=0)
