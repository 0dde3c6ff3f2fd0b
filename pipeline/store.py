"""The feature store: Zarr v3, one group per encoder and spec, immutable ragged parts.

Layout under the store root::

    features/<encoder>/<spec_id>/          Zarr group of one encoder under one spec
        spec.json                          everything that determines the stored values
        index.parquet                      clip key -> part, offset, length, duration (committed parts only)
        parts/<part_id>/                   Zarr group written by exactly one writer
            features                       (frames, layers, dim), all clips concatenated, sharded
            scales                         (frames, layers) float32, int8 stores only
            offsets                        (clips + 1,) int64 frame offsets
            clips.parquet                  key, offset, length, duration of this part's clips
            _DONE                          JSON marker written last: a checksum of every file, and a
                                           CRC-32C of every shard index and inner chunk
        .tmp/                              parts being written (renamed into parts/ when complete)
    .lock                                  the job lock; holds the fencing token of the job that has it

A part is written to ``.tmp``, renamed into ``parts/``, then marked done; readers and the index see
only parts that carry ``_DONE``, so a killed writer never exposes half a part. A job writes a new
fencing token into ``.lock`` when it takes the store, and its writers refuse to commit once the token
is another job's: the workers of a killed job that outlive it by a moment cannot commit into the next.

Readers trust a part only as far as its done marker: the first access of a part checks its small
files (metadata, offsets, clip table) against the marker and its index rows against its clip table;
every chunk read from a shard is then checked against its CRC-32C (hardware-accelerated, 10+ GB/s).
A part that fails is refused with ``DamagedPartError``; ``alarm pipeline repair`` or a rerun of the
job recomputes it. Parts without chunk checksums (compressed stores, older markers) are checked
whole, once, on first access.

Values are stored in float16 by default and uncompressed: float16 features hardly compress and
decompression slows the random reads the trainer does (see bench/extract.py for the measured numbers).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alarm.pipeline.shard_io import DamagedChunk, RawShardedArray

STORE_FORMAT = 1
DTYPES = ("float16", "bfloat16", "float32", "int8")
COMPRESSORS = (None, "zstd")
DONE = "_DONE"


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


def file_checksum(path: Path) -> str:
    """blake2b-128 of a file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_checksums(folder: Path) -> dict[str, str]:
    """Checksum of every file below ``folder`` except the done marker, by relative path."""
    return {p.relative_to(folder).as_posix(): file_checksum(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != DONE}


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file through a temporary name and a rename, so readers never see half of it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_parquet_atomic(table: Any, path: Path) -> None:
    """Write a pyarrow table as Parquet through a temporary name and a rename."""
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ groups


def group_dir(root: Path | str, encoder: str, sid: str) -> Path:
    """Folder of the group for ``encoder`` under spec id ``sid``."""
    return Path(root) / "features" / encoder / sid


def list_groups(root: Path | str, encoder: str) -> list[str]:
    """Spec ids present for ``encoder`` (folders holding a spec.json)."""
    base = Path(root) / "features" / encoder
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "spec.json").is_file())


