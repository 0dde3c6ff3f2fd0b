"""The feature store's layout: its settings, spec ids, errors, groups and parts, local or on object storage.

Everything that names a location or hashes a spec lives here; writing a part is ``part_writer``, the
clip index ``store_index``, the job's lease and fencing ``store_fence``, and reading ``store`` (whose
docstring draws the whole layout).

A store location is a local ``Path`` or an object-store URL (``s3://bucket/prefix``); ``at`` joins
keys onto either and keeps its kind, and every byte goes through ``pipeline.objects``, so the same
code writes both.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alarm.pipeline.objects import Objects, is_url, join, open_objects
from alarm.pipeline.shard_writer import group_json

STORE_FORMAT = 1
DTYPES = ("float16", "bfloat16", "float32", "int8")
COMPRESSORS = (None, "zstd")
DONE = "_DONE"
STAGING = ".staging"  # local stores: parts being written, beside their group (hard-linked into place)

Location = Path | str
"""A local folder or an object-store URL."""


class StoreSpecError(ValueError):
    """The store has no group matching the requested spec (or several and the choice is ambiguous)."""


class StoreError(RuntimeError):
    """The store on disk is not in the state it must be in (missing file, bad index)."""


class DamagedPartError(StoreError):
    """A committed part's bytes differ from its done marker; the message names the part."""


class FencingError(StoreError):
    """A writer's job no longer holds the store (another job took it): its part is not committed."""


@dataclass
class StoreConfig:
    """How features are laid out on disk.

    Attributes:
        dtype: stored value type: float16 (default), bfloat16, float32, or int8 with one float32 scale
            per frame and layer.
        chunk_frames: frames per inner chunk, the unit of a random read.
        shard_frames: frames per shard file (many inner chunks per file keeps the file count low).
        compressor: None (default) or "zstd".
        compression_level: zstd level when a compressor is set.
        part_seconds: audio-seconds per part; bounds a writer's memory and the work lost to a kill.
    """

    dtype: str = "float16"
    chunk_frames: int = 64
    shard_frames: int = 4096
    compressor: str | None = None
    compression_level: int = 3
    part_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"store dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.compressor not in COMPRESSORS:
            raise ValueError(f"store compressor {self.compressor!r} must be null or 'zstd'")
        if self.chunk_frames < 1 or self.shard_frames < self.chunk_frames:
            raise ValueError("need 1 <= chunk_frames <= shard_frames")
        if self.shard_frames % self.chunk_frames:
            raise ValueError(f"shard_frames {self.shard_frames} must be a multiple of chunk_frames")
        if self.part_seconds <= 0:
            raise ValueError("part_seconds must be positive")

    def settings(self) -> dict[str, Any]:
        """The settings that determine the stored bytes (part_seconds only moves clips between parts)."""
        return {"format": STORE_FORMAT, "dtype": self.dtype, "chunk_frames": self.chunk_frames,
                "shard_frames": self.shard_frames, "compressor": self.compressor,
                "compression_level": self.compression_level if self.compressor else None}


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces: the form that is hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def spec_id(spec: dict) -> str:
    """Short stable id of a group spec (encoder spec + store settings)."""
    return hashlib.blake2b(canonical_json(spec).encode(), digest_size=8).hexdigest()


def group_spec(encoder_spec: dict, cfg: StoreConfig) -> dict:
    """The full spec of a group: what the encoder computes and how it is stored."""
    return {"encoder": encoder_spec, "store": cfg.settings()}


def bytes_per_value(dtype: str, layers: int, dim: int) -> float:
    """Stored bytes per value, int8 scales included (one float32 per frame and layer)."""
    if dtype == "int8":
        return 1.0 + 4.0 / dim
    return {"float16": 2.0, "bfloat16": 2.0, "float32": 4.0}[dtype]


# ------------------------------------------------------------------------------------------ files


def at(location: Location, *keys: str) -> Location:
    """``location`` with ``keys`` appended: a ``Path`` for a local folder, a URL string for a URL."""
    return join(location, *keys) if is_url(location) else Path(location, *keys)


def location(text: str | Path) -> Location:
    """A location from its text: the URL string as is, a local path as a ``Path``."""
    return str(text) if is_url(text) else Path(text)


def store_exists(root: Location) -> bool:
    """True when ``root`` holds something: a local folder, or any object under the URL's prefix."""
    objects = open_objects(root)
    return objects.local.is_dir() if objects.local is not None else bool(objects.list_dirs())


def objects_at(location: Location) -> Objects:
    """The objects under ``location`` (``pipeline.objects.open_objects``)."""
    return open_objects(location)


