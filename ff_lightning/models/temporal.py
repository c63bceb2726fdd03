"""Shared temporal primitives: fold/unfold of frames and the one merge module used by the UNets and the decoder.

Frames of a video travel folded into the batch, ``(b t) c h w``. A temporal op unfolds them to ``b c t h w`` with
einops (named axes), works along ``t`` and folds back. ``num_frames`` is passed with the call, never stored on a
module from outside.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ff_lightning.models.winograd import winograd_applies, winograd_conv

__all__ = [
    "unfold_frames",
    "fold_frames",
    "AlphaMerge",
    "TemporalConv3d",
    "zero_module",
    "flatten_merge_keys",
    "conv3d_as_taps",
    "conv3d_frames",
    "pointwise_conv",
]


def unfold_frames(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``(b t) c h w`` -> ``b c t h w``."""
    if x.shape[0] % num_frames:
        raise ValueError(f"batch of {x.shape[0]} rows is not a multiple of num_frames={num_frames}")
    return rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)


def fold_frames(x: torch.Tensor) -> torch.Tensor:
    """``b c t h w`` -> ``(b t) c h w``."""
    return rearrange(x, "b c t h w -> (b t) c h w")


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place and return it."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


class AlphaMerge(nn.Module):
    """Blend a spatial output with its temporal refinement: ``(1 - a) * spatial + a * temporal``.

    ``learned=True`` (the released models): ``a`` is a trainable scalar parameter named ``alpha`` (shape ``(1,)``),
    initialised to ``init`` (0 gives the image model back exactly). ``learned=False``: ``a`` is a fixed buffer.
    Shapes of both inputs are equal and arbitrary.
    """

    def __init__(self, init: float = 0.0, learned: bool = True) -> None:
        super().__init__()
        a = torch.full((1,), float(init))
        if learned:
            self.alpha = nn.Parameter(a)
        else:
            self.register_buffer("alpha", a)

    def forward(self, spatial: torch.Tensor, temporal: torch.Tensor) -> torch.Tensor:
        a = self.alpha.to(spatial.dtype)
        return (1 - a) * spatial + a * temporal


