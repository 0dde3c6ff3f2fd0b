"""Direct reads of the uncompressed sharded Zarr v3 arrays the feature store writes.

The trainer reads many clips per second from many worker processes. Through zarr each read costs
about a millisecond of overhead; an uncompressed inner chunk is just its C-order bytes at the place
the shard index names, so a ``pread`` per chunk reads it. The layout is checked against the array's
``zarr.json`` first; anything else (a compressor, another codec chain) is left to zarr.

The shard files come from an opener (a local folder by default; a store on object storage hands
descriptors of files in its local part cache), so the same reads and checks serve both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from google_crc32c import value as crc32c  # zarr's own CRC-32C (hardware-accelerated)

_MISSING = np.uint64(2**64 - 1)


class DamagedChunk(ValueError):
    """Bytes read from a shard differ from the checksums recorded when its part was committed."""


class RawShardedArray:
    """Direct reads of an uncompressed, sharded Zarr v3 array written by ``PartWriter``.

    Going through zarr costs about a millisecond per call; an uncompressed inner chunk is just its
    C-order bytes at a place the shard index names, so one ``pread`` per chunk reads it. Used only when
    the array's metadata is exactly that layout (``open`` returns None otherwise, and zarr reads it).
    """

    def __init__(self, folder: Path, shape: tuple[int, ...], dtype: np.dtype, chunk: int, shard: int,
                 opener: Callable[[str], int | None] | None = None) -> None:
        self.folder, self.shape, self.dtype, self.chunk, self.shard = folder, shape, dtype, chunk, shard
        # file of the array (relative to its folder, e.g. "c/0/0/0") -> a read-only descriptor, or None
        # when the file does not exist
        self.opener = opener or (lambda rel: _open_local(Path(folder) / rel))
        self.inner = shard // chunk
        self.chunk_bytes = chunk * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._fds: dict[int, int] = {}
        self._index: dict[int, np.ndarray | None] = {}
        # shard number (as text, the JSON key) -> {"index": crc32, "chunks": [crc32 or None]}, from the
        # part's done marker; when set, every shard index and chunk read is checked against it.
        self.checksums: dict[str, dict] | None = None

    @classmethod
    def open(cls, folder: Path) -> RawShardedArray | None:
        """The direct reader of the array in ``folder``, or None when its layout is not the one read here."""
        return cls.from_meta(json.loads((Path(folder) / "zarr.json").read_text()), Path(folder))

    @classmethod
    def from_meta(cls, meta: dict, folder: Path, opener: Callable[[str], int | None] | None = None
                  ) -> RawShardedArray | None:
        """The direct reader of an array given its ``zarr.json`` (``folder`` names it in messages;
        ``opener`` gives its files, by default from ``folder``), or None when the layout differs."""
        codecs = meta.get("codecs", [])
        if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            return None
        conf = codecs[0]["configuration"]
        inner = conf["codecs"]
        index = [c["name"] for c in conf["index_codecs"]]
        if (len(inner) != 1 or inner[0]["name"] != "bytes"
                or inner[0].get("configuration", {}).get("endian", "little") != "little"
                or index != ["bytes", "crc32c"] or conf.get("index_location", "end") != "end"
                or meta["chunk_key_encoding"].get("configuration", {}).get("separator") != "/"):
            return None
        shape = tuple(meta["shape"])
        shard, chunk = meta["chunk_grid"]["configuration"]["chunk_shape"], conf["chunk_shape"]
        if list(shard[1:]) != list(shape[1:]) or list(chunk[1:]) != list(shape[1:]):
            return None
        return cls(folder, shape, np.dtype(meta["data_type"]).newbyteorder("<"), chunk[0], shard[0], opener)

    def _shard_index(self, shard: int) -> np.ndarray | None:
        if shard not in self._index:
            fd = self.opener("c/" + "/".join([str(shard)] + ["0"] * (len(self.shape) - 1)))
            if fd is None:  # a shard of fill values only is never written
                if self.checksums is not None and str(shard) in self.checksums:
                    raise DamagedChunk(f"{self.folder.name} shard {shard}: its file is missing")
                self._index[shard] = None
                return None
            size = os.fstat(fd).st_size
            nbytes = self.inner * 16
            raw = os.pread(fd, nbytes, size - nbytes - 4)
            self._fds[shard] = fd
            if self.checksums is not None:
                self._check(shard, "index", os.pread(fd, nbytes + 4, size - nbytes - 4))
            self._index[shard] = np.frombuffer(raw, dtype="<u8").reshape(self.inner, 2)
        return self._index[shard]

    def read(self, start: int, stop: int, dtype: np.dtype | None = None) -> np.ndarray:
        """Rows ``start:stop`` along the first axis, converted to ``dtype`` while copying (one pass)."""
        out = np.zeros((max(stop - start, 0), *self.shape[1:]), dtype=dtype or self.dtype)
        if stop <= start:
            return out
        for c in range(start // self.chunk, (stop - 1) // self.chunk + 1):
            shard, within = divmod(c, self.inner)
            index = self._shard_index(shard)
            if index is None or index[within, 0] == _MISSING:
                continue  # fill value (zeros)
            offset, nbytes = (int(v) for v in index[within])
            if nbytes != self.chunk_bytes:
                raise ValueError(f"{self.folder}: chunk {c} holds {nbytes} bytes, expected {self.chunk_bytes}")
            data = os.pread(self._fds[shard], nbytes, offset)
            if self.checksums is not None:
                self._check(shard, within, data)
            block = np.frombuffer(data, dtype=self.dtype)
            block = block.reshape(self.chunk, *self.shape[1:])
            lo, hi = max(start, c * self.chunk), min(stop, (c + 1) * self.chunk)
            out[lo - start:hi - start] = block[lo - c * self.chunk:hi - c * self.chunk]
        return out

    def _check(self, shard: int, what: int | str, data: bytes) -> None:
        entry = self.checksums.get(str(shard)) if self.checksums is not None else None
        expected = None if entry is None else entry["index"] if what == "index" else entry["chunks"][what]
        if expected is None or crc32c(data) != expected:
            name = "index" if what == "index" else f"chunk {what}"
            raise DamagedChunk(f"{self.folder.name} shard {shard} {name}: checksum differs from its done marker")

    def chunk_checksums(self) -> dict[str, dict]:
        """CRC-32C of every shard's index and inner chunks, in the form ``checksums`` takes.

        CRC-32C runs at 10+ GB/s, well above the raw read speed, so a reader can check every chunk it
        reads for little.
        """
        out: dict[str, dict] = {}
        for shard in range(-(-self.shape[0] // self.shard)):
            index = self._shard_index(shard)
            if index is None:
                continue
            fd = self._fds[shard]
            size = os.fstat(fd).st_size
            chunks = [None if row[0] == _MISSING else crc32c(os.pread(fd, int(row[1]), int(row[0])))
                      for row in index]
            out[str(shard)] = {"index": crc32c(os.pread(fd, self.inner * 16 + 4, size - self.inner * 16 - 4)),
                               "chunks": chunks}
        return out

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds, self._index = {}, {}


def _open_local(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
