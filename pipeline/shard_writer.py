"""Writes of the sharded Zarr v3 arrays of a part, byte for byte as zarr writes them, without zarr.

The write-side twin of ``shard_io.RawShardedArray``. Through zarr a part's write costs an event-loop
thread, a codec pipeline per inner chunk, and then two more reads of every file at commit (one for
the files' blake2b, one for the chunks' CRC-32C). A shard here is encoded in memory (its inner
chunks' C-order little-endian bytes, zstd per chunk when asked, the index of ``(offset, nbytes)``
pairs and its CRC-32C at the end), written in one go, and its checksums are taken from those bytes.

What zarr does, and so what is done here (``tests/test_shard_writer.py`` compares the bytes):

- inner chunks follow each other in chunk order (zarr's Morton order, which is the chunk order when
  only the first axis has more than one chunk, as here);
- a chunk whose bytes are all zero equals the fill value (zarr compares floats by bit pattern, so
  ``-0.0`` is not the fill value) and is not stored: its index entry is ``(2**64-1, 2**64-1)``, and so
  is a chunk wholly past the array's end; a shard with no stored chunk has no file;
- the last chunk of an array that ends mid-chunk is padded with the fill value (zeros);
- ``zarr.json`` is ``json.dumps(metadata, indent=2)`` with zarr's key order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from google_crc32c import value as crc32c  # zarr's own CRC-32C

_MISSING = 2**64 - 1
_LITTLE = {"name": "bytes", "configuration": {"endian": "little"}}


def group_json(attributes: dict[str, Any]) -> bytes:
    """The ``zarr.json`` zarr writes for a v3 group with ``attributes``."""
    return _dumps({"attributes": attributes, "zarr_format": 3, "node_type": "group"})


def array_json(shape: Sequence[int], dtype: str, chunk: Sequence[int], shard: Sequence[int] | None = None,
               zstd_level: int | None = None, attributes: dict[str, Any] | None = None) -> bytes:
    """The ``zarr.json`` zarr writes for a v3 array with fill value 0.

    Args:
        shape: the array's shape.
        dtype: numpy name of the stored type (``uint16`` for bfloat16 bits, see ``store_values``).
        chunk: inner chunk shape (the chunk shape itself when ``shard`` is None).
        shard: shard shape, or None for an unsharded array.
        zstd_level: zstd level of every chunk, or None for no compressor.
        attributes: the array's user attributes.
    """
    # zarr writes no endianness for one-byte types.
    codecs: list[dict] = [_LITTLE if np.dtype(dtype).itemsize > 1 else {"name": "bytes"}]
    if zstd_level is not None:
        codecs.append({"name": "zstd", "configuration": {"level": zstd_level, "checksum": False}})
    if shard is not None:
        codecs = [{"name": "sharding_indexed",
                   "configuration": {"chunk_shape": list(chunk), "codecs": codecs,
                                     "index_codecs": [_LITTLE, {"name": "crc32c"}], "index_location": "end"}}]
    grid = list(shard if shard is not None else chunk)
    return _dumps({
        "shape": list(shape), "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": grid}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0 if np.dtype(dtype).kind == "f" else 0,
        "codecs": codecs, "attributes": attributes or {}, "zarr_format": 3, "node_type": "array",
        "storage_transformers": []})


def _dumps(meta: dict) -> bytes:
    return json.dumps(meta, allow_nan=True, indent=2).encode()


class StagedFiles:
    """Files written below one folder, with the blake2b (``store_layout.file_checksum``) and size of each.

    ``checksums`` is what ``store_layout.tree_checksums`` would find by reading the folder back.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._checksums: dict[str, str] = {}
        self.sizes: dict[str, int] = {}

    def put(self, rel: str, pieces: Sequence[Any]) -> None:
        """Write the file ``rel`` as the concatenation of ``pieces`` (read-only bytes-like objects)."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "wb") as handle:
            for piece in pieces:
                digest.update(piece)
            handle.writelines(pieces)
        self._checksums[rel] = digest.hexdigest()
        self.sizes[rel] = sum(memoryview(p).nbytes for p in pieces)

    @property
    def checksums(self) -> dict[str, str]:
        """Checksum of every file by relative path, in ``tree_checksums``' order."""
        return {rel: self._checksums[rel] for rel in sorted(self._checksums, key=Path)}


