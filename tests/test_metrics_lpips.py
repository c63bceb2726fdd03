"""LPIPS (the ``lpips`` package fed from local files) against a hand-written reference forward with the same (random)
AlexNet trunk and the package's heads; no download may ever happen."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from ff_lightning.metrics import functional as MF
from ff_lightning.metrics import weights
from ff_lightning.metrics.perceptual import TRUNK_KEYS, build_lpips
from ff_lightning.metrics.weights import WeightsUnavailable


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Empty caches, and any attempt to fetch weights fails the test."""
    monkeypatch.setenv("FF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("FF_WEIGHTS_DIR", raising=False)

    def _no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a weight download was attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    try:
        from torchvision.models import _api
    except ImportError:  # torchvision absent: nothing else could download
        return
    monkeypatch.setattr(_api, "load_state_dict_from_url", _no_download)


def _random_trunk_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random AlexNet conv weights under torchvision's names (``features.0.weight`` ...)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    state = {}
    for i, shape in shapes.items():
        fan_in = shape[1] * shape[2] * shape[3]
        state[f"features.{i}.weight"] = torch.randn(shape, generator=g) / fan_in**0.5
        state[f"features.{i}.bias"] = torch.randn(shape[0], generator=g) * 0.1
    assert set(state) == set(TRUNK_KEYS)
    return state


def _reference(state: dict[str, torch.Tensor], x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 written out from the paper / package description (float64): scale, AlexNet conv/ReLU/pool taps,
    channel unit-normalisation, squared difference, the package's calibrated 1x1 heads, spatial mean, sum."""
    F = torch.nn.functional
    heads = torch.load(weights.resolve_weights("lpips_alex_v0.1").path, map_location="cpu", weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
    sd = {k: v.double() for k, v in state.items()}

    def taps(x: torch.Tensor) -> list[torch.Tensor]:
        x = (x.double() - shift) / scale
        out = []
        x = F.relu(F.conv2d(x, sd["features.0.weight"], sd["features.0.bias"], stride=4, padding=2))
        out.append(x)
        x = F.relu(F.conv2d(F.max_pool2d(x, 3, 2), sd["features.3.weight"], sd["features.3.bias"], padding=2))
        out.append(x)
        x = F.relu(F.conv2d(F.max_pool2d(x, 3, 2), sd["features.6.weight"], sd["features.6.bias"], padding=1))
        out.append(x)
        for i in (8, 10):
            x = F.relu(F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1))
            out.append(x)
        return out

    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    for k, (a, b) in enumerate(zip(taps(x0), taps(x1), strict=True)):
        a = a / (a.square().sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.square().sum(1, keepdim=True).sqrt() + 1e-10)
        total += F.conv2d((a - b).square(), heads[f"lin{k}.model.1.weight"].double()).mean(dim=(1, 2, 3))
    return total


def test_lpips_matches_a_hand_written_reference_with_same_trunk() -> None:
    state = _random_trunk_state()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 3, 3, 64, 64, generator=g) * 2 - 1
    x1 = (x0 + 0.3 * torch.randn(x0.shape, generator=g)).clamp(-1, 1)
    got = MF.lpips(x0, x1, reduction="frames", backbone_state_dict=state)
    want = _reference(state, x0.flatten(0, 1), x1.flatten(0, 1)).view(2, 3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        MF.lpips(x0, x1, reduction="none", backbone_state_dict=state), want.mean(1), rtol=1e-5, atol=1e-7
    )
    assert MF.lpips(x0, x0, backbone_state_dict=state).item() == pytest.approx(0.0, abs=1e-12)


def test_missing_backbone_raises_with_instructions(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable) as err:
        build_lpips()
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "alexnet-owt-7be5be79.pth" in msg
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in msg
    assert "FF_WEIGHTS_DIR" in msg and str(tmp_path / "cache" / "weights") in msg
    with pytest.raises(WeightsUnavailable):
        MF.lpips(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64))


def test_backbone_file_is_resolved_and_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _random_trunk_state(3)
    wdir = tmp_path / "weights_here"
    wdir.mkdir()
    f = wdir / "alexnet-owt-7be5be79.pth"
    torch.save(state, f)
    with pytest.raises(ValueError, match="7be5be79"):  # a file whose hash lacks the pinned prefix is refused
        build_lpips(backbone_path=f)
    # lift the prefix pin (the real torchvision file cannot be used offline) to exercise the file-loading path
    entry = weights.KNOWN_WEIGHTS["alexnet"]
    monkeypatch.setitem(weights.KNOWN_WEIGHTS, "alexnet", dataclasses.replace(entry, sha256_prefix=None))
    monkeypatch.setenv("FF_WEIGHTS_DIR", str(wdir))
    x0, x1 = torch.rand(2, 3, 48, 48) * 2 - 1, torch.rand(2, 3, 48, 48) * 2 - 1
    from_file = MF.lpips(x0, x1, reduction="none")
    torch.testing.assert_close(from_file, MF.lpips(x0, x1, reduction="none", backbone_state_dict=state))
    model = build_lpips()
    trunk = next(w for w in model.weights_info if w["name"] == "alexnet")
    assert trunk["path"] == str(f.resolve()) and trunk["pinned"] is False and len(trunk["sha256"]) == 64
    assert str(f.resolve()) in (tmp_path / "cache" / "weights_ledger.json").read_text()


def test_random_trunk_only_when_asked() -> None:
    with pytest.warns(UserWarning, match="RANDOM"):
        model = build_lpips(allow_random_backbone=True)
    assert any(w.get("source") == "random init (test only)" for w in model.weights_info)
    heads = next(w for w in model.weights_info if w["name"] == "lpips_alex_v0.1")
    assert heads["pinned"] is True and heads["path"].endswith("alex.pth")
    with pytest.raises(ValueError, match="only LPIPS"):
        build_lpips(net="vgg", allow_random_backbone=True)
