"""The feature store: Zarr v3, one group per encoder and spec, immutable ragged parts; read here.

This module opens a group and reads its clips (``open_features``, ``FeatureReader``). The rest of the
store lives beside it: settings, spec ids, errors and group folders in ``store_layout``, value
encoding in ``store_values``, writing and committing a part in ``part_writer``, the clip index in
``store_index``, the job's lease and fencing in ``store_fence``, removing abandoned attempts in
``store_gc``. ARCHITECTURE.md ("The layers") places them; each module's docstring has its details.

Layout under the store root (a folder or an object-store prefix, the same keys on both)::

    features/<encoder>/<spec_id>/          Zarr group of one encoder under one spec
        spec.json                          everything that determines the stored values
        index.parquet                      clip key -> part, offset, length, duration (committed parts only)
        parts/<part_id>/
            _DONE                          the commit: names the attempt, the job's fencing token, a
                                           checksum of every file and a CRC-32C of every shard index
                                           and inner chunk
            <attempt>/                     the files of one writer's attempt (older stores: none, the
                                           files sit in parts/<part_id>/ itself)
                features                   (frames, layers, dim), all clips concatenated, sharded
                scales                     (frames, layers) float32, int8 stores only
                offsets                    (clips + 1,) int64 frame offsets
                clips.parquet              key, offset, length, duration of this part's clips
        .staging/                          local stores: parts being written (then hard-linked into place)
    .lease                                 the job holding the store: its fencing token and expiry

A part is committed without a rename, so object storage works as a disk does: a writer stages it
locally, puts its files under its own attempt prefix, checks its job's fencing token against
``.lease``, and creates ``_DONE`` with a conditional create; the first attempt to mark a part wins.
Readers and the index see only marked parts, and read the attempt the marker names, so a killed or
refused writer never exposes half a part; its unmarked attempt is left for ``alarm pipeline gc``. A
job takes ``.lease`` when it starts, renews it while it runs and drops it at the end; a job that
lost it cannot commit.

Readers trust a part only as far as its done marker: the first access of a part checks its small
files (metadata, offsets, clip table) against the marker and its index rows against its clip table;
every chunk read from a shard is then checked against its CRC-32C (hardware-accelerated, 10+ GB/s).
A part that fails is refused with ``DamagedPartError``; ``alarm pipeline repair`` or a rerun of the
job recomputes it. Parts without chunk checksums (compressed stores, older markers) are checked
whole, once, on first access.

A store may live on object storage (``open_features("s3://bucket/prefix", ...)``): the reader then
fetches spec.json, index.parquet and the list of done markers once when it opens, and every file of
a part through a bounded local read-through cache (``part_cache``), each checked whole against its
marker's checksum as it is downloaded, then by the same chunk checks on each read; the second epoch
reads local disk. A part of such a store that fails a check has its cached files dropped and is
downloaded once more before it is refused (a copy damaged on the local disk is not the store's fault). A local store reads its files in place (no cache). Where a reader's files come
from is ``store_files``; parts written under an attempt prefix are found through their marker
(``store_layout.part_subdir``).

Values are stored in float16 by default and uncompressed: float16 features hardly compress and
decompression slows the random reads the trainer does (see bench/extract.py for the measured numbers).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from alarm.pipeline.objects import is_url
from alarm.pipeline.part_cache import CacheChecksumError, PartCache
from alarm.pipeline.shard_io import DamagedChunk, RawShardedArray
from alarm.pipeline.store_files import (
    LocalGroup,
    LocalPart,
    RemoteGroup,
    RemotePart,
    list_groups,
    open_group,
    read_spec,
)
from alarm.pipeline.store_layout import (
    DamagedPartError,
    StoreError,
    StoreSpecError,
    spec_id,
)
from alarm.pipeline.store_values import dequantize

OPEN_REMOTE_PARTS = 8  # parts a process keeps open when they come from object storage (see _open)

__all__ = ["DamagedPartError", "FeatureReader", "StoreError", "StoreSpecError", "list_groups", "open_features"]


def _resolve_group(root: Path | str, encoder: str, spec: dict | str | None) -> str:
    groups = list_groups(root, encoder)
    if not groups:
        raise StoreSpecError(f"store {root} has no features for encoder {encoder!r}")
    if spec is None:
        if len(groups) > 1:
            raise StoreSpecError(f"store {root} has {len(groups)} groups for {encoder!r} "
                                 f"({', '.join(groups)}); pass the spec or spec id to choose")
        return groups[0]
    if isinstance(spec, str):
        if spec not in groups:
            raise StoreSpecError(f"store {root} has no group {spec!r} for {encoder!r}; it has {', '.join(groups)}")
        return spec
    if set(spec) == {"encoder", "store"}:
        sid = spec_id(spec)
        if sid in groups:
            return sid
        raise StoreSpecError(f"store {root} has no {encoder!r} features for this spec (id {sid}); "
                             f"it has {', '.join(groups)}")
    # An encoder spec alone: any store settings will do, as long as the choice is unique.
    matches = [g for g in groups if read_spec(root, encoder, g)["spec"]["encoder"] == spec]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        first = read_spec(root, encoder, groups[0])["spec"]["encoder"]
        differ = sorted(k for k in set(first) | set(spec) if first.get(k) != spec.get(k))
        raise StoreSpecError(f"store {root} has no {encoder!r} features for this encoder spec; "
                             f"group {groups[0]} differs in: {', '.join(differ)}")
    raise StoreSpecError(f"several groups match this encoder spec ({', '.join(matches)}); pass the full spec")


def open_features(root: Path | str, encoder: str, spec: dict | str | None = None,
                  cache: PartCache | None = None) -> FeatureReader:
    """Open the features of ``encoder`` in the store at ``root``.

    Args:
        root: store folder, or an object-store URL (``s3://bucket/prefix``, ``gs://...``).
        encoder: registry key (whisper, w2vbert, muq, sslam).
        spec: None for the only group of that encoder; a spec id; a full group spec
            (``{"encoder": ..., "store": ...}``); or an encoder's ``spec()`` alone.
        cache: where a store on object storage keeps the part files it reads
            (``part_cache.default_cache()`` when None); a local store reads in place.

    Raises:
        StoreSpecError: no group matches, or the choice is ambiguous.
    """
    root = root if is_url(root) else Path(root)
    sid = _resolve_group(root, encoder, spec)
    return FeatureReader(root, encoder, sid, cache)


class FeatureReader:
    """Random access to one group's clips; picklable, reopens its files lazily in each process.

    Each part is checked against its done marker on first access in a process, and every chunk read
    against its checksum (see the module docstring); a damaged part raises ``DamagedPartError`` for
    every clip it holds, so a caller can skip those clips (the trainer does) or stop.
    """

    def __init__(self, root: Path | str, encoder: str, sid: str, cache: PartCache | None = None) -> None:
        self.root, self.encoder, self.spec_id = root if is_url(root) else Path(root), encoder, sid
        self.files = open_group(self.root, encoder, sid, cache)
        # the group's folder, or its URL for a store on object storage
        self.group: Path | str = self.files.group if isinstance(self.files, LocalGroup) else self.files.where
        meta = self.files.spec()
        if spec_id(meta["spec"]) != sid:
            raise StoreSpecError(f"group {sid} of {encoder!r} holds a spec that does not hash to its name")
        self.spec: dict = meta["spec"]
        self.layers: int = int(meta["layers"])
        self.dim: int = int(meta["dim"])
        self.frame_rate: float = float(meta["frame_rate"])
        self.dtype: str = self.spec["store"]["dtype"]
        table = self.files.index()
        self._keys: list[str] = table.column("key").to_pylist()
        self._row = {k: i for i, k in enumerate(self._keys)}
        self._parts: list[str] = sorted(set(table.column("part").to_pylist()))
        part_no = {p: i for i, p in enumerate(self._parts)}
        self._part = np.array([part_no[p] for p in table.column("part").to_pylist()], dtype=np.int32)
        self._offset = table.column("offset").to_numpy()
        self._length = table.column("length").to_numpy()
        self._duration = table.column("duration").to_numpy()
        self._arrays: dict[int, tuple[Any, Any]] = {}
        self._damaged: dict[int, str] = {}
        self._refetched_parts: set[int] = set()  # parts whose cached files were dropped after a failed check
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = {}  # zarr handles stay in the process that opened them
        state["_damaged"] = {}  # a repaired store is checked afresh
        state["_refetched_parts"] = set()
        return state

    @property
    def fork_safe(self) -> bool:
        """Whether a forked child may read through this reader: not for a store on object storage,
        whose client does not survive a fork (DataLoader workers then start with ``forkserver``)."""
        return not is_url(self.root)

    def keys(self) -> list[str]:
        """All clip keys, sorted."""
        return list(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._row

    def __len__(self) -> int:
        return len(self._keys)

    def _index(self, key: str) -> int:
        try:
            return self._row[key]
        except KeyError:
            raise KeyError(f"clip {key} is not in the {self.encoder} features of {self.root}") from None

    def num_frames(self, key: str) -> int:
        """Stored frames of a clip."""
        return int(self._length[self._index(key)])

    def duration(self, key: str) -> float:
        """Audio duration of a clip in seconds."""
        return float(self._duration[self._index(key)])

    def part_of(self, key: str) -> str:
        """The part (``encoder/spec_id/part_id``) that holds a clip."""
        return f"{self.encoder}/{self.spec_id}/{self._parts[int(self._part[self._index(key)])]}"

    def _refuse(self, part: int, why: str) -> DamagedPartError:
        name = f"{self.encoder}/{self.spec_id}/{self._parts[part]}"
        self._damaged[part] = (f"part {name} of store {self.root} is damaged ({why}); run `alarm pipeline "
                               "repair` or rerun the feature job to recompute it")
        return DamagedPartError(self._damaged[part])

    def _refetched(self, part: int) -> bool:
        """For a store on object storage: close the part and drop its cached files, once per part.

        Returns whether to try again: a failed check may come from the local copy, not the object.
        """
        if not isinstance(self.files, RemoteGroup) or part in self._refetched_parts:
            return False
        self._refetched_parts.add(part)
        for array in self._arrays.pop(part, ()):
            if isinstance(array, RawShardedArray):
                array.close()
        self.files.forget(self._parts[part])
        return True

    def _open(self, part: int) -> tuple[Any, Any]:
        if self._pid != os.getpid():  # forked: handles of the parent are not ours
            self._arrays, self._damaged, self._refetched_parts, self._pid = {}, {}, set(), os.getpid()
        if part in self._damaged:
            raise DamagedPartError(self._damaged[part])
        if part not in self._arrays:
            try:
                files = self.files.part(self._parts[part])
                chunks = self._check_part(part, files)
                features = _open_array(files, "features")
                scales = _open_array(files, "scales") if self.dtype == "int8" else None
            except (OSError, ValueError, KeyError, StoreError) as err:  # unreadable is damaged too
                if self._refetched(part):
                    return self._open(part)
                raise self._refuse(part, str(err)) from None
            for array, name in ((features, "features"), (scales, "scales")):
                if isinstance(array, RawShardedArray):
                    array.checksums = chunks.get(name)
            self._arrays[part] = (features, scales)
            if isinstance(self.files, RemoteGroup) and len(self._arrays) > OPEN_REMOTE_PARTS:
                # Open descriptors keep evicted cache files on disk: hold few parts open, so that
                # the cache's limit bounds the disk a long epoch uses.
                oldest = next(iter(self._arrays))
                for array in self._arrays.pop(oldest):
                    if isinstance(array, RawShardedArray):
                        array.close()
        else:
            self._arrays[part] = self._arrays.pop(part)  # most recently used last
        return self._arrays[part]

    def _check_part(self, part: int, files: LocalPart | RemotePart) -> dict[str, dict]:
        """Check a part's files against its done marker and its index rows against its clip table.

        Shard files of arrays with chunk checksums are left to the chunk checks of each read (a part on
        object storage has each file checked whole as well, as it is downloaded); other files (all of
        them for a part without chunk checksums) are hashed here. Returns the chunk checksums per array.
        """
        import pyarrow.parquet as pq

        marker = files.marker
        chunks = marker.get("chunks") or {}
        for rel, checksum in sorted(marker["files"].items()):
            if rel.split("/", 1)[0] in chunks and rel.split("/")[1:2] == ["c"]:
                if not files.exists(rel):
                    raise StoreError(f"file {rel} is missing")
                continue
            fd = files.open(rel)
            if fd is None:
                raise StoreError(f"file {rel} is missing")
            try:
                if fd_checksum(fd) != checksum:
                    raise StoreError(f"checksum of {rel} differs from its done marker")
            finally:
                os.close(fd)
        clips = pq.read_table(io.BytesIO(files.read("clips.parquet")), columns=["key", "offset", "length"])
        clips = clips.to_pydict()
        stored = {k: (o, n) for k, o, n in zip(clips["key"], clips["offset"], clips["length"], strict=True)}
        for i in np.flatnonzero(self._part == part):
            if stored.get(self._keys[i]) != (int(self._offset[i]), int(self._length[i])):
                raise StoreError(f"index row of clip {self._keys[i]} disagrees with the part's clips.parquet")
        return chunks

    def read(self, key: str, stored: bool = False) -> np.ndarray:
        """A clip's features, ``(frames, layers, dim)``: float32 (dequantised) by default.

        ``stored=True`` keeps a float16 store's float16 values (half the bytes to copy and to pad;
        the trainer widens them on its device); other dtypes are dequantised to float32 either way.
        """
        i = self._index(key)
        part = int(self._part[i])
        features, scales = self._open(part)
        start, stop = int(self._offset[i]), int(self._offset[i] + self._length[i])
        try:
            if self.dtype in ("float16", "float32") and isinstance(features, RawShardedArray):
                out = np.float16 if stored and self.dtype == "float16" else np.float32
                return features.read(start, stop, np.dtype(out))  # converts while copying
            values = _read_rows(features, start, stop)
            scale_rows = _read_rows(scales, start, stop) if scales is not None else None
        except (DamagedChunk, CacheChecksumError, FileNotFoundError) as err:  # a shard read, or downloaded
            if self._refetched(part):
                return self.read(key, stored)
            raise self._refuse(part, str(err)) from None
        if stored and self.dtype == "float16":
            return np.asarray(values)
        return dequantize(values, scale_rows, self.dtype)


def _open_array(files: LocalPart | RemotePart, name: str) -> Any:
    """The fast direct reader when the layout allows it, else the zarr array (of a local folder)."""
    meta = json.loads(files.read(f"{name}/zarr.json"))
    raw = RawShardedArray.from_meta(meta, Path(files.where) / name, lambda rel: files.open(f"{name}/{rel}"))
    if raw is not None:
        return raw
    import zarr  # only here: a second of import a worker process need not pay for the direct reads

    return zarr.open_array(str(files.array_folder(name)), mode="r")


def fd_checksum(fd: int) -> str:
    """blake2b-128 of an open file's bytes (as ``store_layout.file_checksum``)."""
    import hashlib

    digest, offset = hashlib.blake2b(digest_size=16), 0
    while block := os.pread(fd, 1 << 20, offset):
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


def _read_rows(array: Any, start: int, stop: int) -> np.ndarray:
    return array.read(start, stop) if isinstance(array, RawShardedArray) else array[start:stop]
