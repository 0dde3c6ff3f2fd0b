"""Write one part of a group: clips appended in order, flushed shard by shard, committed atomically.

A part is written to ``.tmp``, renamed into ``parts/``, then marked done (see ``store`` for the
layout); with a fencing token the commit is refused once another job has taken the store.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alarm.pipeline.shard_io import RawShardedArray
from alarm.pipeline.store_fence import check_fence
from alarm.pipeline.store_layout import (
    DONE,
    FencingError,
    StoreConfig,
    StoreError,
    tree_checksums,
    write_atomic,
)
from alarm.pipeline.store_values import quantize, zarr_dtype


@dataclass
class PartInfo:
    """What a committed part holds."""

    part: str
    clips: int
    frames: int
    bytes: int


class PartWriter:
    """Writes one part: clips appended in order, flushed shard by shard, committed atomically.

    Exactly one PartWriter may exist per part id (the job plans parts so); two writers on one Zarr
    shard would lose data. With a ``fence`` (the job's fencing token, see ``current_fence``) the
    commit is refused, leaving no part, when the store's token has changed since the job took it.
    """

    def __init__(self, group: Path, part_id: str, total_frames: int, layers: int, dim: int,
                 cfg: StoreConfig, fence: str | None = None) -> None:
        import zarr

        self.group, self.part_id, self.cfg, self.fence = group, part_id, cfg, fence
        self.total_frames, self.layers, self.dim = total_frames, layers, dim
        self.tmp = group / ".tmp" / f"{part_id}.{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir(parents=True)
        root = zarr.open_group(str(self.tmp), mode="w", zarr_format=3, attributes={"part": part_id})
        compressors = None
        if cfg.compressor == "zstd":
            compressors = [zarr.codecs.ZstdCodec(level=cfg.compression_level)]
        shape = (max(total_frames, 0), layers, dim)
        chunk = (cfg.chunk_frames, layers, dim)
        shard = (cfg.shard_frames, layers, dim)
        self._features = root.create_array(
            "features", shape=shape, chunks=chunk, shards=shard, dtype=zarr_dtype(cfg.dtype),
            compressors=compressors, fill_value=0, attributes={"dtype": cfg.dtype})
        self._scales = None
        if cfg.dtype == "int8":
            self._scales = root.create_array(
                "scales", shape=shape[:2], chunks=chunk[:2], shards=shard[:2], dtype="float32",
                compressors=compressors, fill_value=0)
        self._root = root
        self._rows: list[tuple[str, int, int, float]] = []
        self._buffer: list[np.ndarray] = []
        self._scale_buffer: list[np.ndarray] = []
        self._buffered = 0
        self._written = 0

    def append(self, key: str, features: np.ndarray, duration: float) -> None:
        """Add one clip's ``(frames, layers, dim)`` float32 features."""
        if features.ndim != 3 or features.shape[1:] != (self.layers, self.dim):
            raise StoreError(f"clip {key}: features of shape {features.shape}, expected "
                             f"(frames, {self.layers}, {self.dim})")
        offset = self._written + self._buffered
        if offset + len(features) > self.total_frames:
            raise StoreError(f"part {self.part_id}: more frames than the {self.total_frames} planned")
        values, scales = quantize(features, self.cfg.dtype)
        self._rows.append((key, offset, len(features), float(duration)))
        self._buffer.append(values)
        if scales is not None:
            self._scale_buffer.append(scales)
        self._buffered += len(features)
        # Write whole shards only: a partial shard write would be read-modify-write of the file.
        if self._buffered >= self.cfg.shard_frames:
            self._flush(whole_shards=True)

    def _flush(self, whole_shards: bool) -> None:
        if not self._buffered:
            return
        values = np.concatenate(self._buffer)
        scales = np.concatenate(self._scale_buffer) if self._scale_buffer else None
        count = len(values)
        if whole_shards:
            count -= count % self.cfg.shard_frames
        start, stop = self._written, self._written + count
        self._features[start:stop] = values[:count]
        if scales is not None:
            self._scales[start:stop] = scales[:count]
        self._buffer = [values[count:]] if count < len(values) else []
        self._scale_buffer = [scales[count:]] if scales is not None and count < len(values) else []
        self._buffered -= count
        self._written = stop

    def commit(self) -> PartInfo:
        """Flush, write offsets and clip table, rename into ``parts/`` and mark done."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._flush(whole_shards=False)
        if self._written != self.total_frames:
            raise StoreError(f"part {self.part_id}: wrote {self._written} frames, planned {self.total_frames}")
        offsets = np.array([r[1] for r in self._rows] + [self._written], dtype=np.int64)
        self._root.create_array("offsets", shape=offsets.shape, chunks=(max(len(offsets), 1),),
                                dtype="int64", compressors=None, fill_value=0)[:] = offsets
        table = pa.table({"key": [r[0] for r in self._rows],
                          "offset": pa.array([r[1] for r in self._rows], pa.int64()),
                          "length": pa.array([r[2] for r in self._rows], pa.int64()),
                          "duration": pa.array([r[3] for r in self._rows], pa.float64())})
        pq.write_table(table, self.tmp / "clips.parquet")
        files = tree_checksums(self.tmp)
        chunks = {}
        for name in ("features", "scales"):
            raw = RawShardedArray.open(self.tmp / name) if (self.tmp / name / "zarr.json").is_file() else None
            if raw is not None:
                chunks[name] = raw.chunk_checksums()
                raw.close()
        size = sum((self.tmp / name).stat().st_size for name in files)
        final = self.group / "parts" / self.part_id
        if (final / DONE).is_file():
            # Someone already committed the same part (same clips, same spec): keep theirs.
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            self._check_fence(self.tmp)
            if final.exists():  # renamed by a writer that was killed before marking it done
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.replace(self.tmp, final)
            except OSError:
                # A retried task's twin renamed the same part first (same clips, same bytes): keep theirs.
                if not final.exists():
                    raise
                shutil.rmtree(self.tmp, ignore_errors=True)
                return PartInfo(self.part_id, len(self._rows), self._written, 0)
            # Checked again between rename and marker: a job that took the store meanwhile wins.
            self._check_fence(final)
            marker = {"part": self.part_id, "clips": len(self._rows), "frames": self._written, "files": files,
                      "chunks": chunks}
            write_atomic(final / DONE, (json.dumps(marker, indent=1, sort_keys=True) + "\n").encode())
        return PartInfo(self.part_id, len(self._rows), self._written, size)

    def _check_fence(self, folder: Path) -> None:
        """Remove ``folder`` (the uncommitted part) and raise if the job's fence is no longer the store's."""
        if self.fence is None:
            return
        try:
            check_fence(self.group.parents[2], self.fence, f"commit of part {self.group.name}/{self.part_id}")
        except FencingError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
