"""Released Kandinsky weights: the release key layout (checked against the manifests at the paper preset), the
Kandinsky MoVQ files' wrapped encoder norms, the text projection / null embedding of released text-to-image files,
and ``ff import`` (tiny release-format files -> export folders whose models reproduce the interop loaders)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ff_lightning.checkpoints import CheckpointError, read_t2i_checkpoint
from ff_lightning.interop.movq import load_video_decoder, load_weights, release_key_map
from ff_lightning.interop.release import ImportSpec, detect_format, import_release, release_layout
from ff_lightning.interop.unet import load_interpolation_unet, load_keyframe_unet
from ff_lightning.registry import build

sys.path.insert(0, str(Path(__file__).parent))
from release_files import TINY, write_release  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[1] / "ff_lightning" / "reference"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _manifest(name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(s) for k, s in json.loads((REFERENCE / f"{name}.json").read_text())["state_dict"]}


# ------------------------------------------------------------------------------------------ release layout
def test_release_layout_matches_the_manifests_at_the_paper_preset() -> None:
    kv10, kv11, k31 = (release_layout(f, ImportSpec()) for f in ("kv1.0", "kv1.1", "k3.1"))

    def unet(layout: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        return {k[len("unet.") :]: s for k, s in layout.items() if k.startswith("unet.")}

    assert unet(kv10["keyframes"]) == _manifest("kandinsky_video_1_0_keyframe_unet")
    assert unet(kv10["interpolation"]) == _manifest("kandinsky_video_1_0_interpolation_unet")
    assert unet(k31["t2i"]) == _manifest("kandinsky3_unet")
    assert unet(kv11["keyframes"]) == _manifest("kandinsky_video_1_1_keyframe_unet")
    assert kv11["keyframes"]["null_embedding"] == (4096,) and kv11["interpolation"]["null_embedding"] == (4096,)
    # 1.1 interpolation (release constructor defaults): 1.0's keys with each stage's temporal conv moved under
    # temporal_projection_new, plus the temporal attention blocks (tests/test_kv11_interpolation.py: the other flags)
    moved = {k.replace(".temporal_projection.", ".temporal_projection_new.temporal_projection.")
              .replace(".temporal_merge", ".temporal_projection_new.temporal_merge"): s
             for k, s in _manifest("kandinsky_video_1_0_interpolation_unet").items()}  # fmt: skip
    kv11_interp = unet(kv11["interpolation"])
    assert {k: s for k, s in kv11_interp.items() if ".temporal_attention_block." not in k} == moved
    assert any(".temporal_attention_block." in k for k in kv11_interp)
    assert kv10["keyframes"]["null_embedding"] == (4096,)
    assert kv10["keyframes"]["projections.t5.0.weight"] == (4096, 4096)
    assert set(k31["projection"]) == {"0.weight", "1.weight", "1.bias"}
    assert set(kv11["projections"]) == {f"{p}.{k}" for p in ("projection_base", "projection_interpolation")
                                        for k in ("0.weight", "1.weight", "1.bias")}  # fmt: skip
    # MoVQ: MoVQGAN's keys with every encoder norm wrapped as SpatialNorm (norm_layer) and no quantizer
    movqgan = _manifest("movqgan_270m")
    wrapped = {k.replace(".weight", ".norm_layer.weight").replace(".bias", ".norm_layer.bias")
               if k.startswith("encoder.") and ".norm" in k else k: s
               for k, s in movqgan.items() if not k.startswith("quantize.")}  # fmt: skip
    assert kv10["movq"] == wrapped
    assert "encoder.norm_out.norm_layer.weight" in kv10["movq"] and "encoder.mid.attn_1.norm.norm_layer.bias" in wrapped
    video = {k[len("decoder.") :]: s for k, s in kv11["video_movq"].items() if k.startswith("decoder.")}
    assert video == _manifest("video_movq_decoder_conv3x3x3_attn")
    assert {k for k in kv11["video_movq"] if k.startswith("encoder.")} == {
        k for k in wrapped if k.startswith("encoder.")
    }


# ------------------------------------------------------------------------------------------------- MoVQ file
def _kandinsky_movq_state(movq: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our MoVQ's weights as the Kandinsky MoVQ files store them (release_layout's names, no quantize)."""
    layout = release_layout("kv1.0", TINY)["movq"]
    ours = {k: v for k, v in movq.state_dict().items() if not k.startswith("quantize.")}
    mapping = release_key_map(layout, ours)  # file key -> our key
    state = {file_key: ours[mapping.get(file_key, file_key)] for file_key in layout}
    assert len(state) == len(ours) and any(".norm_layer." in k for k in state if k.startswith("encoder."))
    return state


