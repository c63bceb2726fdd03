"""Loading released-style MoVQ checkpoints: nesting, prefixes, safetensors, strict checks, safe unpickling."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ff_lightning.interop import CheckpointError, load_movqgan, load_video_decoder, load_weights, read_state_dict
from ff_lightning.models.video_decoder import video_decoder_from_image
from ff_lightning.registry import build

REFERENCE = Path(__file__).resolve().parents[1] / "ff_lightning" / "reference"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest and avoids oversubscribing shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class NotATensor:
    """An arbitrary object: torch.load(weights_only=True) must refuse to rebuild it."""


@pytest.fixture(scope="module")
def movq() -> torch.nn.Module:
    torch.manual_seed(0)
    return build("movq", "movqgan", "tiny").eval()


def _frames() -> torch.Tensor:
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1


def _official_style(state: dict[str, torch.Tensor]) -> dict:
    """Lightning-like file: nested under ``state_dict`` with a ``model.`` prefix plus training-only entries."""
    nested = {f"model.{k}": v for k, v in state.items()}
    nested["model.loss.discriminator.main.0.weight"] = torch.zeros(8, 3, 4, 4)
    nested["model.ema_decoder.num_updates"] = torch.tensor(3)
    return {"state_dict": nested, "global_step": 10}


def test_ckpt_round_trip(movq: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "movqgan_tiny.ckpt"
    torch.save(_official_style(movq.state_dict()), path)
    fresh = build("movq", "movqgan", "tiny")
    load_weights(fresh, path)
    x = _frames()
    with torch.no_grad():
        assert torch.equal(fresh(x).sample, movq(x).sample)
        assert torch.equal(fresh.decode(fresh.encode(x)), movq.decode(movq.encode(x)))


def test_safetensors_round_trip(movq: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "movqgan_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in movq.state_dict().items()}, str(path))
    loaded = load_movqgan(path, preset="tiny").eval()
    x = _frames()
    with torch.no_grad():
        assert torch.equal(loaded(x).sample, movq(x).sample)


def test_video_decoder_from_full_movq_file(movq: torch.nn.Module, tmp_path: Path) -> None:
    video = video_decoder_from_image(movq, "conv3x1x1").eval()
    with torch.no_grad():
        video.decoder.mid.block_1.temporal_merge1.alpha.fill_(0.25)
        video.decoder.mid.block_1.temporal_projection1.weight.normal_(std=0.02)
    # a Kandinsky-Video-style MoVQ file: no quantizer, bare temporal_merge keys
    state = {k: v for k, v in video.state_dict().items() if not k.startswith("quantize.")}
    assert "decoder.mid.block_1.temporal_merge1" in state
    path = tmp_path / "movq.pt"
    torch.save(state, path)
    assert load_video_decoder(path, "conv3x1x1", preset="tiny").attn_zq_first_frame  # released forward by default
    decoder = load_video_decoder(path, "conv3x1x1", preset="tiny", attn_zq_first_frame=False).eval()
    lat = torch.randn(4, 4, 4, 4)
    with torch.no_grad():
        assert torch.equal(decoder(video.post_quant_conv(lat), lat, num_frames=4), video.decode(lat, num_frames=4))
    # the whole MoVQ loads when the missing quantizer is allowed
    fresh = video_decoder_from_image(build("movq", "movqgan", "tiny"), "conv3x1x1")
    with pytest.raises(CheckpointError, match="quantize.embedding.weight"):
        load_weights(fresh, path)
    load_weights(fresh, path, missing_ok=("quantize.",))
    assert torch.equal(fresh.decoder.mid.block_1.temporal_merge1.alpha, torch.tensor([0.25]))


def test_merge_keys_are_bare_and_both_spellings_load() -> None:
    decoder = build("decoder", "conv3x1x1", "tiny")
    with torch.no_grad():
        decoder.mid.block_2.temporal_merge2.alpha.fill_(0.5)
    state = decoder.state_dict()
    assert "mid.block_2.temporal_merge2" in state and "mid.block_2.temporal_merge2.alpha" not in state
    assert "mid.block_2.temporal_merge2.alpha" in dict(decoder.named_parameters())
    other = build("decoder", "conv3x1x1", "tiny")
    other.load_state_dict(state)
    assert torch.equal(other.mid.block_2.temporal_merge2.alpha, torch.tensor([0.5]))
    nested = {(k + ".alpha" if k.endswith(("temporal_merge1", "temporal_merge2")) else k): v for k, v in state.items()}
    third = build("decoder", "conv3x1x1", "tiny")
    third.load_state_dict(nested)
    assert torch.equal(third.mid.block_2.temporal_merge2.alpha, torch.tensor([0.5]))


def test_mismatches_are_listed(movq: torch.nn.Module, tmp_path: Path) -> None:
    state = dict(movq.state_dict())
    state["decoder.conv_out.weight"] = torch.zeros(3, 64, 3, 3)  # wrong shape
    del state["encoder.conv_in.bias"]  # missing
    state["decoder.extra.weight"] = torch.zeros(1)  # unexpected
    path = tmp_path / "bad.ckpt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_weights(build("movq", "movqgan", "tiny"), path)
    message = str(info.value)
    for needle in ["missing (1)", "encoder.conv_in.bias", "unexpected (1)", "decoder.extra.weight", "shape mismatch"]:
        assert needle in message
    assert "decoder.conv_out.weight: file (3, 64, 3, 3) vs model (3, 32, 3, 3)" in message


def test_missing_file_names_file_and_source(tmp_path: Path) -> None:
    path = tmp_path / "movqgan_270M.ckpt"
    with pytest.raises(FileNotFoundError) as info:
        load_movqgan(path, preset="tiny")
    assert str(path) in str(info.value) and "ai-forever/MoVQGAN" in str(info.value)
    with pytest.raises(FileNotFoundError, match="KandinskyVideo"):
        load_video_decoder(tmp_path / "movq.pt", preset="tiny")


def test_arbitrary_pickle_is_refused(movq: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": movq.state_dict(), "payload": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="refusing"):
        read_state_dict(path)


def _kandinsky_video_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A Kandinsky Video MoVQ file's layout, written by hand from the module tree (``named_parameters`` /
    ``named_buffers``, not our ``state_dict``): merge scalars bare (``temporal_merge1``), every encoder norm a
    SpatialNorm without latent (``...norm1.norm_layer.weight``), no quantizer."""
    out = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if name.startswith("quantize."):
            continue
        key = re.sub(r"\.(temporal_merge\d)\.alpha$", r".\1", name)
        if key.startswith("encoder.") and re.search(r"\.(norm1|norm2|norm|norm_out)\.(weight|bias)$", key):
            head, _, leaf = key.rpartition(".")
            key = f"{head}.norm_layer.{leaf}"
        out[key] = t.detach().clone()
    return out


