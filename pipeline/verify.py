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
from pathlib import Path
from typing import Any

import numpy as np

from alarm.pipeline.manifest import reason_kind
from alarm.pipeline.store_index import load_index
from alarm.pipeline.store_layout import (
    DONE,
    committed_parts,
    file_checksum,
    list_groups,
    spec_id,
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


def _encoders(root: Path) -> list[str]:
    base = root / "features"
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def _instance_keys(root: Path) -> set[str]:
    import pyarrow.parquet as pq

    path = root / "instances.parquet"
    return set(pq.read_table(path, columns=["key"]).column("key").to_pylist()) if path.is_file() else set()


def _verify_part(folder: Path, layers: int, dim: int, checksums: bool) -> tuple[list[str], list[dict]]:
    """Check one committed part; return its problems and its clip rows (empty if unreadable)."""
    import pyarrow.parquet as pq
    import zarr

    name = f"{folder.parent.parent.parent.name}/{folder.parent.parent.name}/{folder.name}"
    problems: list[str] = []
    try:
        marker = json.loads((folder / DONE).read_text())
        marked = set(marker["files"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"part {name}: done marker unreadable ({err})"], []
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != DONE}
    for missing in sorted(marked - files):
        problems.append(f"part {name}: file {missing} is missing")
    for extra in sorted(files - marked):
        problems.append(f"part {name}: unexpected file {extra} (not in its done marker)")
    if checksums:
        for rel in sorted(marked & files):
            if file_checksum(folder / rel) != marker["files"][rel]:
                problems.append(f"part {name}: checksum of {rel} differs from its done marker")
    try:
        rows = pq.read_table(folder / "clips.parquet").to_pylist()
        features = zarr.open_array(str(folder / "features"), mode="r")
        offsets = zarr.open_array(str(folder / "offsets"), mode="r")[:]
    except Exception as err:  # any unreadable file is a problem to name, not a crash
        return [*problems, f"part {name}: unreadable ({err})"], []
    if features.shape[1:] != (layers, dim):
        problems.append(f"part {name}: features shape {features.shape}, spec says (frames, {layers}, {dim})")
    expected = np.cumsum([0] + [r["length"] for r in rows])
    if len(offsets) != len(rows) + 1 or not np.array_equal(offsets, expected) or \
            [r["offset"] for r in rows] != list(expected[:-1]):
        problems.append(f"part {name}: offsets disagree with clips.parquet")
    if features.shape[0] != expected[-1] or marker["frames"] != expected[-1] or marker["clips"] != len(rows):
        problems.append(f"part {name}: {features.shape[0]} frames stored, clips.parquet covers "
                        f"{expected[-1]}, done marker says {marker['frames']}")
    return problems, [{**r, "part": folder.name} for r in rows]


def damaged_parts(group: Path, checksums: bool = True) -> dict[str, list[str]]:
    """Committed parts of ``group`` that fail ``verify_store``'s part checks, with their problems."""
    meta = json.loads((group / "spec.json").read_text())
    found = {}
    for part in committed_parts(group):
        problems, _ = _verify_part(group / "parts" / part, meta["layers"], meta["dim"], checksums)
        if problems:
            found[part] = problems
    return found


def drop_damaged_parts(group: Path, checksums: bool = True) -> dict[str, list[str]]:
    """Uncommit every damaged part of ``group`` (the job then recomputes them); return them with their problems.

    Call only while holding the job lock. With ``checksums`` every file of every part is read once.
    """
    found = damaged_parts(group, checksums)
    for part in found:
        uncommit_part(group, part)
    return found


def verify_store(root: Path | str, checksums: bool = True) -> VerifyReport:
    """Check every group and part of the store at ``root``.

    Args:
        root: store folder.
        checksums: recompute every file's checksum (reads all data; off for a quick check).
    """
    root = Path(root)
    report = VerifyReport()
    if not root.is_dir():
        report.problems.append(f"store {root} does not exist")
        return report
    wanted = _instance_keys(root)
    for encoder in _encoders(root):
        for sid in list_groups(root, encoder):
            group = root / "features" / encoder / sid
            label = f"{encoder}/{sid}"
            meta = json.loads((group / "spec.json").read_text())
            if spec_id(meta["spec"]) != sid:
                report.problems.append(f"group {label}: spec.json does not hash to the folder name")
                continue
            done = committed_parts(group)
            for part in sorted(p.name for p in (group / "parts").iterdir() if p.is_dir()):
                if part not in done:
                    report.problems.append(f"part {label}/{part}: no done marker (interrupted write; rerun the job)")
            if (group / ".tmp").is_dir() and any((group / ".tmp").iterdir()):
                report.warnings.append(f"group {label}: leftover temporary parts in .tmp (removed by the next run)")
            rows: list[dict] = []
            for part in done:
                problems, part_rows = _verify_part(group / "parts" / part, meta["layers"], meta["dim"], checksums)
                rows += part_rows
                report.problems += problems
                if problems:
                    report.damaged.setdefault(label, []).append(part)
            seen: dict[str, str] = {}
            for r in rows:
                if r["key"] in seen:
                    report.problems.append(f"group {label}: clip {r['key']} is in parts {seen[r['key']]} and {r['part']}")
                seen.setdefault(r["key"], r["part"])
            _check_index(group, label, rows, report)
            missing = wanted - set(seen)
            if missing:
                report.problems.append(f"group {label}: {len(missing)} clips of instances.parquet are not stored "
                                       f"(e.g. {sorted(missing)[0]}); rerun the job")
            report.groups[label] = {"parts": len(done), "clips": len(seen), "missing": len(missing)}
    return report


def _check_index(group: Path, label: str, rows: list[dict], report: VerifyReport) -> None:
    import pyarrow.parquet as pq

    path = group / "index.parquet"
    if not path.is_file():
        report.problems.append(f"group {label}: index.parquet is missing (rerun the job to rebuild it)")
        return
    table = pq.read_table(path)
    covered = json.loads((table.schema.metadata or {}).get(b"parts", b"[]"))
    if covered != committed_parts(group):
        report.problems.append(f"group {label}: index.parquet covers {len(covered)} parts, "
                               f"{len(committed_parts(group))} are committed (rerun the job to rebuild it)")
    first: dict[str, tuple] = {}
    for r in sorted(rows, key=lambda r: (r["key"], r["part"])):
        first.setdefault(r["key"], (r["part"], r["offset"], r["length"]))
    indexed = {r["key"]: (r["part"], r["offset"], r["length"]) for r in table.to_pylist()}
    if len(indexed) != table.num_rows:
        report.problems.append(f"group {label}: index.parquet lists a clip twice")
    wrong = [k for k in first if indexed.get(k) != first[k]] + [k for k in indexed if k not in first]
    if wrong:
        report.problems.append(f"group {label}: {len(wrong)} index rows disagree with the parts (e.g. {wrong[0]})")


def store_status(root: Path | str) -> dict[str, Any]:
    """Done / pending / rejected clip counts per encoder group, from the store alone."""
    import pyarrow.parquet as pq

    root = Path(root)
    wanted = _instance_keys(root)
    rejects_path = root / "rejects.parquet"
    rejected: Counter = Counter()
    if rejects_path.is_file():
        for reason in pq.read_table(rejects_path, columns=["reason"]).column("reason").to_pylist():
            rejected[reason_kind(reason)] += 1
    groups = {}
    for encoder in _encoders(root):
        for sid in list_groups(root, encoder):
            group = root / "features" / encoder / sid
            stored = set(load_index(group).column("key").to_pylist())
            parts = [p for p in (group / "parts").iterdir() if p.is_dir()]
            groups[f"{encoder}/{sid}"] = {
                "encoder": encoder, "spec_id": sid, "done": len(wanted & stored), "pending": len(wanted - stored),
                "stored": len(stored), "parts": len(committed_parts(group)),
                "incomplete_parts": len(parts) - len(committed_parts(group))}
    return {"store": str(root), "clips": len(wanted), "rejected": dict(sorted(rejected.items())),
            "rejected_total": sum(rejected.values()), "groups": groups}
