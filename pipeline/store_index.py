"""The clip index of a group: clip key -> part, offset, length, duration, from the committed parts only."""

from __future__ import annotations

import json
import logging
from typing import Any

from alarm.pipeline.store_layout import (
    Location,
    UnreadableTable,
    at,
    committed_parts,
    part_subdir,
    read_marker,
    read_parquet,
    write_parquet_atomic,
)

INDEX_COLUMNS = ("key", "part", "offset", "length", "duration")


def build_index(group: Location, parts: list[str] | None = None) -> Any:
    """The clip index of the committed parts (pyarrow table sorted by key; first part wins a key).

    Each part's clip table is read from the attempt its done marker names (``part_subdir``).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    tables = []
    for part in committed_parts(group) if parts is None else parts:
        marker = read_marker(group, part)
        if marker is None:  # uncommitted since it was listed
            continue
        t = read_parquet(at(group, part_subdir(part, marker), "clips.parquet"))
        if t is None:
            raise FileNotFoundError(f"{at(group, part_subdir(part, marker), 'clips.parquet')} is missing")
        tables.append(t.append_column("part", pa.array([part] * len(t), pa.string())))
    if not tables:
        return pa.table({"key": pa.array([], pa.string()), "part": pa.array([], pa.string()),
                         "offset": pa.array([], pa.int64()), "length": pa.array([], pa.int64()),
                         "duration": pa.array([], pa.float64())})
    table = pa.concat_tables(tables).select(list(INDEX_COLUMNS))
    table = table.take(pc.sort_indices(table, [("key", "ascending"), ("part", "ascending")]))
    keys = table.column("key").to_pylist()
    first = [i for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
    return table.take(pa.array(first, pa.int64())) if len(first) < len(keys) else table


def write_index(group: Location) -> Any:
    """Rebuild ``index.parquet`` from the committed parts and return it."""
    parts = committed_parts(group)
    table = build_index(group, parts)
    table = table.replace_schema_metadata({b"parts": json.dumps(parts).encode()})
    write_parquet_atomic(table, at(group, "index.parquet"))
    return table


def load_index(group: Location) -> Any:
    """The clip index: index.parquet when it covers exactly the committed parts, else rebuilt in memory."""
    try:
        table = read_parquet(at(group, "index.parquet"))
    except UnreadableTable as err:  # derived from the parts: rebuilt below, and written anew by the job
        logging.getLogger(__name__).warning("%s", err)
        table = None
    parts = committed_parts(group)
    if table is not None:
        meta = table.schema.metadata or {}
        if json.loads(meta.get(b"parts", b"null")) == parts:
            return table
    return build_index(group, parts)
