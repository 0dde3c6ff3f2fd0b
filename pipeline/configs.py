"""Typed configs: dataclasses saved as YAML, loaded so that unknown keys fail loudly.

Every stage of the project takes a ``@dataclass`` config. YAML is only their saved form: ``load_config``
builds the dataclass (recursing into nested dataclass fields) and raises ``ConfigError`` naming the
offending key, so a typo such as ``lerning_rate`` never silently falls back to a default. Every command
that takes a config builds it with ``merge_config`` (file, then command-line overrides), and every bad
configuration raises the one ``ConfigError``; bad data has its own errors (``ManifestError``, ...).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says which key and how to fix it.

    The one error type for configuration, whichever stage raises it: the CLI prints its message and exits 2.
    """


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


def _read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds; an empty file gives an empty mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:  # one line: where it broke and why, not the parser's excerpt
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {getattr(err, 'problem', None) or err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping, got {type(data).__name__}")
    return data


def merge_config(cls: type[T], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None, *,
                 defaults: Mapping[str, Any] | None = None, unset: Iterable[str] = ()) -> T:
    """Build config ``cls`` from a YAML file and the command line: the one way every command does it.

    Layers, lowest first: the dataclass defaults, ``defaults`` (a command's own), the file at ``path``
    (if any), then ``overrides``. An override whose value is None was not given on the command line and
    keeps the file's value; a dotted key reaches into a nested config (``engine.model``). ``unset``
    drops top-level keys of the file that a given option replaces (``--shards`` replaces ``manifest:``).

    Raises:
        ConfigError: the file is missing or not a mapping, a key is unknown, or a value is refused.
    """
    data = {**(defaults or {}), **(_read_yaml(path) if path is not None else {})}
    for key in unset:
        data.pop(key, None)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = data
        for name in parents:
            if not isinstance(node.get(name), dict):
                node[name] = {}
            node = node[name]
        node[leaf] = value
    return from_dict(cls, data)


def load_config(cls: type[T], path: str | Path) -> T:
    """Load a YAML file into dataclass ``cls``; an empty file gives the defaults."""
    return merge_config(cls, path)


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


ALLOW_DOWNLOAD = "ALARM_ALLOW_DOWNLOAD"
"""Environment variable: set to 1 to let a stage download an LLM from the hub (off by default)."""


def local_llm(name: str) -> str:
    """The local folder of the LLM ``name``: the folder itself, or its snapshot in the local HF cache.

    Loading a model that is not on disk makes transformers retry the hub for about a minute and then
    raise a long OSError; we answer at once instead. With ``ALARM_ALLOW_DOWNLOAD=1`` a hub id that
    is not cached is returned as it is, for ``from_pretrained`` to download.

    Raises:
        ConfigError: ``name`` is neither a folder nor cached, and downloads are not allowed.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - the hub raises several types for "not cached" or "not an id"
        # A hub id is "owner/name"; anything else (absolute, ./relative, deeper) is meant as a folder.
        hub_id = not path.is_absolute() and not name.startswith((".", "~")) and name.count("/") <= 1
        if not hub_id:
            raise ConfigError(f"llm folder {name} does not exist: give the folder of a local model "
                              "(llm: /path/to/model, or --llm)") from err
        if os.environ.get(ALLOW_DOWNLOAD) == "1":
            return name
        raise ConfigError(
            f"llm {name!r} is neither a local folder nor in the local Hugging Face cache: give the folder of "
            f"the model (llm: /path/to/model, or --llm), download it first (huggingface-cli download {name}), "
            f"or set {ALLOW_DOWNLOAD}=1 to let alarm download it") from err
