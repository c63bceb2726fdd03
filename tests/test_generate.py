"""``ff generate`` end to end on tiny stage checkpoints written in a temporary folder (initial weights, real files)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from ff_lightning.cli import main
from ff_lightning.config import ConfigError
from ff_lightning.pipeline import GenerateOptions, Stages, generate_video, load_stages, write_outputs
from ff_lightning.tiny_models import write_untrained_stages

FAST = GenerateOptions(steps=2, interp_steps=2, progress=False)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_untrained_stages(tmp_path_factory.mktemp("stages"), seed=0)


@pytest.fixture(scope="module")
def stages(ckpts: dict[str, Path]) -> Stages:
    return load_stages(ckpts["keyframes"], ckpts["interpolation"], ckpts["decoder"])


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_frame_count_follows_4k_minus_3_per_pass(stages: Stages) -> None:
    k = stages.keyframes.num_frames  # 4 keyframes
    one = generate_video(stages, "a red circle moving left", FAST)
    assert one.num_keyframes == k and one.frames.shape == (4 * k - 3, 3, 32, 32)
    two = generate_video(stages, "a red circle moving left", GenerateOptions(**{**FAST.__dict__, "passes": 2}))
    assert two.frames.shape[0] == 4 * (4 * k - 3) - 3 == 16 * (k - 1) + 1
    # keyframes survive interpolation unchanged: the latents at positions 0, 4, 8, ... of pass 1 are pass 2's keys
    assert torch.equal(two.latents[::4], one.latents)
    assert one.decoder.startswith("video decoder")


def test_same_seed_same_frames_other_seed_differs(stages: Stages) -> None:
    a = generate_video(stages, "a blue square moving up", GenerateOptions(**{**FAST.__dict__, "seed": 5}))
    b = generate_video(stages, "a blue square moving up", GenerateOptions(**{**FAST.__dict__, "seed": 5}))
    c = generate_video(stages, "a blue square moving up", GenerateOptions(**{**FAST.__dict__, "seed": 6}))
    assert torch.equal(a.frames, b.frames)
    assert not torch.equal(a.latents, c.latents)


def test_without_video_decoder_decodes_frame_by_frame_with_the_image_movq(stages: Stages) -> None:
    no_dec = Stages(stages.keyframes, stages.interpolation, None)
    r = generate_video(no_dec, "a green circle", FAST)
    assert r.decoder == "image MoVQ decoder, frame by frame"
    frames = torch.cat([no_dec.keyframes.movq.decode(z[None], num_frames=1) for z in r.latents])
    assert torch.equal(r.frames, frames.float().clamp(-1, 1))


def test_mp4_and_gif_decode_to_the_generated_frames(tmp_path: Path, stages: Stages) -> None:
    r = generate_video(stages, "a red triangle", FAST)
    paths = write_outputs(r.frames, tmp_path / "v.mp4", r.fps, tmp_path / "v.gif")
    video = _decode(paths[0])
    assert video.shape == (13, 32, 32, 3)
    from PIL import Image

    with Image.open(paths[1]) as gif:
        assert gif.n_frames == 13 and gif.size == (32, 32)
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


def test_stages_from_different_movq_latent_spaces_are_refused(tmp_path: Path, ckpts: dict[str, Path]) -> None:
    other = write_untrained_stages(tmp_path / "other", seed=0, movq_seed=1, stages=("decoder",))
    with pytest.raises(ConfigError, match="different MoVQ latent spaces") as e:
        load_stages(ckpts["keyframes"], ckpts["interpolation"], other["decoder"])
    assert str(other["movq"]) in str(e.value) and str(ckpts["movq"]) in str(e.value)


def test_cli_generate_end_to_end(tmp_path: Path, ckpts: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out, gif = tmp_path / "out" / "video.mp4", tmp_path / "out" / "video.gif"
    args = ["generate", "a yellow circle moving right quickly", "--keyframes", str(ckpts["keyframes"]),
            "--interpolation", str(ckpts["interpolation"]), "--decoder", str(ckpts["decoder"]), "--out", str(out),
            "--gif", str(gif), "--seed", "3", "--steps", "2", "--interp-steps", "2", "--guidance", "3",
            "--interp-guidance", "0.5", "--tp", "10", "--skip", "2", "--fps", "12", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "13 frames 32x32 at 12 fps" in capsys.readouterr().out
    assert _decode(out).shape == (13, 32, 32, 3) and gif.is_file()


def test_cli_missing_checkpoints_name_the_make_target(
    tmp_path: Path, ckpts: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FF_CACHE_DIR", str(tmp_path / "empty_cache"))
    assert main(["generate", "a prompt", "--out", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err
    assert "no keyframes checkpoint" in err and "make tiny-models" in err
    assert main(["generate", "a prompt", "--keyframes", str(ckpts["keyframes"]), "--out", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err
    assert "no interpolation checkpoint" in err and "make tiny-models" in err
    assert not (tmp_path / "v.mp4").exists()


def test_reference_image_needs_a_reference_keyframe_model(stages: Stages) -> None:
    with pytest.raises(ConfigError, match="takes no reference image"):
        generate_video(stages, "a red circle", GenerateOptions(**{**FAST.__dict__, "image": torch.zeros(3, 32, 32)}))


def test_tiny_checkpoint_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from ff_lightning.tiny_models import find_tiny_checkpoints, tiny_dir

    monkeypatch.setenv("FF_CACHE_DIR", str(tmp_path))
    assert find_tiny_checkpoints() == {"keyframes": None, "interpolation": None, "decoder": None}
    # keyframes from a cached `make compare-temporal` blocks row whose run still has its checkpoint
    run = tmp_path / "runs" / "temporal" / "blocks" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (tmp_path / "ablations" / "temporal").mkdir(parents=True)
    (tmp_path / "ablations" / "temporal" / "blocks-0123.json").write_text(json.dumps({"run_dir": str(run)}))
    assert find_tiny_checkpoints()["keyframes"] == run / "checkpoints" / "last.ckpt"
    # the manifest of `make tiny-models` wins; a listed file that is gone counts as missing
    files = {s: tiny_dir() / f"{s}.ckpt" for s in ("keyframes", "interpolation", "decoder")}
    for p in files.values():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    (tiny_dir() / "manifest.json").write_text(json.dumps({s: str(p) for s, p in files.items()}))
    assert find_tiny_checkpoints() == files
    files["decoder"].unlink()
    assert find_tiny_checkpoints() == {**files, "decoder": None}
