"""Step 4 of the feature job: plan the parts still to compute, per encoder, as units of work.

Committed parts that fail verification (a checksum that differs from the done marker, a missing
file) are taken out first; then the clip keys missing from each encoder's group, sorted by
(duration, key), are cut greedily into parts of ``part_seconds`` audio. Greedy cutting restarts at
every part boundary, so removing whole committed parts from the list leaves the other parts
unchanged: a rerun after a kill plans exactly the parts the first run had not committed, and the
store ends byte-identical. A part's id is a hash of its keys; parts with the same keys for several
encoders become one ``WorkUnit``, decoded once.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from alarm.pipeline.job_config import PipelineConfig
from alarm.pipeline.store_fence import current_fence
from alarm.pipeline.store_index import load_index
from alarm.pipeline.store_layout import Location, clear_tmp, group_spec, init_group
from alarm.pipeline.verify import drop_damaged_parts


@dataclass
class WorkUnit:
    """One part to compute: its clips, decoded once, written for each of ``encoders``.

    Inside Ray a unit travels as the plain dict ``to_row`` gives (JSON text in Ray Data rows).
    """

    part: str
    """The part id: the hash of ``keys`` (``part_id``)."""
    keys: list[str]
    """Clip content keys, in the order the part stores them."""
    encoders: list[str]
    """Encoders whose group still misses this part."""
    fence: str
    """The job's fencing token: the commit is refused once another job has taken the store."""
    durations: list[float]
    """Audio seconds of each clip."""
    sources: list[dict[str, Any]]
    """Where each clip decodes from: ``{"audio", "start", "end", "stat"}``; ``stat`` is the (size, mtime_ns)
    of the file when it was keyed (an unchanged file is not hashed again, ``decode_planned``)."""

    def to_row(self) -> dict[str, Any]:
        """The unit as a plain dict (what the Ray stages read)."""
        return asdict(self)


@dataclass
class PlanStats:
    """What step 4 planned: a group folder per encoder and the units still to compute."""

    groups: dict[str, Location]
    units: list[WorkUnit]
    skipped: dict[str, int]
    """encoder -> clips already stored (not planned again)."""
    repaired: dict[str, list[str]]
    """encoder -> damaged parts that were taken out (their clips are planned again)."""


def plan_parts(clips: dict[str, float], part_seconds: float) -> list[list[str]]:
    """Cut clip keys, sorted by (duration, key), greedily into parts of at most ``part_seconds``.

    Greedy cutting depends only on what follows a part boundary, so removing whole parts from the
    input leaves every other part as it was (the property resume relies on).
    """
    parts: list[list[str]] = []
    current: list[str] = []
    total = 0.0
    for key in sorted(clips, key=lambda k: (clips[k], k)):
        if current and total + clips[key] > part_seconds:
            parts.append(current)
            current, total = [], 0.0
        current.append(key)
        total += clips[key]
    if current:
        parts.append(current)
    return parts


def part_id(keys: list[str]) -> str:
    """A part's id: the hash of its clip keys in order."""
    return hashlib.blake2b("\n".join(keys).encode(), digest_size=10).hexdigest()


def plan_units(cfg: PipelineConfig, root: Location, facts: dict[str, dict[str, Any]],
               clips: dict[str, dict[str, Any]]) -> PlanStats:
    """Create or check each encoder's group, take out its damaged parts, and plan the missing clips.

    Args:
        cfg: the job.
        root: the store (the caller holds its lease).
        facts: encoder -> ``encoder_facts`` (spec, layers, dim, frame rate).
        clips: accepted clip key -> ``{"duration", "source"}`` (``write_instance_tables``).
    """
    groups, units, skipped, repaired = {}, {}, {}, {}
    fence = current_fence(root)  # the token of this job's lease: every commit of this job carries it
    for e in cfg.encoders:
        f = facts[e]
        groups[e] = init_group(root, e, group_spec(f["spec"], cfg.storage), f["layers"], f["dim"], f["frame_rate"])
        clear_tmp(groups[e])
        # Verify what is skipped: damaged parts go, and are planned again below with the same clips.
        repaired[e] = sorted(drop_damaged_parts(groups[e], cfg.verify_checksums))
        done = set(load_index(groups[e]).column("key").to_pylist())
        missing = {k: c["duration"] for k, c in clips.items() if k not in done}
        skipped[e] = len(clips) - len(missing)
        for keys in plan_parts(missing, cfg.storage.part_seconds):
            pid = part_id(keys)
            unit = units.setdefault(pid, WorkUnit(
                part=pid, keys=keys, encoders=[], fence=fence,
                durations=[clips[k]["duration"] for k in keys],
                sources=[{**dict(zip(("audio", "start", "end"), clips[k]["source"], strict=True)),
                          "stat": clips[k].get("stat")} for k in keys]))
            unit.encoders.append(e)
    return PlanStats(groups=groups, units=list(units.values()), skipped=skipped, repaired=repaired)