def test_kandinsky_movq_file_loads_with_wrapped_encoder_norms(tmp_path: Path) -> None:
    torch.manual_seed(0)
    movq = build("movq", "movqgan", "tiny").eval()
    path = tmp_path / "movq.pt"
    torch.save(_kandinsky_movq_state(movq), path)
    fresh = build("movq", "movqgan", "tiny").eval()
    load_weights(fresh, path, missing_ok=("quantize.",))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(fresh.encode(x), movq.encode(x))
        assert torch.equal(fresh.decode(movq.encode(x)), movq.decode(movq.encode(x)))
    # the quantizer is still required unless missing_ok says otherwise
    with pytest.raises(CheckpointError, match="quantize.embedding.weight"):
        load_weights(build("movq", "movqgan", "tiny"), path)


def test_release_key_map_leaves_latent_conditioned_norms_alone() -> None:
    expected = {"norm1.weight", "a.norm.weight"}
    provided = ["norm1.norm_layer.weight", "a.norm.norm_layer.weight", "a.norm.conv_y.weight"]
    assert release_key_map(provided, expected) == {"norm1.norm_layer.weight": "norm1.weight"}


# --------------------------------------------------------------------------------------- text-to-image files
def test_read_t2i_checkpoint_maps_the_released_projection_and_null_embedding(tmp_path: Path) -> None:
    flat = write_release(tmp_path, "kv1.0")["keyframes"]
    t2i = read_t2i_checkpoint(tmp_path / "weights" / "kandinsky_video.pt")
    assert t2i.release and t2i.config is None
    assert torch.equal(t2i.text_projection["projection.weight"], flat["projections.t5.0.weight"])
    assert torch.equal(t2i.text_projection["norm.bias"], flat["projections.t5.1.bias"])
    assert torch.equal(t2i.null_embedding["embedding"], flat["null_embedding"])
    assert set(t2i.unet) == {k[len("unet.") :] for k in flat if k.startswith("unet.")}


def _keyframes_cfg(t2i_ckpt: Path, *extra: str):
    from ff_lightning.config import compose

    raw = {"system": "keyframes", "model": {"component": "keyframe_unet", "variant": "blocks_conv1d_attn1d",
                                            "preset": "tiny"},
           "data": {"num_frames": 4, "size": [32, 32]},
           "module": {"allow_random_movq": True, "t2i_ckpt": str(t2i_ckpt), "text_encoder": "tiny"}}  # fmt: skip
    return compose(raw, list(extra))


def test_keyframes_system_refuses_a_frozen_random_text_projection(tmp_path: Path) -> None:
    from ff_lightning.config import ConfigError
    from ff_lightning.systems import system_class

    write_release(tmp_path / "k31", "k3.1")  # Kandinsky 3.1: the projection lives in another file
    ckpt = tmp_path / "k31" / "weights" / "kandinsky3.pt"
    cfg = _keyframes_cfg(ckpt)
    with pytest.raises(ConfigError, match="no text projection"):
        system_class("keyframes")(cfg)
    system_class("keyframes")(_keyframes_cfg(ckpt, "module.train_text_projection=true"))  # trained: allowed
    # after ff import the t2i stage carries it
    out = tmp_path / "imported"
    import_release(tmp_path / "k31", out, spec=TINY)
    module = system_class("keyframes")(_keyframes_cfg(out / "t2i" / "module.safetensors"))
    projection = torch.load(tmp_path / "k31" / "weights" / "flan_ul2_encoder" / "projection.pt")
    assert torch.equal(module.text_projection.projection.weight, projection["0.weight"])
    assert json.loads((out / "export.json").read_text())["text_encoder"]["path"].endswith("flan_ul2_encoder")


