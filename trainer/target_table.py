"""The targets table the trainer reads: its file, its columns and types, its well-formed rows, its fingerprint.

A file that is not Parquet, lacks a column or holds numbers where text belongs is refused whole, in one
line (``DataError``); a row without an id, a dataset or a prompt, or repeating an id, is dropped with its
reason into the run's rejects table (``well_formed``), and the rest trains.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

TARGET_COLUMNS = ("instance_id", "clip_key", "dataset", "prompt", "target", "split")
# Columns that decide what is learned: the fingerprint a resumed run compares.
FINGERPRINT_COLUMNS = ("instance_id", "clip_key", "dataset", "prompt", "target", "split")


class DataError(ValueError):
    """Targets and store do not fit together; the message lists what is missing."""


def read_targets(path: str | Path) -> Any:
    """Read a targets Parquet file (a path or an object-store URL) as a pyarrow Table, checking the
    columns the trainer needs.

    Raises:
        DataError: The file is missing or lacks required columns.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from alarm.pipeline.objects import is_url, open_objects

    if is_url(path):  # one object, read whole (a targets file is small next to the features)
        import io

        objects = open_objects(str(path).rsplit("/", 1)[0])
        try:
            source: Any = io.BytesIO(objects.get(str(path).rsplit("/", 1)[1]))
        except FileNotFoundError:
            raise DataError(f"targets file {path} does not exist") from None
    elif not Path(path).exists():
        raise DataError(f"targets file {path} does not exist")
    else:
        source = path
    try:
        table = pq.read_table(source)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"targets {path} is not a readable Parquet file: {str(err).splitlines()[0]}") from None
    missing = [c for c in TARGET_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"targets {path} lacks column(s) {missing}; has {table.column_names}")
    # Every text column must be text: a number there would stop the join with a TypeError, or worse,
    # be trained on as its digits. All-null columns are text's empty case (each row is rejected).
    wrong = {c: str(table.schema.field(c).type) for c in TARGET_COLUMNS if not _text_type(table.schema.field(c).type)}
    if wrong:
        raise DataError(f"targets {path}: column(s) {', '.join(f'{c} ({t})' for c, t in wrong.items())} "
                        "must hold strings")
    return table


def _text_type(kind: Any) -> bool:
    """Whether an Arrow column type holds text (dictionary-encoded text included) or only nulls."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)


def targets_fingerprint(table: Any) -> str:
    """A content hash of the columns that decide training, independent of row order and file layout."""
    digest = hashlib.sha256()
    columns = {c: table.column(c).to_pylist() for c in FINGERPRINT_COLUMNS}
    # str(): a null id (a row the join rejects) must not stop the sort; equal to the ids otherwise.
    for i in np.argsort(np.asarray([str(v) for v in columns["instance_id"]], dtype=object), kind="stable"):
        row = [str(columns[c][i]) for c in FINGERPRINT_COLUMNS]
        digest.update(json.dumps(row, ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def well_formed(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The rows with an instance id, a dataset and a prompt (empty is allowed), each id once; and the
    others, each with its reason. A repeated id would be trained on twice and would make a resumed run's
    rows ambiguous: the first is kept."""
    kept: list[dict[str, Any]] = []
    rejects: list[dict[str, str]] = []
    seen: set[str] = set()
    for n, row in enumerate(rows):
        ident = row["instance_id"]
        reason = ("no instance_id" if not ident or not ident.strip() else
                  f"duplicate instance_id {ident!r} (its first row is kept)" if ident in seen else
                  "no dataset" if row["dataset"] is None else
                  "no prompt (null)" if row["prompt"] is None else "")
        if reason:
            rejects.append({"instance_id": ident if ident else f"<row {n}>", "reason": reason})
            continue
        seen.add(ident)
        kept.append(row)
    return kept, rejects
