"""Config system: yaml + base chains + overrides, validated before any work, with errors naming valid choices."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ff_lightning.config import ConfigError, compose, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "experiments" / "decoder" / "base.yaml"


def test_shipped_experiments_validate() -> None:
    for path in sorted((ROOT / "experiments").glob("*/*.yaml")):
        if path.parent.name in ("ablations", "eval"):
            continue
        cfg = load_config(path)
        assert cfg.system in ("decoder", "movq", "t2i", "keyframes", "reference_keyframes", "interpolation"), path


def test_base_chain_and_overrides(tmp_path: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {BASE}\nmodel:\n  variant: conv3x3x3\ntrainer:\n  max_steps: 7\n")
    cfg = load_config(child, ["trainer.max_steps=3", "module.policy=temporal"])
    assert cfg.model.variant == "conv3x3x3"  # child wins over base
    assert cfg.trainer.max_steps == 3  # override wins over child
    assert cfg.module.policy == "temporal"
    assert cfg.data.num_frames == 8  # inherited from base
    assert cfg.optim.betas == [0.5, 0.9]


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["trainer.max_step=3"], "unknown key 'trainer.max_step'; valid keys of trainer: accelerator"),
        (["foo=1"], "unknown key 'foo'; valid keys of the top level: data, model, module, optim, run, system, trainer"),
        (["module.polcy=temporal"], "unknown key 'module.polcy'; valid keys of module:"),
        (["trainer.max_steps=lots"], "trainer.max_steps"),
        (
            ["model.variant=conv9x9x9"],
            "unknown model.variant 'conv9x9x9' for component 'decoder'; valid choices: 2d_to_3d",
        ),
        (["model.preset=huge"], "valid choices: paper, small, tiny"),
        (
            ["system=nope"],
            "unknown system 'nope'; valid choices: decoder, interpolation, keyframes, movq, reference_keyframes, t2i",
        ),
        (["data.source=youtube"], "unknown data.source 'youtube'; valid choices:"),
    ],
)
def test_invalid_configs_fail_with_valid_choices(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(BASE, overrides)
    assert fragment in str(e.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(BASE, ["trainer.max_step=3", "optim.lrr=1"])
    assert "trainer.max_step" in str(e.value) and "optim.lrr" in str(e.value)


def test_missing_file_and_loops(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(a)


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(BASE, ["model.variant=resblock_attn"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = compose(OmegaConf.load(path))
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
    assert not list(path.parent.glob(".*.tmp"))  # atomic write leaves no temp files


def test_compose_over_a_composed_config() -> None:
    """`make tiny-models` on a fresh machine re-composes a sweep row's typed config with run overrides (it crashed
    with "DictConfig in struct mode does not support pop" before the fix)."""
    keyframes = ROOT / "experiments" / "keyframes" / "base.yaml"
    for path, items in ((BASE, ["model.variant=resblock_attn"]), (keyframes, ["module.guidance_weight=2.5"])):
        cfg = load_config(path, items)
        again = compose(cfg, ["run.name=again", "trainer.max_steps=5"])
        assert again.run.name == "again" and again.trainer.max_steps == 5
        assert OmegaConf.to_container(cfg) == OmegaConf.to_container(compose(cfg))  # nothing else changes
        assert OmegaConf.to_container(again.module) == OmegaConf.to_container(cfg.module)
        with pytest.raises(ConfigError, match="no_such_key"):
            compose(cfg, ["module.no_such_key=1"])
