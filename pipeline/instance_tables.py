"""Step 3 of the feature job: the instance and reject tables, and the clips they accept.

Every instance whose source keyed to a clip of usable length is accepted (``instances.parquet``);
the others, and the input's unusable rows, land in ``rejects.parquet`` with their reason. Both
tables keep the rows of earlier jobs' inputs: a store may serve many manifests.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from alarm.pipeline.manifest import reason_kind
from alarm.pipeline.sources import source_order
from alarm.pipeline.store_layout import Location, at, read_parquet, write_parquet_atomic


@dataclass
class ClipStats:
    """What step 3 accepted: the distinct clips to compute, and the reject counts by kind."""

    clips: dict[str, dict[str, Any]]
    """Clip key -> ``{"duration", "source", "stat"}``: the smallest source that decodes it, and the
    (size, mtime_ns) of its file when it was keyed."""
    rejected: Counter
    seconds: float

    @property
    def audio_seconds(self) -> float:
        """Audio seconds of the accepted clips."""
        return sum(c["duration"] for c in self.clips.values())


def write_instance_tables(root: Location, instances: list[Any], input_rejects: list[Any],
                          keyed: dict[tuple, dict[str, Any]], max_seconds: float,
                          min_seconds: float = 0.0) -> tuple[dict, Counter]:
    """Write instances.parquet and rejects.parquet (merged with earlier jobs' rows by instance id).

    A clip of ``max_seconds`` or more, or shorter than ``min_seconds`` (too short to give every
    encoder one frame: ``shortest_clip``), is rejected with its reason.

    Returns the accepted clips (key -> duration, first source) and the reject counts by kind.
    """
    import pyarrow as pa

    from alarm.pipeline.encoders import too_short_reason

    clips: dict[str, dict[str, Any]] = {}
    accepted, rejected = [], []
    for r in input_rejects:
        rejected.append({"id": r.id, "audio": None, "reason": f"manifest: line {r.line}: {r.reason}"})
    for inst in instances:
        src = (inst.audio, inst.start, inst.end)
        info = keyed[src]
        reason = info["reason"]
        if reason is None and info["duration"] >= max_seconds:
            reason = f"too long: {info['duration']:.2f} s >= the {max_seconds:g} s limit"
        if reason is None and info["duration"] < min_seconds:
            reason = too_short_reason(info["duration"], min_seconds)
        if reason is not None:
            rejected.append({"id": inst.id, "audio": inst.audio, "reason": reason})
            continue
        accepted.append({"id": inst.id, "key": info["key"], "dataset": inst.dataset,
                         "duration": info["duration"], "audio": inst.audio, "start": inst.start, "end": inst.end})
        stat = [info.get("size", -1), info.get("mtime_ns", -1)]
        clip = clips.setdefault(info["key"], {"duration": info["duration"], "source": src, "stat": stat})
        if source_order(src) < source_order(clip["source"]):
            # the smallest source decodes it: the same whatever the row order
            clip["source"], clip["stat"] = src, stat
    new_ids = {r["id"] for r in accepted} | {r["id"] for r in rejected if r["id"] is not None}
    schemas = {
        "instances.parquet": pa.schema([("id", pa.string()), ("key", pa.string()), ("dataset", pa.string()),
                                        ("duration", pa.float64()), ("audio", pa.string()),
                                        ("start", pa.float64()), ("end", pa.float64())]),
        "rejects.parquet": pa.schema([("id", pa.string()), ("audio", pa.string()), ("reason", pa.string())]),
    }
    for name, rows in (("instances.parquet", accepted), ("rejects.parquet", rejected)):
        path = at(root, name)
        table = read_parquet(path)
        old = table.to_pylist() if table is not None else []
        # Instances seen before but not in this input keep their rows (stores may serve many manifests).
        merged = [r for r in old if r["id"] not in new_ids] + rows
        # Rows without an id (unparseable manifest lines) come back on every run: keep one of each.
        unique = {tuple(sorted((k, str(v)) for k, v in r.items())): r for r in merged}
        merged = sorted(unique.values(), key=lambda r: (r["id"] is None, r["id"] or "", r.get("reason", "")))
        write_parquet_atomic(pa.Table.from_pylist(merged, schema=schemas[name]), path)
    return clips, Counter(reason_kind(r["reason"]) for r in rejected)


def table_step(root: Location, instances: list[Any], input_rejects: list[Any], keyed: dict[tuple, dict[str, Any]],
               max_seconds: float, min_seconds: float) -> ClipStats:
    """Write the instance and reject tables (``write_instance_tables``), timed."""
    t0 = time.perf_counter()
    clips, rejected = write_instance_tables(root, instances, input_rejects, keyed, max_seconds, min_seconds)
    return ClipStats(clips=clips, rejected=rejected, seconds=time.perf_counter() - t0)
