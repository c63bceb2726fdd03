"""Hand-checked references for the UNet's pieces (written from the formulas, independently of the modules)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from ff_lightning.models.temporal import AlphaMerge
from ff_lightning.models.unet import (
    UNET_PRESETS,
    Attention,
    AttentionPooling,
    Block,
    ConditionalGroupNorm,
    KandinskyUNet,
    SinusoidalPosEmb,
    UNetConditioning,
)
from ff_lightning.models.unet_temporal import (
    TemporalAttentionBlock,
    TemporalAttentionLayer,
    TemporalResNetBlock,
    add_temporal_conv,
)

torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: on the shared 2-core CI box extra OpenMP threads only oversubscribe (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise(module: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Replace every parameter (zero-initialised ones included) by noise, merges by 0.3."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, AlphaMerge):
                m.alpha.fill_(0.3)
        for name, p in module.named_parameters():
            if not name.endswith("alpha"):
                p.normal_(0.0, std)
    return module


# ---- references ------------------------------------------------------------------------------------------------


def ref_attention(attn: Attention, x: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The release's formula: einsum scores * head_dim^-0.5, masked_fill(-max), softmax, einsum."""
    heads = attn.num_heads
    q = rearrange(x @ attn.to_query.weight.T, "n i (h d) -> n h i d", h=heads)
    k = rearrange(ctx @ attn.to_key.weight.T, "n j (h d) -> n h j d", h=heads)
    v = rearrange(ctx @ attn.to_value.weight.T, "n j (h d) -> n h j d", h=heads)
    scores = torch.einsum("nhid,nhjd->nhij", q, k) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], -torch.finfo(scores.dtype).max)
    out = torch.einsum("nhij,nhjd->nhid", scores.softmax(-1), v)
    return rearrange(out, "n h i d -> n i (h d)") @ attn.output_layer.weight.T


