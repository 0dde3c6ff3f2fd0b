"""Where a feature reader's files come from: a local group folder, or an object-store prefix through the
part cache.

``FeatureReader`` (store.py) reads a group through one of two sources with the same few questions:
its spec, its clip index, and for each committed part its done marker and its files. A local group
answers from the folder (``pread`` on the files in place, no copy). A group on object storage answers
small metadata (spec.json, index.parquet, the list of done markers) with one request each when the
reader opens, and every file of a part through the bounded local cache (``part_cache``), checked
against the checksum its done marker records before it is kept: the first epoch downloads, the
next ones read local disk.

A part's files live where ``store_layout.part_subdir`` says: ``parts/<part>/<attempt>/`` when its
marker names an attempt, ``parts/<part>/`` for stores written before attempts.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from alarm.pipeline.store_layout import DONE, StoreError, committed_markers, part_subdir


class LocalPart:
    """The files of one committed part in a local folder."""

    def __init__(self, folder: Path, marker: dict) -> None:
        self.folder, self.marker = folder, marker
        self.where = str(folder)

    def exists(self, rel: str) -> bool:
        return (self.folder / rel).is_file()

    def open(self, rel: str) -> int | None:
        """A read-only descriptor of the file ``rel``, or None when it does not exist."""
        import os

        try:
            return os.open(self.folder / rel, os.O_RDONLY)
        except FileNotFoundError:
            return None

    def read(self, rel: str) -> bytes:
        return (self.folder / rel).read_bytes()

    def array_folder(self, name: str) -> Path:
        """A local folder holding the whole array ``name`` (for zarr)."""
        return self.folder / name


class LocalGroup:
    """A group folder on local disk."""

    def __init__(self, group: Path) -> None:
        self.group = group
        self.where = str(group)

    def spec(self) -> dict:
        return json.loads((self.group / "spec.json").read_text())

    def index(self) -> Any:
        from alarm.pipeline.store_index import load_index

        return load_index(self.group)

    def part(self, part: str) -> LocalPart:
        marker = json.loads((self.group / "parts" / part / DONE).read_text())
        return LocalPart(self.group / part_subdir(part, marker), marker)


class RemotePart:
    """The files of one committed part on object storage, fetched whole through the part cache.

    Only files its done marker lists exist (the marker is written last, over a complete part); each
    is checked against the marker's checksum as it is downloaded.
    """

    def __init__(self, objects: Any, subdir: str, marker: dict, cache: Any) -> None:
        self.objects, self.subdir, self.marker, self.cache = objects, subdir, marker, cache
        self.where = f"{objects.url}/{subdir}"
        self._pinned: Path | None = None

    def exists(self, rel: str) -> bool:
        return rel in self.marker["files"]

    def _args(self, rel: str) -> tuple[str, str, str]:
        checksum = self.marker["files"][rel]
        return f"{self.subdir}/{rel}", checksum, checksum

    def open(self, rel: str) -> int | None:
        if rel not in self.marker["files"]:
            return None  # never written (a shard of fill values only)
        key, version, checksum = self._args(rel)
        return self.cache.open(self.objects, key, version, checksum)

    def read(self, rel: str) -> bytes:
        if rel not in self.marker["files"]:
            raise FileNotFoundError(f"{self.where}/{rel}")
        key, version, checksum = self._args(rel)
        return self.cache.read(self.objects, key, version, checksum)

    def array_folder(self, name: str) -> Path:
        """The whole array pinned in the cache by hard links (zarr reads its files lazily; eviction must
        not take them from under it)."""
        if self._pinned is None:
            self._pinned = self.cache.pin_folder()
        folder = self._pinned / name
        if not folder.is_dir():
            for rel in sorted(self.marker["files"]):
                if rel.split("/", 1)[0] == name:
                    key, version, checksum = self._args(rel)
                    self.cache.link(self.objects, key, self._pinned / rel, version, checksum)
        return folder


class RemoteGroup:
    """A group under an object-store prefix. Picklable: the client is rebuilt in each process."""

    def __init__(self, objects: Any, cache: Any) -> None:
        self.objects, self.cache = objects, cache
        self.where = objects.url
        self.markers: dict[str, str] = {}  # part -> its done marker's etag, listed when the index is loaded

    def spec(self) -> dict:
        try:
            return json.loads(self.objects.get("spec.json"))
        except FileNotFoundError:
            raise StoreError(f"{self.where} has no spec.json") from None

    def committed(self) -> dict[str, str]:
        """Committed parts (those with a done marker) and their markers' etags, from one listing."""
        return committed_markers(self.objects)

    def index(self) -> Any:
        """index.parquet when it covers exactly the committed parts, else rebuilt from their clip tables."""
        import pyarrow.parquet as pq

        self.markers = self.committed()
        try:
            table = pq.read_table(io.BytesIO(self.objects.get("index.parquet")))
        except FileNotFoundError:
            table = None
        if table is not None:
            meta = table.schema.metadata or {}
            if json.loads(meta.get(b"parts", b"null")) == sorted(self.markers):
                return table
        tables = {part: pq.read_table(io.BytesIO(self.part(part).read("clips.parquet"))) for part in sorted(self.markers)}
        return index_of(tables)

    def part(self, part: str) -> RemotePart:
        if part not in self.markers:
            self.markers = self.committed()
        if part not in self.markers:
            raise StoreError(f"part {part} has no done marker")
        marker = json.loads(self.cache.read(self.objects, f"parts/{part}/{DONE}", self.markers[part]))
        return RemotePart(self.objects, part_subdir(part, marker), marker, self.cache)

    def forget(self, part: str) -> None:
        """Drop the part's files (and its marker) from the local cache, so that the next read downloads them.

        A cached file is checked as it is downloaded, not after: one damaged on the local disk since
        would fail every read, blamed on the store, until dropped.
        """
        url = self.objects.url
        if part in self.markers:
            self.cache.entry(url, f"parts/{part}/{DONE}", self.markers[part]).unlink(missing_ok=True)
        try:
            files = self.part(part)
        except (OSError, ValueError, StoreError):
            return  # no marker to name its files: nothing of them was read either
        for rel, checksum in files.marker["files"].items():
            self.cache.entry(url, f"{files.subdir}/{rel}", checksum).unlink(missing_ok=True)


