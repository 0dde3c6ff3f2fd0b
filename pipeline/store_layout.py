"""The feature store's layout: its settings, spec ids, errors, groups and parts on disk.

Everything that names a folder or hashes a spec lives here; writing a part is ``part_writer``, the
clip index ``store_index``, the job lock and fencing ``store_fence``, and reading ``store`` (whose
docstring draws the whole layout).
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


def part_subdir(part: str, marker: dict) -> str:
    """Where a committed part's files are, relative to its group, given its done marker.

    Parts written under an attempt prefix (their marker names the attempt) keep their files in
    ``parts/<part>/<attempt>/``; stores written before keep them in ``parts/<part>/``. The marker is
    always ``parts/<part>/_DONE``.
    """
    attempt = marker.get("attempt")
    return f"parts/{part}/{attempt}" if attempt else f"parts/{part}"


def uncommit_part(group: Path, part: str) -> None:
    """Take a committed part out of the store: its done marker first (readers and the index stop
    seeing it), then its folder. The next run of the job plans its clips again."""
    folder = group / "parts" / part
    (folder / DONE).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def clear_tmp(folder: Path) -> None:
    """Remove what a killed job left half-written in ``folder``: parts in ``.tmp`` and ``.*.tmp`` files.

    Call only while holding the job lock (another job's temporary files would go too).
    """
    shutil.rmtree(folder / ".tmp", ignore_errors=True)
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
