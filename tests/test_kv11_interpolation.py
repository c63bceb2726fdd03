"""Kandinsky Video 1.1 interpolation UNet (``interpolation_unet/kv1_1``): flags read off state-dict keys, ``ff import``
of a tiny release-layout ``interpolation.pt``, identity of the zero-initialised / masked-off temporal parts, and the
temporal ops against hand-written references. Parity with the release code itself was checked at development time
(tiny sizes, random weights; not committed: it needs the release sources)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ff_lightning.checkpoints import CheckpointError
from ff_lightning.interop.unet import load_kv11_interpolation_unet
from ff_lightning.models.kv11_interpolation import KV11InterpolationFlags, infer_flags
from ff_lightning.models.kv11_interpolation_blocks import CompressFrames, DecompressFrames, MaskedTemporalConv
from ff_lightning.registry import build

sys.path.insert(0, str(Path(__file__).parent))
from release_files import TINY, nest, write_release  # noqa: E402

COMBOS = {
    "release_defaults": {},
    "new_params": dict(add_new_temporal_params=True),
    "bare": dict(
        temporal=False, add_temporal_attention=False, pass_skip_frames=False, use_perturbation_time_embed=False
    ),
    "context_merge": dict(merge_perturbation_time_with_context=True, add_new_temporal_params=True),
    "context_only": dict(merge_perturbation_time_with_diffusion_time=False, merge_perturbation_time_with_context=True),
    "time_downsample": dict(time_downsample=(True, False), add_new_temporal_params=True),
}
TEMPORAL_OFF = dict(temporal=False, add_new_temporal_params=False, add_temporal_attention=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(**flags: object) -> torch.nn.Module:
    return build("interpolation_unet", "kv1_1", "tiny", **flags).eval()


def _randomise(model: torch.nn.Module, seed: int, skip: str | None = None) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if skip is None or skip not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _inputs(groups: int = 3, seed: int = 0) -> dict:
    """Two videos of ``groups`` interpolation groups (the release's guided + unguided halves), tiny sizes."""
    g = torch.Generator().manual_seed(seed)
    rows = 2 * groups
    return dict(
        x=torch.randn(rows, 20, 8, 8, generator=g), time=torch.tensor([5, 700]),
        context=torch.randn(rows, 3, 32, generator=g),
        context_mask=torch.tensor([[True, True, False]] * rows),
        num_temporal_groups=groups, skip_frames=torch.tensor([3, 1]), perturbation_time=torch.tensor([0, 40]),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ flags <-> keys
@pytest.mark.parametrize("name", sorted(COMBOS))
def test_flags_inferred_from_keys_round_trip(name: str) -> None:
    flags = COMBOS[name]
    model = build("interpolation_unet", "kv1_1", "tiny", device="meta", **flags)
    keys = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    inferred = infer_flags([f"unet.{k}" for k in keys])
    assert inferred == model.flags.canonical(2)
    again = build("interpolation_unet", "kv1_1", "tiny", device="meta", **inferred.as_config())
    assert {k: tuple(v.shape) for k, v in again.state_dict().items()} == keys
    assert all(k.count("temporal_merge") <= 1 and not k.endswith(".alpha") for k in keys)  # bare merge scalars


def test_flags_that_add_nothing_are_normalised() -> None:
    """The deepest level never resamples (its time_downsample adds nothing); without use_perturbation_time_embed the
    merge flags add nothing."""
    flags = KV11InterpolationFlags(time_downsample=(False, True), use_perturbation_time_embed=False)
    canon = flags.canonical(2)
    assert canon.time_downsample == (False, False) and not canon.merge_perturbation_time_with_diffusion_time
    a = build("interpolation_unet", "kv1_1", "tiny", device="meta", **flags.as_config())
    assert infer_flags(list(a.state_dict())) == canon
    assert "time_embed_merge" not in a.state_dict() and "skip_merge" in a.state_dict()


# ------------------------------------------------------------------------------------------------ ff import
def _write_interpolation(src: Path, seed: int, **flags: object) -> dict[str, torch.Tensor]:
    """A tiny interpolation.pt in the release layout ({'unet': {...}, 'null_embedding'}) with random weights."""
    model = build("interpolation_unet", "kv1_1", "tiny", **flags)
    flat = {f"unet.{k}": v for k, v in _randomise(model, seed).state_dict().items()}
    flat["null_embedding"] = torch.randn(32, generator=torch.Generator().manual_seed(seed))
    torch.save(nest(flat, ("unet",)), src / "weights" / "interpolation.pt")
    return flat


def test_ff_import_kv11_interpolation_reproduces_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file

    from ff_lightning.cli import main

    src, out = tmp_path / "kv11", tmp_path / "out"
    write_release(src, "kv1.1")
    flags = dict(add_new_temporal_params=True, merge_perturbation_time_with_context=True)
    flat = _write_interpolation(src, 7, **flags)
    args = ["import", str(src), "--format", "kv1.1", "--out", str(out), "--preset", "tiny", "--num-frames", "4",
            "--text-encoder", "tiny", "--text-dim", "64", "--size", "32x32", "--parts", "movq,interpolation"]  # fmt: skip
    assert main(args) == 0
    assert "imported kv1.1" in capsys.readouterr().out
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["stages"] == {"interpolation": "interpolation/"} and not manifest["unwired_stages"]
    stage = json.loads((out / "interpolation" / "export.json").read_text())
    want = KV11InterpolationFlags(
        **{**KV11InterpolationFlags().as_config(), **flags, "time_downsample": (False, False)}
    )
    assert stage["release_flags"] == want.as_config() and "not_wired" not in stage
    config = yaml.safe_load((out / "interpolation" / "config.yaml").read_text())
    assert config["model"]["variant"] == "kv1_1" and config["model"]["overrides"] == want.as_config()
    state = load_file(out / "interpolation" / "module.safetensors")
    assert torch.equal(state["null_embedding.embedding"], flat["null_embedding"])
    imported = build(config["model"]["component"], "kv1_1", "tiny", **config["model"]["overrides"]).eval()
    imported.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")}, strict=True)
    direct = load_kv11_interpolation_unet(src / "weights" / "interpolation.pt", "tiny").eval()
    assert direct.flags == want
    inputs = _inputs()
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])  # the release's use_temporal_mask: off on the unguided half
    with torch.no_grad():
        a, b = imported(**inputs, temporal_mask=mask), direct(**inputs, temporal_mask=mask)
    assert torch.equal(a, b) and a.shape == (6, 12, 8, 8)


