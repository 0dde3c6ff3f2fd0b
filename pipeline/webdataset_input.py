"""WebDataset tar shards as pipeline input.

A shard holds, per sample, an audio member (``key.wav``/``.flac``/``.ogg``/``.opus``/``.mp3``) and a
JSON member (``key.json``) whose fields are those of a manifest row (``id``, ``dataset``,
``metadata``, ``prompt``, ``start``, ``end``...). Each sample becomes an ``Instance`` whose audio is
``/abs/shard.tar#member``, so the rest of the pipeline treats shards and manifests alike (reading
one member is ``audio_source.member_bytes``).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from alarm.pipeline.manifest import Instance, Reject, parse_row

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")


def expand_shards(patterns: list[str] | str) -> list[Path]:
    """Expand brace patterns (``shards/{000..127}.tar``) and folders into tar paths, in order."""
    from braceexpand import braceexpand

    if isinstance(patterns, str):
        patterns = [patterns]
    paths: list[Path] = []
    for pattern in patterns:
        for item in braceexpand(str(pattern)):
            path = Path(item).expanduser()
            paths.extend(sorted(path.glob("*.tar")) if path.is_dir() else [path])
    return [p.resolve() for p in paths]


def _sample_key(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the name up to the first dot of its last component."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def read_webdataset(patterns: list[str] | str) -> tuple[list[Instance], list[Reject]]:
    """Read the samples of WebDataset shards as instances (and the samples that are unusable).

    A sample without an audio member, with unreadable JSON or with invalid fields is a reject;
    ``id`` defaults to ``<shard stem>/<key>`` and ``dataset`` to ``webdataset``.
    """
    instances: list[Instance] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    line = 0
    for shard in expand_shards(patterns):
        if not shard.is_file():
            rejects.append(Reject(0, None, f"tar shard not found: {shard}"))
            continue
        samples: dict[str, dict[str, str]] = {}
        try:
            with tarfile.open(shard) as tar:
                for info in tar.getmembers():
                    if not info.isfile():
                        continue
                    key, ext = _sample_key(info.name)
                    entry = samples.setdefault(key, {})
                    if ext == "json":
                        handle = tar.extractfile(info)
                        entry["json"] = handle.read().decode("utf-8", "replace") if handle else ""
                    elif "." + ext.rsplit(".", 1)[-1] in AUDIO_EXTENSIONS:
                        entry["audio"] = info.name
        except (tarfile.TarError, OSError) as err:
            rejects.append(Reject(0, None, f"unreadable tar shard {shard}: {err}"))
            continue
        for key, entry in samples.items():
            line += 1
            sample_id = f"{shard.stem}/{key}"
            try:
                row = json.loads(entry["json"]) if "json" in entry else {}
            except json.JSONDecodeError as err:
                rejects.append(Reject(line, sample_id, f"sample JSON is malformed: {err.msg}"))
                continue
            if not isinstance(row, dict):
                rejects.append(Reject(line, sample_id, "sample JSON must be an object"))
                continue
            if "audio" not in entry:
                rejects.append(Reject(line, row.get("id", sample_id), "sample has no audio member"))
                continue
            row = {"id": sample_id, "dataset": "webdataset", **row, "audio": f"{shard}#{entry['audio']}"}
            try:
                instance = parse_row(row, shard.parent, line)
            except ValueError as err:
                rejects.append(Reject(line, str(row.get("id")), str(err)))
                continue
            if instance.id in seen:
                rejects.append(Reject(line, instance.id, "duplicate id"))
                continue
            seen.add(instance.id)
            instances.append(instance)
    return instances, rejects
