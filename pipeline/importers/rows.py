"""What every importer shares: collected rows and rejects, checked and written as our manifest.

An importer turns each source record into a manifest row (a plain dict) or a reject with its reason.
``write_import`` then checks every row with the manifest reader's own ``parse_row`` (so what it writes
always passes ``alarm manifest check``), rejects repeated ids, writes the manifest and, beside it,
``<name>.rejects.jsonl``, and returns the one-line summary the command prints.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alarm.pipeline.manifest import (
    Reject,
    default_rejects_path,
    parse_row,
    unique_rows,
    write_manifest,
    write_rejects,
)


class SourceError(ValueError):
    """The source as a whole cannot be imported (missing, unreadable, wrong layout, bad option)."""


@dataclass
class Collected:
    """Rows an importer made from its source, and the records it rejected, in source order."""

    rows: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    """(record number in the source, manifest row)."""
    rejects: list[Reject] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    """Importer-specific results (e.g. published targets) for the command to write."""

    def add(self, line: int, row: dict[str, Any]) -> None:
        self.rows.append((line, row))

    def reject(self, line: int, row_id: Any, reason: str) -> None:
        self.rejects.append(Reject(line, None if row_id is None else str(row_id), reason))


@dataclass
class ImportSummary:
    """What ``write_import`` wrote."""

    manifest: Path
    instances: int
    clips: int
    rejected: int
    rejects_path: Path | None
    per_dataset: dict[str, int]
    reasons: dict[str, int]
    rows: list[dict[str, Any]] = field(default_factory=list)
    """The rows written, in order."""

    def line(self, fmt: str, src: str) -> str:
        """The one-line summary the command prints."""
        where = f" (reasons in {self.rejects_path})" if self.rejects_path else ""
        return (f"{fmt}: {self.instances} instances ({self.clips} clips, {len(self.per_dataset)} datasets) from "
                f"{src} into {self.manifest}; {self.rejected} rejected{where}")


def audio_value(path: str | Path, out_dir: Path) -> str:
    """A manifest ``audio`` value: relative to the manifest's folder when the file lies under it
    (a tree moved as a whole keeps working), else absolute."""
    path = Path(path).resolve()
    try:
        return path.relative_to(out_dir.resolve()).as_posix()
    except ValueError:
        return str(path)


def find_audio(value: str, root: Path) -> Path:
    """A source's audio path resolved against ``root`` (absolute paths stay as they are).

    Raises:
        ValueError: The file does not exist (reason ``missing: ...``).
    """
    path = Path(os.path.expanduser(value))
    path = Path(os.path.abspath(path if path.is_absolute() else root / path))
    if not path.is_file():
        raise ValueError(f"missing: audio file not found: {path}")
    return path


def write_import(collected: Collected, out: Path) -> ImportSummary:
    """Check every row as the manifest reader would, then write the manifest and its rejects.

    Raises:
        SourceError: No row survived (the rejects file says why).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.resolve().parent
    rejects = list(collected.rejects)
    kept: list[dict[str, Any]] = []
    clips = set()
    # An importer's row is always a dict, rejected under whatever id it carries (the reader's
    # default keeps only string ids, since its raw rows may be anything).
    records = ((line, row, None) for line, row in collected.rows)
    for row, instance in unique_rows(records, parse_row, base, rejects, first_seen="in source record",
                                     reject_id=lambda row: row.get("id")):
        kept.append(row)
        clips.add((instance.audio, instance.start, instance.end))
    rejects.sort(key=lambda r: r.line)
    rejects_path = default_rejects_path(out)
    if rejects:
        write_rejects(rejects, rejects_path)
    elif rejects_path.exists():
        rejects_path.unlink()  # a stale file from an earlier import would mislead
    if not kept:
        raise SourceError(f"no row could be imported ({len(rejects)} rejected; reasons in {rejects_path})")
    write_manifest(kept, out)
    return ImportSummary(
        manifest=out, instances=len(kept), clips=len(clips), rejected=len(rejects),
        rejects_path=rejects_path if rejects else None,
        per_dataset=dict(Counter(r["dataset"] for r in kept)),
        reasons=dict(Counter(r.reason.split(":", 1)[0] for r in rejects)), rows=kept,
    )


def dataset_name(src: Path, given: str | None) -> str:
    """The ``dataset`` of every row: the option if given, else the source's name up to its first dot."""
    if given:
        return given
    return src.resolve().name.split(".", 1)[0] or "imported"
