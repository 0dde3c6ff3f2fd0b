"""Configs: YAML into dataclasses, unknown keys refused by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alarm.pipeline.configs import ConfigError, from_dict, load_config, merge_config, save_config


@dataclass
class Inner:
    rate: int = 16000

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError("rate must be positive")


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    layers: list[int] = field(default_factory=lambda: [1, 2])
    source: str | None = None


def test_round_trip(tmp_path: Path) -> None:
    cfg = Outer(name="y", inner=Inner(rate=24000), layers=[4, 8])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(Outer, tmp_path / "c.yaml") == cfg
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(Outer, tmp_path / "empty.yaml") == Outer()


def test_unknown_and_invalid_keys_fail_loudly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config key nmae"):
        from_dict(Outer, {"nmae": "typo"})
    with pytest.raises(ConfigError, match=r"unknown config key inner\.rte"):
        from_dict(Outer, {"inner": {"rte": 1}})
    with pytest.raises(ConfigError, match="rate must be positive"):
        from_dict(Outer, {"inner": {"rate": -1}})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(Outer, tmp_path / "list.yaml")


def test_train_config_freezes_one_adapter_by_name() -> None:
    from alarm.trainer.config import TrainConfig

    four = ["whisper", "w2vbert", "muq", "sslam"]
    # The ALARM-P recipe freezes only whisper's adapter.
    assert TrainConfig(encoders=four, fusion="perceiver", freeze=["adapters.whisper"]).freeze == ["adapters.whisper"]
    with pytest.raises(ConfigError, match=r"adapters\.muq"):
        TrainConfig(encoders=["whisper", "w2vbert"], fusion="ca", freeze=["adapters.muq"])
    with pytest.raises(ConfigError, match="unknown part"):
        TrainConfig(encoders=four, fusion="ca", freeze=["llm"])


def test_merge_config_layers_defaults_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: from-file\ninner:\n  rate: 8000\nsource: s.jsonl\n")
    assert merge_config(Outer) == Outer()
    assert merge_config(Outer, path) == load_config(Outer, path)
    # None is an option not given: the file's value stays. A dotted key reaches into a nested config.
    cfg = merge_config(Outer, path, {"name": None, "inner.rate": 24000, "layers": [3]})
    assert cfg == Outer(name="from-file", inner=Inner(rate=24000), layers=[3], source="s.jsonl")
    assert merge_config(Outer, None, {"inner.rate": 22050}).inner == Inner(rate=22050)
    # A command's own defaults sit under the file; ``unset`` drops a file key that an option replaces.
    assert merge_config(Outer, path, defaults={"name": "d", "layers": [9]}).name == "from-file"
    assert merge_config(Outer, path, defaults={"layers": [9]}).layers == [9]
    assert merge_config(Outer, path, unset=("source",)).source is None
    with pytest.raises(ConfigError, match=r"unknown config key inner\.rte"):
        merge_config(Outer, path, {"inner.rte": 1})
    with pytest.raises(ConfigError, match="rate must be positive"):
        merge_config(Outer, path, {"inner.rate": -1})


def test_merge_config_refuses_a_bad_file_with_one_error_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        merge_config(Outer, tmp_path / "missing.yaml", {"name": "y"})
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 2, column 1\): ") as err:
        merge_config(Outer, tmp_path / "bad.yaml")
    assert "\n" not in str(err.value)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        merge_config(Outer, tmp_path / "list.yaml", {"name": "y"})


def test_config_checks_of_every_stage_raise_config_error() -> None:
    from alarm.rephrase.run import RephraseConfig
    from alarm.trainer.evaluate import EvalConfig

    with pytest.raises(ConfigError, match="unknown engine 'nope'"):
        merge_config(RephraseConfig, None, {"engine.name": "nope"})
    with pytest.raises(ConfigError, match="^batch_size must be >= 1"):
        merge_config(EvalConfig, None, {"manifest": "m", "checkpoint": "c", "out": "o", "batch_size": 0})