def test_partial_interpolation_file_is_refused_with_its_missing_keys(tmp_path: Path) -> None:
    from ff_lightning.interop.release import import_release

    src = tmp_path / "kv11"
    write_release(src, "kv1.1")
    _write_interpolation(src, 3, add_new_temporal_params=True)
    path = src / "weights" / "interpolation.pt"
    obj = torch.load(path)
    gone = ("temporal_conv_in.temporal_projection.bias", "down_samples.1.temporal_attention_block.temporal_merge2")
    for key in gone:
        del obj["unet"][key]
    obj["unet"]["bogus.weight"] = torch.zeros(1)
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as e:
        import_release(src, tmp_path / "out", "kv1.1", TINY, parts=("movq", "interpolation"))
    text = str(e.value)
    assert all(f"unet.{k}" in text for k in gone) and "unexpected" in text and "unet.bogus.weight" in text
    assert not (tmp_path / "out").exists()


def test_time_compressed_network_loads_but_its_forward_is_refused(tmp_path: Path) -> None:
    """As in the release, where the time embedding keeps the uncompressed row count (a shape error)."""
    model = _model(time_downsample=(True, False))
    keys = model.state_dict()
    assert "down_samples.0.resnet_attn_blocks.0.2.temporal_compress.downsample.weight" in keys
    assert "up_samples.1.resnet_attn_blocks.0.0.resnet_blocks.1.temporal_decompress.upsample.weight" in keys
    with pytest.raises(ValueError, match="time_downsample"):
        model(**_inputs())


