"""Abandoned attempts: find them, and delete those older than a grace period (``alarm pipeline gc``).

A part is committed by its done marker, which names the attempt that holds its files
(``part_writer``). Every other attempt under ``parts/<part>/`` was abandoned: a writer killed
before its marker, a commit refused by fencing, a twin that lost the race for the marker. Readers
never see them; gc deletes them once they are older than the grace period (a writer of a running
job may still be uploading a young one), and never the attempt a marker names. It takes the store's
lease for the time it runs, so it never races a job.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from alarm.pipeline.objects import is_url
from alarm.pipeline.store_layout import DONE, STAGING, Location, at, list_groups, objects_at, read_marker

ATTEMPT = re.compile(r"^[0-9a-f]{16}$")  # uuid4().hex[:16]; never a file name of a part written before attempts


@dataclass
class Attempt:
    """The objects under one ``parts/<part>/<attempt>/`` prefix."""

    objects: int = 0
    bytes: int = 0
    newest: float = 0.0
    """Modification time (epoch s) of its newest object: an attempt still uploading is young."""


@dataclass
class PartFiles:
    """What one ``parts/<part>/`` prefix holds: a done marker or not, and its attempts."""

    marked: bool = False
    attempts: dict[str, Attempt] = field(default_factory=dict)


def scan_parts(group: Location) -> dict[str, PartFiles]:
    """Every part prefix of ``group`` with its marker and attempts, from one listing."""
    found: dict[str, PartFiles] = {}
    for info in objects_at(group).list("parts"):
        bits = info.key.split("/")
        if len(bits) < 3 or bits[0] != "parts":
            continue
        entry = found.setdefault(bits[1], PartFiles())
        if len(bits) == 3 and bits[2] == DONE:
            entry.marked = True
        elif len(bits) >= 4 and ATTEMPT.match(bits[2]):
            attempt = entry.attempts.setdefault(bits[2], Attempt())
            attempt.objects += 1
            attempt.bytes += info.size
            attempt.newest = max(attempt.newest, info.modified)
    return found


def abandoned(group: Location, parts: dict[str, PartFiles] | None = None) -> dict[str, dict[str, Attempt]]:
    """part -> its attempts that no done marker names (all of them for an unmarked part)."""
    parts = scan_parts(group) if parts is None else parts
    out: dict[str, dict[str, Attempt]] = {}
    for part, entry in parts.items():
        live = None
        if entry.marked and entry.attempts:
            marker = read_marker(group, part) or {}
            live = marker.get("attempt")  # None: uncommitted since the listing, or a part written before attempts
        dead = {a: info for a, info in entry.attempts.items() if a != live}
        if dead:
            out[part] = dead
    return out


@dataclass
class GcReport:
    """What gc removed (or, in a dry run, would remove)."""

    attempts: int = 0
    objects: int = 0
    bytes: int = 0
    young: int = 0
    """Abandoned attempts kept because they are younger than the grace period."""
    removed: list[str] = field(default_factory=list)
    """``<encoder>/<spec id>/<part>/<attempt>`` of each attempt removed."""


def _groups(root: Location) -> list[tuple[str, Location]]:
    features = objects_at(at(root, "features"))
    return [(f"{e}/{sid}", at(root, "features", e, sid)) for e in features.list_dirs() for sid in list_groups(root, e)]


def collect(root: Location, grace_seconds: float, dry_run: bool = False, now: float | None = None) -> GcReport:
    """Delete the abandoned attempts of every group older than ``grace_seconds``, and stale staging folders.

    Never deletes an attempt a done marker names. The caller holds the store's lease (``run_gc``).
    """
    now = time.time() if now is None else now
    report = GcReport()
    for label, group in _groups(root):
        objects = objects_at(group)
        for part, dead in sorted(abandoned(group).items()):
            for attempt, info in sorted(dead.items()):
                if now - info.newest < grace_seconds:
                    report.young += 1
                    continue
                if not dry_run:
                    objects.delete_prefix(f"parts/{part}/{attempt}")
                report.attempts += 1
                report.objects += info.objects
                report.bytes += info.bytes
                report.removed.append(f"{label}/{part}/{attempt}")
        if not is_url(group):
            _stale_staging(objects.local / STAGING, grace_seconds, now, dry_run, report)
    return report


def _stale_staging(folder: Any, grace_seconds: float, now: float, dry_run: bool, report: GcReport) -> None:
    """Count (and unless ``dry_run`` remove) staging folders of a local group untouched for the grace period."""
    import shutil

    if not folder.is_dir():
        return
    for staged in sorted(folder.iterdir()):
        files = [p for p in staged.rglob("*") if p.is_file()]
        newest = max((p.stat().st_mtime for p in files), default=staged.stat().st_mtime)
        if now - newest < grace_seconds:
            report.young += 1
            continue
        report.objects += len(files)
        report.bytes += sum(p.stat().st_size for p in files)
        report.removed.append(str(staged))
        if not dry_run:
            shutil.rmtree(staged, ignore_errors=True)


def parse_seconds(text: str) -> float:
    """Seconds of a duration written ``90``, ``45s``, ``30m``, ``1h`` or ``2d``; ``ConfigError`` otherwise."""
    from alarm.pipeline.configs import ConfigError

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    scale = units.get(text[-1:], None)
    try:
        value = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise ConfigError(f"grace {text!r} is not a duration such as 90, 45s, 30m, 1h or 2d") from None
    if value < 0:
        raise ConfigError(f"grace {text!r} is negative")
    return value


def run_gc(root: Location, grace_seconds: float, dry_run: bool = False) -> GcReport:
    """``collect`` while holding the store's lease: refused (``ConfigError``) while a job writes the store.

    A dry run deletes nothing and takes no lease: it may look at a store a job is writing.
    """
    from alarm.pipeline.configs import ConfigError
    from alarm.pipeline.store_fence import store_lock

    objects = objects_at(root)
    objects.check()
    if not objects.list_dirs("features"):
        raise ConfigError(f"{objects.url} is not a feature store (nothing under features/)")
    if dry_run:
        return collect(root, grace_seconds, dry_run=True)
    with store_lock(root):
        return collect(root, grace_seconds)
