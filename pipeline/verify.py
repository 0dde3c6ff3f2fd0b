"""Check a feature store part by part, and report its state per encoder.

``verify_store`` names every problem it finds (a part without its done marker, a file whose checksum
changed, an index row that disagrees with its part, clips of the instance table that no part holds);
``store_status`` counts done / pending / rejected clips per encoder group. ``drop_damaged_parts``
takes the committed parts that fail these checks out of a group, so the job plans their clips again:
a rerun (or ``alarm pipeline repair``) recomputes exactly the parts verify rejects.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alarm.pipeline.manifest import reason_kind
from alarm.pipeline.store_index import build_index, load_index
from alarm.pipeline.store_layout import (
    DONE,
    Location,
    StoreError,
    at,
    bytes_checksum,
    committed_parts,
    file_checksum,
    list_groups,
    objects_at,
    part_subdir,
    read_bytes,
    read_parquet,
    spec_id,
    store_exists,
    uncommit_part,
)


@dataclass
class VerifyReport:
    """Result of ``verify_store``: problems make the store unusable as is, warnings do not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    groups: dict[str, dict[str, int]] = field(default_factory=dict)
    damaged: dict[str, list[str]] = field(default_factory=dict)
    """group label -> committed parts with a problem (what a rerun or ``repair`` recomputes)."""

    @property
    def ok(self) -> bool:
        return not self.problems


def _encoders(root: Location) -> list[str]:
    return objects_at(at(root, "features")).list_dirs()


def _instance_keys(root: Location) -> set[str]:
    table = read_parquet(at(root, "instances.parquet"), ["key"])
    return set(table.column("key").to_pylist()) if table is not None else set()


def _small_array(objects: Any, prefix: str) -> Any:
    """A small zarr array read whole from its objects (the offsets of a part), local or remote."""
    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import MemoryStore

    if objects.local is not None:
        return zarr.open_array(str(objects.local / prefix), mode="r")[:]
    store = MemoryStore()
    proto = default_buffer_prototype()
    for info in objects.list(prefix):
        store._store_dict[info.key[len(prefix) + 1:]] = proto.buffer.from_bytes(objects.get(info.key))
    return zarr.open_array(store, mode="r")[:]


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:160] or type(err).__name__


def _checksum(objects: Any, rel: str) -> str:
    return file_checksum(objects.local / rel) if objects.local is not None else bytes_checksum(objects.get(rel))


