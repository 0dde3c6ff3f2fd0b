"""``hf-audio``: a Hugging Face ``datasets`` audio dataset (``save_to_disk`` folder, Parquet or Arrow).

The audio column holds, per row, either a path (a string, or ``{"path": ...}`` without bytes) or the
encoded file itself (``{"bytes": ..., "path": name}``, the ``Audio`` feature's storage). Paths are
kept (resolved against ``audio_root``); embedded bytes are copied unchanged into tar shards beside
the manifest and addressed as ``shard.tar#member`` (see ``shards.py`` for why tar and not FLAC).

The user names the columns that carry the transcript, the caption and the labels (a ``ClassLabel``
column's integers become its class names); any other column can be kept as metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alarm.pipeline.importers.hf_tables import column_names, find_splits, iter_rows, label_names
from alarm.pipeline.importers.rows import Collected, SourceError, audio_value, dataset_name, find_audio
from alarm.pipeline.importers.shards import ShardWriter


@dataclass
class HfAudioOptions:
    """How the columns of a Hugging Face audio dataset map to our manifest."""

    audio: str = "audio"
    """The audio column (paths or embedded bytes)."""
    transcript: str | None = None
    """Column with what is said (``metadata.transcript``)."""
    caption: str | None = None
    """Column with a free-text description of the sound (``metadata.caption``)."""
    labels: str | None = None
    """Column with class labels: a string, a list, or ``ClassLabel`` integers (``metadata.labels``)."""
    prompt: str | None = None
    """Column with the question or instruction (``prompt``)."""
    id_column: str | None = None
    """Column with a unique row id; default ``<dataset>/<split>/<row number>``."""
    dataset: str | None = None
    """The ``dataset`` of every row; default the source's name."""
    splits: tuple[str, ...] = ()
    """Splits to import (default: all)."""
    meta: tuple[str, ...] = ()
    """Further columns kept as metadata (``key: value`` in the description)."""
    audio_root: Path | None = None
    """Folder that relative audio paths are relative to (default: the source's folder)."""
    shards_dir: Path | None = None
    """Where embedded bytes are written as tar shards (default: ``<manifest name>-audio/`` beside it)."""
    label_sep: str | None = None
    """Split string labels on this separator (default: one label per cell)."""


def shard_address(address: str, out_dir: Path) -> str:
    """``/abs/shard.tar#member`` as a manifest value (the shard relative to the manifest when below it)."""
    shard, member = address.split("#", 1)
    return f"{audio_value(shard, out_dir)}#{member}"


def audio_of(value: Any, root: Path, shards: ShardWriter, out_dir: Path, column: str) -> str:
    """The manifest ``audio`` of one audio cell: a checked path, or embedded bytes written to a shard.

    Raises:
        ValueError: No audio in the cell, or its file is missing (the reject reason).
    """
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data:
            return shard_address(shards.add(data, hint=path), out_dir)
        value = path
    if not isinstance(value, str) or not value:
        raise ValueError(f"missing: no audio in column '{column}'")
    return audio_value(find_audio(value, root), out_dir)


def labels_of(value: Any, names: list[str] | None, sep: str | None) -> list[str]:
    """Class labels of one cell as strings (ClassLabel integers through their names; -1 is 'no label')."""
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if item is None or item == -1:
            continue
        if isinstance(item, int) and not isinstance(item, bool) and names is not None:
            if not 0 <= item < len(names):
                raise ValueError(f"label {item} is not a class of this dataset ({len(names)} classes)")
            out.append(names[item])
        elif isinstance(item, str) and sep:
            out.extend(x.strip() for x in item.split(sep) if x.strip())
        elif str(item).strip():
            out.append(str(item).strip())
    return out


def text_of(row: dict[str, Any], column: str) -> str | None:
    value = row.get(column)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"column '{column}' must hold text, got {type(value).__name__}")
    return value.strip() or None


def json_safe(value: Any) -> Any:
    """A metadata value as JSON can hold it (dates and the like become text)."""
    return json.loads(json.dumps(value, default=str))


def row_of(row: dict[str, Any], features: dict[str, Any], opts: HfAudioOptions, audio: str,
           dataset: str, row_id: str) -> dict[str, Any]:
    """The manifest row of one dataset row (``audio`` already resolved)."""
    metadata: dict[str, Any] = {}
    for key, column in (("transcript", opts.transcript), ("caption", opts.caption)):
        if column and (text := text_of(row, column)):
            metadata[key] = text
    if opts.labels and (labels := labels_of(row.get(opts.labels), label_names(features, opts.labels),
                                            opts.label_sep)):
        metadata["labels"] = labels
    for column in opts.meta:
        if row.get(column) is not None:
            metadata[column] = json_safe(row[column])
    out = {"id": row_id, "audio": audio, "dataset": dataset}
    if metadata:
        out["metadata"] = metadata
    if opts.prompt and (prompt := text_of(row, opts.prompt)):
        out["prompt"] = prompt
    return out


def check_columns(names: list[str], opts: HfAudioOptions, split: str) -> None:
    wanted = [c for c in (opts.audio, opts.transcript, opts.caption, opts.labels, opts.prompt, opts.id_column,
                          *opts.meta) if c]
    missing = [c for c in wanted if c not in names]
    if missing:
        raise SourceError(f"split '{split}' has no column(s) {missing}; it has {names}")


def import_hf_audio(src: Path, out: Path, opts: HfAudioOptions) -> Collected:
    """Map every row of every chosen split to a manifest row; bad rows become rejects.

    Raises:
        SourceError: The source is not a dataset, or a named column or split does not exist.
    """
    src, out = Path(src), Path(out)
    splits = find_splits(src, opts.splits)
    dataset = dataset_name(src, opts.dataset)
    root = Path(opts.audio_root) if opts.audio_root else (src if src.is_dir() else src.parent)
    out_dir = out.resolve().parent
    shards_dir = opts.shards_dir or out_dir / f"{out.name.split('.', 1)[0]}-audio"
    collected = Collected()
    line = 0
    with ShardWriter(Path(shards_dir), prefix=dataset) as shards:
        for split in splits:
            check_columns(column_names(split), opts, split.name)
            for number, (row, features) in enumerate(iter_rows(split)):
                line += 1
                row_id = (str(row.get(opts.id_column)) if opts.id_column and row.get(opts.id_column) is not None
                          else f"{dataset}/{split.name}/{number}")
                try:
                    audio = audio_of(row.get(opts.audio), root, shards, out_dir, opts.audio)
                    collected.add(line, row_of(row, features, opts, audio, dataset, row_id))
                except ValueError as err:
                    collected.reject(line, row_id, str(err))
    collected.extra["shards"] = [str(p) for p in shards.shards]
    return collected