# ------------------------------------------------------------------------------------------------- ff import
def test_import_kv10_reproduces_the_interop_loaders(tmp_path: Path) -> None:
    from ff_lightning.pipeline import load_stage

    src, out = tmp_path / "kv10", tmp_path / "out"
    flat = write_release(src, "kv1.0")
    interp = torch.load(src / "weights" / "kandinsky_video_interpolation.pt")
    interp["null_embedding"] = interp["null_embedding"][None]  # stored as (1, C): accepted as (C,)
    torch.save(interp, src / "weights" / "kandinsky_video_interpolation.pt")
    assert detect_format(src) == "kv1.0"
    manifest = import_release(src, out, spec=TINY)
    assert set(manifest["stages"]) == {"keyframes", "interpolation"}
    assert set(manifest["files"]) == {"keyframes", "interpolation", "movq"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    kf = load_stage("keyframes", out / "keyframes")
    ip = load_stage("interpolation", out / "interpolation")
    weights = src / "weights"
    ref_kf = load_keyframe_unet(weights / "kandinsky_video.pt", preset="tiny", num_frames=4).eval()
    ref_ip = load_interpolation_unet(weights / "kandinsky_video_interpolation.pt", preset="tiny").eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, 8, 8, generator=g)
    ctx, mask = torch.randn(1, 5, 32, generator=g), torch.ones(1, 5, dtype=torch.bool)
    t = torch.full((4,), 500.0)
    pos = torch.arange(4.0) * 45
    with torch.no_grad():
        assert torch.equal(kf.unet.forward_official(x, t, ctx.expand(4, -1, -1), mask.expand(4, -1), pos),
                           ref_kf.forward_official(x, t, ctx.expand(4, -1, -1), mask.expand(4, -1), pos))  # fmt: skip
        xi = torch.randn(2, 20, 8, 8, generator=g)
        skip = torch.ones(2, dtype=torch.long)
        args = (xi, torch.full((2,), 300.0), ctx.expand(2, -1, -1), mask.expand(2, -1))
        assert torch.equal(ip.unet.forward_official(*args, skip_frames=skip, num_temporal_groups=2),
                           ref_ip.forward_official(*args, skip_frames=skip, num_temporal_groups=2))  # fmt: skip
    assert torch.equal(kf.text_projection.projection.weight, flat["keyframes"]["projections.t5.0.weight"])
    assert torch.equal(kf.null_embedding.embedding, flat["keyframes"]["null_embedding"])
    assert torch.equal(ip.null_embedding.embedding, flat["interpolation"]["null_embedding"])
    ref_movq = load_weights(build("movq", "movqgan", "tiny"), weights / "movq.pt", missing_ok=("quantize.",)).eval()
    frames = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        z = ref_movq.encode(frames)
        for stage in (kf, ip):
            assert torch.equal(stage.movq.encode(frames), z)
            assert torch.equal(stage.movq.decode(z), ref_movq.decode(z))


def test_import_kv11_video_decoder_reproduces_the_interop_loader(tmp_path: Path) -> None:
    from ff_lightning.pipeline import load_stage

    src, out = tmp_path / "kv11", tmp_path / "out"
    write_release(src, "kv1.1")
    import_release(src, out, "kv1.1", TINY, parts=("movq", "decoder"))
    dec = load_stage("decoder", out / "decoder")
    video = src / "weights" / "video_movq.pt"
    ref = load_video_decoder(video, preset="tiny").eval()
    ref_movq = load_weights(
        build("movq", "movqgan", "tiny"), video, missing_ok=("quantize.", "decoder."), ignore_prefixes=("decoder.",)
    )  # encoder + 1x1 convs of the same file
    g = torch.Generator().manual_seed(2)
    frames = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        z = ref_movq.encode(frames)
        assert torch.equal(dec.movq.encode(frames), z)
        assert torch.equal(dec.movq.decoder(dec.movq.post_quant_conv(z), z, num_frames=4),
                           ref(ref_movq.post_quant_conv(z), z, num_frames=4))  # fmt: skip


def test_import_refuses_partial_loads_and_lists_what_is_missing(tmp_path: Path) -> None:
    src = tmp_path / "kv10"
    write_release(src, "kv1.0")
    path = src / "weights" / "kandinsky_video.pt"
    obj = torch.load(path)
    del obj["projections"]["t5.1.bias"]
    del obj["null_embedding"]
    obj["unet"]["image_in_layer.weight"] = torch.zeros(1)
    torch.save(obj, path)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as e:
        import_release(src, out, spec=TINY)
    text = str(e.value)
    assert "projections.t5.1.bias" in text and "null_embedding" in text and "unet.image_in_layer.weight" in text
    assert not out.exists()  # nothing written
    (src / "weights" / "movq.pt").unlink()
    with pytest.raises(CheckpointError, match="movq.pt"):
        import_release(src, out, spec=TINY)
    with pytest.raises(CheckpointError, match="no released Kandinsky files"):
        detect_format(tmp_path)