def ref_cgn(norm: ConditionalGroupNorm, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    n, c = x.shape[:2]
    groups = norm.norm.num_groups
    xg = x.reshape(n, groups, -1)
    mean, var = xg.mean(-1, keepdim=True), xg.var(-1, unbiased=False, keepdim=True)
    normed = ((xg - mean) / torch.sqrt(var + 1e-5)).reshape(x.shape)
    lin = norm.context_mlp[1]
    params = F.silu(emb) @ lin.weight.T + lin.bias
    scale, shift = params[:, :c, None, None], params[:, c:, None, None]
    return normed * (1 + scale) + shift


def ref_temporal_conv(conv: torch.nn.Conv3d, x: torch.Tensor, t: int) -> torch.Tensor:
    """A Conv3d (kt, 1, 1) along frames: ``out[f] = b + sum_k W[:, :, k] x[f + k - kt//2]`` (zero padding)."""
    kt = conv.kernel_size[0]
    video = rearrange(x, "(b t) c h w -> b t c h w", t=t)
    padded = F.pad(video, (0, 0, 0, 0, 0, 0, kt // 2, kt // 2))
    taps = [torch.einsum("oc,btchw->btohw", conv.weight[:, :, k, 0, 0], padded[:, k : k + t]) for k in range(kt)]
    out = sum(taps) + conv.bias[None, None, :, None, None]
    return rearrange(out, "b t c h w -> (b t) c h w")


def ref_frame_attention(attn: Attention, x: torch.Tensor, t: int) -> torch.Tensor:
    """Attention over frames at every pixel, written with explicit (pixel, head, frame) einsums."""
    heads = attn.num_heads
    video = rearrange(x, "(b t) c h w -> b t h w c", t=t)
    q, k, v = (
        rearrange(video @ lin.weight.T, "b t h w (n d) -> b t h w n d", n=heads)
        for lin in (attn.to_query, attn.to_key, attn.to_value)
    )
    scores = torch.einsum("bihwnd,bjhwnd->bhwnij", q, k) / math.sqrt(q.shape[-1])
    out = torch.einsum("bhwnij,bjhwnd->bihwnd", scores.softmax(-1), v)
    out = rearrange(out, "b t h w n d -> b t h w (n d)") @ attn.output_layer.weight.T
    return rearrange(out, "b t h w c -> (b t) c h w")


# ---- tests -----------------------------------------------------------------------------------------------------


def test_sinusoidal_embedding_formula() -> None:
    emb = SinusoidalPosEmb(8)(torch.tensor([0, 7, 250]))
    half = 4
    for row, x in enumerate((0.0, 7.0, 250.0)):
        freqs = [math.exp(-math.log(10000) * j / (half - 1)) for j in range(half)]
        expected = [math.sin(x * f) for f in freqs] + [math.cos(x * f) for f in freqs]
        torch.testing.assert_close(emb[row], torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_conditional_group_norm_formula_and_zero_init() -> None:
    norm = ConditionalGroupNorm(4, 8, 6)
    x, emb = torch.randn(3, 8, 5, 5) * 3 + 1, torch.randn(3, 6)
    plain = F.group_norm(x, 4, eps=1e-5)
    torch.testing.assert_close(norm(x, emb), plain)  # zero-initialised modulation: a plain GroupNorm
    _randomise(norm)
    torch.testing.assert_close(norm(x, emb), ref_cgn(norm, x, emb), rtol=1e-5, atol=1e-5)


def test_attention_with_mask_matches_release_formula() -> None:
    attn = _randomise(Attention(8, 16, 12, head_dim=4))
    x, ctx = torch.randn(3, 5, 8), torch.randn(3, 7, 12)
    mask = torch.rand(3, 7) > 0.4
    mask[0, 0] = True
    mask[2] = False  # a row with every key masked: the release attends uniformly
    torch.testing.assert_close(attn(x, ctx, mask), ref_attention(attn, x, ctx, mask), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attn(x, ctx), ref_attention(attn, x, ctx, None), rtol=1e-5, atol=1e-5)


def test_attention_pooling_queries_the_plain_mean_token() -> None:
    pool = _randomise(AttentionPooling(16, 12, head_dim=4))
    te, ctx = torch.randn(2, 16), torch.randn(2, 6, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    expected = te + ref_attention(pool.attention, ctx.mean(1, keepdim=True), ctx, mask)[:, 0]
    torch.testing.assert_close(pool(te, ctx, mask), expected, rtol=1e-5, atol=1e-5)


def test_temporal_conv_merge_in_a_resnet_stage() -> None:
    t = 3
    block = Block(8, 8, 6, kernel_size=3, groups=4)
    add_temporal_conv(block, (3, 1, 1))
    x, te = torch.randn(2 * t, 8, 4, 4), torch.randn(2 * t, 6)
    cond = UNetConditioning(te, num_frames=t)
    spatial = block.projection(F.silu(block.group_norm(x, te)))
    torch.testing.assert_close(block(x, cond), spatial)  # conv zero, alpha 0: the image stage
    _randomise(block)
    spatial = block.projection(F.silu(ref_cgn(block.group_norm, x, te)))
    expected = 0.7 * spatial + 0.3 * ref_temporal_conv(block.temporal_projection, spatial, t)
    torch.testing.assert_close(block(x, cond), expected, rtol=1e-4, atol=1e-5)
    assert "temporal_merge" in block.state_dict() and "temporal_merge.alpha" not in block.state_dict()


def test_temporal_resnet_block_formula() -> None:
    t = 4
    block = TemporalResNetBlock(8, 6, groups=2)
    x, te = torch.randn(2 * t, 8, 3, 3), torch.randn(2 * t, 6)
    cond = UNetConditioning(te, num_frames=t)
    assert torch.equal(block(x, cond), x)  # last conv zero-initialised
    _randomise(block)
    out = x
    for norm, _, conv in block.temporal_resnet_blocks:
        out = ref_temporal_conv(conv, F.silu(ref_cgn(norm, out, te)), t)
    torch.testing.assert_close(block(x, cond), x + out, rtol=1e-4, atol=1e-5)


def test_temporal_attention_block_formula_and_conditioning() -> None:
    t = 5
    block = TemporalAttentionBlock(8, 6, groups=2, head_dim=4)
    x, te, fe = torch.randn(2 * t, 8, 3, 3), torch.randn(2 * t, 6), torch.randn(2 * t, 6)
    cond = UNetConditioning(te, num_frames=t, frame_embed=fe)
    assert torch.equal(block(x, cond), x)  # zero attention output and (our init) zero feed-forward output
    _randomise(block)
    h = x + ref_frame_attention(block.temporal_attention, ref_cgn(block.in_norm, x, fe), t)  # frame positions
    ff = block.feed_forward
    hidden = F.silu(F.conv2d(ref_cgn(block.out_norm, h, te), ff[0].weight))  # time
    expected = h + F.conv2d(hidden, ff[2].weight)
    torch.testing.assert_close(block(x, cond), expected, rtol=1e-4, atol=1e-5)


def test_released_ffn_init_is_not_identity() -> None:
    block = TemporalAttentionBlock(8, 6, groups=2, head_dim=4, zero_init_ffn=False)
    x, te = torch.randn(4, 8, 3, 3), torch.randn(4, 6)
    cond = UNetConditioning(te, num_frames=2, frame_embed=te)
    assert not torch.allclose(block(x, cond), x)  # why our default zeroes feed_forward.2


def test_temporal_attention_layer_formula() -> None:
    t = 3
    layer = _randomise(TemporalAttentionLayer(8, 6, groups=2, head_dim=4))
    x, fe = torch.randn(2 * t, 8, 2, 2), torch.randn(2 * t, 6)
    cond = UNetConditioning(torch.zeros(2 * t, 6), num_frames=t, frame_embed=fe)
    expected = x + ref_frame_attention(layer.attention, ref_cgn(layer.norm, x, fe), t)
    torch.testing.assert_close(layer(x, cond), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_blocks", [(1, 1), (2, 3)])
def test_image_unet_rows_are_independent_and_shapes_follow_config(num_blocks: tuple[int, int]) -> None:
    unet = _randomise(KandinskyUNet(**{**UNET_PRESETS["tiny"], "num_blocks": num_blocks}), std=0.1)
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 999])
    ctx, mask = torch.randn(3, 4, 32), torch.ones(3, 4, dtype=torch.bool)
    y = unet(x, t, ctx, mask)
    assert y.shape == (3, 4, 8, 8)
    x2 = x.clone()
    x2[0] += 1.0
    y2 = unet(x2, t, ctx, mask)
    assert not torch.allclose(y2[0], y[0])
    torch.testing.assert_close(y2[1:], y[1:])
    with pytest.raises(ValueError, match="text context"):
        unet(x, t, None)
