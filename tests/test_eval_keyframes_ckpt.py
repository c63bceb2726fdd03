"""``ff eval ucf101|msrvtt --keyframes CKPT`` end to end through the real ``ff`` entry point: a tiny keyframe model
trained 1 step by Lightning (real checkpoint format, MoVQ from a file), tiny random-weight evaluators written to disk
(the runner tests' stand-ins, resolved and hashed through the real weights path), then resume and compare."""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_eval_runners import TinyC3D, TinyClip, TinyI3D, _script, pin_files

from ff_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 2  # the model's frames; the UCF-101 protocol reads 16 (each frame repeated, marked not comparable)
QUICK = [
    "--quiet",
    "--num-samples",
    "4",
    "--set",
    "generation.batch_size=2",
    "--set",
    "uncertainty.n_boot=20",
    "--set",
    "uncertainty.n_boot_distribution=10",
    "--set",
    "uncertainty.repeats=1",
    "--sample-steps",
    "2",
]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("FF_WEIGHTS_DIR", raising=False)


def _fit(root: Path, experiment: str, movq: Path) -> Path:
    """A 1-step Lightning fit of ``experiments/keyframes/<experiment>`` (random t2i UNet, EMA kept): its checkpoint."""
    from ff_lightning.config import load_config
    from ff_lightning.train import fit

    cfg = load_config(ROOT / "experiments/keyframes" / experiment, [
        f"data.cache_dir={root / 'data'}", "data.batch_size=1", f"data.num_frames={FRAMES}", "data.max_samples=2",
        "trainer.max_steps=1", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
        "trainer.limit_val_batches=0", "trainer.log_every_n_steps=1", "optim.warmup_steps=0",
        "optim.ema_decay=0.9", "module.allow_random_t2i=true", f"module.movq_ckpt={movq}",
        "module.log_samples_every_n_steps=0", f"run.output_dir={root / 'runs' / experiment}",
    ])  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FF_CACHE_DIR", str(root / "ffcache"))
        result = fit(cfg)
    assert result.checkpoint is not None
    return Path(result.checkpoint)