class TemporalConv3d(nn.Module):
    """A Conv3d over frames of folded input; kernel ``(kt, kh, kw)`` with "same" padding, channels preserved.

    Input and output ``(b t) c h w``; the conv runs on ``b c t h w``. ``zero_init`` zeroes weight and bias so the
    module outputs zeros at initialisation (merged with :class:`AlphaMerge` it starts as an identity either way).
    Models whose released state dicts keep the Conv3d at the top level may use a plain ``nn.Conv3d`` with
    :func:`unfold_frames` / :func:`fold_frames` instead.
    """

    def __init__(self, channels: int, kernel: tuple[int, int, int] = (3, 1, 1), zero_init: bool = True) -> None:
        super().__init__()
        pad = tuple(k // 2 for k in kernel)
        self.conv = nn.Conv3d(channels, channels, kernel, padding=pad)
        if zero_init:
            zero_module(self.conv)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        h = unfold_frames(x, num_frames)  # b c t h w
        h = self.conv(h)  # b c t h w
        return fold_frames(h)  # (b t) c h w


#: :func:`pointwise_conv` runs as a batched matmul up to this many weights (``out * in`` channels)
POINTWISE_MATMUL_MAX_WEIGHTS = 32768


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` for a 1x1 ``weight`` ``(out, in, 1, 1)`` and ``x`` ``(n, in, h, w)``.

    On float32 CPU input with at most :data:`POINTWISE_MATMUL_MAX_WEIGHTS` weights: ``bias + W @ x`` per row, one
    batched matmul over the ``(in, h w)`` view (no copies for contiguous input). The single-threaded CPU conv kernels
    are slow at these narrow widths (forward + backward of a 64 -> 32 1x1 conv on 16 x 16 maps, batch 16: 1.8 ms as a
    conv, 0.7 ms as a matmul). Same products, summed in another order (tests: 1e-5).
    """
    n, c = x.shape[:2]
    o = weight.shape[0]
    if not (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.ndim == 4
        and n
        and o * c <= POINTWISE_MATMUL_MAX_WEIGHTS
        and not torch.is_autocast_enabled("cpu")
    ):
        return F.conv2d(x, weight, bias)
    h, w = x.shape[2:]
    weights = weight.reshape(1, o, c).expand(n, o, c)
    rows = x.reshape(n, c, h * w)  # a view for contiguous input
    out = torch.bmm(weights, rows) if bias is None else torch.baddbmm(bias.view(1, o, 1), weights, rows)
    return out.view(n, o, h, w)


def _taps_apply(conv: nn.Conv3d) -> bool:
    kt, kh, kw = conv.kernel_size
    return (
        kt == 3
        and conv.padding == (1, kh // 2, kw // 2)
        and kh % 2 == 1
        and kw % 2 == 1
        and conv.stride == (1, 1, 1)
        and conv.dilation == (1, 1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def conv3d_as_taps(conv: nn.Conv3d, x: torch.Tensor, num_frames: int, piece_frames: int | None = None) -> torch.Tensor:
    """A "same" Conv3d with temporal kernel 3 over the frames of each video, as three 2D convs (one per temporal
    tap) on the folded frames, the neighbour taps added to the shifted output rows. ``x``: ``(b t) c h w``.

    Equal to ``fold_frames(conv(unfold_frames(x, t)))`` up to float summation order (tests: 1e-5), without the two
    layout copies and without PyTorch's slow CPU vol2col path at small ``n * c * t * h``; the one extra full-size
    temporary is a tap's output. ``piece_frames``: without autograd, compute the output ``piece_frames`` frames at a
    time (each piece's taps read the frames next to it), so the temporaries are piece-sized; the same sums.

    Without autograd on maps of at most :data:`STACKED_MAX_PIXELS` pixels (where per-call costs dominate: the CPU
    conv re-packs its weights on every call and the tap kernels are strided slices that need a copy each), each frame
    is stacked with its neighbours as ``3c`` input channels instead (zeros outside the video) and convolved once
    with the Conv3d kernel viewed as ``(out, 3c, kh, kw)``: one call, no weight copy, the same products summed in
    one reduction (equal up to float rounding, 1e-5 in the tests). Without autograd where :func:`winograd_pays`
    (wide float32 CPU maps), the conv runs as Winograd F(2x2, 3x3) instead (:mod:`ff_lightning.models.winograd`:
    2.25x fewer multiplies, each frame's tiles transformed once per piece; float rounding, tests/test_winograd.py).
    """
    if x.shape[0] % num_frames:
        raise ValueError(f"batch of {x.shape[0]} rows is not a multiple of num_frames={num_frames}")
    pad = (conv.kernel_size[1] // 2, conv.kernel_size[2] // 2)
    w = conv.weight
    if not torch.is_grad_enabled() and num_frames > 1 and x.shape[0]:
        if winograd_pays(conv, x):
            return winograd_conv(x, w, conv.bias, num_frames, winograd_piece_frames(piece_frames))
        stacked = x.shape[-2] * x.shape[-1] <= STACKED_MAX_PIXELS
        step = num_frames if piece_frames is None or piece_frames < 1 else piece_frames
        if stacked or step < num_frames:
            return _taps_in_pieces(x, w, conv.bias, pad, num_frames, step, stacked)
    out = F.conv2d(x, w[:, :, 1], conv.bias, padding=pad)  # the centre tap: frame t from frame t
    if num_frames == 1:
        return out
    b = x.shape[0] // num_frames
    video_out = out.view(b, num_frames, *out.shape[1:])
    for tap, dst, src in ((0, slice(1, None), slice(None, -1)), (2, slice(None, -1), slice(1, None))):
        if b == 1:  # the source frames are a contiguous run of rows: convolve only those
            y = F.conv2d(x[src], w[:, :, tap], padding=pad).unsqueeze(0)
        else:
            y = F.conv2d(x, w[:, :, tap], padding=pad).view_as(video_out)[:, src]
        video_out[:, dst] += y  # in place also under autograd: the conv's backward does not use its output
        del y  # not alive while the next tap is computed
    return video_out.reshape(out.shape)


#: :func:`conv3d_as_taps` stacks neighbouring frames as channels (one conv call) on maps of at most this many pixels
STACKED_MAX_PIXELS = 16

#: without autograd, :func:`conv3d_as_taps` runs as Winograd F(2x2, 3x3) (:mod:`ff_lightning.models.winograd`) on
#: float32 CPU input of at least this many channels and pixels per frame (even height and width); below, the
#: transforms cost more than the 2.25x fewer multiplies save (measured on 1 thread, ``benchmarks/decoder_speed.py``)
WINOGRAD_MIN_CHANNELS = 128
WINOGRAD_MIN_PIXELS = 64
#: ... and at most this many elements per input frame: a piece's Winograd temporaries take about 12 frames' worth
#: (its frames and their two neighbours, transformed at 4x their size), which must stay near the tap convs' (the
#: decoders' peak memory must not grow)
WINOGRAD_MAX_FRAME_ELEMENTS = 1 << 16


def winograd_pays(conv: nn.Conv3d, x: torch.Tensor) -> bool:
    """True where the no-autograd path of :func:`conv3d_as_taps` uses Winograd: a 3x3x3 "same" kernel on float32 CPU
    frames of at least :data:`WINOGRAD_MIN_CHANNELS` channels and :data:`WINOGRAD_MIN_PIXELS` pixels, at most
    :data:`WINOGRAD_MAX_FRAME_ELEMENTS` elements."""
    h, w = x.shape[-2:]
    return (
        conv.kernel_size == (3, 3, 3)
        and _taps_apply(conv)
        and x.shape[1] >= WINOGRAD_MIN_CHANNELS
        and h * w >= WINOGRAD_MIN_PIXELS
        and x[0].numel() <= WINOGRAD_MAX_FRAME_ELEMENTS
        and winograd_applies(x, conv.weight, conv.padding, conv.stride)
    )


def winograd_piece_frames(piece_frames: int | None) -> int | None:
    """Output frames per Winograd piece: a quarter of ``piece_frames`` (at least 1): the Winograd-domain tiles of a
    piece take about 4x its input, so the pieces' temporaries stay near those of the tap convs."""
    if piece_frames is None or piece_frames < 1:
        return None
    return max(1, piece_frames // 4)


def _taps_in_pieces(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None,
    pad: tuple[int, int],
    t: int,
    step: int,
    stacked: bool,
) -> torch.Tensor:
    """:func:`conv3d_as_taps` without autograd, ``step`` output frames of each video at a time. Taps: centre tap,
    plus the previous frame's tap, plus the next frame's tap (the order of the whole-batch sums). Stacked: the
    previous, own and next frame of each output frame as ``3c`` channels, one conv."""
    n, c, hh, ww = x.shape
    if stacked:
        w3 = w.reshape(w.shape[0], 3 * c, *w.shape[-2:])  # input channel ci * 3 + tap, as the stacked frames below
    else:
        before, centre, after = (w[:, :, k].contiguous() for k in range(3))  # each tap's 2D kernel, copied once
    out = None
    for v in range(0, n, t):  # each video's frames are rows v .. v + t - 1
        for s in range(0, t, step):
            e = min(s + step, t)
            lo, hi = max(s, 1), min(e, t - 1)  # frames [lo, e) have a previous frame, [s, hi) a next one
            if stacked:
                frames = x.new_empty(e - s, c, 3, hh, ww)
                frames[:, :, 1] = x[v + s : v + e]
                frames[lo - s :, :, 0] = x[v + lo - 1 : v + e - 1]
                frames[: lo - s, :, 0] = 0  # before the first frame
                frames[: hi - s, :, 2] = x[v + s + 1 : v + hi + 1]
                frames[hi - s :, :, 2] = 0  # after the last frame
                piece = F.conv2d(frames.view(e - s, 3 * c, hh, ww), w3, bias, padding=pad)
                del frames
            else:
                piece = F.conv2d(x[v + s : v + e], centre, bias, padding=pad)
                if lo < e:
                    piece[lo - s :] += F.conv2d(x[v + lo - 1 : v + e - 1], before, padding=pad)
                if s < hi:
                    piece[: hi - s] += F.conv2d(x[v + s + 1 : v + hi + 1], after, padding=pad)
            if e - s == n:  # the whole batch in one piece
                return piece
            if out is None:
                out = piece.new_empty(n, *piece.shape[1:])
            out[v + s : v + e] = piece
            del piece
    assert out is not None
    return out


def conv3d_frames(conv: nn.Conv3d, x: torch.Tensor, num_frames: int, piece_frames: int | None = None) -> torch.Tensor:
    """``conv`` (a "same" Conv3d) over the frames of each video of folded ``x`` ``(b t) c h w``, without the
    ``b c t h w`` layout: temporal kernel 1 is a Conv2d per frame, temporal kernel 3 :func:`conv3d_as_taps` (without
    autograd or for one video; ``piece_frames``: see there), a temporal-only kernel ``(kt, 1, 1)`` otherwise a Conv2d
    with kernel ``(kt, 1)`` over ``b c t (h w)``; anything else runs the Conv3d on the unfolded layout. Equal to ``fold_frames(conv(unfold_frames(x, t)))`` up to float
    summation order."""
    kt, kh, kw = conv.kernel_size
    plain = conv.stride == (1, 1, 1) and conv.dilation == (1, 1, 1) and conv.padding_mode == "zeros"
    if plain and conv.groups == 1 and kt == 1 and conv.padding == (0, kh // 2, kw // 2) and kh % 2 and kw % 2:
        if x.shape[0] % num_frames:
            raise ValueError(f"batch of {x.shape[0]} rows is not a multiple of num_frames={num_frames}")
        if kh == kw == 1:
            return pointwise_conv(x, conv.weight[:, :, 0], conv.bias)
        return F.conv2d(x, conv.weight[:, :, 0], conv.bias, padding=(kh // 2, kw // 2))
    # the tap convs beat CPU Conv3d without autograd, or for one video (contiguous frame slices); with several
    # videos under autograd the slicing costs more than it saves (measured fwd + bwd), so Conv3d runs there
    if plain and _taps_apply(conv) and (x.shape[0] == num_frames or not torch.is_grad_enabled()):
        return conv3d_as_taps(conv, x, num_frames, piece_frames)
    if plain and conv.groups == 1 and kh == kw == 1 and kt % 2 and conv.padding == (kt // 2, 0, 0) and x.shape[0]:
        # a temporal-only kernel (kt, 1, 1): a Conv2d with kernel (kt, 1) over b c t (h w). Single-threaded CPU
        # runs a Conv3d with a 1x1 spatial kernel on fewer than 16 videos in its slow vol2col path; this conv takes
        # oneDNN (fwd + bwd 1.3-2.9x faster at the keyframe UNet's widths). Same products, same weight parameter.
        h, w = x.shape[-2:]
        seq = rearrange(unfold_frames(x, num_frames), "b c t h w -> b c t (h w)")
        out = F.conv2d(seq, conv.weight[..., 0], conv.bias, padding=(kt // 2, 0))
        return rearrange(out, "b c t (h w) -> (b t) c h w", h=h, w=w)
    return fold_frames(conv(unfold_frames(x, num_frames)))


def flatten_merge_keys(module: nn.Module, names: Sequence[str]) -> None:
    """Save and load the :class:`AlphaMerge` children ``names`` of ``module`` under bare state-dict keys.

    The released checkpoints keep each merge scalar as a plain parameter of the block (key ``temporal_merge1``,
    shape ``(1,)``), while ours lives in an :class:`AlphaMerge` child (``temporal_merge1.alpha``). After this call
    ``module.state_dict()`` writes ``<prefix>temporal_merge1`` (placed first among the module's own entries, where the
    released layout has it) and ``load_state_dict`` accepts either spelling. ``named_parameters()`` is unchanged.
    """
    names = tuple(names)
    for name in names:
        if not isinstance(getattr(module, name, None), AlphaMerge):
            raise TypeError(f"{type(module).__name__}.{name} is not an AlphaMerge")
    module.register_state_dict_post_hook(partial(_flatten_on_save, names=names))
    module.register_load_state_dict_pre_hook(partial(_unflatten_on_load, names=names))


def _flatten_on_save(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict, *, names: tuple) -> None:
    # This module's entries are the last ones written (contiguous, all under ``prefix``): pop them and re-insert
    # with the bare merge keys first, keeping every other entry's order.
    own = [k for k in state_dict if k.startswith(prefix)]
    entries = {k: state_dict.pop(k) for k in own}
    for name in names:
        key = f"{prefix}{name}.alpha"
        if key in entries:
            state_dict[f"{prefix}{name}"] = entries.pop(key)
    state_dict.update(entries)


def _unflatten_on_load(
    module: nn.Module,
    state_dict: dict,
    prefix: str,
    local_metadata: dict,
    strict: bool,
    missing: list,
    unexpected: list,
    errors: list,
    *,
    names: tuple,
) -> None:
    for name in names:
        bare, nested = f"{prefix}{name}", f"{prefix}{name}.alpha"
        if bare in state_dict and nested not in state_dict:
            state_dict[nested] = state_dict.pop(bare)
