"""What a store holds, compared across runs and URL kinds: parts by part id, not by attempt.

A part's files sit under ``parts/<part>/<attempt>/``, and the attempt id is new on every write, so
two runs that wrote the same bytes differ in their keys. ``store_digest`` keys a committed part's
files by part id and drops from its done marker what names the writer (attempt, fencing token,
node); what readers do not see (abandoned attempts, the lease, summaries and reports with their
timings) is left out, and listed by ``leftovers``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from alarm.pipeline.objects import open_objects
from alarm.pipeline.store_layout import DONE, part_subdir

SKIP = {"summary.json", "report.json", "report.md", ".lease", "durations.png"}
WRITER = ("attempt", "fence", "node")


def part_folder(group: Path, part: str) -> Path:
    """The folder that holds a committed local part's files (the attempt its marker names)."""
    return group / part_subdir(part, json.loads((group / "parts" / part / DONE).read_text()))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store_digest(root: str | Path, skip: set[str] = SKIP) -> dict[str, str]:
    """key -> sha256 of every object readers see, with committed parts keyed by part id."""
    objects = open_objects(root)
    infos = objects.list()
    live: dict[str, str] = {}  # "<group>/parts/<part>/" -> "<group>/parts/<part>/<attempt>/"
    out: dict[str, str] = {}
    for info in infos:
        bits = info.key.split("/")
        if len(bits) >= 3 and bits[-3] == "parts" and bits[-1] == DONE:
            marker = json.loads(objects.get(info.key))
            prefix = "/".join(bits[:-1])
            live[prefix + "/"] = "/".join(bits[:-3]) + "/" + part_subdir(bits[-2], marker) + "/"
            out[info.key] = _sha(json.dumps({k: v for k, v in marker.items() if k not in WRITER},
                                            sort_keys=True).encode())
    for info in infos:
        name = info.key.rsplit("/", 1)[-1]
        if name in skip or name == DONE or name.startswith(".") or "/.staging/" in f"/{info.key}":
            continue
        part = next((p for p in live if info.key.startswith(p)), None)
        if "/parts/" in info.key and info.key.split("/parts/", 1)[1].count("/") >= 1:
            if part is None or not info.key.startswith(live[part]):
                continue  # an abandoned attempt or an unmarked part: not what readers see
            out[part + info.key[len(live[part]):]] = _sha(objects.get(info.key))
        else:
            out[info.key] = _sha(objects.get(info.key))
    return dict(sorted(out.items()))


def leftovers(root: str | Path) -> list[str]:
    """Keys under ``parts/`` that no done marker names (abandoned attempts, unmarked parts)."""
    objects = open_objects(root)
    infos = objects.list()
    live = []
    for info in infos:
        bits = info.key.split("/")
        if len(bits) >= 3 and bits[-3] == "parts" and bits[-1] == DONE:
            live.append("/".join(bits[:-3]) + "/" + part_subdir(bits[-2], json.loads(objects.get(info.key))) + "/")
    return [i.key for i in infos if "/parts/" in i.key and i.key.split("/parts/", 1)[1].count("/") >= 1
            and not i.key.endswith("/" + DONE) and not any(i.key.startswith(p) for p in live)]


def markers(root: str | Path) -> dict[str, str]:
    """``<group>/parts/<part>`` -> the attempt its done marker names."""
    objects = open_objects(root)
    return {i.key.rsplit("/", 1)[0]: json.loads(objects.get(i.key)).get("attempt", "")
            for i in objects.list() if i.key.endswith("/" + DONE)}