def init_group(root: Path | str, encoder: str, spec: dict, layers: int, dim: int,
               frame_rate: float) -> Path:
    """Create (or check) the group for ``spec`` and return its folder."""
    import zarr

    sid = spec_id(spec)
    folder = group_dir(root, encoder, sid)
    meta = {"spec_id": sid, "encoder": encoder, "layers": layers, "dim": dim,
            "frame_rate": frame_rate, "spec": spec}
    spec_path = folder / "spec.json"
    if spec_path.is_file():
        existing = json.loads(spec_path.read_text())
        if spec_id(existing["spec"]) != sid:
            raise StoreSpecError(f"{spec_path} does not hash to its folder name {sid}: the store is damaged")
        return folder
    (folder / "parts").mkdir(parents=True, exist_ok=True)
    for path, attrs in ((Path(root), {"alarm_store": STORE_FORMAT}), (folder, {"spec_id": sid}),
                        (folder / "parts", {})):
        if not (path / "zarr.json").is_file():
            zarr.open_group(str(path), mode="a", zarr_format=3, attributes=attrs)
    for mid in (Path(root) / "features", Path(root) / "features" / encoder):
        if not (mid / "zarr.json").is_file():
            zarr.open_group(str(mid), mode="a", zarr_format=3)
    write_atomic(spec_path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return folder


def committed_parts(group: Path) -> list[str]:
    """Part ids that carry a done marker, sorted."""
    parts = group / "parts"
    if not parts.is_dir():
        return []
    return sorted(p.name for p in parts.iterdir() if (p / DONE).is_file())


def uncommit_part(group: Path, part: str) -> None:
    """Take a committed part out of the store: its done marker first (readers and the index stop
    seeing it), then its folder. The next run of the job plans its clips again."""
    folder = group / "parts" / part
    (folder / DONE).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------ fencing

LOCK = ".lock"


def current_fence(root: Path | str) -> str:
    """The fencing token of the job that last took the store (written into ``.lock``); "" if none."""
    try:
        return (Path(root) / LOCK).read_text().strip()
    except FileNotFoundError:
        return ""


def check_fence(root: Path | str, token: str, what: str) -> None:
    """Raise ``FencingError`` unless ``token`` is still the store's fencing token."""
    current = current_fence(root)
    if current != token:
        raise FencingError(f"{what}: refused, the job that started it no longer holds the store {root} "
                           f"(fencing token {token[:8]}, the store's is {current[:8] or 'none'})")


def clear_tmp(folder: Path) -> None:
    """Remove what a killed job left half-written in ``folder``: parts in ``.tmp`` and ``.*.tmp`` files.

    Call only while holding the job lock (another job's temporary files would go too).
    """
    shutil.rmtree(folder / ".tmp", ignore_errors=True)
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ values


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even) as uint16."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def _from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def quantize(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Encode float32 features ``(frames, layers, dim)`` for storage; int8 also returns scales."""
    if dtype == "float32":
        return np.ascontiguousarray(x, dtype=np.float32), None
    if dtype == "float16":
        return x.astype(np.float16), None
    if dtype == "bfloat16":
        return _to_bf16_bits(x), None
    peak = np.abs(x).max(axis=2)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / scales[..., None]), -127, 127).astype(np.int8)
    return q, scales


def dequantize(values: np.ndarray, scales: np.ndarray | None, dtype: str) -> np.ndarray:
    """Inverse of :func:`quantize`, always float32."""
    if dtype == "bfloat16":
        return _from_bf16_bits(values)
    if dtype == "int8":
        return values.astype(np.float32) * scales[..., None]
    return values.astype(np.float32)


def _zarr_dtype(dtype: str) -> str:
    # numpy has no bfloat16: its bit patterns are kept as uint16 and the spec says how to read them.
    return "uint16" if dtype == "bfloat16" else dtype


# ------------------------------------------------------------------------------------------ writer


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
            "features", shape=shape, chunks=chunk, shards=shard, dtype=_zarr_dtype(cfg.dtype),
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


# ------------------------------------------------------------------------------------------ index

INDEX_COLUMNS = ("key", "part", "offset", "length", "duration")