def test_kandinsky_video_layout_built_by_hand_loads(movq: torch.nn.Module, tmp_path: Path) -> None:
    """A file in the released video-MoVQ layout, not written by our save code, loads into our video decoder."""
    manifest = json.loads((REFERENCE / "video_movq_decoder_conv3x1x1.json").read_text())
    released = {k for k, _ in manifest["state_dict"]}
    assert "mid.block_1.temporal_merge1" in released  # bare merge scalars, as the release has them
    video = video_decoder_from_image(movq, "conv3x1x1").eval()
    with torch.no_grad():
        for name, p in video.named_parameters():
            if "temporal" in name:  # zero-initialised temporal parameters: give them values to transport
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    state = _kandinsky_video_layout(video)
    assert "decoder.mid.block_1.temporal_merge1" in state and "encoder.norm_out.norm_layer.weight" in state
    assert {k[len("decoder.") :] for k in state if k.startswith("decoder.mid.")} <= released
    path = tmp_path / "video_movq.pt"
    torch.save(state, path)
    decoder = load_video_decoder(path, "conv3x1x1", preset="tiny", attn_zq_first_frame=False).eval()
    fresh = video_decoder_from_image(build("movq", "movqgan", "tiny"), "conv3x1x1")
    load_weights(fresh, path, missing_ok=("quantize.",))
    lat = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = video.decode(lat, num_frames=4)
        assert torch.equal(decoder(video.post_quant_conv(lat), lat, num_frames=4), want)
        assert torch.equal(fresh.eval().decode(lat, num_frames=4), want)
        x = _frames()
        assert torch.equal(fresh.encoder(x), video.encoder(x))  # the renamed encoder norms landed where they belong
