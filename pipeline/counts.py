"""How many clips: each count named for what it counts, and printed the same way by every command.

"Clips" is counted at several points between a manifest and the store, and each point gives its
own number. The demo corpus, ``alarm manifest check``, ``alarm stats``, ``alarm pipeline plan``,
``alarm pipeline status`` and the store's report all print one line built here, each with the
counts it can know, so the same name always means the same number:

======================  ==========================================================================
``manifest rows``       valid rows of the input (instances); a clip asked two questions is two rows
``audio files``         distinct audio files (or archive members) the rows name, broken ones included
``sources (audio+cut)`` distinct (audio, start, end): a cut of a file counts beside the whole file
``readable``            sources whose file header opens and whose cut is not empty
``under N s``           readable sources shorter than the feature cache's limit (60 s by default)
``stored clips``        distinct clips in the store after every reject, decoding included; the store
                        keys clips by content, so identical audio under two names is stored once
======================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

COUNTS_HELP = (
    "manifest rows: valid input rows (instances). audio files: distinct files the rows name, broken "
    "ones included. sources (audio+cut): distinct (audio, start, end); a cut counts beside its whole "
    "file. readable: sources whose header opens and whose cut is not empty. under N s: readable "
    "sources shorter than the feature cache's limit. stored clips: distinct clips in the store after "
    "every reject (decoding included), keyed by content.")


@dataclass
class ClipCounts:
    """The named clip counts of one input or store; ``None`` where a command cannot know a count."""

    manifest_rows: int | None = None
    """Valid input rows (instances)."""
    audio_files: int | None = None
    """Distinct audio locations the rows name (broken or missing files included)."""
    sources: int | None = None
    """Distinct (audio, start, end) sources."""
    readable: int | None = None
    """Sources whose header opens and whose cut covers some audio."""
    under_limit: int | None = None
    """Readable sources shorter than ``limit_seconds``."""
    stored: int | None = None
    """Distinct content keys in the store after every reject."""
    limit_seconds: float | None = None
    """The feature cache's clip-length limit that ``under_limit`` counts against."""

    def labels(self) -> list[tuple[str, int]]:
        """(name, count) of each known count, in pipeline order."""
        limit = f"under {self.limit_seconds:g} s" if self.limit_seconds is not None else "under the limit"
        named = [("manifest rows", self.manifest_rows), ("audio files", self.audio_files),
                 ("sources (audio+cut)", self.sources), ("readable", self.readable), (limit, self.under_limit),
                 ("stored clips", self.stored)]
        return [(name, n) for name, n in named if n is not None]

    def line(self) -> str:
        """One line such as ``48 manifest rows · 30 audio files · 31 sources (audio+cut) · 26 stored clips``."""
        return " · ".join(f"{n} {name}" for name, n in self.labels())

    def to_dict(self) -> dict[str, Any]:
        """The known counts by field name (JSON-able)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def input_counts(instances: Iterable[Any]) -> ClipCounts:
    """Manifest rows, audio files and sources of validated instances (anything with audio/start/end)."""
    rows = list(instances)
    return ClipCounts(manifest_rows=len(rows), audio_files=len({r.audio for r in rows}),
                      sources=len({(r.audio, r.start, r.end) for r in rows}))


def store_counts(root: str | Path) -> ClipCounts:
    """The counts a feature store can tell from its tables alone (every input it was given).

    Manifest rows are the accepted instances plus the rows rejected for their audio (a manifest line
    that failed validation is no row); audio files and sources come from the job's source table
    (``sources.parquet``); stored clips are the distinct content keys of the accepted instances.
    """
    from alarm.pipeline.manifest import reason_kind
    from alarm.pipeline.store_layout import at, read_parquet

    counts = ClipCounts()
    instances = read_parquet(at(root, "instances.parquet"), ["key"])
    if instances is not None:
        keys = instances.column("key").to_pylist()
        counts.stored = len({k for k in keys if k is not None})
        rejects = read_parquet(at(root, "rejects.parquet"), ["id", "reason"])
        rejected = 0
        if rejects is not None:
            rejected = sum(1 for r in rejects.to_pylist() if r["id"] is not None and reason_kind(r["reason"]) != "manifest")
        counts.manifest_rows = len(keys) + rejected
    sources = read_parquet(at(root, "sources.parquet"), ["audio", "start", "end"])
    if sources is not None:
        table = sources.to_pylist()
        counts.audio_files = len({r["audio"] for r in table})
        counts.sources = len({(r["audio"], r["start"], r["end"]) for r in table})
    return counts
