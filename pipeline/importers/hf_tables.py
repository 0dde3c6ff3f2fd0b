"""Hugging Face ``datasets`` data read with pyarrow alone, batch by batch.

Accepted layouts: a ``save_to_disk`` folder of a ``DatasetDict`` (``dataset_dict.json`` and one
folder per split) or of a single ``Dataset`` (``state.json`` and its ``.arrow`` files); a folder of
Parquet/Arrow files as the hub stores them (``data/train-00000-of-00002.parquet``: the split is the
name before the first ``-``); or one such file. The product does not need the ``datasets`` package:
these are plain Arrow IPC streams and Parquet files, and the feature types (class-label names) are
in the schema's ``huggingface`` metadata or in ``dataset_info.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alarm.pipeline.importers.rows import SourceError

TABLE_SUFFIXES = (".parquet", ".arrow")


@dataclass
class Split:
    """One split of a dataset: its files, in order, and its feature descriptions."""

    name: str
    files: list[Path]
    features: dict[str, Any] = field(default_factory=dict)


def _split_of_file(path: Path) -> str:
    return path.name.split("-", 1)[0].split(".", 1)[0] or "train"


def _dataset_folder(folder: Path, name: str) -> Split:
    state = json.loads((folder / "state.json").read_text())
    files = [folder / f["filename"] for f in state.get("_data_files", [])]
    info_path = folder / "dataset_info.json"
    features = json.loads(info_path.read_text()).get("features") or {} if info_path.is_file() else {}
    return Split(state.get("_split") or name, files, features)


def find_splits(src: Path, wanted: tuple[str, ...] = ()) -> list[Split]:
    """The splits of a ``datasets`` folder or table file(s), restricted to ``wanted`` when given.

    Raises:
        SourceError: Nothing readable is there, or a wanted split is missing.
    """
    src = Path(src)
    if not src.exists():
        raise SourceError(f"{src} does not exist")
    if src.is_file():
        if src.suffix not in TABLE_SUFFIXES:
            raise SourceError(f"{src} is not a .parquet or .arrow file")
        splits = [Split(_split_of_file(src), [src])]
    elif (src / "dataset_dict.json").is_file():
        names = json.loads((src / "dataset_dict.json").read_text()).get("splits", [])
        splits = [_dataset_folder(src / n, n) for n in names]
        for split, name in zip(splits, names, strict=True):
            split.name = name  # the dict's key is the split's name, whatever the folder's state says
    elif (src / "state.json").is_file():
        splits = [_dataset_folder(src, "train")]
    else:
        files = sorted(p for p in src.rglob("*") if p.suffix in TABLE_SUFFIXES and p.is_file())
        by_name: dict[str, Split] = {}
        for path in files:
            by_name.setdefault(_split_of_file(path), Split(_split_of_file(path), [])).files.append(path)
        splits = list(by_name.values())
    if not splits or not any(s.files for s in splits):
        raise SourceError(f"{src} holds no dataset: expected a save_to_disk folder or .parquet/.arrow files")
    if wanted:
        missing = sorted(set(wanted) - {s.name for s in splits})
        if missing:
            raise SourceError(f"{src} has no split(s) {missing}; it has {[s.name for s in splits]}")
        splits = [s for s in splits if s.name in wanted]
    return splits


def _hf_features(schema: Any) -> dict[str, Any]:
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return {}
    try:
        return json.loads(meta).get("info", {}).get("features") or {}
    except (json.JSONDecodeError, AttributeError):
        return {}


def _batches(path: Path, batch_rows: int, columns: list[str] | None = None) -> tuple[Any, Iterator[Any]]:
    """(schema, record batches) of one Parquet or Arrow (IPC stream or file) table, only ``columns``
    when given (Parquet reads no other column; Arrow files are memory-mapped, so the rest is not read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".parquet":
            handle = pq.ParquetFile(path)
            return handle.schema_arrow, handle.iter_batches(batch_size=batch_rows, columns=columns)
        source = pa.memory_map(str(path))
        try:
            reader = pa.ipc.open_stream(source)
            batches = iter(reader)
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        if columns is not None:
            batches = (b.select(columns) for b in batches)
        return reader.schema, batches
    except (OSError, pa.ArrowException) as err:
        raise SourceError(f"{path} is not a readable table: {err}") from err


def iter_batches(split: Split, batch_rows: int = 256, columns: list[str] | None = None
                 ) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(record batch, features) of a split, in order, one batch in memory at a time."""
    for path in split.files:
        schema, batches = _batches(path, batch_rows, columns)
        features = split.features or _hf_features(schema)
        for batch in batches:
            yield batch, features


def iter_rows(split: Split, batch_rows: int = 256, columns: list[str] | None = None
              ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(row, features) for every row of a split, in order (only ``columns`` when given)."""
    for batch, features in iter_batches(split, batch_rows, columns):
        for row in batch.to_pylist():
            yield row, features


def column_names(split: Split) -> list[str]:
    """The column names of a split (from its first file's schema)."""
    schema, _ = _batches(split.files[0], 1)
    return list(schema.names)


def label_names(features: dict[str, Any], column: str) -> list[str] | None:
    """The class names of a ``ClassLabel`` column (or a sequence of them), None for other columns."""
    feature = features.get(column)
    if isinstance(feature, dict) and feature.get("_type") in ("Sequence", "List"):
        feature = feature.get("feature")
    elif isinstance(feature, list) and feature:
        feature = feature[0]
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel":
        return list(feature.get("names") or [])
    return None
