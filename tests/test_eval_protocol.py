"""Benchmark protocols: the released files validate and are pinned; invalid files fail with useful messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ff_lightning.evaluation.protocol import RELEASED, ProtocolError, load_protocol, protocol_dir

RELEASED_FILES = sorted(protocol_dir().glob("*_v[0-9]*.yaml"))


def test_released_protocols_validate_and_are_pinned() -> None:
    names = {p.stem for p in RELEASED_FILES}
    assert {"ucf101_zeroshot_v1", "ucf101_zeroshot_10k_v1", "msrvtt_clipsim_v1", "bundled_offline_v1"} <= names
    assert set(RELEASED) == names, "every shipped protocol file must be pinned in RELEASED (and vice versa)"
    for path in RELEASED_FILES:
        lp = load_protocol(path)
        assert lp.released and lp.protocol.full_name == path.stem
        assert lp.resolved["version"] == lp.protocol.version
    ucf = load_protocol(protocol_dir() / "ucf101_zeroshot_v1.yaml").protocol
    assert ucf.num_samples == 2048 and ucf.metrics["is"].size == [112, 112] and ucf.metrics["is"].splits == 1
    assert ucf.metrics["fvd"].size == [224, 224] and ucf.metrics["fvd"].num_frames == 16
    assert load_protocol(protocol_dir() / "ucf101_zeroshot_10k_v1.yaml").protocol.num_samples == 10000
    ms = load_protocol(protocol_dir() / "msrvtt_clipsim_v1.yaml").protocol
    assert ms.num_samples == 2990 and ms.metrics["clipsim"].evaluator == "clip_vit_b32_openai"
    off = load_protocol(protocol_dir() / "bundled_offline_v1.yaml")
    assert not off.comparable_to_paper and off.protocol.metrics["is"].kind == "not_applicable"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_unknown_keys_name_the_valid_keys(tmp_path: Path) -> None:
    src = (protocol_dir() / "bundled_offline_v1.yaml").read_text()
    bad = src.replace("seed: 0\nnum_samples", "sede: 0\nnum_samples").replace("  frame_indices:", "  frame_idx:")
    bad = bad.replace("  chunk_size: 64", "  chunk: 64")
    p = _write(tmp_path, "bundled_offline_v1.yaml", bad)
    with pytest.raises(ProtocolError) as e:
        load_protocol(p)
    msg = str(e.value)
    assert "unknown key 'sede'" in msg and "valid keys of the top level:" in msg and "num_samples" in msg
    assert "unknown key 'metrics.fid.frame_idx'" in msg and "frame_indices" in msg
    assert "unknown key 'real.chunk'" in msg and "chunk_size" in msg


def test_wrong_types_and_unknown_choices(tmp_path: Path) -> None:
    src = (protocol_dir() / "bundled_offline_v1.yaml").read_text()
    p = _write(tmp_path, "bundled_offline_v1.yaml", src.replace("num_samples: 96", "num_samples: many"))
    with pytest.raises(ProtocolError, match="num_samples"):
        load_protocol(p)
    bad = src.replace("kind: fid_inception", "kind: fid_magic").replace("evaluator: inception_fid", "evaluator: nope")
    p = _write(tmp_path, "bundled_offline_v1.yaml", bad)
    with pytest.raises(ProtocolError) as e:
        load_protocol(p)
    msg = str(e.value)
    assert "unknown metrics.fid.kind 'fid_magic'; valid choices:" in msg and "fvd_i3d" in msg
    assert "unknown metrics.fid.evaluator 'nope'" in msg and "i3d_torchscript" in msg
    with pytest.raises(ProtocolError, match="must be \\[112, 112\\] for C3D"):
        load_protocol(protocol_dir() / "ucf101_zeroshot_v1.yaml", ["metrics.is.size=[64,64]"])


def test_file_name_must_carry_the_version(tmp_path: Path) -> None:
    p = tmp_path / "bundled_offline_v2.yaml"
    shutil.copy(protocol_dir() / "bundled_offline_v1.yaml", p)
    with pytest.raises(ProtocolError, match="file name must be bundled_offline_v1.yaml"):
        load_protocol(p)
    p.write_text(p.read_text().replace("version: 1", "version: 2"))
    lp = load_protocol(p)  # a new version: valid, not released
    assert lp.protocol.version == 2 and not lp.released and not lp.comparable_to_paper


def test_released_protocol_edited_in_place_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "ucf101_zeroshot_v1.yaml"
    text = (protocol_dir() / "ucf101_zeroshot_v1.yaml").read_text()
    p.write_text(text.replace("# UCF-101", "# edited comment\n# UCF-101"))  # comments may change
    assert load_protocol(p).released
    p.write_text(text.replace("repeats: 4", "repeats: 8"))
    with pytest.raises(ProtocolError, match="released and its content changed.*ucf101_zeroshot_v2.yaml"):
        load_protocol(p)


def test_overrides_are_recorded_and_break_comparability() -> None:
    base = load_protocol(protocol_dir() / "ucf101_zeroshot_v1.yaml")
    assert base.comparable_to_paper and base.overrides == []
    lp = load_protocol(protocol_dir() / "ucf101_zeroshot_v1.yaml", ["num_samples=16"])
    assert lp.protocol.num_samples == 16 and lp.released and not lp.comparable_to_paper
    assert lp.as_dict()["overrides"] == ["num_samples=16"] and lp.content_sha256 != base.content_sha256
    with pytest.raises(ProtocolError, match="unknown key 'nope'"):
        load_protocol(protocol_dir() / "ucf101_zeroshot_v1.yaml", ["nope=1"])
    with pytest.raises(ProtocolError, match="not 'msrvtt'"):
        load_protocol(protocol_dir() / "ucf101_zeroshot_v1.yaml", benchmark="msrvtt")
