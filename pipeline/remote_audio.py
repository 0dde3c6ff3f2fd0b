"""Audio on object storage: whole objects, and members of WebDataset tar shards read by byte range.

A plain object (``s3://bucket/clips/a.flac``) is read with one GET of the whole object, cut or not:
clips are under a minute, a compressed stream (FLAC, Ogg, MP3) cannot be cut without its start, and
one request is the fewest round trips. A failed request is retried by the objects layer; only a
missing object becomes a reject (``missing: ...``): a network failure must not be cached as a
reject, so it raises and the job's rerun finishes the clip.

A tar member (``s3://bucket/shards/000.tar#key.flac``) is one ranged GET of exactly its bytes, found
through the shard's member table: member name -> (data offset, size). The table is built once per
shard by walking the tar headers through ``RangedFile`` (a read-ahead window per request, so a
sample's small JSON member and the next header come in one GET; audio members are skipped by
seeking, not downloaded), then kept in memory and in a small JSON file under the local cache
(keyed by the shard's URL, entity tag and size), so the other processes of a node reuse it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import tarfile
import threading
from collections import Counter, OrderedDict
from typing import Any

from alarm.pipeline.objects import Objects, is_url
from alarm.pipeline.store_layout import atomic_path

WINDOW = 64 << 10
"""Bytes fetched per request while walking a shard's headers: enough for a sample's JSON member and
the next header, small beside an audio member (which the walk seeks over), so listing a shard of
1 MB clips reads about 6 % of it, in about one request per sample."""
FETCHED: Counter = Counter()
"""Requests (``get``, ``range``, ``head``) and ``bytes`` read from object storage by this module, per
process: what the tests look at to show a member read does not fetch its shard."""
_LOCK = threading.Lock()
_TABLES: OrderedDict[str, dict[str, tuple[int, int]]] = OrderedDict()
_MAX_TABLES = 256


@functools.lru_cache(maxsize=64)
def _bucket(root: str) -> Objects:
    from alarm.pipeline.objects import open_objects

    return open_objects(root)


def locate(url: str) -> tuple[Objects, str]:
    """The objects of ``url``'s bucket (one client per bucket and process) and the object's key."""
    scheme, rest = url.split("://", 1)
    bucket, _, key = rest.partition("/")
    return _bucket(f"{scheme}://{bucket}"), key


def read_object(url: str) -> bytes:
    """The whole object at ``url`` (one GET). Raises FileNotFoundError when it does not exist."""
    objects, key = locate(url)
    data = objects.get(key)
    _count("get", len(data))
    return data


def object_stat(url: str) -> tuple[int, int] | None:
    """(size, modification time in ns) of the object at ``url``, None when it does not exist."""
    objects, key = locate(url)
    info = objects.head(key)
    _count("head", 0)
    return None if info is None else (info.size, int(info.modified * 1e9))


def _count(kind: str, size: int) -> None:
    with _LOCK:
        FETCHED[kind] += 1
        FETCHED["bytes"] += size


class RangedFile(io.RawIOBase):
    """A read-only, seekable view of one object (or of ``size`` bytes of it from ``base``: a shard
    member) that fetches a window per ranged GET."""

    def __init__(self, objects: Objects, key: str, size: int, window: int = WINDOW, base: int = 0) -> None:
        super().__init__()
        self.objects, self.key, self.size, self.window, self.base = objects, key, size, window, base
        self.pos = 0
        self._start, self._data = 0, b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        end = min(self.size, self.pos + n)
        if end <= self.pos:
            return b""
        if not (self._start <= self.pos and end <= self._start + len(self._data)):
            stop = min(self.size, max(end, self.pos + self.window))
            self._data = self.objects.get_range(self.key, self.base + self.pos, self.base + stop)
            self._start = self.pos
            _count("range", len(self._data))
        out = self._data[self.pos - self._start:end - self._start]
        self.pos += len(out)
        return out

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _shard_version(url: str) -> tuple[Objects, str, int, str]:
    """(objects, key, size, version) of the shard at ``url``; the version is its entity tag and size.

    Raises:
        FileNotFoundError: no such object.
    """
    objects, key = locate(url)
    info = objects.head(key)
    _count("head", 0)
    if info is None:
        raise FileNotFoundError(url)
    return objects, key, info.size, f"{info.etag}-{info.size}"


def open_shard(url: str, window: int | None = None) -> tuple[tarfile.TarFile, RangedFile, str]:
    """A tar reader over the shard at ``url`` (headers by ranged reads) and the shard's version.

    Raises:
        FileNotFoundError: no such object.
    """
    objects, key, size, version = _shard_version(url)
    handle = RangedFile(objects, key, size, window or WINDOW)
    return tarfile.open(fileobj=handle, mode="r:"), handle, version


def remember_table(url: str, version: str, table: dict[str, tuple[int, int]]) -> None:
    """Keep a shard's member table in memory and in the node's cache folder (written atomically)."""
    with _LOCK:
        _TABLES[url] = table
        _TABLES.move_to_end(url)
        while len(_TABLES) > _MAX_TABLES:
            _TABLES.popitem(last=False)
    path = _table_path(url, version)
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(table))
    except OSError:  # a read-only or full cache folder only costs a rebuild elsewhere
        pass


def _table_path(url: str, version: str):
    from alarm.pipeline.cache import alarm_cache_dir

    folder = alarm_cache_dir() / "tar-index"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (hashlib.sha256(f"{url}\n{version}".encode()).hexdigest()[:32] + ".json")


def shard_table(url: str) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size) of a remote shard: from memory, the node's cache, or its headers."""
    with _LOCK:
        table = _TABLES.get(url)
    if table is not None:
        return table
    objects, key, size, version = _shard_version(url)
    path = _table_path(url, version)
    if path.is_file():
        try:
            table = {name: (int(o), int(s)) for name, (o, s) in json.loads(path.read_text()).items()}
        except (ValueError, TypeError, OSError):
            table = None
    if table is None:
        with tarfile.open(fileobj=RangedFile(objects, key, size, WINDOW), mode="r:") as tar:
            table = {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}
    remember_table(url, version, table)
    return table


def member_bytes(url: str, member: str) -> bytes:
    """One member of a remote shard: one ranged GET once the shard's table is known.

    Raises:
        FileNotFoundError: the shard does not exist.
        KeyError: the shard has no such member.
        tarfile.TarError: the shard is not a readable tar.
    """
    table = shard_table(url)
    if member not in table:
        raise KeyError(member)
    offset, size = table[member]
    objects, key = locate(url)
    data = objects.get_range(key, offset, offset + size) if size else b""
    _count("range", len(data))
    return data


def open_ranged(audio: str) -> RangedFile:
    """A seekable view of remote audio, a plain object or ``shard.tar#member``, that fetches only the
    windows its reader reads (a header probe reads one or two, not the whole clip).

    Raises:
        FileNotFoundError: the object or shard does not exist.
        KeyError: the shard has no such member.
        tarfile.TarError: the shard is not a readable tar.
    """
    if "#" in audio:
        url, member = audio.split("#", 1)
        table = shard_table(url)
        if member not in table:
            raise KeyError(member)
        offset, size = table[member]
        objects, key = locate(url)
        return RangedFile(objects, key, size, WINDOW, base=offset)
    objects, key = locate(audio)
    info = objects.head(key)
    _count("head", 0)
    if info is None:
        raise FileNotFoundError(audio)
    return RangedFile(objects, key, info.size, WINDOW)


def is_remote(audio: str) -> bool:
    """True when an instance's audio (a file or ``shard.tar#member``) lives on object storage."""
    return is_url(audio)