def test_ff_import_cli_then_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ff_lightning.cli import main
    from ff_lightning.pipeline import GenerateOptions, generate

    src, out = tmp_path / "kv10", tmp_path / "out"
    write_release(src, "kv1.0", weights_subdir=False)
    args = ["import", str(src), "--out", str(out), "--preset", "tiny", "--num-frames", "4", "--text-encoder", "tiny",
            "--text-dim", "64", "--size", "32x32"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "stage keyframes" in printed and "imported kv1.0" in printed
    result = generate("a red circle", out / "keyframes", out / "interpolation", None, out=tmp_path / "v.mp4",
                      options=GenerateOptions(steps=2, interp_steps=2, progress=False))  # fmt: skip
    assert result.frames.shape == (13, 3, 32, 32) and (tmp_path / "v.mp4").stat().st_size > 0
    assert main(["import", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "no released Kandinsky files" in capsys.readouterr().err


def test_checkpoints_module_imports_no_torch() -> None:
    code = "import sys, ff_lightning.checkpoints, ff_lightning.import_cli; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


def test_import_k31_and_movqgan_reproduce_the_interop_loaders(tmp_path: Path) -> None:
    from ff_lightning.interop.movq import load_movqgan
    from ff_lightning.interop.unet import load_t2i_unet

    write_release(tmp_path / "k31", "k3.1")
    import_release(tmp_path / "k31", tmp_path / "k31_out", spec=TINY)
    t2i = read_t2i_checkpoint(tmp_path / "k31_out" / "t2i" / "module.safetensors")
    ours = build("t2i_unet", "kandinsky3", "tiny").eval()
    ours.load_state_dict(t2i.unet)
    ref = load_t2i_unet(tmp_path / "k31" / "weights" / "kandinsky3.pt", preset="tiny").eval()
    g = torch.Generator().manual_seed(5)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 3, 32, generator=g)
    mask, t = torch.ones(2, 3, dtype=torch.bool), torch.tensor([10.0, 900.0])
    with torch.no_grad():
        assert torch.equal(ours(x, t, ctx, mask), ref(x, t, ctx, mask))
    write_release(tmp_path / "mg", "movqgan")
    assert detect_format(tmp_path / "mg") == "movqgan"
    manifest = import_release(tmp_path / "mg", tmp_path / "mg_out", spec=TINY)
    assert manifest["stages"] == {}
    movq = load_weights(build("movq", "movqgan", "tiny"), tmp_path / "mg_out" / "movq.safetensors").eval()
    ref_movq = load_movqgan(tmp_path / "mg" / "weights" / "movqgan_270M.ckpt", preset="tiny").eval()
    frames = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        assert torch.equal(movq(frames).sample, ref_movq(frames).sample)  # the codebook included


def test_import_kv11_keyframes_reproduces_the_interop_loader_and_refuses_partial_files(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    src, out = tmp_path / "kv11", tmp_path / "out"
    flat = write_release(src, "kv1.1")
    manifest = import_release(src, out, "kv1.1", TINY)
    assert manifest["stages"]["keyframes"] == "keyframes/" and manifest["stages"]["decoder"] == "decoder/"
    assert "keyframes" not in manifest["unwired_stages"]
    assert "not_wired" not in json.loads((out / "keyframes" / "export.json").read_text())
    from ff_lightning.pipelines.kv11 import KV11KeyframeStage
    from ff_lightning.pipelines.video import VideoPipeline

    # ff generate --keyframes out/keyframes --decoder out/decoder (sampling: tests/test_kv11_generate.py)
    assert isinstance(VideoPipeline.from_paths(out / "keyframes", None, out / "decoder").keyframes, KV11KeyframeStage)
    state = load_file(out / "keyframes" / "module.safetensors")
    model = build("keyframe_unet", "kv1_1", "tiny", num_frames=4).eval()
    model.load_state_dict({k[len("unet.") :]: v for k, v in state.items() if k.startswith("unet.")}, strict=True)
    ref = load_keyframe_unet(src / "weights" / "t2v.pt", "kv1_1", "tiny", num_frames=4).eval()
    proj = flat["projections"]
    assert torch.equal(state["text_projection.projection.weight"], proj["projection_base.0.weight"])
    assert torch.equal(state["text_projection.norm.bias"], proj["projection_base.1.bias"])
    assert torch.equal(state["null_embedding.embedding"], flat["keyframes"]["null_embedding"])
    g = torch.Generator().manual_seed(5)
    x, t, ctx = torch.randn(8, 4, 16, 16, generator=g), torch.tensor([3, 900]), torch.randn(2, 6, 32, generator=g)
    first = torch.randn(2, 4, 16, 16, generator=g)
    with torch.no_grad():
        out_video = model(x, t, ctx, first_frame=first, noise_level=20, motion_score=10)
        assert torch.equal(out_video, ref(x, t, ctx, first_frame=first, noise_level=20, motion_score=10))
        assert torch.equal(model.forward_image(x[:2], t, ctx), ref.forward_image(x[:2], t, ctx))
    # a file without the 1.1 parts (a 1.0 UNet under the 1.1 name) is refused, listing them
    path = src / "weights" / "t2v.pt"
    obj = torch.load(path)
    for key in ("image_in_layer.weight", "temporal_motion_score_encoding.3.bias"):
        del obj["unet"][key]
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as e:
        import_release(src, tmp_path / "out2", "kv1.1", TINY)
    assert "unet.image_in_layer.weight" in str(e.value) and "unet.temporal_motion_score_encoding.3.bias" in str(e.value)
    assert not (tmp_path / "out2").exists()