# ------------------------------------------------------------------------------------------------ identity facts
def test_zero_merges_make_the_temporal_parts_identity() -> None:
    """Fresh merges (0) with random temporal convs / attention: the network equals the one without temporal parts,
    perturbation and skip embeddings (the release initialises every merge to 0)."""
    full = _randomise(_model(add_new_temporal_params=True, merge_perturbation_time_with_context=True), 1, "merge")
    bare = _model(**TEMPORAL_OFF, pass_skip_frames=False, use_perturbation_time_embed=False)
    missing, unexpected = bare.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected  # the bare network is the full one minus its temporal parts
    inputs = _inputs()
    with torch.no_grad():
        assert torch.equal(full(**inputs), bare(**inputs))


def test_masked_off_rows_run_without_temporal_parts() -> None:
    """temporal_mask 0 (the release's unguided half) switches every temporal merge off for that row, whatever the
    merges' values; the skip / perturbation embeddings stay."""
    full = _randomise(_model(add_new_temporal_params=True), 2)
    bare = _model(**TEMPORAL_OFF)
    bare.load_state_dict({k: v for k, v in full.state_dict().items() if k in bare.state_dict()}, strict=True)
    inputs = _inputs()
    with torch.no_grad():
        off = full(**inputs, temporal_mask=0.0)
        on = full(**inputs, temporal_mask=1.0)
        ref = bare(**inputs)
    assert torch.allclose(off, ref, atol=1e-6, rtol=0)
    assert not torch.allclose(on, ref, atol=1e-3)


