"""What a store will hold as objects: parts cut as the job cuts them, and each part's shard files.

On object storage every shard file of a part is one object; tens of MB per object is what S3-like
stores serve well (fewer requests than small files, ranged reads stay cheap). The shard size is the
store setting ``shard_frames`` (frames per shard file), so an object's bytes are ``shard_frames`` x
kept layers x dim x bytes per value: 42 MB for whisper and w2vbert at the default 4096 frames in
float16, 25 MB for muq, 19 MB for sslam. A part's last shard holds only the frames left (whole inner
chunks), and each part adds a few small objects (metadata, clip table, done marker).

The corpus is a histogram of clip durations (seconds -> clips), so 18.9K hours of same-length clips
cost a few operations, not millions.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

SMALL_OBJECTS_PER_PART = 6
"""Besides its shard files, a part writes its group's zarr.json, features/zarr.json, offsets (metadata
and one chunk), clips.parquet and the done marker."""
SHARD_INDEX_BYTES_PER_CHUNK = 16
"""Zarr v3 sharding: an (offset, length) pair of uint64 per inner chunk, at the end of the shard."""

Segment = tuple[float, int]
"""``(clip seconds, clips)``: a run of same-length clips inside one part."""


def clip_frames(duration: float, frame_rate: float, window_seconds: float) -> int:
    """Output frames of a clip, window by window (docs/method.md §2 lengths)."""
    full, rest = divmod(duration, window_seconds)
    return int(full) * int(round(window_seconds * frame_rate)) + int(rest * frame_rate)


def pack_parts(durations: Counter, part_seconds: float) -> Counter:
    """The parts the job would cut from clips of these durations (``work_units.plan_parts``'s rule).

    Clips sorted by duration are added to the current part until the next one would take it past
    ``part_seconds``; a part always takes at least one clip. Returns part composition (a tuple of
    ``Segment``) -> number of such parts.
    """
    parts: Counter = Counter()
    current: list[Segment] = []
    total = 0.0
    for d in sorted(x for x in durations if x > 0):
        n = durations[d]
        while n:
            if current and total + d > part_seconds:
                parts[tuple(current)] += 1
                current, total = [], 0.0
            if current:  # fill the open part
                k = min(n, int((part_seconds - total) / d + 1e-9))
                current.append((d, k))
                total, n = total + k * d, n - k
                continue
            per = max(1, int(part_seconds / d + 1e-9))
            whole, rest = divmod(n, per)
            if rest == 0:  # the last full part stays open: a longer clip may still fit
                whole, rest = whole - 1, per
            if whole:
                parts[((d, per),)] += whole
            current, total, n = [(d, rest)], rest * d, 0
    if current:
        parts[tuple(current)] += 1
    return parts


@dataclass
class ObjectPlan:
    """One encoder group's objects on object storage."""

    parts: int
    shard_objects: int
    """Shard files (the bulk data objects)."""
    small_objects: int
    """Metadata, clip tables and done markers: ``SMALL_OBJECTS_PER_PART`` per part."""
    bytes: float
    """Bytes of the shard objects (edge chunks padded to a whole chunk, shard indexes included)."""
    full_shard_bytes: float
    """Bytes of one full shard: the size most objects have."""

    @property
    def average_shard_bytes(self) -> float:
        return self.bytes / self.shard_objects if self.shard_objects else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"parts": self.parts, "shard_objects": self.shard_objects, "small_objects": self.small_objects,
                "bytes": self.bytes, "full_shard_bytes": self.full_shard_bytes,
                "average_shard_bytes": self.average_shard_bytes}


def part_shards(frames: int, frame_bytes: float, storage: Any) -> tuple[int, float]:
    """(shard files, their bytes) of one part of ``frames`` frames of ``frame_bytes`` each."""
    shard, chunk = storage.shard_frames, storage.chunk_frames
    full, rest = divmod(frames, shard)
    index = (shard // chunk) * SHARD_INDEX_BYTES_PER_CHUNK + 4  # + crc32c of the index
    nbytes = full * (shard * frame_bytes + index)
    if rest:
        nbytes += math.ceil(rest / chunk) * chunk * frame_bytes + index
    return full + (1 if rest else 0), nbytes


def plan_objects(parts: Counter, frame_rate: float, window_seconds: float, frame_bytes: float,
                 storage: Any) -> ObjectPlan:
    """The objects of one encoder's group for the packed ``parts`` (``pack_parts``).

    Args:
        frame_rate, window_seconds: the encoder's output rate and window (frames per clip).
        frame_bytes: stored bytes of one frame (kept layers x dim x bytes per value).
        storage: the ``StoreConfig`` (shard and chunk frames).
    """
    count = shards = 0
    nbytes = 0.0
    for segments, n in parts.items():
        frames = sum(k * clip_frames(d, frame_rate, window_seconds) for d, k in segments)
        files, size = part_shards(frames, frame_bytes, storage)
        count, shards, nbytes = count + n, shards + n * files, nbytes + n * size
    full = storage.shard_frames * frame_bytes
    full += (storage.shard_frames // storage.chunk_frames) * SHARD_INDEX_BYTES_PER_CHUNK + 4
    return ObjectPlan(parts=count, shard_objects=shards, small_objects=count * SMALL_OBJECTS_PER_PART,
                      bytes=nbytes, full_shard_bytes=full)
