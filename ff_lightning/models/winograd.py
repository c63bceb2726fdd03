"""Winograd F(2x2, 3x3) convolution for inference: "same" 3x3 convs, per frame or with a temporal kernel of 3.

A 3x3 convolution computes each 2x2 block of outputs from a 4x4 input tile. Winograd's minimal filtering algorithm
F(2x2, 3x3) (Lavin & Gray, 2016) transforms every tile (``B^T d B``) and every kernel (``G g G^T``) into a 4x4
domain where the convolution becomes 16 independent matrix products over channels, then maps the products back
(``A^T m A``): 16 multiplies per output block and channel pair instead of 36 (2.25x fewer). A temporal tap is one more
product in the same domain (the tiles of the neighbouring frame), so a 3x3x3 Conv3d over the frames of a video costs
3 x 16 instead of 3 x 36 multiplies per block, each frame's tiles transformed once for all three taps (once per
piece of frames that reads it).

Only the order of float summation differs from a direct convolution (the transforms use the exact constants 0, 1,
+-1/2); ``tests/test_winograd.py`` compares against ``F.conv2d`` / ``nn.Conv3d``. Forward only: for code that runs
without autograd (the video decoder's inference path).

Layouts: activations ``(b t) c h w`` (frames folded into the batch); Winograd-domain tiles ``(16, c, n th tw)`` with
``th = h / 2``, ``tw = w / 2``; products ``(16, o, n th tw)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["winograd_applies", "winograd_conv", "winograd_weight"]

#: the kernel transform G of F(2x2, 3x3): U = G g G^T (4x3 @ 3x3 @ 3x4)
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """Kernel ``(o, c, 3, 3)`` or ``(o, c, kt, 3, 3)`` -> ``(16, kt, o, c)``: ``G g G^T`` of each tap, the 4x4
    positions flattened row-major (kt = 1 for a 2D kernel). One matrix product with ``G (x) G`` (16 x 9)."""
    if weight.dim() == 4:
        weight = weight.unsqueeze(2)
    o, c, kt = weight.shape[:3]
    g = weight.new_tensor(_G)
    taps = weight.permute(3, 4, 2, 0, 1).reshape(9, kt * o * c)  # (3 3) (kt o c)
    return torch.mm(torch.kron(g, g), taps).view(16, kt, o, c)  # U[4a + b] = sum_ij G[a, i] G[b, j] g[i, j]


def winograd_applies(x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """True where :func:`winograd_conv` computes this conv: float32 CPU, no autograd, 3x3 spatial kernel with
    padding 1 and stride 1, even height and width."""
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.dim() == 4
        and x.shape[0] > 0
        and weight.shape[-2:] == (3, 3)
        and tuple(padding)[-2:] == (1, 1)
        and all(s == 1 for s in stride)
        and x.shape[-2] % 2 == 0
        and x.shape[-1] % 2 == 0
    )


def _input_tiles(x: torch.Tensor, out: torch.Tensor) -> None:
    """``x`` ``(n, c, h, w)`` -> ``out`` ``(16, c, n * th * tw)`` (written; may be a slice along its last axis):
    ``B^T d B`` of every 4x4 tile (stride 2) of the zero-padded map, separably (rows, then columns)."""
    n, c, h, w = x.shape
    th, tw = h // 2, w // 2
    p = F.pad(x, (1, 1, 1, 1)).transpose(0, 1)  # c n (h+2) (w+2), a view of the padded copy
    r = [p[:, :, k : k + h : 2] for k in range(4)]  # tile row k of every tile: c n th (w+2)
    rows = x.new_empty(4, c, n, th, w + 2)
    torch.sub(r[0], r[2], out=rows[0])
    torch.add(r[1], r[2], out=rows[1])
    torch.sub(r[2], r[1], out=rows[2])
    torch.sub(r[1], r[3], out=rows[3])
    del p, r
    dst = out.view(4, 4, c, n, th, tw)
    s = [rows[..., k : k + w : 2] for k in range(4)]  # tile column k: 4 c n th tw
    torch.sub(s[0], s[2], out=dst[:, 0])
    torch.add(s[1], s[2], out=dst[:, 1])
    torch.sub(s[2], s[1], out=dst[:, 2])
    torch.sub(s[1], s[3], out=dst[:, 3])


def _output_blocks(m: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Products ``m`` ``(16, o, n * th * tw)`` -> ``out`` ``(n, o, 2 th, 2 tw)`` (written): ``A^T m A`` per tile,
    plus ``bias``."""
    n, o, h, w = out.shape
    th, tw = h // 2, w // 2
    mm = m.view(4, 4, o, n, th, tw)
    a = mm[0] + mm[1]  # A^T along the tile rows: row 0 = m0 + m1 + m2, row 1 = m1 - m2 - m3
    a += mm[2]
    b = mm[1] - mm[2]
    b -= mm[3]
    blocks = out.view(n, o, th, 2, tw, 2).permute(3, 5, 1, 0, 2, 4)  # 2 2 o n th tw: output block position
    for i, r in enumerate((a, b)):  # then along the tile columns
        dst0, dst1 = blocks[i, 0], blocks[i, 1]
        torch.add(r[0], r[1], out=dst0).add_(r[2])
        torch.sub(r[1], r[2], out=dst1).sub_(r[3])
    if bias is not None:
        out += bias.view(1, o, 1, 1)