class ShardedArrayWriter:
    """Writes one sharded array whose shards and chunks split the first axis only, shard by shard.

    ``write`` takes whole shards (the last may end at the array's end), as zarr would write them with
    no read of what is there. ``chunks`` holds the CRC-32C of every written shard's index and chunks
    (``RawShardedArray.chunk_checksums``' form) for an uncompressed array, and is None for a compressed
    one (its chunks are checked by zarr, not by the raw reader).
    """

    def __init__(self, files: StagedFiles, name: str, shape: tuple[int, ...], dtype: str, chunk: int, shard: int,
                 zstd_level: int | None = None, attributes: dict[str, Any] | None = None) -> None:
        if shard % chunk:
            raise ValueError(f"{name}: shard of {shard} rows is not a multiple of the chunk's {chunk}")
        self.files, self.name, self.shape, self.chunk, self.shard = files, name, shape, chunk, shard
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.inner = shard // chunk
        self.chunk_bytes = chunk * int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._zstd = None
        if zstd_level is not None:
            from numcodecs.zstd import Zstd  # what zarr's ZstdCodec calls

            self._zstd = Zstd(level=zstd_level, checksum=False)
        self.chunks: dict[str, dict] | None = None if self._zstd is not None else {}
        files.put(f"{name}/zarr.json", [array_json(shape, dtype, (chunk, *shape[1:]), (shard, *shape[1:]),
                                                  zstd_level, attributes)])

    def write(self, start: int, values: np.ndarray) -> None:
        """Write rows ``start:start+len(values)``: whole shards, the last of them possibly cut at the array's end."""
        stop = start + len(values)
        if start % self.shard or (stop % self.shard and stop != self.shape[0]) or stop > self.shape[0]:
            raise ValueError(f"{self.name}: rows {start}:{stop} are not whole shards of {self.shard} "
                             f"in an array of {self.shape[0]}")
        if values.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.name}: rows of shape {values.shape[1:]}, expected {self.shape[1:]}")
        data = np.ascontiguousarray(values, dtype=self.dtype).view(np.uint8).reshape(len(values), -1)
        data.flags.writeable = False  # google_crc32c reads only read-only buffers
        for lo in range(0, len(values), self.shard):
            self._write_shard((start + lo) // self.shard, data[lo:lo + self.shard])

    def _write_shard(self, shard: int, rows: np.ndarray) -> None:
        full, tail = divmod(len(rows), self.chunk)
        whole = rows[:full * self.chunk].reshape(full, self.chunk_bytes)
        chunks, stored = list(whole), list(_nonzero(whole))
        if tail:  # the array ends mid-chunk: zarr pads the chunk with the fill value
            padded = np.zeros((self.chunk, rows.shape[1]), np.uint8)
            padded[:tail] = rows[full * self.chunk:]
            padded.flags.writeable = False
            chunks.append(padded.reshape(-1))
            stored.append(bool(rows[full * self.chunk:].any()))
        index = np.full((self.inner, 2), _MISSING, dtype="<u8")
        pieces: list[Any] = []
        sums: list[int | None] = [None] * self.inner
        offset = 0
        for i, chunk in enumerate(chunks):
            if not stored[i]:
                continue  # equal to the fill value: zarr does not store it
            piece = chunk if self._zstd is None else self._zstd.encode(chunk)
            index[i] = (offset, len(piece) if self._zstd is not None else chunk.nbytes)
            offset += int(index[i, 1])
            pieces.append(piece)
            if self.chunks is not None:
                sums[i] = crc32c(piece)
        if not pieces:
            return  # a shard of fill values only has no file
        raw = index.tobytes()
        tail_bytes = raw + np.array([crc32c(raw)], dtype="<u4").tobytes()
        pieces.append(tail_bytes)
        self.files.put(f"{self.name}/c/" + "/".join([str(shard)] + ["0"] * (len(self.shape) - 1)), pieces)
        if self.chunks is not None:
            self.chunks[str(shard)] = {"index": crc32c(tail_bytes), "chunks": sums}


def _nonzero(rows: np.ndarray) -> np.ndarray:
    """Per row of bytes: whether any byte is not zero (read as 8-byte words when the rows allow)."""
    if rows.shape[1] % 8 == 0:
        rows = rows.view(np.uint64)
    return rows.any(axis=1)


def write_plain_array(files: StagedFiles, name: str, values: np.ndarray) -> None:
    """A one-chunk, uncompressed 1-D array as zarr writes it (``offsets``): no chunk file when all zero."""
    values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    chunk = (max(len(values), 1),)
    files.put(f"{name}/zarr.json", [array_json(values.shape, values.dtype.name, chunk)])
    data = values.view(np.uint8)
    if data.any():  # all bytes zero: the fill value, which zarr does not store
        data.flags.writeable = False
        files.put(f"{name}/c/0", [data])
