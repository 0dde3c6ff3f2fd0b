"""Content-addressed generation cache: Parquet parts, written atomically, one writer per part.

Each pass keeps a folder (or an object-store prefix) of immutable parts
(``part-<time>-<uuid>.parquet``). On disk a part is written to a hidden temporary file and renamed
into place; on object storage it is one PUT, which is atomic too. Either way a killed job leaves a
whole part or none; an orphaned temporary file is ignored (and removed by the next writer). A part
never changes once written, so one read of it serves the life of the ``PassCache``. Rows are keyed by
``request_key``: a hash of everything that determines the output, so a rerun skips every key it
already holds and a changed template or model simply misses.

A key may appear more than once only as an error row followed by a retried one; ``read`` keeps the
best row per key (a success over an error, then the newest).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alarm.pipeline.store_layout import atomic_path

PART_NAME = re.compile(r"part-\d+-[0-9a-f]+\.parquet")


def request_key(**parts: Any) -> str:
    """The cache key: a SHA-256 over the JSON of everything that determines a generation."""
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def seed_from_key(key: str) -> int:
    """A request's sampling seed, derived from its key so reruns reproduce it (31 bits for vLLM)."""
    return int(key[:8], 16) & 0x7FFFFFFF


@dataclass(frozen=True)
class CachedGeneration:
    """One stored generation (or failure) of a pass."""

    key: str
    text: str
    n_prompt_tokens: int
    n_tokens: int
    finish_reason: str
    error: str | None
    seed: int
    model: str
    template_hash: str
    sampling: str
    forced: bool
    gen_seconds: float
    created: float

    @property
    def ok(self) -> bool:
        return self.error is None


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()), ("text", pa.string()), ("n_prompt_tokens", pa.int64()),
        ("n_tokens", pa.int64()), ("finish_reason", pa.string()), ("error", pa.string()),
        ("seed", pa.int64()), ("model", pa.string()), ("template_hash", pa.string()),
        ("sampling", pa.string()), ("forced", pa.bool_()), ("gen_seconds", pa.float64()),
        ("created", pa.float64()),
    ])


class PassCache:
    """The parts of one pass (``answer``, ``rephrase`` or ``judge``) under a folder or a URL prefix."""

    def __init__(self, root: str | Path, pass_name: str) -> None:
        from alarm.pipeline.objects import join, open_objects

        self.location = join(root, pass_name)
        self.objects = open_objects(self.location)
        self.folder = self.objects.local  # None on object storage
        self._rows: dict[str, list[dict[str, Any]]] = {}

    def parts(self) -> list[str]:
        """The keys of the finished parts, oldest first."""
        return sorted(info.key for info in self.objects.list() if PART_NAME.fullmatch(info.key))

    def read(self) -> dict[str, CachedGeneration]:
        """Every key's best row: a success beats an error; among equals the newest wins."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        best: dict[str, CachedGeneration] = {}
        for part in self.parts():
            if part not in self._rows:
                data = self.objects.get(part)
                try:
                    self._rows[part] = pq.read_table(pa.BufferReader(data), schema=_schema()).to_pylist()
                except (pa.ArrowInvalid, OSError) as err:  # damaged from outside (writes are whole)
                    # A cache: what the part held is generated again, not worth stopping the run for.
                    logging.getLogger(__name__).warning(
                        "cache part %s/%s is unreadable (%s): its generations are made again; delete it "
                        "to silence this", str(self.location).rstrip("/"), part, " ".join(str(err).split())[:160])
                    self._rows[part] = []
            for row in self._rows[part]:
                gen = CachedGeneration(**row)
                old = best.get(gen.key)
                if old is None or (gen.ok, gen.created) > (old.ok, old.created):
                    best[gen.key] = gen
        return best

    def write(self, rows: list[CachedGeneration]) -> str | None:
        """Write ``rows`` as one new part (a file: temporary, fsync, rename; an object: one PUT).

        Returns:
            The part's key, None when there was nothing to write.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return None
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        table = pa.Table.from_pylist([row.__dict__ for row in rows], schema=_schema())
        if self.folder is None:
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, compression="zstd")
            self.objects.put(name, sink.getvalue().to_pybytes())
            return name
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()
        with atomic_path(self.folder / name, fsync=True) as tmp:  # ``.part-*.tmp``, as swept below
            pq.write_table(table, tmp, compression="zstd")
        return name

    def _remove_stale_temporaries(self, older_than_s: float = 3600.0) -> None:
        """Temporary files of killed writers; only old ones, a live writer's file is young."""
        now = time.time()
        for tmp in self.folder.glob(".part-*.tmp"):
            try:
                if now - tmp.stat().st_mtime > older_than_s:
                    tmp.unlink()
            except FileNotFoundError:
                pass
