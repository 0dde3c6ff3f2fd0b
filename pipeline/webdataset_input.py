"""WebDataset tar shards as pipeline input.

A shard holds, per sample, an audio member (``key.wav``/``.flac``/``.ogg``/``.opus``/``.mp3``) and a
JSON member (``key.json``) whose fields are those of a manifest row (``id``, ``dataset``,
``metadata``, ``prompt``, ``start``, ``end``...). Each sample becomes an ``Instance`` whose audio is
``/abs/shard.tar#member``, so the rest of the pipeline treats shards and manifests alike (reading
one member is ``audio_source.member_bytes``).

Shards may be object URLs (``s3://bucket/shards/{000..127}.tar``, or a prefix holding ``.tar``
objects); the audio is then ``s3://bucket/shards/000.tar#member``. A remote shard is read once here,
header by header through ranged GETs (``remote_audio``): its JSON members are read, its audio
members skipped, and the member table this walk builds is kept for the member reads that follow.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from alarm.pipeline.manifest import Instance, Reject, parse_row
from alarm.pipeline.objects import is_url

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")
SHARD_THREADS = 16


def expand_shards(patterns: list[str] | str) -> list[Path | str]:
    """Expand brace patterns (``shards/{000..127}.tar``) and folders into tar paths, in order.

    A URL that does not end in ``.tar`` is a prefix: its ``.tar`` objects, in key order.
    """
    from braceexpand import braceexpand

    if isinstance(patterns, str):
        patterns = [patterns]
    paths: list[Path | str] = []
    for pattern in patterns:
        for item in braceexpand(str(pattern)):
            if is_url(item):
                paths.extend([item] if item.endswith(".tar") else _tar_objects(item))
                continue
            path = Path(item).expanduser()
            paths.extend(p.resolve() for p in (sorted(path.glob("*.tar")) if path.is_dir() else [path]))
    return paths


def _tar_objects(prefix: str) -> list[str]:
    from alarm.pipeline.objects import join, open_objects

    objects = open_objects(prefix)
    objects.check()
    return [join(prefix, info.key) for info in objects.list() if info.key.endswith(".tar") and "/" not in info.key]


def _check_buckets(shards: list[Path | str]) -> None:
    """Probe each bucket once: a wrong endpoint or bad credentials fail at once, naming the URL."""
    from alarm.pipeline.remote_audio import locate

    roots = {"/".join(s.split("/", 3)[:3]): s for s in shards if isinstance(s, str)}
    for shard in roots.values():
        locate(shard)[0].check()


def _members(shard: Path | str) -> Iterator[tuple[str, str, str, str | None]]:
    """(name, key, extension, JSON text or None) of each file member of a shard, local or remote.

    Raises:
        FileNotFoundError: no such shard. tarfile.TarError, OSError: not a readable tar.
    """
    if isinstance(shard, str):
        from alarm.pipeline.remote_audio import open_shard, remember_table

        tar, _, version = open_shard(shard)
    else:
        if not shard.is_file():
            raise FileNotFoundError(shard)
        tar = tarfile.open(shard)
    table: dict[str, tuple[int, int]] = {}
    with tar:
        for info in tar:
            if not info.isfile():
                continue
            table[info.name] = (info.offset_data, info.size)
            key, ext = _sample_key(info.name)
            text = None
            if ext == "json":
                handle = tar.extractfile(info)
                text = handle.read().decode("utf-8", "replace") if handle else ""
            yield info.name, key, ext, text
    if isinstance(shard, str):
        remember_table(shard, version, table)


def _shard_name(shard: Path | str) -> tuple[str, Path | str]:
    """A shard's stem (the default id prefix) and the folder (or URL prefix) its rows resolve against."""
    if isinstance(shard, str):
        folder, _, name = shard.rpartition("/")
        return name[:-len(".tar")] if name.endswith(".tar") else name, folder
    return shard.stem, shard.parent


def _sample_key(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the name up to the first dot of its last component."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _shard_samples(shard: Path | str) -> tuple[dict[str, dict[str, str]], str | None]:
    """key -> {"json": text, "audio": member name} of one shard's samples, or the reason it is unreadable."""
    samples: dict[str, dict[str, str]] = {}
    try:
        for name, key, ext, text in _members(shard):
            entry = samples.setdefault(key, {})
            if text is not None:
                entry["json"] = text
            elif "." + ext.rsplit(".", 1)[-1] in AUDIO_EXTENSIONS:
                entry["audio"] = name
    except FileNotFoundError:
        return {}, f"tar shard not found: {shard}"
    except (tarfile.TarError, OSError) as err:
        return {}, f"unreadable tar shard {shard}: {err}"
    return samples, None


def read_webdataset(patterns: list[str] | str) -> tuple[list[Instance], list[Reject]]:
    """Read the samples of WebDataset shards as instances (and the samples that are unusable).

    A sample without an audio member, with unreadable JSON or with invalid fields is a reject;
    ``id`` defaults to ``<shard stem>/<key>`` and ``dataset`` to ``webdataset``.
    """
    instances: list[Instance] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    line = 0
    shards = expand_shards(patterns)
    _check_buckets(shards)
    # Shards are read in parallel: a remote one is read header by header, so it waits on requests.
    with ThreadPoolExecutor(max_workers=max(1, min(SHARD_THREADS, len(shards)))) as pool:
        read = list(pool.map(_shard_samples, shards))
    for shard, (samples, problem) in zip(shards, read, strict=True):
        if problem is not None:
            rejects.append(Reject(0, None, problem))
            continue
        stem, base = _shard_name(shard)
        for key, entry in samples.items():
            line += 1
            sample_id = f"{stem}/{key}"
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
                instance = parse_row(row, base, line)
            except ValueError as err:
                rejects.append(Reject(line, str(row.get("id")), str(err)))
                continue
            if instance.id in seen:
                rejects.append(Reject(line, instance.id, "duplicate id"))
                continue
            seen.add(instance.id)
            instances.append(instance)
    return instances, rejects
