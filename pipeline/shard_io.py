"""Direct reads of the uncompressed sharded Zarr v3 arrays the feature store writes.

The trainer reads many clips per second from many worker processes. Through zarr each read costs
about a millisecond of overhead; an uncompressed inner chunk is just its C-order bytes at the place
the shard index names, so a ``pread`` per chunk reads it. The layout is checked against the array's
``zarr.json`` first; anything else (a compressor, another codec chain) is left to zarr.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

_MISSING = np.uint64(2**64 - 1)


class RawShardedArray:
    """Direct reads of an uncompressed, sharded Zarr v3 array written by ``PartWriter``.

    Going through zarr costs about a millisecond per call; an uncompressed inner chunk is just its
    C-order bytes at a place the shard index names, so one ``pread`` per chunk reads it. Used only when
    the array's metadata is exactly that layout (``open`` returns None otherwise, and zarr reads it).
    """

    def __init__(self, folder: Path, shape: tuple[int, ...], dtype: np.dtype, chunk: int, shard: int) -> None:
        self.folder, self.shape, self.dtype, self.chunk, self.shard = folder, shape, dtype, chunk, shard
        self.inner = shard // chunk
        self.chunk_bytes = chunk * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._fds: dict[int, int] = {}
        self._index: dict[int, np.ndarray | None] = {}

    @classmethod
    def open(cls, folder: Path) -> RawShardedArray | None:
        meta = json.loads((folder / "zarr.json").read_text())
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
        return cls(folder, shape, np.dtype(meta["data_type"]).newbyteorder("<"), chunk[0], shard[0])

    def _shard_index(self, shard: int) -> np.ndarray | None:
        if shard not in self._index:
            path = self.folder / "c" / str(shard) / "/".join("0" * (len(self.shape) - 1))
            if not path.is_file():  # a shard of fill values only is never written
                self._index[shard] = None
                return None
            fd = os.open(path, os.O_RDONLY)
            size = os.fstat(fd).st_size
            nbytes = self.inner * 16
            raw = os.pread(fd, nbytes, size - nbytes - 4)
            self._fds[shard] = fd
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
            block = np.frombuffer(os.pread(self._fds[shard], nbytes, offset), dtype=self.dtype)
            block = block.reshape(self.chunk, *self.shape[1:])
            lo, hi = max(start, c * self.chunk), min(stop, (c + 1) * self.chunk)
            out[lo - start:hi - start] = block[lo - c * self.chunk:hi - c * self.chunk]
        return out

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds, self._index = {}, {}
