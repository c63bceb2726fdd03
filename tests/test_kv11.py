"""Kandinsky Video 1.1 keyframe UNet (keyframe_unet/kv1_1): paper-size layout implied by the release code, the
conversion starting as the image model, and the 1.1 conditioning (image mode, first frame, motion score, noise level)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ff_lightning.models.kv11 import KV11TemporalResNetBlock, kv11_keyframe_unet_from_t2i
from ff_lightning.models.unet import UNetConditioning
from ff_lightning.models.unet_temporal import TemporalResNetBlock
from ff_lightning.registry import build, param_counts

REFERENCE = Path(__file__).resolve().parents[1] / "ff_lightning" / "reference"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_paper_layout_is_the_1_0_layout_plus_the_1_1_parts() -> None:
    """What the 1.1 release code implies at the 1.0 config: 1.0's keys with the temporal attention norms renamed
    (``temporal_norm`` / ``ff_norm``), a 9-channel ``in_layer``, ``image_in_layer`` and two sinusoidal MLPs."""
    manifest = json.loads((REFERENCE / "kandinsky_video_1_0_keyframe_unet.json").read_text())
    kv10 = {k: tuple(s) for k, s in manifest["state_dict"]}
    expected = {k.replace("temporal_attention_block.in_norm.", "temporal_attention_block.temporal_norm.")
                .replace("temporal_attention_block.out_norm.", "temporal_attention_block.ff_norm."): s
                for k, s in kv10.items()}  # fmt: skip
    expected["in_layer.weight"] = (192, 9, 3, 3)
    expected["image_in_layer.weight"], expected["image_in_layer.bias"] = (192, 9, 3, 3), (192,)
    for mlp in ("temporal_noise_aug_time_encoding", "temporal_motion_score_encoding"):
        expected.update({f"{mlp}.1.weight": (1536, 192), f"{mlp}.1.bias": (1536,),
                         f"{mlp}.3.weight": (1536, 1536), f"{mlp}.3.bias": (1536,)})  # fmt: skip
    model = build("keyframe_unet", "kv1_1", "paper", device="meta")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected
    # 4.149B: the release README's "Latent Diffusion U-Net3D - 4.15B" (1.0: 4,143,739,012)
    assert sum(p.numel() for p in model.parameters()) == 4_149_077_956
    shipped = json.loads((REFERENCE / "kandinsky_video_1_1_keyframe_unet.json").read_text())
    assert {k: tuple(s) for k, s in shipped["state_dict"]} == ours
    assert shipped["num_parameters"] == 4_149_077_956 and shipped["config"]["num_channels"] == 9
    assert model.num_frames == 12 and model.frame_stride == 1
    # conversion freezes the image model except its input conv (re-shaped to 9 channels): 3,038,562,820 - 7,104
    assert param_counts(model)["frozen"] == 3_038_555_716


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    image = build("t2i_unet", "kandinsky3", "tiny").eval()
    return image, kv11_keyframe_unet_from_t2i(image, num_frames=4).eval()


def _randomise_added(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.added_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_conversion_starts_as_the_image_model_in_both_modes() -> None:
    image, video = _tiny()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, 16, 16, generator=g)
    t, ctx = torch.tensor([10, 700]), torch.randn(2, 5, 32, generator=g)
    first = torch.randn(2, 4, 16, 16, generator=g)
    with torch.no_grad():
        ref = image(x, t.repeat_interleave(4), ctx.repeat_interleave(4, 0))
        out = video(x, t, ctx, first_frame=first, noise_level=20, motion_score=torch.tensor([1, 100]))
        assert torch.equal(out, ref)
        assert torch.equal(video.forward_image(x[:2], t, ctx), image(x[:2], t, ctx))
    trainable = {n for n, p in video.named_parameters() if p.requires_grad}
    assert {"in_layer.weight", "image_in_layer.weight", "temporal_motion_score_encoding.3.weight",
            "temporal_noise_aug_time_encoding.1.weight", "to_temporal_embed.1.weight"} <= trainable  # fmt: skip
    assert "out_layer.2.weight" not in trainable and "down_samples.0.resnet_attn_blocks.0.0.resnet_blocks.0." \
        "projection.weight" not in trainable  # fmt: skip


def test_1_1_conditioning_enters_where_the_release_puts_it() -> None:
    image, video = _tiny()
    _randomise_added(video, seed=3)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 4, 16, 16, generator=g)
    t, ctx = torch.tensor([10, 700]), torch.randn(2, 5, 32, generator=g)
    first = torch.randn(2, 4, 16, 16, generator=g)
    with torch.no_grad():
        base = video(x, t, ctx, first_frame=first, noise_level=20, motion_score=10)
        # each conditioning input changes the video output
        assert not torch.allclose(base, video(x, t, ctx, first_frame=first, noise_level=20, motion_score=50))
        assert not torch.allclose(base, video(x, t, ctx, first_frame=first, noise_level=0, motion_score=10))
        assert not torch.allclose(base, video(x, t, ctx, first_frame=first, noise_level=20))  # None: left out
        assert not torch.allclose(base, video(x, t, ctx, noise_level=20, motion_score=10))
        # the release's packed call: [noisy | first frame on frame 0 | mask], positions 0..t-1 per row
        packed = torch.cat([x, torch.zeros_like(x), torch.zeros_like(x[:, :1])], dim=1)
        packed[0::4, 4:8], packed[0::4, 8] = first, 1.0
        official = video.forward_official(packed, t.repeat_interleave(4), ctx.repeat_interleave(4, 0), None,
                                          torch.arange(4).repeat(2).float(), 4, torch.full((8,), 20),
                                          torch.full((8,), 10))  # fmt: skip
        assert torch.allclose(official, base, atol=1e-5)
        # image mode: image_in_layer, no temporal part at all (equals the spatial UNet behind image_in_layer)
        image.in_layer.weight.copy_(video.image_in_layer.weight[:, :4])
        image.in_layer.bias.copy_(video.image_in_layer.bias)
        assert torch.allclose(video.forward_image(x[:2], t, ctx), image(x[:2], t, ctx), atol=1e-5)


def test_temporal_resnet_blocks_see_time_plus_temporal_embedding() -> None:
    torch.manual_seed(0)
    block = KV11TemporalResNetBlock(16, 32, 8)
    plain = TemporalResNetBlock(16, 32, 8)
    plain.load_state_dict(block.state_dict())
    _randomise = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in (*block.parameters(),):
            p.copy_(torch.randn(p.shape, generator=_randomise) * 0.3)
        plain.load_state_dict(block.state_dict())
        x, time, frame = torch.randn(6, 16, 4, 4), torch.randn(6, 32), torch.randn(6, 32)
        out = block(x, UNetConditioning(time, None, None, num_frames=3, frame_embed=frame))
        assert torch.allclose(out, plain(x, UNetConditioning(time + frame, None, None, num_frames=3)))
        assert not torch.allclose(out, plain(x, UNetConditioning(time, None, None, num_frames=3)))
        assert torch.equal(block(x, UNetConditioning(time, None, None)), x)  # image mode: skipped
