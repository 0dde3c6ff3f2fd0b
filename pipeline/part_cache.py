"""A bounded local read-through cache of object-store files: the second epoch reads local disk.

A reader of a feature store on object storage asks this cache for a part's files; a file not here
is downloaded whole, checked against the checksum its part's done marker gives, and kept. The cache
holds at most ``limit`` bytes: after a download it removes the least recently used files until the
rest fits (a file is "used" when a reader asks for it).

Layout under the folder::

    files/<ab>/<hash>        one cached object; the name hashes (URL, key, version), so another
                             version of an object (a re-committed part) is another entry
    tmp/<pid>/<hash>.<rand>  downloads in progress, per process
    locks/<hash>             held while one process downloads that object (the others wait for it)
    pinned/<pid>-<rand>/     hard links one process holds (zarr reads a whole folder lazily)
    .lock                    held while evicting

Several processes on one machine (DataLoader workers) share the folder. A download goes to a
temporary name and is renamed into place only when complete and checked, so no half file is ever
served, even after a kill (the kill leaves a temporary file, removed by a later eviction). Two
processes asking for the same object at once download it once (a lock per object; a lock file
removed by an eviction at the wrong moment costs at most a second download, never a torn file).
Eviction holds a lock so that two processes do not each remove a share; it may unlink a file
another process has open, which keeps reading its descriptor (POSIX frees the space when it
closes; readers of object storage keep few parts open for that reason).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.process_dirs import pid_of, process_alive

DEFAULT_LIMIT_GB = 8.0
STALE_TMP_S = 3600.0  # a download older than this whose process is gone is a kill's leftover


class CacheChecksumError(ValueError):
    """A downloaded object differs from the checksum it was expected to have; it is not kept."""


@dataclass
class CacheStats:
    """What this process asked the cache for: hits, downloads (misses), bytes downloaded, evictions."""

    hits: int = 0
    misses: int = 0
    downloaded_bytes: int = 0
    evicted: int = 0


@dataclass
class PartCache:
    """A local folder of object-store files, at most ``limit`` bytes, least recently used out first.

    Picklable (folder and limit travel; the counters start at zero in each process).
    """

    folder: Path
    limit: int
    stats: CacheStats = field(default_factory=CacheStats, compare=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        if self.limit <= 0:
            raise ConfigError(f"part cache limit must be positive, got {self.limit} bytes")

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "limit": self.limit, "stats": CacheStats()}

    # ------------------------------------------------------------------------------------ reading

    def entry(self, url: str, key: str, version: str = "") -> Path:
        """Where the object ``url/key`` (at ``version``: an etag or a checksum) is kept."""
        name = hashlib.blake2b(f"{url.rstrip('/')}/{key}\0{version}".encode(), digest_size=16).hexdigest()
        return self.folder / "files" / name[:2] / name

    def open(self, objects: Any, key: str, version: str = "", checksum: str | None = None) -> int:
        """A read-only descriptor of the object ``key`` of ``objects``, downloaded first if not here.

        Args:
            objects: ``pipeline.objects`` root the key is relative to.
            key: the object's key.
            version: what tells this object's versions apart (the marker's checksum of the file,
                an etag); part of the entry's name.
            checksum: blake2b-128 hex the bytes must have; a download that differs is dropped
                and raises ``CacheChecksumError``.

        Raises:
            FileNotFoundError: the object does not exist.
            CacheChecksumError: its bytes differ from ``checksum``.
        """
        path = self.entry(objects.url, key, version)
        for _ in range(3):  # an eviction by another process may remove the file between fetch and open
            self._fetch(objects, key, path, checksum)
            try:
                return os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
        raise OSError(f"part cache {self.folder}: {key} keeps being evicted before it is read; raise the limit")

    def read(self, objects: Any, key: str, version: str = "", checksum: str | None = None) -> bytes:
        """The whole object's bytes, through the cache (see ``open``)."""
        fd = self.open(objects, key, version, checksum)
        try:
            with os.fdopen(fd, "rb", closefd=False) as handle:
                return handle.read()
        finally:
            os.close(fd)

    def link(self, objects: Any, key: str, dest: Path, version: str = "", checksum: str | None = None) -> None:
        """Hard-link the cached object to ``dest`` (pinned: eviction cannot take it from under zarr)."""
        path = self.entry(objects.url, key, version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            self._fetch(objects, key, path, checksum)
            try:
                os.link(path, dest)
                return
            except FileNotFoundError:
                continue
        raise OSError(f"part cache {self.folder}: {key} keeps being evicted before it is linked; raise the limit")

    def pin_folder(self) -> Path:
        """A new folder for this process's pinned links (removed by an eviction once the process is gone)."""
        folder = self.folder / "pinned" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        return folder

    def _fetch(self, objects: Any, key: str, path: Path, checksum: str | None) -> None:
        if self._touch(path):
            return
        lock = self.folder / "locks" / path.name
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # one download of an object at a time; the others then hit
            if self._touch(path):
                return
            # Not store_layout.atomic_path: the temporary name sits under tmp/<pid>/, not beside the
            # entry, so an eviction can tell a dead process's half download from a cached file (and
            # remove it); and the download is streamed to disk by get_file and checked before the rename.
            tmp = self.folder / "tmp" / str(os.getpid()) / f"{path.name}.{uuid.uuid4().hex[:8]}"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            try:
                objects.get_file(key, tmp)
                if checksum is not None:
                    from alarm.pipeline.store_layout import file_checksum

                    if file_checksum(tmp) != checksum:
                        raise CacheChecksumError(f"checksum of {key} differs from its done marker")
                size = tmp.stat().st_size
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, path)  # whole and checked, or not there at all
            finally:
                tmp.unlink(missing_ok=True)
        self.stats.misses += 1
        self.stats.downloaded_bytes += size
        self.evict(keep=path)

    def _touch(self, path: Path) -> bool:
        """Whether ``path`` is cached; marks it used (the recency eviction goes by)."""
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        self.stats.hits += 1
        return True

    # ----------------------------------------------------------------------------------- eviction

    def files(self) -> list[tuple[float, int, Path]]:
        """Cached files as (last use, size, path), least recently used first."""
        out = []
        base = self.folder / "files"
        if not base.is_dir():
            return out
        for sub in os.scandir(base):
            if not sub.is_dir():
                continue
            for item in os.scandir(sub.path):
                try:
                    st = item.stat()
                except FileNotFoundError:  # another process evicted it while we looked
                    continue
                out.append((st.st_mtime, st.st_size, Path(item.path)))
        return sorted(out, key=lambda f: (f[0], f[2].name))

    def size(self) -> int:
        """Bytes held (pinned links and downloads in progress not counted)."""
        return sum(size for _, size, _ in self.files())

    def evict(self, keep: Path | None = None) -> int:
        """Remove least recently used files until the rest fits the limit; returns how many went.

        ``keep`` (the file just fetched) goes last: it is kept even when it alone exceeds the limit.
        Also removes downloads and pinned folders left behind by processes that are gone.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            files = self.files()
            total = sum(size for _, size, _ in files)
            removed = 0
            for _, size, path in files:
                if total <= self.limit:
                    break
                if path == keep:
                    continue
                path.unlink(missing_ok=True)
                (self.folder / "locks" / path.name).unlink(missing_ok=True)
                total -= size
                removed += 1
            self._clear_leftovers()
        self.stats.evicted += removed
        return removed

    def _clear_leftovers(self) -> None:
        import shutil

        now = time.time()
        for folder in (self.folder / "tmp").glob("*") if (self.folder / "tmp").is_dir() else []:
            if not process_alive(pid_of(folder.name)):
                shutil.rmtree(folder, ignore_errors=True)
                continue
            for item in folder.glob("*"):  # a live process id may be a new process reusing a dead one's
                try:
                    if now - item.stat().st_mtime > STALE_TMP_S:
                        item.unlink(missing_ok=True)
                except FileNotFoundError:
                    continue
        for item in (self.folder / "pinned").glob("*") if (self.folder / "pinned").is_dir() else []:
            if not process_alive(pid_of(item.name.split("-", 1)[0])):
                shutil.rmtree(item, ignore_errors=True)


def default_cache(folder: str | os.PathLike | None = None, limit_gb: float | None = None) -> PartCache:
    """The part cache: ``folder`` or ``$ALARM_PART_CACHE`` or ``<alarm cache>/parts``, holding
    ``limit_gb`` or ``$ALARM_PART_CACHE_GB`` or 8 GB."""
    from alarm.pipeline.cache import alarm_cache_dir

    where = Path(folder or os.environ.get("ALARM_PART_CACHE") or alarm_cache_dir() / "parts")
    text = os.environ.get("ALARM_PART_CACHE_GB", "")
    try:
        gb = float(limit_gb if limit_gb is not None else text or DEFAULT_LIMIT_GB)
    except ValueError:
        raise ConfigError(f"ALARM_PART_CACHE_GB must be a number of gigabytes, got {text!r}") from None
    if gb <= 0:
        raise ConfigError(f"part cache size must be positive, got {gb} GB")
    return PartCache(where, int(gb * 1e9))