def winograd_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    num_frames: int = 1,
    piece_frames: int | None = None,
    out_frames: tuple[int, int] | None = None,
    origin: int = 0,
) -> torch.Tensor:
    """A "same" 3x3 conv (``weight`` ``(o, c, 3, 3)``) on every row of ``x`` ``(n, c, h, w)``, or a 3x3x3 Conv3d
    (``weight`` ``(o, c, 3, 3, 3)``, zero padding 1 in time) over the frames of each video of ``x`` ``(b t) c h w``
    with ``t = num_frames``.

    Returns ``(n, o, h, w)``; with ``out_frames=(a, e)`` (3x3x3 only) just output frames ``a .. e - 1`` of each
    video, ``(b (e - a)) o h w`` (frames outside the video read as zeros). ``piece_frames``: output frames (rows, for
    a 2D kernel) per piece; the Winograd-domain temporaries exist for one piece at a time (each piece transforms the
    frames it reads, so a piece of ``p`` frames transforms ``p + 2``). ``origin``: pieces end where ``frame + origin`` is a multiple of
    ``piece_frames`` (a caller that passes a window of a longer video gives the window's offset, so that every output
    frame is computed by the same products as in a whole-video call).
    """
    kt = 1 if weight.dim() == 4 else weight.shape[2]
    if kt not in (1, 3):
        raise ValueError(f"temporal kernel {kt} is not supported (1 or 3)")
    n, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"Winograd F(2x2, 3x3) needs an even height and width, got {h}x{w}")
    t = num_frames if kt == 3 else n  # a 2D kernel: all rows form one "video" whose frames are independent
    if n % t:
        raise ValueError(f"batch of {n} rows is not a multiple of num_frames={num_frames}")
    first, last = (0, t) if out_frames is None or kt == 1 else out_frames
    if not 0 <= first <= last <= t:
        raise ValueError(f"out_frames {out_frames} outside the {t} frames of a video")
    u = winograd_weight(weight)  # 16 kt o c
    o = u.shape[2]
    tiles = (h // 2) * (w // 2)
    step = max(1, (last - first) if piece_frames is None or piece_frames < 1 else piece_frames)
    halo = kt // 2  # neighbour frames a piece reads on each side
    out = x.new_empty((n // t) * (last - first), o, h, w)
    at = 0
    for video in range(n // t):
        rows = x[video * t : (video + 1) * t]
        s = first
        while s < last:
            # pieces end on multiples of ``step`` counted from frame ``-origin`` (the same pieces, so the same
            # matrix-product shapes and sums, whichever range of output frames is asked for)
            e = min((s + origin) // step * step + step - origin, last)
            tiles_in = x.new_empty(16, c, (e - s + 2 * halo) * tiles)  # frames s - halo .. e + halo
            lo, hi = max(s - halo, 0), min(e + halo, t)
            a, b = (lo - s + halo) * tiles, (hi - s + halo) * tiles
            _input_tiles(rows[lo:hi], tiles_in[:, :, a:b])
            tiles_in[:, :, :a] = 0  # frames before the video
            tiles_in[:, :, b:] = 0  # frames after it
            count = (e - s) * tiles
            prod = torch.bmm(u[:, halo], tiles_in[:, :, halo * tiles : halo * tiles + count])  # 16 o count
            if kt == 3:
                prod.baddbmm_(u[:, 0], tiles_in[:, :, :count])  # the previous frames' tap
                prod.baddbmm_(u[:, 2], tiles_in[:, :, 2 * tiles : 2 * tiles + count])  # the next frames' tap
            del tiles_in
            _output_blocks(prod, out[at : at + e - s], bias)
            del prod
            at += e - s
            s = e
    return out