def build_index(group: Path) -> Any:
    """The clip index of the committed parts (pyarrow table sorted by key; first part wins a key)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    tables = []
    for part in committed_parts(group):
        t = pq.read_table(group / "parts" / part / "clips.parquet")
        tables.append(t.append_column("part", pa.array([part] * len(t), pa.string())))
    if not tables:
        return pa.table({"key": pa.array([], pa.string()), "part": pa.array([], pa.string()),
                         "offset": pa.array([], pa.int64()), "length": pa.array([], pa.int64()),
                         "duration": pa.array([], pa.float64())})
    table = pa.concat_tables(tables).select(list(INDEX_COLUMNS))
    table = table.take(pc.sort_indices(table, [("key", "ascending"), ("part", "ascending")]))
    keys = table.column("key").to_pylist()
    first = [i for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
    return table.take(pa.array(first, pa.int64())) if len(first) < len(keys) else table


def write_index(group: Path) -> Any:
    """Rebuild ``index.parquet`` from the committed parts and return it."""
    table = build_index(group)
    parts = committed_parts(group)
    table = table.replace_schema_metadata({b"parts": json.dumps(parts).encode()})
    write_parquet_atomic(table, group / "index.parquet")
    return table


def load_index(group: Path) -> Any:
    """The clip index: index.parquet when it covers exactly the committed parts, else rebuilt in memory."""
    import pyarrow.parquet as pq

    path = group / "index.parquet"
    if path.is_file():
        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        if json.loads(meta.get(b"parts", b"null")) == committed_parts(group):
            return table
    return build_index(group)


# ------------------------------------------------------------------------------------------ reader

def _resolve_group(root: Path, encoder: str, spec: dict | str | None) -> str:
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
    matches = [g for g in groups if _group_meta(root, encoder, g)["spec"]["encoder"] == spec]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        first = _group_meta(root, encoder, groups[0])["spec"]["encoder"]
        differ = sorted(k for k in set(first) | set(spec) if first.get(k) != spec.get(k))
        raise StoreSpecError(f"store {root} has no {encoder!r} features for this encoder spec; "
                             f"group {groups[0]} differs in: {', '.join(differ)}")
    raise StoreSpecError(f"several groups match this encoder spec ({', '.join(matches)}); pass the full spec")


def _group_meta(root: Path, encoder: str, sid: str) -> dict:
    return json.loads((group_dir(root, encoder, sid) / "spec.json").read_text())


def open_features(root: Path | str, encoder: str, spec: dict | str | None = None) -> FeatureReader:
    """Open the features of ``encoder`` in the store at ``root``.

    Args:
        root: store folder.
        encoder: registry key (whisper, w2vbert, muq, sslam).
        spec: None for the only group of that encoder; a spec id; a full group spec
            (``{"encoder": ..., "store": ...}``); or an encoder's ``spec()`` alone.

    Raises:
        StoreSpecError: no group matches, or the choice is ambiguous.
    """
    root = Path(root)
    sid = _resolve_group(root, encoder, spec)
    meta = _group_meta(root, encoder, sid)
    if spec_id(meta["spec"]) != sid:
        raise StoreSpecError(f"group {sid} of {encoder!r} holds a spec that does not hash to its name")
    return FeatureReader(root, encoder, sid)


class FeatureReader:
    """Random access to one group's clips; picklable, reopens its files lazily in each process.

    Each part is checked against its done marker on first access in a process, and every chunk read
    against its checksum (see the module docstring); a damaged part raises ``DamagedPartError`` for
    every clip it holds, so a caller can skip those clips (the trainer does) or stop.
    """

    def __init__(self, root: Path | str, encoder: str, sid: str) -> None:
        self.root, self.encoder, self.spec_id = Path(root), encoder, sid
        self.group = group_dir(self.root, encoder, sid)
        meta = json.loads((self.group / "spec.json").read_text())
        self.spec: dict = meta["spec"]
        self.layers: int = int(meta["layers"])
        self.dim: int = int(meta["dim"])
        self.frame_rate: float = float(meta["frame_rate"])
        self.dtype: str = self.spec["store"]["dtype"]
        table = load_index(self.group)
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
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = {}  # zarr handles stay in the process that opened them
        state["_damaged"] = {}  # a repaired store is checked afresh
        return state

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

    def _open(self, part: int) -> tuple[Any, Any]:
        if self._pid != os.getpid():  # forked: handles of the parent are not ours
            self._arrays, self._damaged, self._pid = {}, {}, os.getpid()
        if part in self._damaged:
            raise DamagedPartError(self._damaged[part])
        if part not in self._arrays:
            folder = self.group / "parts" / self._parts[part]
            try:
                chunks = self._check_part(part, folder)
                features = _open_array(folder / "features")
                scales = _open_array(folder / "scales") if self.dtype == "int8" else None
            except (OSError, ValueError, KeyError, StoreError) as err:  # unreadable is damaged too
                raise self._refuse(part, str(err)) from None
            for array, name in ((features, "features"), (scales, "scales")):
                if isinstance(array, RawShardedArray):
                    array.checksums = chunks.get(name)
            self._arrays[part] = (features, scales)
        return self._arrays[part]

    def _check_part(self, part: int, folder: Path) -> dict[str, dict]:
        """Check a part's files against its done marker and its index rows against its clip table.

        Shard files of arrays with chunk checksums are left to the chunk checks of each read; other
        files (all of them for a part without chunk checksums) are hashed here. Returns the chunk
        checksums per array.
        """
        import pyarrow.parquet as pq

        marker = json.loads((folder / DONE).read_text())
        chunks = marker.get("chunks") or {}
        for rel, checksum in sorted(marker["files"].items()):
            path = folder / rel
            if rel.split("/", 1)[0] in chunks and rel.split("/")[1:2] == ["c"]:
                if not path.is_file():
                    raise StoreError(f"file {rel} is missing")
            elif file_checksum(path) != checksum:
                raise StoreError(f"checksum of {rel} differs from its done marker")
        clips = pq.read_table(folder / "clips.parquet", columns=["key", "offset", "length"]).to_pydict()
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
        except DamagedChunk as err:
            raise self._refuse(part, str(err)) from None
        if stored and self.dtype == "float16":
            return np.asarray(values)
        return dequantize(values, scale_rows, self.dtype)


def _open_array(folder: Path) -> Any:
    """The fast direct reader when the layout allows it, else the zarr array."""
    import zarr

    return RawShardedArray.open(folder) or zarr.open_array(str(folder), mode="r")


def _read_rows(array: Any, start: int, stop: int) -> np.ndarray:
    return array.read(start, stop) if isinstance(array, RawShardedArray) else array[start:stop]