def file_checksum(path: Path) -> str:
    """blake2b-128 of a file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bytes_checksum(data: bytes) -> str:
    """blake2b-128 of ``data`` (the same digest as ``file_checksum``)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def tree_checksums(folder: Path) -> dict[str, str]:
    """Checksum of every file below ``folder`` except the done marker, by relative path."""
    return {p.relative_to(folder).as_posix(): file_checksum(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != DONE}


@contextmanager
def atomic_path(path: Path, fsync: bool = False) -> Iterator[Path]:
    """A temporary name beside the local file ``path`` to write it under; renamed over ``path`` when
    the block ends, removed if it raises, so a reader sees the old file or the whole new one.

    For a file written in pieces (streamed rows, a Parquet or gzip writer); bytes already in memory
    go through ``write_atomic``, which also handles a URL. The name is hidden and unique
    (``.<name>.<random>.tmp``): two writers never share one, local object listings skip it, and
    ``clear_tmp`` sweeps what a kill left.

    Args:
        path: The file to publish.
        fsync: Flush the written file to disk before the rename, for a file that must survive a
            power loss whole once it has its name (the rename alone orders nothing on some filesystems).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Location, data: bytes) -> None:
    """Write one object whole, so readers never see half of it (a temporary name and a rename on disk).

    One that already holds exactly ``data`` is left alone: a rerun with nothing new writes nothing."""
    if _holds(path, data):
        return
    if is_url(path):
        parent, name = str(path).rsplit("/", 1)
        open_objects(parent).put(name, data)
        return
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(data)


def _holds(path: Location, data: bytes) -> bool:
    """Whether the object at ``path`` exists with exactly ``data`` (its size asked first: no read when it differs)."""
    parent, name = str(path).rstrip("/").rsplit("/", 1)
    try:
        info = open_objects(parent).head(name)
    except OSError:
        return False
    return info is not None and info.size == len(data) and read_bytes(path) == data


def write_parquet_atomic(table: Any, path: Location) -> None:
    """Write a pyarrow table as one Parquet object (``write_atomic``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_atomic(path, sink.getvalue().to_pybytes())


def read_bytes(path: Location) -> bytes | None:
    """An object's bytes, or None when it does not exist."""
    if not is_url(path):
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            return None
    parent, name = str(path).rsplit("/", 1)
    try:
        return open_objects(parent).get(name)
    except FileNotFoundError:
        return None


class UnreadableTable(StoreError, ValueError):  # a ValueError as pyarrow's was: its handlers still apply
    """A table of the store that exists but is not Parquet (torn, overwritten); the message says what to do."""


_REMEDY = {  # what brings each table back, for ``UnreadableTable``'s message
    "index.parquet": "the next run of the job rebuilds it from the committed parts (readers rebuild it in memory)",
    "sources.parquet": "it caches the keyed audio: the next run of the job keys the audio again and rewrites it",
    "clips.parquet": "its part is damaged: `alarm pipeline repair` recomputes it",
}


def read_parquet(path: Location, columns: list[str] | None = None) -> Any:
    """A Parquet object as a pyarrow table, or None when it does not exist (``UnreadableTable`` if torn)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if is_url(path):  # a failed request raises as it is: only the bytes it got are judged below
        source = None if (data := read_bytes(path)) is None else pa.BufferReader(data)
    else:
        source = path if Path(path).is_file() else None
    if source is None:
        return None
    try:
        return pq.read_table(source, columns=columns)
    except (pa.ArrowInvalid, OSError) as err:
        if isinstance(err, (FileNotFoundError, PermissionError)):  # removed since it was seen; not ours to read
            raise
        name = str(path).rstrip("/").rsplit("/", 1)[-1]
        why = " ".join(str(err).split())[:160]
        remedy = _REMEDY.get(name, "delete it and rerun the job on every input this store serves")
        raise UnreadableTable(f"{path} is unreadable ({why}); {remedy}") from None


# ------------------------------------------------------------------------------------------ groups


def group_dir(root: Location, encoder: str, sid: str) -> Location:
    """Location of the group for ``encoder`` under spec id ``sid``."""
    return at(root, "features", encoder, sid)


def store_of_group(group: Location) -> Location:
    """The store a group location belongs to (``<store>/features/<encoder>/<spec id>``)."""
    return str(group).rstrip("/").rsplit("/", 3)[0] if is_url(group) else Path(group).parents[2]


def list_groups(root: Location, encoder: str) -> list[str]:
    """Spec ids present for ``encoder`` (folders holding a spec.json)."""
    objects = open_objects(at(root, "features", encoder))
    return [sid for sid in objects.list_dirs() if objects.exists(f"{sid}/spec.json")]


def init_group(root: Location, encoder: str, spec: dict, layers: int, dim: int,
               frame_rate: float) -> Location:
    """Create (or check) the group for ``spec`` and return its location."""
    sid = spec_id(spec)
    folder = group_dir(root, encoder, sid)
    objects = open_objects(root)
    meta = {"spec_id": sid, "encoder": encoder, "layers": layers, "dim": dim,
            "frame_rate": frame_rate, "spec": spec}
    spec_key = f"features/{encoder}/{sid}/spec.json"
    existing = read_bytes(at(root, spec_key))
    if existing is not None:
        try:
            found = spec_id(json.loads(existing)["spec"])
        except (ValueError, KeyError, TypeError):  # torn or overwritten: written again below, as the job knows it
            found = None
        if found == sid:
            return folder
        if found is not None:
            raise StoreSpecError(f"{at(root, spec_key)} does not hash to its folder name {sid}: the store is damaged")
    # Zarr group metadata down to the parts, so zarr tools see one hierarchy.
    for prefix, attrs in (("", {"alarm_store": STORE_FORMAT}), ("features", {}), (f"features/{encoder}", {}),
                          (f"features/{encoder}/{sid}", {"spec_id": sid}), (f"features/{encoder}/{sid}/parts", {})):
        key = f"{prefix}/zarr.json" if prefix else "zarr.json"
        if not objects.exists(key):
            objects.put(key, group_json(attrs))
    objects.put(spec_key, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return folder


def read_marker(group: Location, part: str) -> dict | None:
    """The done marker of ``part`` as JSON, or None when the part is not committed.

    Raises:
        DamagedPartError: the marker is there but is not a marker (truncated, overwritten).
    """
    path = at(group, "parts", part, DONE)
    data = read_bytes(path)
    if data is None:
        return None
    try:
        marker = json.loads(data)
        why = "" if isinstance(marker, dict) else "not a JSON object"
    except ValueError as err:  # torn JSON, or bytes that are not text
        why = " ".join(str(err).split())[:120]
    if why:
        raise DamagedPartError(f"done marker {path} is unreadable ({why}); `alarm pipeline repair` recomputes "
                               "the part")
    return marker


def committed_parts(group: Location) -> list[str]:
    """Part ids that carry a done marker, sorted."""
    objects = open_objects(group)
    if objects.local is not None:
        parts = objects.local / "parts"
        return sorted(p.name for p in parts.iterdir() if (p / DONE).is_file()) if parts.is_dir() else []
    return sorted(committed_markers(objects))


def committed_markers(group: Objects) -> dict[str, str]:
    """Part id -> its done marker's etag, for every committed part of the group ``group`` opens.

    One listing of ``parts/``, whose markers are the keys ``parts/<part>/_DONE`` (what the job's plan
    and the remote reader both need; the reader keeps the etags to version its cache).
    """
    out = {}
    for info in group.list("parts"):
        bits = info.key.split("/")
        if len(bits) == 3 and bits[0] == "parts" and bits[2] == DONE:
            out[bits[1]] = info.etag
    return out


def part_subdir(part: str, marker: dict) -> str:
    """Where a committed part's files are, relative to its group, given its done marker.

    Parts written under an attempt prefix (their marker names the attempt) keep their files in
    ``parts/<part>/<attempt>/``; stores written before keep them in ``parts/<part>/``. The marker is
    always ``parts/<part>/_DONE``.
    """
    attempt = marker.get("attempt")
    return f"parts/{part}/{attempt}" if attempt else f"parts/{part}"


def part_location(group: Location, part: str) -> Location | None:
    """Where a committed part's files are (``part_subdir``), or None when it is not committed."""
    marker = read_marker(group, part)
    return None if marker is None else at(group, part_subdir(part, marker))


def uncommit_part(group: Location, part: str) -> None:
    """Take a committed part out of the store: its done marker first (readers and the index stop
    seeing it), then its files (every attempt). The next run of the job plans its clips again."""
    objects = open_objects(group)
    objects.delete(f"parts/{part}/{DONE}")
    objects.delete_prefix(f"parts/{part}")


def clear_tmp(folder: Location) -> None:
    """Remove what a killed job left half-written in a local ``folder``: staged parts (``.staging``,
    and ``.tmp`` of stores written before attempts) and ``.*.tmp`` files. Nothing to do on a URL,
    where parts are staged on the workers' disks and a put is whole or absent.

    Call only while holding the store's lease (another job's temporary files would go too).
    """
    if is_url(folder):
        return
    folder = Path(folder)
    for name in (STAGING, ".tmp"):
        shutil.rmtree(folder / name, ignore_errors=True)
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
