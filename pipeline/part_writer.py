"""Write one part of a group: clips appended in order, flushed shard by shard, committed by its marker.

Object storage has no rename, so a part is committed without one (the same steps on a local disk):

1. the part is written into a local staging folder as zarr v3 arrays (by ``shard_writer``, without
   zarr, checksums taken from the bytes written): ``<group>/.staging/<attempt>`` for a local store
   (same disk: the files are then hard-linked, not copied), the worker's temp dir for a URL;
2. its files are put under a prefix of their own, ``parts/<part>/<attempt>/``, where ``attempt`` is
   unique to this writer (a retried task, a twin or a killed job's worker never share one);
3. the job's fencing token is checked against the store's lease (``store_fence.check_fence``);
4. the done marker ``parts/<part>/_DONE`` (checksums of every file, the attempt, the token) is put
   with a conditional create: the first attempt to mark the part wins. A writer that loses deletes
   its attempt and keeps the part that won.

Readers and the index see only marked parts and read the attempt the marker names; an attempt
without a marker (a killed writer, a refused commit) is ignored, and ``alarm pipeline gc`` deletes it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alarm.pipeline.process_dirs import own_folder
from alarm.pipeline.shard_writer import ShardedArrayWriter, StagedFiles, group_json, write_plain_array
from alarm.pipeline.store_fence import check_fence
from alarm.pipeline.store_layout import (
    DONE,
    STAGING,
    FencingError,
    Location,
    StoreConfig,
    StoreError,
    objects_at,
    store_of_group,
)
from alarm.pipeline.store_values import quantize, zarr_dtype


@dataclass
class PartInfo:
    """What a committed part holds."""

    part: str
    clips: int
    frames: int
    bytes: int


_url_staging: Path | None = None


def url_staging() -> Path:
    """Where this process stages parts of a store on a URL: ``<temp dir>/alarm-staging/<pid>``.

    A local store stages beside its group and the job clears that folder under its lease; a URL
    store's parts are staged on each worker's own disk, where no job can see them. So each process
    stages under its own id, and the first part it writes removes what workers that are gone (a
    SIGKILL, a lost node's restart) left there.
    """
    global _url_staging
    if _url_staging is None or _url_staging.name != str(os.getpid()) or not _url_staging.is_dir():
        _url_staging = own_folder(Path(tempfile.gettempdir()) / "alarm-staging")
    return _url_staging


class PartWriter:
    """Writes one part: clips appended in order, flushed shard by shard, committed atomically.

    Each writer stages its own files and uploads them under an attempt prefix of its own, so twin
    writers of one part (a retried task) never mix their files; the first done marker wins. With a
    ``fence`` (the job's fencing token, see ``store_fence``) the commit is refused, leaving no part,
    when the job no longer holds the store's lease.
    """

    def __init__(self, group: Location, part_id: str, total_frames: int, layers: int, dim: int,
                 cfg: StoreConfig, fence: str | None = None) -> None:
        self.group, self.part_id, self.cfg, self.fence = group, part_id, cfg, fence
        self.objects = objects_at(group)
        self.total_frames, self.layers, self.dim = total_frames, layers, dim
        self.attempt = uuid.uuid4().hex[:16]
        local = self.objects.local
        self.tmp = (local / STAGING if local is not None else url_staging()) / f"{part_id}.{self.attempt}"
        self.tmp.mkdir(parents=True)
        # The checksums of the done marker are taken from the bytes as they are written: commit reads nothing back.
        self._files = StagedFiles(self.tmp)
        self._files.put("zarr.json", [group_json({"part": part_id})])
        level = cfg.compression_level if cfg.compressor == "zstd" else None
        shape = (max(total_frames, 0), layers, dim)
        self._features = ShardedArrayWriter(self._files, "features", shape, zarr_dtype(cfg.dtype), cfg.chunk_frames,
                                            cfg.shard_frames, level, attributes={"dtype": cfg.dtype})
        self._scales = None
        if cfg.dtype == "int8":
            self._scales = ShardedArrayWriter(self._files, "scales", shape[:2], "float32", cfg.chunk_frames,
                                              cfg.shard_frames, level)
        self._rows: list[tuple[str, int, int, float]] = []
        # One shard of stored values, filled clip by clip and written when full (no larger for a small part).
        rows = min(cfg.shard_frames, shape[0])
        self._shard = np.empty((rows, layers, dim), zarr_dtype(cfg.dtype))
        self._shard_scales = np.empty((rows, layers), np.float32) if self._scales is not None else None
        self._buffered = 0  # rows of the shard filled
        self._written = 0  # rows written before it

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
        done = 0
        while done < len(values):
            n = min(len(values) - done, len(self._shard) - self._buffered)
            self._shard[self._buffered:self._buffered + n] = values[done:done + n]
            if scales is not None:
                self._shard_scales[self._buffered:self._buffered + n] = scales[done:done + n]
            self._buffered += n
            done += n
            # Whole shards only (and the last one): each shard file is written once, whole.
            if self._buffered == self.cfg.shard_frames:
                self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        self._features.write(self._written, self._shard[:self._buffered])
        if self._scales is not None:
            self._scales.write(self._written, self._shard_scales[:self._buffered])
        self._written += self._buffered
        self._buffered = 0

    def commit(self) -> PartInfo:
        """Flush, write offsets and clip table, put the files under the attempt's prefix and mark the part done.

        Raises:
            FencingError: the job no longer holds the store's lease (nothing is committed).
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        # Checked before the last flush: it writes the array's last shard, which ends at the planned end.
        if self._written + self._buffered != self.total_frames:
            raise StoreError(f"part {self.part_id}: wrote {self._written + self._buffered} frames, "
                             f"planned {self.total_frames}")
        self._flush()
        offsets = np.array([r[1] for r in self._rows] + [self._written], dtype=np.int64)
        write_plain_array(self._files, "offsets", offsets)
        table = pa.table({"key": [r[0] for r in self._rows],
                          "offset": pa.array([r[1] for r in self._rows], pa.int64()),
                          "length": pa.array([r[2] for r in self._rows], pa.int64()),
                          "duration": pa.array([r[3] for r in self._rows], pa.float64())})
        sink = io.BytesIO()
        pq.write_table(table, sink)
        self._files.put("clips.parquet", [sink.getbuffer()])
        files = self._files.checksums
        # CRC-32C of each chunk for the raw reader's checks (uncompressed arrays only, which it reads).
        chunks = {w.name: w.chunks for w in (self._features, self._scales) if w is not None and w.chunks is not None}
        size = sum(self._files.sizes.values())
        marker = {"part": self.part_id, "clips": len(self._rows), "frames": self._written, "files": files,
                  "chunks": chunks, "attempt": self.attempt, "fence": self.fence, "node": socket.gethostname()}
        try:
            if self.objects.exists(self._marker_key):  # an earlier run or a twin committed it: keep theirs
                return PartInfo(self.part_id, len(self._rows), self._written, 0)
            self._check_fence()
            prefix = f"parts/{self.part_id}/{self.attempt}"
            for rel in files:  # a request that fails past its retries leaves the part uncommitted
                self.objects.put_file(f"{prefix}/{rel}", self.tmp / rel)
            self._check_fence()  # the uploads took time: check again right before the marker
            text = (json.dumps(marker, indent=1, sort_keys=True) + "\n").encode()
            if self.objects.put_new(self._marker_key, text) is None:
                self.objects.delete_prefix(prefix)  # a twin attempt marked the part first: keep theirs
                return PartInfo(self.part_id, len(self._rows), self._written, 0)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return PartInfo(self.part_id, len(self._rows), self._written, size)

    def abort(self) -> None:
        """Drop the staged files of a part that will not be committed (an encoder error, a kill signal)."""
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def _marker_key(self) -> str:
        return f"parts/{self.part_id}/{DONE}"

    def _check_fence(self) -> None:
        """Delete this attempt's uploads and raise if the job's fence is no longer the store's lease."""
        if self.fence is None:
            return
        try:
            check_fence(store_of_group(self.group), self.fence,
                        f"commit of part {str(self.group).rstrip('/').rsplit('/', 1)[-1]}/{self.part_id}")
        except FencingError:
            self.objects.delete_prefix(f"parts/{self.part_id}/{self.attempt}")
            raise
