"""Hand-written references (explicit loops, plain functional ops) for the MoVQ blocks and the temporal layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ff_lightning.models.layers import AttnBlock, ResnetBlock, SpatialNorm, TemporalAttnBlock, TemporalResnetBlock
from ff_lightning.models.movq import VectorQuantizer

B, T, C, Z, H, W, G = 2, 3, 8, 4, 4, 4, 2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest and avoids oversubscribing shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Every parameter random (zero-initialised temporal parts included), merges set away from 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("alpha"):
                p.fill_(0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def _ref_spatial_norm(norm: SpatialNorm, x: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
    gn = norm.norm_layer
    h = F.group_norm(x, gn.num_groups, gn.weight, gn.bias, eps=1e-6)
    if zq is None:
        return h
    zq = F.interpolate(zq, size=x.shape[-2:], mode="nearest")
    return h * F.conv2d(zq, norm.conv_y.weight, norm.conv_y.bias) + F.conv2d(zq, norm.conv_b.weight, norm.conv_b.bias)


def _ref_temporal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, t: int) -> torch.Tensor:
    """Conv3d over time by explicit loops: frame i sums the 2D convs of frames i-1, i, i+1 (zeros outside)."""
    kt = weight.shape[2]
    frames = x.reshape(-1, t, *x.shape[1:])
    out = torch.zeros(frames.shape[0], t, weight.shape[0], *x.shape[2:])
    for b in range(frames.shape[0]):
        for i in range(t):
            acc = bias[:, None, None].clone()
            for k in range(kt):
                j = i + k - kt // 2
                if 0 <= j < t:
                    acc = acc + F.conv2d(frames[b, j][None], weight[:, :, k], padding=weight.shape[-1] // 2)[0]
            out[b, i] = acc
    return out.reshape(-1, *out.shape[2:])


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B * T, C, H, W, generator=gen), torch.randn(B * T, Z, H // 2, W // 2, generator=gen)


def test_spatial_norm_reference() -> None:
    norm = SpatialNorm(C, Z, G)
    _randomize(norm)
    x, zq = _inputs()
    torch.testing.assert_close(norm(x, zq), _ref_spatial_norm(norm, x, zq))
    torch.testing.assert_close(norm(x), F.group_norm(x, G, norm.norm_layer.weight, norm.norm_layer.bias, eps=1e-6))


def test_resnet_block_temporal_conv_merge_reference() -> None:
    """h = (1 - a) * h + a * conv3d(h) after conv1 and conv2, a learned scalar per merge."""
    for kernel in [(3, 1, 1), (3, 3, 3)]:
        block = ResnetBlock(C, C + 4, zq_channels=Z, num_groups=G, temporal_kernel=kernel)
        _randomize(block)
        with torch.no_grad():
            block.temporal_merge2.alpha.fill_(0.7)
        x, zq = _inputs()
        h = F.conv2d(F.silu(_ref_spatial_norm(block.norm1, x, zq)), block.conv1.weight, block.conv1.bias, padding=1)
        p1 = block.temporal_projection1
        h = 0.7 * h + 0.3 * _ref_temporal_conv(h, p1.weight, p1.bias, T)
        h = F.silu(_ref_spatial_norm(block.norm2, h, zq))
        h = F.conv2d(h, block.conv2.weight, block.conv2.bias, padding=1)
        p2 = block.temporal_projection2
        h = 0.3 * h + 0.7 * _ref_temporal_conv(h, p2.weight, p2.bias, T)
        ref = F.conv2d(x, block.nin_shortcut.weight, block.nin_shortcut.bias) + h
        torch.testing.assert_close(block(x, zq, num_frames=T), ref, atol=1e-5, rtol=1e-5)


def test_resnet_block_2d_to_3d_reference() -> None:
    """conv1/conv2 are 3x3x3 convs over the frames of each video, zero padded in time."""
    block = ResnetBlock(C, C, zq_channels=Z, num_groups=G, video_convs=True)
    _randomize(block)
    x, zq = _inputs()
    h = F.silu(_ref_spatial_norm(block.norm1, x, zq))
    h = _ref_temporal_conv(h, block.conv1.weight, block.conv1.bias, T)
    h = F.silu(_ref_spatial_norm(block.norm2, h, zq))
    h = _ref_temporal_conv(h, block.conv2.weight, block.conv2.bias, T)
    torch.testing.assert_close(block(x, zq, num_frames=T), x + h, atol=1e-5, rtol=1e-5)


def test_temporal_resnet_block_reference() -> None:
    block = TemporalResnetBlock(C, Z, G)
    _randomize(block)
    x, zq = _inputs()
    h = F.silu(_ref_spatial_norm(block.norm1, x, zq))
    h = _ref_temporal_conv(h, block.conv1.weight, block.conv1.bias, T)
    h = F.silu(_ref_spatial_norm(block.norm2, h, zq))
    h = _ref_temporal_conv(h, block.conv2.weight, block.conv2.bias, T)
    torch.testing.assert_close(block(x, zq, num_frames=T), x + h, atol=1e-5, rtol=1e-5)


def _conv1x1(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    return torch.einsum("oc,nchw->nohw", conv.weight[:, :, 0, 0], x) + conv.bias[None, :, None, None]


def test_temporal_attention_reference() -> None:
    """Softmax attention over the t frames at every pixel, scale c^-0.5, norm without zq, residual."""
    block = TemporalAttnBlock(C, Z, G)
    _randomize(block)
    x, _ = _inputs()
    h = F.group_norm(x, G, block.norm.norm_layer.weight, block.norm.norm_layer.bias, eps=1e-6)
    q, k, v = (_conv1x1(h, conv).reshape(B, T, C, H, W) for conv in (block.q, block.k, block.v))
    out = torch.zeros(B, T, C, H, W)
    for b in range(B):
        for y in range(H):
            for xx in range(W):
                for i in range(T):
                    scores = torch.stack([q[b, i, :, y, xx] @ k[b, j, :, y, xx] for j in range(T)]) * C**-0.5
                    weights = torch.softmax(scores, dim=0)
                    out[b, i, :, y, xx] = sum(weights[j] * v[b, j, :, y, xx] for j in range(T))
    ref = x + _conv1x1(out.reshape(B * T, C, H, W), block.proj_out)
    torch.testing.assert_close(block(x, num_frames=T), ref, atol=1e-5, rtol=1e-5)
    # zq never enters: the norm's conv_y / conv_b are unused
    assert {id(p) for p in block.unused_parameters()} == {
        id(p) for p in [*block.norm.conv_y.parameters(), *block.norm.conv_b.parameters()]
    }


def test_spatial_attention_reference() -> None:
    block = AttnBlock(C, Z, G)
    _randomize(block)
    x, zq = _inputs()
    h = _ref_spatial_norm(block.norm, x, zq)
    q, k, v = (_conv1x1(h, conv).flatten(2) for conv in (block.q, block.k, block.v))  # n c (h w)
    weights = torch.softmax(torch.einsum("nci,ncj->nij", q, k) * C**-0.5, dim=-1)
    out = torch.einsum("nij,ncj->nci", weights, v).reshape(B * T, C, H, W)
    torch.testing.assert_close(block(x, zq), x + _conv1x1(out, block.proj_out), atol=1e-5, rtol=1e-5)


def test_new_temporal_blocks_are_identities() -> None:
    x, zq = _inputs()
    assert torch.equal(TemporalAttnBlock(C, Z, G)(x, num_frames=T), x)
    assert torch.equal(TemporalResnetBlock(C, Z, G)(x, zq, num_frames=T), x)


def test_vector_quantizer_nearest_codes_and_straight_through() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(n_embed=64, embed_dim=4, beta=0.25)
    with torch.no_grad():
        vq.embedding.weight.normal_()
    z = torch.randn(3, 4, 5, 6, requires_grad=True)
    z_q, loss, indices = vq(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    expected = torch.cdist(flat, vq.embedding.weight).argmin(1).reshape(3, 5, 6)
    assert indices.shape == (3, 5, 6) and indices.dtype == torch.int64
    assert torch.equal(indices, expected)
    codes = vq.embedding.weight[expected].permute(0, 3, 1, 2)
    torch.testing.assert_close(z_q, codes)
    mse = F.mse_loss(z.detach(), codes.detach())
    torch.testing.assert_close(loss, mse * 1.25)  # commitment (1) + beta * codebook, equal in value
    upstream = torch.randn_like(z_q)
    (z_q * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)  # straight-through: identity gradient to z
    assert vq.embedding.weight.grad is None  # the forward value carries no gradient to the codes...
    z2 = torch.randn(3, 4, 5, 6, requires_grad=True)
    vq(z2)[1].backward()
    assert vq.embedding.weight.grad is not None and vq.embedding.weight.grad.abs().sum() > 0  # ...the loss does
    grad_expected = 2 * (z2.detach() - vq.lookup(vq.nearest(z2.detach()))) / z2.numel()
    torch.testing.assert_close(z2.grad, grad_expected)  # commitment weight 1 (legacy form)