def index_of(tables: dict[str, Any]) -> Any:
    """The clip index of parts' clip tables (part -> pyarrow table): sorted by key, first part wins a key."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from alarm.pipeline.store_index import INDEX_COLUMNS

    if not tables:
        return pa.table({"key": pa.array([], pa.string()), "part": pa.array([], pa.string()),
                         "offset": pa.array([], pa.int64()), "length": pa.array([], pa.int64()),
                         "duration": pa.array([], pa.float64())})
    parts = [t.append_column("part", pa.array([p] * len(t), pa.string())) for p, t in tables.items()]
    table = pa.concat_tables(parts).select(list(INDEX_COLUMNS))
    table = table.take(pc.sort_indices(table, [("key", "ascending"), ("part", "ascending")]))
    keys = table.column("key").to_pylist()
    first = [i for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
    return table.take(pa.array(first, pa.int64())) if len(first) < len(keys) else table


def open_group(root: str | Path, encoder: str, sid: str, cache: Any = None) -> LocalGroup | RemoteGroup:
    """The source of the group ``encoder/sid`` of the store at ``root`` (a folder or a URL)."""
    from alarm.pipeline.objects import is_url, open_objects
    from alarm.pipeline.store_layout import group_dir

    if not is_url(root):
        return LocalGroup(group_dir(root, encoder, sid))
    if cache is None:
        from alarm.pipeline.part_cache import default_cache

        cache = default_cache()
    return RemoteGroup(open_objects(root).child(f"features/{encoder}/{sid}"), cache)


def list_groups(root: str | Path, encoder: str) -> list[str]:
    """Spec ids present for ``encoder`` in the store at ``root`` (a folder or a URL)."""
    from alarm.pipeline.objects import is_url, open_objects
    from alarm.pipeline.store_layout import list_groups as groups_with_spec

    if is_url(root):
        open_objects(root).check()  # a wrong URL or bad credentials: one line naming it, at once, not minutes of retries
    return groups_with_spec(root, encoder)


def read_spec(root: str | Path, encoder: str, sid: str) -> dict:
    """The spec.json of a group (a folder or a URL)."""
    from alarm.pipeline.objects import is_url, open_objects
    from alarm.pipeline.store_layout import group_dir

    if not is_url(root):
        return json.loads((group_dir(root, encoder, sid) / "spec.json").read_text())
    return json.loads(open_objects(root).get(f"features/{encoder}/{sid}/spec.json"))