@pytest.fixture(scope="module")
def keyframe_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A keyframes-system checkpoint from a 1-step Lightning fit (random t2i UNet, a saved random tiny MoVQ)."""
    from safetensors.torch import save_file

    from ff_lightning import registry
    from ff_lightning.data.bundled import build_all

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("kfckpt")
    build_all(root / "data", reduced=True, size=32, progress=False, sets=["shapes"])
    torch.manual_seed(0)
    movq = root / "movq.safetensors"
    save_file(registry.build("movq", "movqgan", "tiny").state_dict(), str(movq))
    ckpt = _fit(root, "blocks.yaml", movq)
    yield {"ckpt": ckpt, "movq": movq, "root": root}
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference_ckpt(keyframe_ckpt: dict[str, Any]) -> Path:
    """A reference_keyframes checkpoint from a 1-step Lightning fit (same data, MoVQ and settings)."""
    return _fit(keyframe_ckpt["root"], "ref_blocks.yaml", keyframe_ckpt["movq"])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _result(out: Path) -> tuple[Path, dict[str, Any]]:
    (path,) = sorted(out.glob("*.json"))
    return path, json.loads(path.read_text())


def test_ucf101_from_a_keyframe_checkpoint_is_resumable(
    keyframe_ckpt: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ff_lightning.ablate import _load_checkpoint, _read_checkpoint
    from ff_lightning.config import compose
    from ff_lightning.data.fixtures import write_ucf_layout
    from ff_lightning.evaluation.samples import batch_seed

    ckpt = keyframe_ckpt["ckpt"]
    ucf = write_ucf_layout(tmp_path / "ucf", classes=("ApplyEyeMakeup", "YoYo"), num_frames=16)
    out = tmp_path / "run"
    base = ["eval", "ucf101", "--keyframes", str(ckpt), "--data-root", str(ucf), "--out", str(out), *QUICK]

    # no evaluator files, no dataset: stop before generating, naming both files and the missing UCF-101 root;
    # --allow-missing generates and reports why each metric is unavailable
    assert main([a for a in base if a not in ("--data-root", str(ucf))]) == 2
    err = capsys.readouterr().err
    assert "conv3d_deepnetA_ucf.npz" in err and "i3d_torchscript.pt" in err and "--allow-missing" in err
    assert "--data-root UCF101_ROOT" in err and "crcv.ucf.edu/data/UCF101.php" in err
    assert main([*base[: -len(QUICK)], "--data-root", str(tmp_path), *QUICK]) == 2  # a root without the split lists
    assert f"{tmp_path / 'ucfTrainTestlist' / 'classInd.txt'} not found" in capsys.readouterr().err
    assert not (out / "samples").exists() or not list((out / "samples").glob("*.npz"))
    assert main([*base, "--allow-missing", "--out", str(tmp_path / "partial")]) == 0
    _, partial = _result(tmp_path / "partial")
    assert partial["allow_missing"] and partial["samples"]["generated"] == 4
    assert all(
        partial["metrics"][m]["value"] is None and "run with allow_missing" in partial["metrics"][m]["reason"]
        for m in ("is", "fvd")
    )

    c3d = _script(TinyC3D(), tmp_path / "c3d.pt", 0)
    i3d = _script(TinyI3D(), tmp_path / "i3d.pt", 1)
    pin_files(monkeypatch, c3d_ucf101=c3d, i3d_torchscript=i3d)
    argv = [*base, "--c3d", str(c3d), "--i3d", str(i3d)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    path, r = _result(out)
    gen = r["generator"]
    # name: variant, preset, checkpoint hash, then the sampling settings that differ from the checkpoint's own
    assert path.name == f"keyframes-blocks_conv1d_attn1d-tiny-{_sha(ckpt)[:8]}-ddim2-w5.json"
    assert gen["name"] == path.stem
    assert gen["checkpoint"] == str(ckpt.resolve()) and gen["checkpoint_sha256"] == _sha(ckpt)
    assert gen["kind"] == "keyframes_checkpoint" and gen["ema"] is True and gen["global_step"] == 1
    assert gen["movq_sha256"] == _sha(keyframe_ckpt["movq"])
    assert gen["sampling"]["sample_steps"] == 2 and gen["sampling"]["guidance_weight"] == 5.0
    assert gen["frames"] == {"generated": FRAMES, "stored": 16, "protocol": 16, "adaptation": gen["not_comparable"]}
    assert r["protocol"]["name"] == "ucf101_zeroshot" and r["protocol"]["version"] == 1
    assert r["num_samples"] == 4 and r["seed"] == 0
    assert r["samples"]["generated"] == 4 and r["samples"]["generator_calls"] == 2
    assert not r["comparable_to_paper"] and "each frame repeated" in r["notice"]
    for m in ("is", "fvd"):
        rec = r["metrics"][m]
        assert rec["value"] is not None and rec["ci_low"] <= rec["ci_high"] and rec["n"] == 4
    assert "keyframes-blocks_conv1d_attn1d" in printed and "4 generated in 2 calls" in printed
    assert f"checkpoint {ckpt.resolve()} sha256 {_sha(ckpt)[:16]}" in printed

    # the stored videos are the module's own samples for the protocol's prompts and batch seeds, frames repeated
    raw = _read_checkpoint(ckpt)["hyper_parameters"]["config"]
    module = _load_checkpoint(compose(raw, ["module.t2i_ckpt=null"]), ckpt).eval()
    module.ema.swap_in(module.trainable_parameters())
    with np.load(out / "samples" / "000000.npz") as z0, np.load(out / "samples" / "000001.npz") as z1:
        stored = np.stack([z0["video"], z1["video"]])  # (2, 16, 32, 32, 3) uint8
        prompts = [str(z0["prompt"]), str(z1["prompt"])]
    assert stored.shape == (2, 16, 32, 32, 3) and prompts == ["a video of apply eye makeup", "a video of yo yo"]
    latent_hw = tuple(module.encode_frames(torch.zeros(1, 3, 32, 32)).shape[-2:])
    want = module.generate(prompts, latent_hw, steps=2, seed=batch_seed(0, 0)).clamp(-1, 1)  # (2, FRAMES, 3, 32, 32)
    want_u8 = ((want + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    for i in range(16):
        np.testing.assert_array_equal(stored[:, i], want_u8[:, i * FRAMES // 16])

    # a second invocation reuses every sample; after an "interruption" (a lost batch) only that batch is redone
    assert main(argv) == 0
    _, r2 = _result(out)
    assert r2["samples"]["reused"] == 4 and r2["samples"]["generated"] == 0
    assert r2["metrics"]["fvd"]["value"] == r["metrics"]["fvd"]["value"]
    before = np.load(out / "samples" / "000003.npz")["video"]
    (out / "samples" / "000003.npz").unlink()
    assert main(argv) == 0
    _, r3 = _result(out)
    assert r3["samples"]["reused"] == 2 and r3["samples"]["generated"] == 2 and r3["samples"]["generator_calls"] == 1
    np.testing.assert_array_equal(np.load(out / "samples" / "000003.npz")["video"], before)
    assert r3["metrics"]["is"]["value"] == pytest.approx(r["metrics"]["is"]["value"], rel=1e-12)


def test_msrvtt_from_a_keyframe_checkpoint_and_compare(
    keyframe_ckpt: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ff_lightning.evaluation.evaluators as evaluators
    from ff_lightning.data.fixtures import write_msrvtt_layout

    monkeypatch.setattr(evaluators, "OpenClipScorer", lambda path, device: TinyClip(path))  # file still hashed
    ckpt = keyframe_ckpt["ckpt"]
    msr = write_msrvtt_layout(
        tmp_path / "msr", video_ids=(1, 7010, 7011, 7012, 7013), captions_per_video=2, num_frames=4
    )
    clip = tmp_path / "open_clip_pytorch_model.bin"
    clip.write_bytes(b"stand-in clip weights")
    results = []
    for extra in ([], ["--guidance-weight", "0"]):
        out = tmp_path / f"msr{len(results)}"
        argv = [
            "eval",
            "msrvtt",
            "--keyframes",
            str(ckpt),
            "--data-root",
            str(msr),
            "--clip",
            str(clip),
            "--out",
            str(out),
            *QUICK,
            *extra,
        ]
        assert main(argv) == 0
        path, r = _result(out)
        results.append(path)
        assert r["generator"]["checkpoint_sha256"] == _sha(ckpt) and r["num_samples"] == 4 and r["seed"] == 0
        assert r["protocol"]["name"] == "msrvtt_clipsim" and r["samples"]["generated"] == 4
        assert r["per_sample"]["clipsim"]["ids"] == ["video7010", "video7011", "video7012", "video7013"]
        assert r["metrics"]["clipsim"]["n"] == 4 and -1 <= r["metrics"]["clipsim"]["value"] <= 1
        assert r["evaluators"]["clipsim"]["weights"][0]["sha256"] == _sha(clip)
        assert r["comparable_to_paper"] is False  # --num-samples is an override
    a, b = (json.loads(p.read_text()) for p in results)
    assert b["generator"]["sampling"]["guidance_weight"] == 0.0 and b["run_name"].endswith("-ddim2-w0")
    assert a["run_name"] != b["run_name"]
    capsys.readouterr()
    assert main(["eval", "compare", str(results[0]), str(results[1])]) == 0
    text = capsys.readouterr().out
    assert a["run_name"] in text and b["run_name"] in text and f"checkpoint sha256 {_sha(ckpt)[:12]}" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("clipsim"))
    for r in (a, b):
        m = r["metrics"]["clipsim"]
        assert f"{m['ci_low']:.4f}" in line and f"{m['ci_high']:.4f}" in line  # both intervals printed
    assert "paired B - A" in text and "n=4" in line


def test_reference_keyframe_checkpoint_samples_through_the_typed_stage(
    keyframe_ckpt: dict[str, Any], reference_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--keyframes`` on a reference_keyframes checkpoint builds no LightningModule (the typed
    ReferenceKeyframeStage: its image stage makes the reference, EMA weights laid over) and its videos equal the
    system's own ``generate`` for the same prompts and seed."""
    import lightning as L

    import ff_lightning.ablate as ablate
    from ff_lightning.config import compose
    from ff_lightning.data.fixtures import write_ucf_layout
    from ff_lightning.evaluation.keyframe_generator import load_keyframes_generator
    from ff_lightning.evaluation.samples import batch_seed

    obj = torch.load(reference_ckpt, map_location="cpu", weights_only=True)
    assert obj["global_step"] == 1 and obj["hyper_parameters"]["config"]["system"] == "reference_keyframes"
    ema = obj["ema_state_dict"]  # trained one step: the EMA weights are not the raw ones
    assert any(not torch.equal(v, obj["state_dict"][k]) for k, v in ema.items())
    assert "unet.in_layer.reference_weight" in ema

    def no_module(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("built a LightningModule")

    with monkeypatch.context() as mp:
        mp.setattr(ablate, "_load_checkpoint", no_module)
        mp.setattr(L.LightningModule, "__init__", no_module)
        gen = load_keyframes_generator(reference_ckpt, num_frames=FRAMES, sample_steps=2)
        prompts, seed = ["a red circle moving left", "a blue square"], batch_seed(0, 0)
        got = gen(prompts, seed)
        ucf = write_ucf_layout(tmp_path / "ucf", classes=("ApplyEyeMakeup", "YoYo"), num_frames=16)
        argv = ["eval", "ucf101", "--keyframes", str(reference_ckpt), "--data-root", str(ucf), "--out",
                str(tmp_path / "run"), "--allow-missing", *QUICK]  # fmt: skip
        assert main(argv) == 0  # the ff eval path too
    ident = gen.identity
    assert ident["system"] == "reference_keyframes" and ident["ema"] is True and ident["frames"]["generated"] == FRAMES
    assert ident["sampling"]["reference"] == "image stage" and ident["sampling"]["image_guidance_weight"] == 1.0
    _, r = _result(tmp_path / "run")
    assert r["generator"]["system"] == "reference_keyframes" and r["samples"]["generated"] == 4

    module = ablate._load_checkpoint(compose(obj["hyper_parameters"]["config"], ["module.t2i_ckpt=null"]),
                                     reference_ckpt).eval()  # fmt: skip
    module.ema.swap_in(module.trainable_parameters())
    latent_hw = tuple(module.encode_frames(torch.zeros(1, 3, 32, 32)).shape[-2:])
    want = module.generate(prompts, latent_hw, steps=2, seed=seed).clamp(-1, 1)  # the image stage's reference
    assert got.shape == want.shape == (2, FRAMES, 3, 32, 32)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    plain = module.generate(prompts, latent_hw, steps=2, seed=seed, use_reference=False).clamp(-1, 1)
    assert (got - plain).abs().max() > 1e-3  # the reference matters: equality above is not vacuous


def test_not_a_keyframe_checkpoint_is_a_clear_error(
    keyframe_ckpt: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["eval", "ucf101", "--out", str(tmp_path / "o"), *QUICK, "--allow-missing", "--keyframes"]
    decoder = tmp_path / "decoder.ckpt"
    torch.save(
        {"state_dict": {"decoder.w": torch.zeros(1)}, "hyper_parameters": {"config": {"system": "decoder"}}}, decoder
    )
    assert main([*base, str(decoder)]) == 2
    assert "checkpoint of the 'decoder' system" in capsys.readouterr().err

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("arbitrary code ran",))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": Evil()}))
    assert main([*base, str(evil)]) == 2
    captured = capsys.readouterr()
    assert "torch.load(weights_only=True) cannot read it" in captured.err and "arbitrary code ran" not in captured.out

    moved = tmp_path / "moved.ckpt"
    obj = torch.load(keyframe_ckpt["ckpt"], map_location="cpu", weights_only=True)
    obj["hyper_parameters"]["config"]["module"]["movq_ckpt"] = str(tmp_path / "gone.safetensors")
    torch.save(obj, moved)
    assert main([*base, str(moved)]) == 2
    assert "--movq PATH" in capsys.readouterr().err
    assert main([*base, str(moved), "--movq", str(keyframe_ckpt["movq"]), "--num-samples", "2"]) == 0
    capsys.readouterr()

    assert main(["eval", "ucf101", "--generator", "test_noise", "--sample-steps", "2", "--quiet"]) == 2
    assert "--sample-steps apply to --keyframes CKPT only" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "none.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
