"""The UNet speed paths (issue 17 item 3) against the straightforward formulas they replace: same outputs and
gradients within 1e-5."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import nn

from ff_lightning.models.temporal import conv3d_frames, fold_frames, unfold_frames
from ff_lightning.models.unet import ConditionalGroupNorm


def _old_conditional_group_norm(m: ConditionalGroupNorm, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    scale, shift = rearrange(m.context_mlp(emb), "n (two c) -> two n c 1 1", two=2)
    return m.norm(x) * (scale + 1.0) + shift


def _assert_same_with_grads(got: torch.Tensor, ref: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    """``got`` equals ``ref`` and so do the gradients of a random projection of each w.r.t. ``inputs`` (1e-5)."""
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(ref)
    g_got = torch.autograd.grad((got * w).sum(), inputs)
    g_ref = torch.autograd.grad((ref * w).sum(), inputs)
    for a, b in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(6, 32, 8, 8), (3, 16, 4, 5), (1, 8, 1, 1)])
def test_conditional_group_norm_fused_matches_formula(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    n, c = shape[:2]
    m = ConditionalGroupNorm(4, c, 24)
    nn.init.normal_(m.context_mlp[1].weight, std=0.5)  # not the zero init: scale and shift matter
    nn.init.normal_(m.context_mlp[1].bias, std=0.5)
    x = (torch.randn(shape) * 3 + 1).requires_grad_()
    emb = torch.randn(n, 24, requires_grad=True)
    got = m(x, emb)
    ref = _old_conditional_group_norm(m, x, emb)
    _assert_same_with_grads(got, ref, [x, emb, *m.parameters()])


def test_conditional_group_norm_broadcast_and_empty() -> None:
    torch.manual_seed(0)
    m = ConditionalGroupNorm(2, 8, 6)
    nn.init.normal_(m.context_mlp[1].weight)
    x, emb = torch.randn(3, 8, 4, 4), torch.randn(1, 6)  # one conditioning row for every row: the plain formula
    torch.testing.assert_close(m(x, emb), _old_conditional_group_norm(m, x, emb), atol=1e-6, rtol=1e-6)
    assert m(torch.randn(0, 8, 4, 4), torch.randn(0, 6)).shape == (0, 8, 4, 4)


@pytest.mark.parametrize("kernel", [(3, 1, 1), (5, 1, 1)])
@pytest.mark.parametrize("videos", [2, 3])
def test_temporal_only_conv3d_as_conv2d_with_grad(kernel: tuple[int, int, int], videos: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(6, 5, kernel, padding=(kernel[0] // 2, 0, 0))
    x = torch.randn(videos * 4, 6, 3, 5, requires_grad=True)
    ref = fold_frames(conv(unfold_frames(x, 4)))
    got = conv3d_frames(conv, x, 4)
    _assert_same_with_grads(got, ref, [x, *conv.parameters()])


@pytest.mark.parametrize(("cin", "cout", "bias"), [(64, 32, True), (32, 64, False), (128, 256, True), (300, 200, True)])
def test_conv1x1_as_matmul_matches_conv_with_grad(cin: int, cout: int, bias: bool) -> None:
    from ff_lightning.models.unet import conv1x1

    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, 1, bias=bias)  # 300 x 200 weights: above the matmul limit, the conv itself
    x = torch.randn(5, cin, 6, 7, requires_grad=True)
    got, ref = conv1x1(conv, x), conv(x)
    _assert_same_with_grads(got, ref, [x, *conv.parameters()])
    assert conv1x1(conv, torch.randn(0, cin, 2, 2)).shape == (0, cout, 2, 2)
    conv3 = nn.Conv2d(cin, cout, 3, padding=1)  # not 1x1: the conv
    torch.testing.assert_close(conv1x1(conv3, x), conv3(x))


@pytest.mark.parametrize("kind", ["layers", "blocks_conv1d_attn1d"])
def test_keyframe_unet_step_matches_the_plain_paths(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole keyframe UNet (every weight random, so the zero-initialised parts count): output and gradients with
    the fast paths equal those with the plain formulas (ConditionalGroupNorm as norm * (1 + scale) + shift, 1x1
    convs as convs, temporal-only Conv3d as Conv3d)."""
    import ff_lightning.models.temporal as temporal
    import ff_lightning.models.unet as unet
    from ff_lightning.registry import build

    torch.manual_seed(0)
    model = build("keyframe_unet", kind, "tiny").train()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)  # also the zero-initialised convs, merges and norm MLPs
    cfg = model.config
    frames, videos = 4, 2
    x = torch.randn(videos * frames, cfg["num_channels"], 8, 8)
    time = torch.tensor([10.0, 700.0])
    context = torch.randn(videos, 5, cfg["context_dim"])
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    params = [p for p in model.parameters() if p.requires_grad]

    def run() -> tuple[torch.Tensor, ...]:
        xg = x.clone().requires_grad_()
        out = model(xg, time, context, mask, num_frames=frames)
        return (out, *torch.autograd.grad(out.square().mean(), [xg, *params]))

    fast = run()
    monkeypatch.setattr(unet.ConditionalGroupNorm, "forward", _old_conditional_group_norm)
    monkeypatch.setattr(temporal, "POINTWISE_MATMUL_MAX_WEIGHTS", 0)

    def plain_conv3d_frames(conv, x, num_frames, piece_frames=None):  # noqa: ANN001, ANN202
        if conv.kernel_size[1:] == (1, 1) and conv.kernel_size[0] > 1:
            return fold_frames(conv(unfold_frames(x, num_frames)))
        return original(conv, x, num_frames, piece_frames)

    original = temporal.conv3d_frames
    import ff_lightning.models.unet_temporal as unet_temporal

    for mod in (unet, unet_temporal):
        monkeypatch.setattr(mod, "conv3d_frames", plain_conv3d_frames)
    plain = run()
    assert len(fast) == len(plain) > 2
    assert any(not torch.equal(a, b) for a, b in zip(fast, plain, strict=True))  # the plain paths did run
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fused_adamw_in_the_diffusion_systems_matches_the_loop() -> None:
    from omegaconf import OmegaConf

    from ff_lightning.systems.frozen_movq import FrozenMoVQDiffusionSystem

    class Tiny(FrozenMoVQDiffusionSystem):
        def __init__(self) -> None:
            super().__init__()
            self.cfg = OmegaConf.create(
                {"optim": {"lr": 1e-2, "betas": [0.9, 0.99], "weight_decay": 0.05, "warmup_steps": 0, "ema_decay": 0}}
            )
            self.movq = nn.Identity()
            self.ema = None
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(6, 5))

    torch.manual_seed(0)
    system = Tiny()
    opt = system.configure_optimizers()
    assert opt.defaults["fused"] is True  # float CPU parameters, no trainer (or a full-precision one)
    params = list(system.parameters())
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    ref = torch.optim.AdamW(ref_params, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.05, foreach=False)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in params]
        for p, q, g in zip(params, ref_params, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for p, q in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), atol=1e-5, rtol=1e-5)

    class Mixed:  # Lightning's mixed precision refuses clipping with a self-unscaling (fused) optimizer: the loop
        precision = "bf16-mixed"

    system._trainer = Mixed()  # type: ignore[assignment]
    assert system._fused_adamw(params) is False
