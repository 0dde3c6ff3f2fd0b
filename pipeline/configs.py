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
        key = f"{where}.{name}" if where else name
        sub = _dataclass_type(hints.get(name))
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, key)
        elif sub is not None and value is not None and not isinstance(value, sub):
            raise ConfigError(f"{key}: expected a mapping of {sub.__name__}'s keys, got {value!r}")
        elif sub is None:
            value = _typed(value, hints.get(name, Any), key)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


def _kind(annotation: Any) -> str:
    """How an annotation reads in an error message."""
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _typed(value: Any, annotation: Any, key: str) -> Any:
    """``value`` checked against the field's annotation, with YAML's near misses converted.

    The dataclasses compare and compute with their fields, so a wrong type would surface later as a
    TypeError deep in training (``lr: fast``) or, worse, work wrongly (a string iterated as a list).
    Converted, because they mean one thing only: ``1e-3`` (PyYAML reads a float without a dot as a
    string), ``"8"`` for an int, ``2.0`` for an int, and a comma-separated string for a list of strings
    (what the command line's ``--encoders a,b`` gives). None is left to the dataclass (many fields take it).
    """
    if value is None or annotation is Any or isinstance(annotation, (str, typing.TypeVar)):
        return value
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _typed(value, option, key)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{key}: expected {' or '.join(_kind(a) for a in options)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation in (int, float):
        return _number(value, annotation, key)
    if annotation is str:
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{key}: expected a string, got {value!r} ({type(value).__name__})")
        return value
    if origin in (list, tuple) or annotation in (list, tuple):
        if isinstance(value, str) and args and args[0] is str:  # a brace pattern's commas are its own
            value = [value] if "{" in value else [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({list(value)})")
            return tuple(_typed(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [_typed(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r} ({type(value).__name__})")
        item = args[1] if len(args) == 2 else Any
        return {k: _typed(v, item, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(annotation) and not isinstance(value, (annotation, dict)):
        # a mapping is left as it is: the dataclass holding it builds it (FrontEndConfig's encoders)
        raise ConfigError(f"{key}: expected a mapping, got {value!r} ({type(value).__name__})")
    return value  # another class (a Path, an enum): the dataclass decides


def _number(value: Any, kind: type, key: str) -> int | float:
    """An int or float field's value; see ``_typed``."""
    if isinstance(value, str):
        try:
            value = float(value) if kind is float else int(value.strip())
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r} ({type(value).__name__})")
    if value != value:  # NaN passes every `< 0` check below it
        raise ConfigError(f"{key}: expected a number, got NaN")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        return int(value)
    return value


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
            if node.get(name) is None:
                node[name] = {}
            elif not isinstance(node[name], dict):  # the file's value would be dropped without a word
                raise ConfigError(f"{name}: expected a mapping, got {node[name]!r}")
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


def model_folder(name: str) -> str:
    """``local_llm(name)``, refusing a local folder that holds no model (no config.json).

    Loading such a folder raises a long tokenizer or config error far from the cause (a path one
    level too high or too low); this says it in one line before anything loads.

    Raises:
        ConfigError: as ``local_llm``, or the folder has no config.json.
    """
    found = local_llm(name)
    if Path(found).is_dir() and not (Path(found) / "config.json").is_file():
        raise ConfigError(f"llm folder {name} holds no config.json: it is not a model folder "
                          "(give the folder with config.json and the weights)")
    return found