def _verify_part(group: Location, part: str, layers: int, dim: int, checksums: bool) -> tuple[list[str], list[dict]]:
    """Check one committed part; return its problems and its clip rows (empty if unreadable)."""
    name = f"{str(group).rstrip('/').rsplit('/', 2)[-2]}/{str(group).rstrip('/').rsplit('/', 1)[-1]}/{part}"
    problems: list[str] = []
    try:
        marker = json.loads(read_bytes(at(group, "parts", part, DONE)))
        marked = set(marker["files"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"part {name}: done marker unreadable ({err})"], []
    objects = objects_at(at(group, part_subdir(part, marker)))
    files = {info.key for info in objects.list() if info.key != DONE}
    for missing in sorted(marked - files):
        problems.append(f"part {name}: file {missing} is missing")
    for extra in sorted(files - marked):
        problems.append(f"part {name}: unexpected file {extra} (not in its done marker)")
    if checksums:
        for rel in sorted(marked & files):
            if _checksum(objects, rel) != marker["files"][rel]:
                problems.append(f"part {name}: checksum of {rel} differs from its done marker")
    try:
        rows = read_parquet(at(group, part_subdir(part, marker), "clips.parquet")).to_pylist()
        shape = tuple(json.loads(objects.get("features/zarr.json"))["shape"])
        offsets = _small_array(objects, "offsets")
    except Exception as err:  # any unreadable file is a problem to name, not a crash
        return [*problems, f"part {name}: unreadable ({err})"], []
    if shape[1:] != (layers, dim):
        problems.append(f"part {name}: features shape {shape}, spec says (frames, {layers}, {dim})")
    expected = np.cumsum([0] + [r["length"] for r in rows])
    if len(offsets) != len(rows) + 1 or not np.array_equal(offsets, expected) or \
            [r["offset"] for r in rows] != list(expected[:-1]):
        problems.append(f"part {name}: offsets disagree with clips.parquet")
    if shape[0] != expected[-1] or marker["frames"] != expected[-1] or marker["clips"] != len(rows):
        problems.append(f"part {name}: {shape[0]} frames stored, clips.parquet covers "
                        f"{expected[-1]}, done marker says {marker['frames']}")
    return problems, [{**r, "part": part} for r in rows]


def damaged_parts(group: Location, checksums: bool = True) -> dict[str, list[str]]:
    """Committed parts of ``group`` that fail ``verify_store``'s part checks, with their problems."""
    meta = json.loads(read_bytes(at(group, "spec.json")))
    found = {}
    for part in committed_parts(group):
        problems, _ = _verify_part(group, part, meta["layers"], meta["dim"], checksums)
        if problems:
            found[part] = problems
    return found


def drop_damaged_parts(group: Location, checksums: bool = True) -> dict[str, list[str]]:
    """Uncommit every damaged part of ``group`` (the job then recomputes them); return them with their problems.

    Call only while holding the store's lease. With ``checksums`` every file of every part is read once.
    """
    found = damaged_parts(group, checksums)
    for part in found:
        uncommit_part(group, part)
    return found


def verify_store(root: Location, checksums: bool = True) -> VerifyReport:
    """Check every group and part of the store at ``root`` (a folder or an object-store URL).

    Args:
        root: the store.
        checksums: recompute every file's checksum (reads all data; off for a quick check).
    """
    report = VerifyReport()
    if not store_exists(root):
        report.problems.append(f"store {root} does not exist")
        return report
    try:
        wanted = _instance_keys(root)
    except StoreError as err:  # a torn table is a problem to name, not a crash
        report.problems.append(str(err))
        wanted = set()
    for name in ("rejects.parquet", "sources.parquet"):  # the job reads both first: it would stop on either
        try:
            read_parquet(at(root, name))
        except StoreError as err:
            report.problems.append(str(err))
    for encoder in _encoders(root):
        for sid in list_groups(root, encoder):
            _verify_group(at(root, "features", encoder, sid), f"{encoder}/{sid}", wanted, checksums, report)
    return report


def _verify_group(group: Location, label: str, wanted: set[str], checksums: bool, report: VerifyReport) -> None:
    from alarm.pipeline.store_gc import abandoned, scan_parts

    try:
        meta = json.loads(read_bytes(at(group, "spec.json")))
        matches = spec_id(meta["spec"]) == label.split("/")[1]
    except (ValueError, KeyError, TypeError) as err:
        report.problems.append(f"group {label}: spec.json is unreadable ({_short(err)}); rerun the job to rewrite it")
        return
    if not matches:
        report.problems.append(f"group {label}: spec.json does not hash to the folder name")
        return
    done = committed_parts(group)
    scanned = scan_parts(group)
    for part in sorted(set(scanned) - set(done)):
        report.problems.append(f"part {label}/{part}: no done marker (interrupted write; rerun the job)")
    try:
        dead = sum(len(a) for p, a in abandoned(group, scanned).items() if p in done)
    except StoreError:  # an unreadable done marker, which the part checks below name
        dead = 0
    if dead:
        report.warnings.append(f"group {label}: {dead} abandoned attempt(s) beside committed parts "
                               "(`alarm pipeline gc` removes them)")
    rows: list[dict] = []
    for part in done:
        problems, part_rows = _verify_part(group, part, meta["layers"], meta["dim"], checksums)
        rows += part_rows
        report.problems += problems
        if problems:
            report.damaged.setdefault(label, []).append(part)
    seen: dict[str, str] = {}
    for r in rows:
        if r["key"] in seen:
            report.problems.append(f"group {label}: clip {r['key']} is in parts {seen[r['key']]} and {r['part']}")
        seen.setdefault(r["key"], r["part"])
    _check_index(group, label, rows, done, report)
    missing = wanted - set(seen)
    if missing:
        report.problems.append(f"group {label}: {len(missing)} clips of instances.parquet are not stored "
                               f"(e.g. {sorted(missing)[0]}); rerun the job")
    report.groups[label] = {"parts": len(done), "clips": len(seen), "missing": len(missing)}


def _check_index(group: Location, label: str, rows: list[dict], done: list[str], report: VerifyReport) -> None:
    try:
        table = read_parquet(at(group, "index.parquet"))
    except StoreError as err:  # torn or overwritten
        report.problems.append(f"group {label}: {err}")
        return
    if table is None:
        report.problems.append(f"group {label}: index.parquet is missing (rerun the job to rebuild it)")
        return
    covered = json.loads((table.schema.metadata or {}).get(b"parts", b"[]"))
    if covered != done:
        report.problems.append(f"group {label}: index.parquet covers {len(covered)} parts, "
                               f"{len(done)} are committed (rerun the job to rebuild it)")
    first: dict[str, tuple] = {}
    for r in sorted(rows, key=lambda r: (r["key"], r["part"])):
        first.setdefault(r["key"], (r["part"], r["offset"], r["length"]))
    indexed = {r["key"]: (r["part"], r["offset"], r["length"]) for r in table.to_pylist()}
    if len(indexed) != table.num_rows:
        report.problems.append(f"group {label}: index.parquet lists a clip twice")
    wrong = [k for k in first if indexed.get(k) != first[k]] + [k for k in indexed if k not in first]
    if wrong:
        report.problems.append(f"group {label}: {len(wrong)} index rows disagree with the parts (e.g. {wrong[0]})")


def store_status(root: Location) -> dict[str, Any]:
    """Done / pending / rejected clip counts per encoder group, from the store alone (a folder or a URL)."""
    from alarm.pipeline.store_gc import scan_parts

    wanted = _instance_keys(root)  # a torn table raises UnreadableTable, one line that says what to do
    rejects = read_parquet(at(root, "rejects.parquet"), ["reason"])
    rejected: Counter = Counter()
    if rejects is not None:
        for reason in rejects.column("reason").to_pylist():
            rejected[reason_kind(reason)] += 1
    groups = {}
    for encoder in _encoders(root):
        for sid in list_groups(root, encoder):
            group = at(root, "features", encoder, sid)
            try:
                index = load_index(group)
            except StoreError:  # an unreadable index.parquet: rebuilt from the parts, in memory
                index = build_index(group)
            stored = set(index.column("key").to_pylist())
            done = committed_parts(group)
            groups[f"{encoder}/{sid}"] = {
                "encoder": encoder, "spec_id": sid, "done": len(wanted & stored), "pending": len(wanted - stored),
                "stored": len(stored), "parts": len(done),
                "incomplete_parts": len(set(scan_parts(group)) - set(done))}
    return {"store": str(root), "clips": len(wanted), "rejected": dict(sorted(rejected.items())),
            "rejected_total": sum(rejected.values()), "groups": groups}
