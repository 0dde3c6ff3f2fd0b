"""The manifest: one row per training instance, read with every row validated.

A manifest is JSONL (optionally gzipped) or Parquet with the columns documented in
``manifests/README.md`` (machine-readable form: ``manifests/schema.json``). ``read_manifest`` never
dies on a bad row: each malformed line, missing field, wrong type or duplicate id becomes a
``Reject`` with its line number and reason, written to a rejects file beside the manifest, and the
rest is read. Only a manifest that is missing, empty, or has no valid row at all raises.

A manifest, and each row's ``audio``, may be an object-store URL (``s3://bucket/m.jsonl``). A
relative ``audio`` resolves against the manifest's folder, or against its URL prefix.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import posixpath
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.manifest_io import ManifestError, read_raw_rows
from alarm.pipeline.objects import is_url
from alarm.pipeline.store_layout import atomic_path

log = logging.getLogger(__name__)
__all__ = ["ManifestError", "read_raw_rows"]  # re-exported: every reader imports them from here

KINDS = ("audio", "instruction")
REQUIRED = ("id", "audio", "dataset")
OPTIONAL_STR = ("prompt", "context", "description")
KNOWN = set(REQUIRED) | set(OPTIONAL_STR) | {"metadata", "start", "end", "kind"}
# A WebDataset member is written `shard.tar#member`; everything else is a path.
TAR_SEPARATOR = ".tar#"


@dataclass(frozen=True)
class Instance:
    """One training instance: a clip (or a cut of one) plus, optionally, a prompt.

    ``audio`` is resolved at read time: an absolute path or an object URL, or ``shard.tar#member``
    (``/abs/shard.tar#member``, ``s3://bucket/shard.tar#member``) for a member of a WebDataset tar shard.
    """

    id: str
    audio: str
    dataset: str
    metadata: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None
    start: float | None = None
    end: float | None = None
    kind: str = "audio"
    context: str | None = None
    description: str | None = None
    line: int = 0

    @property
    def is_tar_member(self) -> bool:
        return TAR_SEPARATOR in self.audio

    def to_row(self) -> dict[str, Any]:
        """The JSON-serialisable manifest row (without the line number)."""
        row = asdict(self)
        row.pop("line")
        return {k: v for k, v in row.items() if v is not None and v != {}}


@dataclass(frozen=True)
class Reject:
    """A manifest row that could not be used, with where it was and why."""

    line: int
    id: str | None
    reason: str


@dataclass
class ManifestResult:
    """What ``read_manifest`` found: the valid instances, the rejects, and where those went."""

    path: Path | str
    instances: list[Instance]
    rejects: list[Reject]
    rejects_path: Path | str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "instances": len(self.instances),
            "clips": len({(i.audio, i.start, i.end) for i in self.instances}),
            "rejected": len(self.rejects),
            "per_dataset": dict(Counter(i.dataset for i in self.instances)),
        }


def optional_seconds(row: dict[str, Any], key: str) -> float | None:
    """A row's optional time field (``start``, ``end``) as float seconds, None when absent.

    Raises:
        ValueError: The value is not a finite, non-negative number (a bool is not a number here).
    """
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"'{key}' must be a finite number of seconds, got {value!r}")
    if value < 0:
        raise ValueError(f"'{key}' must not be negative, got {value}")
    return float(value)


def resolve_audio(audio: str, base: Path | str) -> str:
    """Resolve a manifest's ``audio`` value against the manifest's folder (or URL prefix).

    An object URL stays as it is; a relative path under a URL manifest becomes a URL beside it.
    """
    if TAR_SEPARATOR in audio:
        shard, member = audio.split("#", 1)
        if not member:
            raise ValueError(f"'audio' names a tar shard without a member: {audio!r}")
        return f"{resolve_audio(shard, base)}#{member}"
    if is_url(audio):
        return audio
    path = Path(audio).expanduser()
    if path.is_absolute():
        return str(path)
    if is_url(base):
        scheme, rest = str(base).split("://", 1)
        bucket, _, prefix = rest.partition("/")
        key = posixpath.normpath(posixpath.join(prefix, audio))
        if key.startswith(".."):
            raise ValueError(f"'audio' {audio!r} points outside the bucket of {base}")
        return f"{scheme}://{bucket}/{key}"
    return str((Path(base) / path).resolve())


def parse_row(row: Any, base: Path | str, line: int) -> Instance:
    """Validate one raw row and build its ``Instance``; raises ``ValueError`` with the reason."""
    if not isinstance(row, dict):
        raise ValueError(f"row must be a JSON object, got {type(row).__name__}")
    # A blank value ("", "  ") is as good as none: a blank id or audio path is a hole in the source table.
    missing = [k for k in REQUIRED if row.get(k) is None or (isinstance(row[k], str) and not row[k].strip())]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")
    for key in REQUIRED + OPTIONAL_STR:
        if key in row and row[key] is not None and not isinstance(row[key], str):
            raise ValueError(f"'{key}' must be a string, got {type(row[key]).__name__}")
    if any(ord(c) < 32 or ord(c) == 127 for c in row["id"]):
        # Ids are joined on and printed one per line (reports, logs): a newline or NUL in one breaks both.
        raise ValueError(f"'id' holds a control character (newline, tab, NUL, ...): {row['id']!r}")
    unknown = sorted(set(row) - KNOWN)
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")
    metadata = row.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"'metadata' must be an object, got {type(metadata).__name__}")
    _check_metadata(metadata)
    kind = row.get("kind") or "audio"
    if kind not in KINDS:
        raise ValueError(f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    start, end = optional_seconds(row, "start"), optional_seconds(row, "end")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"empty cut: end ({end}) must be after start ({start})")
    prompt = row.get("prompt")
    if kind == "instruction" and not prompt:
        raise ValueError("an 'instruction' row needs a 'prompt' (the question)")
    return Instance(
        id=row["id"],
        audio=resolve_audio(row["audio"], base),
        dataset=row["dataset"],
        metadata=metadata,
        prompt=prompt or None,
        start=start,
        end=end,
        kind=kind,
        context=row.get("context") or None,
        description=row.get("description") or None,
        line=line,
    )


def _check_metadata(metadata: dict[str, Any]) -> None:
    """The role keys have fixed types; every other key is free-form."""
    for key in ("transcript", "caption"):
        if key in metadata and not isinstance(metadata[key], str):
            raise ValueError(f"metadata.{key} must be a string")
    labels = metadata.get("labels")
    if labels is not None and (
        not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)
    ):
        raise ValueError("metadata.labels must be a list of strings")
    segments = metadata.get("segments")
    if segments is None:
        return
    if not isinstance(segments, list):
        raise ValueError("metadata.segments must be a list of turns")
    for n, seg in enumerate(segments):
        if not isinstance(seg, dict):
            raise ValueError(f"metadata.segments[{n}] must be an object")
        for key in ("start", "end"):
            if not isinstance(seg.get(key), (int, float)) or isinstance(seg.get(key), bool):
                raise ValueError(f"metadata.segments[{n}].{key} must be a number")
        if seg["end"] < seg["start"]:
            raise ValueError(f"metadata.segments[{n}] ends before it starts")
        if "text" in seg and not isinstance(seg["text"], str):
            raise ValueError(f"metadata.segments[{n}].text must be a string")


def default_rejects_path(path: Path | str) -> Path | str:
    """``<name>.rejects.jsonl`` beside a manifest (a path, or an object URL for a URL manifest)."""
    folder, _, name = str(path).rpartition("/") if is_url(path) else ("", "", Path(path).name)
    for suffix in (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet", ".gz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return f"{folder}/{name}.rejects.jsonl" if folder else Path(path).with_name(f"{name}.rejects.jsonl")


def read_manifest(path: str | Path, rejects_path: str | Path | None = None) -> ManifestResult:
    """Read and validate a manifest.

    Args:
        path: a ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` manifest, a path or an object URL.
        rejects_path: where rejected rows go (JSONL: line, id, reason); default
            ``<name>.rejects.jsonl`` beside the manifest. Written only when something was rejected.

    Returns:
        The valid instances in file order and the rejects.

    Raises:
        ManifestError: the manifest is missing, unreadable, empty, or has no valid row.
        ConfigError: an object store it names cannot be reached (one line naming the URL).
    """
    path = str(path) if is_url(path) else Path(path)
    instances, rejects, written = parse_rows(path, parse_row, rejects_path, "manifest")
    check_audio_stores(instances)
    return ManifestResult(path=path, instances=instances, rejects=rejects, rejects_path=written)


def check_audio_stores(instances: Iterable[Instance]) -> None:
    """Probe each bucket the instances' audio lives in, once, so a wrong endpoint or bad credentials
    fail at once in one line naming the URL, not clip by clip after minutes of retries.

    Raises:
        ConfigError: a bucket cannot be reached.
    """
    from alarm.pipeline.remote_audio import locate

    roots = {"/".join(i.audio.split("/", 3)[:3]): i.audio for i in instances if is_url(i.audio)}
    for audio in roots.values():
        locate(audio)[0].check()


def parse_rows(path: Path | str, parse: Callable[[Any, Path | str, int], Any], rejects_path: str | Path | None,
               what: str) -> tuple[list[Any], list[Reject], Path | str | None]:
    """Parse every row of a manifest-like file, rejecting bad rows and repeated ids with a reason.

    Args:
        path: a ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` file.
        parse: ``(row, base folder, line) -> item`` with an ``id``; raises ValueError for a bad row.
        rejects_path: where rejects go (default ``<name>.rejects.jsonl`` beside ``path``).
        what: the file's kind in error messages ("manifest", "eval manifest").

    Returns:
        The valid items in file order, the rejects, and the rejects file (None when nothing was rejected).

    Raises:
        ManifestError: the file is missing, a folder, unreadable, empty, or has no valid row.
    """
    if is_url(path):
        base: Path | str = _check_url_manifest(str(path), what)
    elif not Path(path).exists():
        raise ManifestError(f"{what} {path} does not exist")
    elif Path(path).is_dir():
        raise ManifestError(f"{what} {path} is a folder; pass the .jsonl/.parquet file inside it")
    else:
        base = Path(path).resolve().parent
    if str(path).lower().endswith((".csv", ".tsv")):  # else every line is "malformed JSON"
        raise ManifestError(f"{what} {path} is a CSV/TSV table; {what}s are JSONL or Parquet "
                            "(`alarm manifest import csv` converts a table)")
    rejects: list[Reject] = []
    items = [item for _, item in unique_rows(read_raw_rows(path), parse, base, rejects)]
    if not items and not rejects:  # every row read is either kept or rejected, so none was read
        raise ManifestError(f"{what} {path} is empty")
    written = None
    if rejects:
        written = rejects_path if rejects_path else default_rejects_path(path)
        written = str(written) if is_url(written) else Path(written)
        try:
            write_rejects(rejects, written)
        except ConfigError as err:  # a read-only bucket: the rejects stay in the result, not beside it
            log.warning("rejects of %s not written: %s", path, err)
            written = None
    if not items:
        first = rejects[0]
        raise ManifestError(f"{what} {path} has no valid row ({len(rejects)} rejected, the first on line "
                            f"{first.line}: {first.reason}; every reason in {written})")
    return items, rejects, written


def string_id(row: Any) -> str | None:
    """A raw row's id for its reject: the ``id`` when the row is an object and the id a string, else None."""
    return row.get("id") if isinstance(row, dict) and isinstance(row.get("id"), str) else None


def unique_rows(rows: Iterable[tuple[int, Any, str | None]], parse: Callable[[Any, Path | str, int], Any],
                base: Path | str, rejects: list[Reject], first_seen: str = "on line",
                reject_id: Callable[[Any], Any] = string_id) -> Iterator[tuple[Any, Any]]:
    """The rows that parse, with ids not seen before; every other row becomes a reject with its reason.

    The one check that both the manifest reader and the importers (``importers/rows.py``) run, so a
    row an importer writes is kept or rejected exactly as ``read_manifest`` would.

    Args:
        rows: ``(line, raw row, read error or None)`` in source order.
        parse: ``(row, base, line) -> item`` with an ``id``; raises ValueError for a bad row.
        base: what relative paths in a row resolve against.
        rejects: a reject is appended here, in row order, for each row not yielded.
        first_seen: how a duplicate's reason names where the id first appeared ("on line" gives
            ``duplicate id (first on line 3)``).
        reject_id: the id a read error or a row that does not parse is rejected under.

    Yields:
        ``(raw row, item)`` for each kept row, in source order (a generator, so a large manifest's raw
        rows need not all be held at once).
    """
    seen: dict[str, int] = {}
    for line, row, error in rows:
        if error is not None:
            rejects.append(Reject(line, reject_id(row), error))
            continue
        try:
            item = parse(row, base, line)
        except ValueError as err:
            rejects.append(Reject(line, reject_id(row), str(err)))
            continue
        if item.id in seen:
            rejects.append(Reject(line, item.id, f"duplicate id (first {first_seen} {seen[item.id]})"))
            continue
        seen[item.id] = line
        yield row, item


def reason_kind(reason: str) -> str:
    """A reject reason's category: the text before its first colon (``"missing: no file x"`` -> ``missing``)."""
    return str(reason).split(":", 1)[0].strip()


def _check_url_manifest(url: str, what: str) -> str:
    """The URL prefix a manifest object's relative audio resolves against; fails at once if unreachable."""
    from alarm.pipeline.remote_audio import locate

    objects, key = locate(url)
    objects.check()
    if not objects.exists(key):
        raise ManifestError(f"{what} {url} does not exist")
    return url.rsplit("/", 1)[0]


def write_rejects(rejects: Iterable[Reject], path: Path | str) -> None:
    """Write rejects as JSONL (temporary file, then rename, so a reader never sees half a file; an
    object URL gets one whole put)."""
    if is_url(path):
        from alarm.pipeline.remote_audio import locate

        objects, key = locate(str(path))
        objects.put(key, "".join(json.dumps(asdict(r)) + "\n" for r in rejects).encode())
        return
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for reject in rejects:
            handle.write(json.dumps(asdict(reject)) + "\n")


def write_manifest(rows: Iterable[Instance | dict[str, Any]], path: str | Path) -> Path:
    """Write instances (or plain row dicts) as a JSONL manifest, gzipped when ``path`` ends in .gz."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with atomic_path(path) as tmp, opener(tmp, "wt", encoding="utf-8") as handle:  # streamed: rows may be many
        for row in rows:
            data = row.to_row() if isinstance(row, Instance) else row
            handle.write(json.dumps(data, ensure_ascii=False) + "\n")
    return path
