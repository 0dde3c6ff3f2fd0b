"""Reading manifest-like files row by row, from a local path or an object URL, without validating.

Shared by every reader of a manifest-like file (the manifest, the eval manifest), so they accept the
same formats (JSONL, JSONL.gz, Parquet) and number lines the same way.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from alarm.pipeline.objects import is_url


class ManifestError(ValueError):
    """The manifest as a whole cannot be used (missing, empty, unreadable, nothing valid)."""


def read_raw_rows(path: Path | str) -> Iterator[tuple[int, Any, str | None]]:
    """Read a JSONL, JSONL.gz or Parquet file (a path or an object URL) row by row, without validating.

    Shared by every reader of a manifest-like file (the eval manifest included), so they accept the
    same formats and number lines the same way.

    Yields:
        ``(line number, parsed row or None, parse error or None)`` for each non-blank row.

    Raises:
        ManifestError: The file cannot be read at all.
    """
    if is_url(path):
        yield from _url_rows(str(path))
        return
    path = Path(path)
    if path.suffix == ".parquet":
        yield from _parquet_rows(path, path)
        return
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            yield from _jsonl_rows(handle, path)
    except (OSError, EOFError) as err:
        raise ManifestError(f"manifest {path} cannot be read: {err}") from err


def _url_rows(url: str) -> Iterator[tuple[int, Any, str | None]]:
    """The rows of a manifest object, read with one GET."""
    from alarm.pipeline.remote_audio import read_object

    try:
        data = read_object(url)
    except FileNotFoundError:
        raise ManifestError(f"manifest {url} does not exist") from None
    if url.endswith(".parquet"):
        import pyarrow as pa

        yield from _parquet_rows(url, pa.BufferReader(data))
        return
    try:
        if url.endswith(".gz"):
            data = gzip.decompress(data)
        yield from _jsonl_rows(io.BytesIO(data), url)
    except (OSError, EOFError) as err:
        raise ManifestError(f"manifest {url} cannot be read: {err}") from err


def _parquet_rows(name: Path | str, source: Any) -> Iterator[tuple[int, Any, str | None]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(source)
    except Exception as err:  # pyarrow raises several types for a broken file
        raise ManifestError(f"manifest {name} is not a readable Parquet file: {err}") from err
    for number, row in enumerate(table.to_pylist(), start=1):
        if isinstance(row.get("metadata"), str):  # Parquet manifests may hold metadata as JSON text
            try:
                row["metadata"] = json.loads(row["metadata"])
            except json.JSONDecodeError as err:
                yield number, None, f"metadata is not valid JSON: {err.msg}"
                continue
        yield number, {k: v for k, v in row.items() if v is not None}, None


def _jsonl_rows(handle: Iterable[bytes], name: Path | str) -> Iterator[tuple[int, Any, str | None]]:
    """Rows of JSON lines, decoded line by line: a line that is not UTF-8 is that line's reject, not
    the whole manifest's, and a byte-order mark (as Windows editors write) is not part of row 1."""
    for number, raw in enumerate(handle, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        elif number == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            raise ManifestError(f"manifest {name} cannot be read: it is UTF-16 text (save it as UTF-8)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield number, None, f"not UTF-8 text: byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line"
            continue
        if not text.strip():
            continue
        try:
            yield number, json.loads(text), None
        except json.JSONDecodeError as err:
            yield number, None, f"malformed JSON: {err.msg} at column {err.colno}"