# ------------------------------------------------------------------------------------------------ temporal ops
def test_compress_and_decompress_equal_per_frame_pair_sums() -> None:
    """Conv3d / ConvTranspose3d with kernel = stride = (2,1,1) over the groups: output group j of a video is
    ``W_0 x_{2j} + W_1 x_{2j+1} + b``; decompressed groups ``2j + k`` are ``W_k^T x_j + b``."""
    g = torch.Generator().manual_seed(4)
    b, t, c = 2, 4, 3
    x = torch.randn(b * t, c, 5, 5, generator=g)
    comp, decomp = CompressFrames(c), DecompressFrames(c)
    _randomise(comp, 5), _randomise(decomp, 6)
    wc, bc = comp.downsample.weight[..., 0, 0], comp.downsample.bias  # (out, in, 2)
    wd, bd = decomp.upsample.weight[..., 0, 0], decomp.upsample.bias  # (in, out, 2)
    want_c, want_d = [], []
    for v in range(b):
        frames = x[v * t : (v + 1) * t]
        for j in range(t // 2):
            s = sum(torch.einsum("oi,ihw->ohw", wc[:, :, k], frames[2 * j + k]) for k in range(2))
            want_c.append(s + bc[:, None, None])
        for j in range(t):
            for k in range(2):
                want_d.append(torch.einsum("io,ihw->ohw", wd[:, :, k], frames[j]) + bd[:, None, None])
    with torch.no_grad():
        assert torch.allclose(comp(x, t), torch.stack(want_c), atol=1e-5)
        assert torch.allclose(decomp(x, t), torch.stack(want_d), atol=1e-5)
        assert comp(x, t).shape[0] == b * t // 2 and decomp(x, t).shape[0] == 2 * b * t


def test_masked_temporal_conv_equals_an_explicit_neighbour_sum() -> None:
    """``(1 - a m) x_t + a m (W_0 x_{t-1} + W_1 x_t + W_2 x_{t+1} + b)`` per video (zero outside it)."""
    g = torch.Generator().manual_seed(8)
    b, t, c = 2, 3, 4
    x = torch.randn(b * t, c, 2, 3, generator=g)
    mask = torch.tensor([1.0, 0.5, 0.0, 1.0, 1.0, 0.25])
    conv = _randomise(MaskedTemporalConv(c, c), 9)
    a = conv.temporal_merge.alpha
    w, bias = conv.temporal_projection.weight[..., 0, 0], conv.temporal_projection.bias
    want = []
    for row in range(b * t):
        v, i = divmod(row, t)
        out = bias[:, None, None].expand(c, 2, 3).clone()
        for k in range(3):
            j = i + k - 1
            if 0 <= j < t:
                out = out + torch.einsum("oi,ihw->ohw", w[:, :, k], x[v * t + j])
        want.append((1 - a * mask[row]) * x[row] + a * mask[row] * out)
    with torch.no_grad():
        assert torch.allclose(conv(x, t, mask), torch.stack(want), atol=1e-5)
    assert set(conv.state_dict()) == {"temporal_merge", "temporal_projection.weight", "temporal_projection.bias"}


def test_up_shortcut_applies_its_post_upsample_conv_twice() -> None:
    """Release quirk kept: the shortcut of an up-sampling ResNet block runs ``temporal_post_upsample`` after its 2x
    up conv and again after the (absent) down conv; its down-sampling twin's ``temporal_post_downsample`` is never
    run. With the residual branch's last stage zeroed the block is ``post(post(up(x)))``."""
    from ff_lightning.models.kv11_interpolation_blocks import InterpResNetBlock
    from ff_lightning.models.unet import BlockArgs, UNetConditioning

    args = BlockArgs(time_embed_dim=8, groups=2, head_dim=4, expansion_ratio=2, compression_ratio=2)
    block = _randomise(InterpResNetBlock(4, 4, args, "up", temporal=True, new_params=True, time_downsample=False), 3)
    with torch.no_grad():
        for p in (*block.resnet_blocks[3].projection.parameters(),
                  *block.resnet_blocks[3].temporal_projection_new.temporal_projection.parameters()):  # fmt: skip
            p.zero_()
    g = torch.Generator().manual_seed(2)
    x, mask = torch.randn(6, 4, 3, 3, generator=g), torch.tensor([1.0, 0.5, 1.0, 0.0, 1.0, 1.0])
    cond = UNetConditioning(torch.randn(6, 8, generator=g), num_frames=3)
    post = block.temporal_post_upsample
    with torch.no_grad():
        want = post(post(block.shortcut_up_sample(x), 3, mask), 3, mask)
        assert torch.allclose(block(x, cond, mask), want, atol=1e-5)
    down = InterpResNetBlock(4, 4, args, "down", temporal=True, new_params=True, time_downsample=False)
    assert down.temporal_post_downsample is not None and down.temporal_post_upsample is None


# ------------------------------------------------------------------------------------------------ sampling loop
def test_interleave_groups_puts_three_frames_between_each_keyframe_pair() -> None:
    from ff_lightning.pipelines.kv11_interpolation import interleave_groups

    keys, groups = torch.randn(4, 2, 3, 3), torch.randn(3, 6, 3, 3)
    video = interleave_groups(keys, groups)
    assert video.shape == (13, 2, 3, 3)
    for i in range(13):
        g, f = divmod(i, 4)
        want = keys[g] if f == 0 else groups[g, 2 * (f - 1) : 2 * f]  # frame-major channels (t c)
        assert torch.equal(video[i], want)


def test_guided_prediction_runs_the_guided_and_unguided_halves_as_the_release() -> None:
    """One batch of 2n rows equals two separate calls: the prompt's context with the keyframes and temporal mask 1,
    and the null context (token 0 only) with zeroed keyframes and temporal mask 0; combined (1 + w) c - w u."""
    from ff_lightning.pipelines.kv11_interpolation import KV11InterpolationOptions, guided_prediction

    model = _randomise(_model(add_new_temporal_params=True), 12)
    g = torch.Generator().manual_seed(1)
    n = 3
    x, left, right = (torch.randn(n, c, 8, 8, generator=g) for c in (12, 4, 4))
    ctx, cm = torch.randn(n, 3, 32, generator=g), torch.tensor([[True, True, False]] * n)
    null = torch.randn(32, generator=g)
    opts = KV11InterpolationOptions(guidance_weight=0.5, skip_frames=3)
    null_ctx = torch.zeros_like(ctx)
    null_ctx[:, 0] = null
    null_mask = torch.tensor([[True, False, False]] * n)
    common = dict(num_temporal_groups=n, skip_frames=3, perturbation_time=0)
    with torch.no_grad():
        got = guided_prediction(model, x, 700, left, right, ctx, cm, null, opts)
        cond = model(torch.cat([left, x, right], 1), torch.tensor(700), ctx, cm, **common, temporal_mask=1.0)
        zeros = torch.zeros_like(left)
        uncond = model(torch.cat([zeros, x, zeros], 1), torch.tensor(700), null_ctx, null_mask, **common,
                       temporal_mask=0.0)  # fmt: skip
    assert torch.allclose(got, 1.5 * cond - 0.5 * uncond, atol=1e-5)
