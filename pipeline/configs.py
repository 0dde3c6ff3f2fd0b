"""Typed configs: dataclasses saved as YAML, loaded so that unknown keys fail loudly.

Every stage of the project takes a ``@dataclass`` config. YAML is only their saved form: ``load_config``
builds the dataclass (recursing into nested dataclass fields) and raises ``ConfigError`` naming the
offending key, so a typo such as ``lerning_rate`` never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says which key and how to fix it."""


def _dataclass_type(annotation: Any) -> type | None:
    """Return the dataclass inside ``annotation`` (also through ``X | None``), else None."""
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _dataclass_type(arg)
            if found is not None:
                return found
    return None


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a plain dict, refusing keys that ``cls`` does not have."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {', '.join(prefix + k for k in unknown)} for {cls.__name__}; "
            f"known keys: {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = _dataclass_type(hints.get(name))
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, f"{where}.{name}" if where else name)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


def load_config(cls: type[T], path: str | Path) -> T:
    """Load a YAML file into dataclass ``cls``; an empty file gives the defaults."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    return from_dict(cls, data)


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-dict form of a config dataclass (paths become strings)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def save_config(config: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML (the form ``load_config`` reads back)."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
