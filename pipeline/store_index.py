"""The clip index of a group: clip key -> part, offset, length, duration, from the committed parts only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alarm.pipeline.store_layout import committed_parts, write_parquet_atomic

INDEX_COLUMNS = ("key", "part", "offset", "length", "duration")


def build_index(group: Path) -> Any:
    """The clip index of the committed parts (pyarrow table sorted by key; first part wins a key)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    tables = []
    for part in committed_parts(group):
        t = pq.read_table(group / "parts" / part / "clips.parquet")
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


def write_index(group: Path) -> Any:
    """Rebuild ``index.parquet`` from the committed parts and return it."""
    table = build_index(group)
    parts = committed_parts(group)
    table = table.replace_schema_metadata({b"parts": json.dumps(parts).encode()})
    write_parquet_atomic(table, group / "index.parquet")
    return table


def load_index(group: Path) -> Any:
    """The clip index: index.parquet when it covers exactly the committed parts, else rebuilt in memory."""
    import pyarrow.parquet as pq

    path = group / "index.parquet"
    if path.is_file():
        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        if json.loads(meta.get(b"parts", b"null")) == committed_parts(group):
            return table
    return build_index(group)
