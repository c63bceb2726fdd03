"""Safe checkpoints: ``ff train`` checkpoints load with ``weights_only=True``; a pickle that needs arbitrary code is
refused (by the loader, by ``run.resume`` and by ``ff export``) without running that code; ``ff export`` writes the
module and the model alone (released key layout) as safetensors with the run's config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ff_lightning import cli, registry
from ff_lightning.checkpoints import UnsafeCheckpointError, export_checkpoint, load_checkpoint
from ff_lightning.config import load_config
from ff_lightning.train import fit

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this would create ``marker`` (what a malicious checkpoint could do with any function)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.makedirs, (str(self.marker),))


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ff_lightning.data.bundled import build_all

    cache = tmp_path_factory.getbasetemp() / "ff_bundled_32"
    build_all(cache, reduced=True, size=32, progress=False, sets=["footage"])
    return cache


def _evil(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 3, "extra": Payload(marker)}, path)
    return path, marker


def test_checkpoint_needing_code_is_refused_clearly(tmp_path: Path) -> None:
    path, marker = _evil(tmp_path)
    with pytest.raises(UnsafeCheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "refusing to load" in msg and str(path) in msg and "weights_only=True" in msg and "safetensors" in msg
    assert not marker.exists()  # the payload never ran
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "step": 1, "names": ["a", "b"]}, plain)
    assert torch.equal(load_checkpoint(plain)["state_dict"]["w"], torch.ones(2))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_resume_and_export_refuse_unsafe_checkpoint(
    data_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, marker = _evil(tmp_path)
    over = [
        f"data.cache_dir={data_cache}", "data.max_samples=2", "trainer.accelerator=cpu", "trainer.devices=1",
        "trainer.max_steps=2", "trainer.enable_progress_bar=false", f"run.output_dir={tmp_path / 'runs'}",
        f"resume={path}",
    ]  # fmt: skip
    assert cli.main(["train", str(REPO / "experiments" / "movq" / "tiny.yaml"), *over]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert cli.main(["export", str(path), "--out", str(tmp_path / "export")]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


class WriteLog:
    """Records ``os.fsync`` (the synced path) and ``os.replace`` calls, passing them through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, ...]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str], **kw: object) -> None:
            self.events.append(("replace", str(Path(src).resolve()), str(Path(dst).resolve())))
            real_replace(src, dst, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def assert_atomic_and_durable(self, path: Path) -> None:
        """``path`` was written as: a temporary file in its own folder, flushed to disk, renamed over ``path`` with
        ``os.replace`` (atomic on one filesystem), then the folder flushed so that the rename survives a crash."""
        target = str(path.resolve())
        renames = [i for i, e in enumerate(self.events) if e[0] == "replace" and e[2] == target]
        assert renames, f"{path} was not renamed into place with os.replace: {self.events}"
        i = renames[-1]
        src = self.events[i][1]
        assert Path(src).parent == path.resolve().parent, f"temporary file {src} is not in the target's folder"
        assert ("fsync", src) in self.events[:i], "the temporary file was not flushed before the rename"
        assert ("fsync", str(path.resolve().parent)) in self.events[i + 1 :], "the folder was not flushed after it"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name synced files")
def test_atomic_checkpoint_io_writes_atomically_and_durably(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's stock writer buffers the file and moves it in through fsspec without flushing anything to disk;
    ours must leave either the old or the new complete file after a crash at any point."""
    from ff_lightning.callbacks import AtomicCheckpointIO

    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    log = WriteLog(monkeypatch)
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.undo()
    log.assert_atomic_and_durable(path)
    assert load_checkpoint(path)["global_step"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name synced files")
def test_ff_export_t2i_checkpoint(
    data_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(
        REPO / "experiments" / "t2i" / "tiny.yaml",
        [
            "data.source=bundled_septuplet", f"data.cache_dir={data_cache}", "data.batch_size=2", "data.max_samples=4",
            "trainer.max_steps=2", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false",
            "trainer.limit_val_batches=0", "trainer.val_check_interval=null", "optim.ema_decay=0.5",
            "module.allow_random_movq=true", "module.log_samples_every_n_steps=0", f"run.output_dir={tmp_path}",
        ],
    )  # fmt: skip
    log = WriteLog(monkeypatch)
    result = fit(cfg)
    monkeypatch.undo()
    log.assert_atomic_and_durable(Path(result.checkpoint))  # training writes checkpoints through AtomicCheckpointIO
    ckpt = load_checkpoint(result.checkpoint)  # an ff train checkpoint loads with weights_only=True
    out = tmp_path / "export"
    assert cli.main(["export", str(result.checkpoint), "--out", str(out)]) == 0
    assert "unet.safetensors" in capsys.readouterr().out

    module = load_checkpoint(out / "module.safetensors")
    assert module.keys() == ckpt["state_dict"].keys()
    assert all(torch.equal(module[k], ckpt["state_dict"][k]) for k in module)
    # the UNet alone, in the released key layout (what a fresh registry build has), from the EMA weights
    unet = load_checkpoint(out / "unet.safetensors")
    assert unet.keys() == registry.build("t2i_unet", "kandinsky3", "tiny").state_dict().keys()
    ema = ckpt["ema_state_dict"]
    assert all(torch.equal(unet[k], ema[f"unet.{k}"]) for k in unet)
    assert any(not torch.equal(unet[k], ckpt["state_dict"][f"unet.{k}"]) for k in unet)  # EMA differs from raw
    again = load_config(out / "config.yaml")  # the exported config is a valid experiment config
    assert again.model.variant == "kandinsky3" and again.optim.ema_decay == 0.5
    manifest = export_checkpoint(result.checkpoint, tmp_path / "raw", use_ema=False)
    raw = load_checkpoint(tmp_path / "raw" / "unet.safetensors")
    assert not manifest["used_ema"] and manifest["global_step"] == 2
    assert all(torch.equal(raw[k], ckpt["state_dict"][f"unet.{k}"]) for k in raw)


def test_export_decoder_model_layout(tmp_path: Path) -> None:
    """The decoder system's model file holds only the video decoder, prefix stripped."""
    state = {"movq.decoder.conv_in.weight": torch.ones(2), "movq.encoder.conv_in.weight": torch.zeros(2)}
    path = tmp_path / "decoder.ckpt"
    torch.save({"state_dict": state, "global_step": 7, "hyper_parameters": {"config": {"system": "decoder"}}}, path)
    manifest = export_checkpoint(path, tmp_path / "out")
    assert set(manifest["files"]) == {"config.yaml", "module.safetensors", "decoder.safetensors"}
    assert list(load_checkpoint(tmp_path / "out" / "decoder.safetensors")) == ["conv_in.weight"]
