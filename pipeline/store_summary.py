"""A feature store in a few numbers: its groups with their bytes on disk, and a job's summary as terminal lines."""

from __future__ import annotations

import os
from typing import Any

from alarm.pipeline.formatting import human_bytes, human_duration
from alarm.pipeline.store_layout import Location, at, objects_at


def _folder_bytes(folder: Location) -> int:
    """Bytes of every file (object) under ``folder``."""
    objects = objects_at(folder)
    if objects.local is None:
        return sum(info.size for info in objects.list())
    total = 0
    for base, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(base, name)).st_size
            except OSError:  # removed while we walk (a concurrent job's temporary file)
                pass
    return total


def store_groups(root: Location) -> dict[str, dict[str, Any]]:
    """Each encoder group's status (``verify.store_status``) with its ``bytes_on_disk``."""
    from alarm.pipeline.verify import store_status

    groups = store_status(root)["groups"]
    for label, g in groups.items():
        g["bytes_on_disk"] = _folder_bytes(at(root, "features", label))
    return groups


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """A feature job's summary (``summary.json``) in four lines for the terminal.

    Example::

        stored: 31 clips, 43.2 s of audio (0.012 h), 34 instances read
        rejected: 3 instances (too short 1, unreadable 2)
        encoders: whisper 31, w2vbert 31 clips stored; 62 clip encodings computed now, 0 already stored
        written: 1.2 MiB in 12.3 s
        nodes: 2 wrote parts: 5f3c9a0e 7 parts / 21 clips, 8b1d44c2 5 parts / 10 clips

    The nodes line (Ray node ids, shortened) appears when the job wrote parts.
    """
    audio_s = float(summary.get("audio_hours") or 0.0) * 3600
    rejected = summary.get("rejected") or {}
    by_kind = ", ".join(f"{kind} {n}" for kind, n in sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0])))
    stored = summary.get("stored") or {}
    encoded = sum((summary.get("encoded") or {}).values())
    skipped = sum((summary.get("skipped") or {}).values())
    lines = [
        f"stored: {summary.get('clips', 0):,} clips, {human_duration(audio_s)} of audio ({audio_s / 3600:.3g} h), "
        f"{summary.get('instances', 0):,} instances read",
        f"rejected: {sum(rejected.values()):,} instances" + (f" ({by_kind})" if by_kind else ""),
        "encoders: " + ", ".join(f"{e} {n:,}" for e, n in stored.items())
        + f" clips stored; {encoded:,} clip encodings computed now, {skipped:,} already stored",
        f"written: {human_bytes(sum((summary.get('bytes_written') or {}).values()))} "
        f"in {human_duration(summary.get('wall_seconds'))}",
    ]
    nodes = summary.get("nodes") or {}
    if nodes:
        lines.append(f"nodes: {len(nodes)} wrote parts: " + ", ".join(
            f"{node[:8]} {n['parts']:,} parts / {n['clips']:,} clips" for node, n in sorted(nodes.items())))
    return lines
