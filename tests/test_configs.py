"""Configs: YAML into dataclasses, unknown keys refused by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alarm.pipeline.configs import ConfigError, from_dict, load_config, save_config


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
