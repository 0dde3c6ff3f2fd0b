"""``csv``: any CSV or TSV, with the column mapping given on the command line.

Each ``--map FIELD=SOURCE`` fills one field of every row. ``SOURCE`` is a column name, or a template
in braces over the row's columns (``audio=Y{youtube_id}.wav``). ``FIELD`` is a manifest field (``id``,
``audio``, ``dataset``, ``prompt``, ``context``, ``description``, ``kind``, ``start``, ``end``) or else
a metadata key: ``transcript``, ``caption`` and ``labels`` have their roles (manifests/README.md), any
other key is kept as ``key: value``. ``audio`` must be mapped; ``dataset`` comes from a mapped column,
``--dataset`` or the file's name; ``id`` defaults to ``<dataset>/<row number>``.
"""

from __future__ import annotations

import csv
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alarm.pipeline.importers.rows import Collected, SourceError, audio_value, dataset_name, find_audio

TOP_LEVEL = ("id", "audio", "dataset", "prompt", "context", "description", "kind", "start", "end")


@dataclass
class CsvOptions:
    """How a CSV/TSV maps to our manifest."""

    mapping: dict[str, str]
    """field -> column name or ``{column}`` template; ``audio`` is required."""
    dataset: str | None = None
    """The ``dataset`` of rows without a mapped dataset column (default: the file's name)."""
    audio_root: Path | None = None
    """Folder that relative audio paths are relative to (default: the CSV's folder)."""
    delimiter: str | None = None
    """Column separator (default: tab for .tsv, else comma)."""
    label_sep: str | None = None
    """Split the labels cell on this separator (default: one label per cell)."""


def parse_mapping(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``("audio=filename", "labels=category")`` -> a mapping; raises SourceError naming a bad item."""
    mapping: dict[str, str] = {}
    for item in items:
        field_name, sep, source = item.partition("=")
        if not sep or not field_name.strip() or not source.strip():
            raise SourceError(f"--map {item!r} is not FIELD=COLUMN (or FIELD={{template}})")
        if field_name.strip() in mapping:
            raise SourceError(f"--map names field {field_name.strip()!r} twice")
        mapping[field_name.strip()] = source.strip()
    if "audio" not in mapping:
        raise SourceError("--map audio=COLUMN is required (the column that names each clip's file)")
    return mapping


def _columns_of(source: str) -> list[str]:
    """The columns a mapping source reads: its template fields, or itself."""
    if "{" not in source:
        return [source]
    try:
        return [name for _, name, _, _ in string.Formatter().parse(source) if name is not None]
    except ValueError as err:
        raise SourceError(f"template {source!r} is malformed: {err}") from err


def _value(row: dict[str, str], source: str) -> str:
    if "{" in source:
        return source.format_map(row).strip()
    return (row.get(source) or "").strip()


def _seconds(text: str, key: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"'{key}' must be a number of seconds, got {text!r}") from None


def _row_id(row: dict[str, str], opts: CsvOptions, number: int, default_dataset: str) -> str:
    """The id a row gets: its mapped id, else ``<dataset>/<row number>``."""
    if "id" in opts.mapping and (value := _value(row, opts.mapping["id"])):
        return value
    dataset = (_value(row, opts.mapping["dataset"]) if "dataset" in opts.mapping else "") or default_dataset
    return f"{dataset}/{number}"


def row_of(row: dict[str, str], opts: CsvOptions, root: Path, out_dir: Path, number: int,
           default_dataset: str) -> dict[str, Any]:
    """The manifest row of one CSV row; raises ValueError with the reject reason."""
    values = {f: _value(row, s) for f, s in opts.mapping.items()}
    out: dict[str, Any] = {"id": _row_id(row, opts, number, default_dataset),
                           "dataset": values.get("dataset") or default_dataset}
    if not values["audio"]:
        raise ValueError("missing: the audio cell is empty")
    out["audio"] = audio_value(find_audio(values["audio"], root), out_dir)
    for key in ("start", "end"):
        if values.get(key):
            out[key] = _seconds(values[key], key)
    for key in ("prompt", "context", "description", "kind"):
        if values.get(key):
            out[key] = values[key]
    metadata: dict[str, Any] = {}
    for key, text in values.items():
        if key in TOP_LEVEL or not text:
            continue
        if key == "labels":
            labels = [x.strip() for x in text.split(opts.label_sep)] if opts.label_sep else [text]
            metadata["labels"] = [x for x in labels if x]
        else:
            metadata[key] = text
    if metadata:
        out["metadata"] = metadata
    return out


def import_csv(src: Path, out: Path, opts: CsvOptions) -> Collected:
    """Map every row of a CSV/TSV to a manifest row; bad rows become rejects.

    Raises:
        SourceError: The file is missing or unreadable, or a mapping names a column it lacks.
    """
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise SourceError(f"{src} does not exist")
    delimiter = opts.delimiter or ("\t" if src.suffix.lower() in (".tsv", ".tab") else ",")
    root = Path(opts.audio_root) if opts.audio_root else src.resolve().parent
    out_dir = out.resolve().parent
    default_dataset = dataset_name(src, opts.dataset)
    collected = Collected()
    try:
        with open(src, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            header = reader.fieldnames or []
            missing = sorted({c for s in opts.mapping.values() for c in _columns_of(s)} - set(header))
            if missing:
                raise SourceError(f"{src} has no column(s) {missing}; its columns are {header}")
            for number, row in enumerate(reader, start=1):
                line = reader.line_num
                if None in row or None in row.values():
                    cells = len(header) + len(row.get(None) or []) - sum(v is None for v in row.values())
                    collected.reject(line, None, f"malformed row: {cells} cells, the header has {len(header)}")
                    continue
                try:
                    collected.add(line, row_of(row, opts, root, out_dir, number, default_dataset))
                except ValueError as err:
                    collected.reject(line, _row_id(row, opts, number, default_dataset), str(err))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SourceError(f"{src} cannot be read as CSV: {err}") from err
    return collected
