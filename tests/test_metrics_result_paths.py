"""Result files meant to be committed name files without this machine's folders (sha256 identifies the file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ff_lightning.evaluation.results import write_result
from ff_lightning.paths import portable_text

REPO = Path(__file__).resolve().parents[1]


def test_portable_text_maps_cache_repo_and_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FF_CACHE_DIR", str(tmp_path / "cache"))
    home = Path.home()
    text = (
        f"weights at {tmp_path / 'cache' / 'weights' / 'i3d.pt'}; protocol {REPO / 'experiments' / 'x.yaml'}; "
        f"torch hub {home / '.cache' / 'torch' / 'a.pth'}; other /opt/data/b.npz"
    )
    assert portable_text(text) == (
        "weights at $FF_CACHE_DIR/weights/i3d.pt; protocol experiments/x.yaml; "
        "torch hub ~/.cache/torch/a.pth; other /opt/data/b.npz"
    )


def test_write_result_holds_no_machine_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FF_CACHE_DIR", str(tmp_path / "cache"))
    record = {
        "evaluators": {"fvd": {"weights": [{"path": tmp_path / "cache" / "weights" / "i3d.pt", "sha256": "ab" * 32}]}},
        "protocol": {"path": str(REPO / "experiments" / "eval" / "bundled_offline_v1.yaml")},
        "reason": f"file not found. Looked in: {Path.home() / '.cache' / 'torch' / 'hub'}.",
    }
    out = write_result(record, tmp_path / "r.json")
    text = out.read_text()
    for folder in (str(tmp_path), str(REPO), str(Path.home())):
        assert folder + "/" not in text
    r = json.loads(text)
    assert r["evaluators"]["fvd"]["weights"][0]["path"] == "$FF_CACHE_DIR/weights/i3d.pt"
    assert r["protocol"]["path"] == "experiments/eval/bundled_offline_v1.yaml"
    assert r["reason"] == "file not found. Looked in: ~/.cache/torch/hub."
