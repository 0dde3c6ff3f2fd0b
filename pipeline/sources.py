"""Steps 1 and 2 of the feature job: read the input, and key every source it names.

Rows sharing audio and cut are one *source*. Keying a source decodes it once for its content key
and duration, or a reject reason (threads of the driver on an embedded Ray, Ray tasks on a cluster).
The results are cached in ``sources.parquet`` (by path, cut, size and mtime), so a rerun skips this.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alarm.pipeline.encode_pools import cpu_budget, quiet_ray_data
from alarm.pipeline.extract_stages import key_batch, key_source
from alarm.pipeline.job_config import PipelineConfig
from alarm.pipeline.manifest import reason_kind
from alarm.pipeline.store_layout import (
    Location,
    UnreadableTable,
    at,
    clear_tmp,
    read_parquet,
    write_parquet_atomic,
)


@dataclass
class KeyStats:
    """What step 2 found: every source of the input keyed."""

    keyed: dict[tuple, dict[str, Any]]
    """(audio, start, end) -> its ``sources.parquet`` row: key, duration, reason."""
    sources: int
    """Distinct sources (audio and cut) of the input."""
    seconds: float


def source_stat(audio: str) -> tuple[int, int]:
    """(size, mtime_ns) of the file or object holding ``audio`` (the shard for a tar member); (-1, -1)
    if missing. A URL costs one HEAD, so a rerun's keyed sources are served from the cache there too."""
    from alarm.pipeline.audio_source import audio_stat

    return audio_stat(audio)


RETRIED_KINDS = ("unreadable",)
"""Reject kinds a rerun decodes again although the file's size and time are unchanged: fixing a
permission or a failing disk does not touch them."""


def retried(row: dict[str, Any]) -> bool:
    """True when a cached ``sources.parquet`` row is a reject whose cause may have gone (``RETRIED_KINDS``)."""
    return bool(row.get("reason")) and reason_kind(row["reason"]) in RETRIED_KINDS


def source_order(src: tuple) -> tuple:
    """Sort key of an (audio, start, end) source that tolerates missing cut bounds."""
    audio, start, end = src[:3]
    return (audio, start is not None, start or 0.0, end is not None, end or 0.0)


def read_input(cfg: PipelineConfig) -> tuple[list[Any], list[Any]]:
    """Instances and input-level rejects of the manifest or the shards."""
    if cfg.manifest is not None:
        from alarm.pipeline.manifest import read_manifest

        result = read_manifest(cfg.manifest)
        return result.instances, result.rejects
    from alarm.pipeline.webdataset_input import read_webdataset

    instances, rejects = read_webdataset(cfg.shards or [])
    if not instances:
        from alarm.pipeline.manifest import ManifestError

        raise ManifestError(f"no usable sample in shards {cfg.shards} ({len(rejects)} rejected)")
    return instances, rejects


def key_sources(root: Location, sources: list[tuple[str, float | None, float | None]],
                cfg: PipelineConfig, on_new_audio: Callable[[], Any] | None = None) -> dict[tuple, dict[str, Any]]:
    """Content key, duration and reason of every source, from the cache or by decoding.

    ``on_new_audio`` is called before decoding when some source on disk is not in the cache (new or
    changed audio, so most likely work for the encoders): the job starts its actors then, and they
    load their models while the sources are keyed. A rerun whose sources are all cached (missing
    files aside) calls nothing.
    """
    import pyarrow as pa

    cache_path = at(root, "sources.parquet")
    cached: dict[tuple, dict[str, Any]] = {}
    try:
        table = read_parquet(cache_path)
    except UnreadableTable as err:  # a cache: key the audio again and write it anew, as for a new store
        logging.getLogger(__name__).warning("%s", err)
        table = None
    if table is not None:
        for r in table.to_pylist():
            cached[(r["audio"], r["start"], r["end"], r["size"], r["mtime_ns"])] = r
    result: dict[tuple, dict[str, Any]] = {}
    todo, again = [], set()
    for src in sources:
        stat = source_stat(src[0])
        hit = cached.get((*src, *stat))
        if hit is not None and stat[0] >= 0 and not retried(hit):
            result[src] = hit
        else:
            todo.append(src)
            if hit is not None:
                again.add(src)
    start_workers = None
    # An unchanged file rejected as unreadable is tried again, but most likely fails again: it alone
    # does not start the actors (a rerun with nothing new starts nothing); the job starts them later
    # if it turns out readable.
    if on_new_audio is not None and any(src not in again and source_stat(src[0])[0] >= 0 for src in todo):
        start_workers = on_new_audio
    if todo:
        for src, (key, duration, reason) in zip(todo, _key_todo(todo, cfg, start_workers), strict=True):
            size, mtime = source_stat(src[0])
            result[src] = {"audio": src[0], "start": src[1], "end": src[2], "size": size, "mtime_ns": mtime,
                           "key": key or None, "duration": float(duration), "reason": reason or None}
    # Keep what other inputs keyed (a store may serve many manifests); this run's results win.
    merged = {k[:3]: v for k, v in cached.items()}
    merged.update(result)
    rows = sorted(merged.values(), key=lambda r: source_order((r["audio"], r["start"], r["end"])))
    schema = pa.schema([("audio", pa.string()), ("start", pa.float64()), ("end", pa.float64()),
                        ("size", pa.int64()), ("mtime_ns", pa.int64()), ("key", pa.string()),
                        ("duration", pa.float64()), ("reason", pa.string())])
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=schema), cache_path)
    return result


def _key_todo(todo: list[tuple], cfg: PipelineConfig, start_workers: Callable[[], Any] | None = None
              ) -> list[tuple[str, float, str]]:
    """(key, duration, reason) of each source in ``todo``, in order; ``start_workers`` is called on the way.

    On an embedded Ray the driver's threads do it (decoding and hashing release the GIL): no dataset
    start and no worker processes. They start before ``start_workers``, so Ray's own start (about 3 s
    on a small machine, spent mostly waiting for its processes) and the actors' model loads overlap the
    keying instead of coming first. On a cluster, Ray tasks spread the decoding over the nodes.
    """
    cpus = cpu_budget(cfg)
    if cfg.address is None:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=max(1, cpus))
        try:
            results = pool.map(lambda src: key_source(*src), todo, chunksize=8)
            if start_workers is not None:
                start_workers()
            return list(results)
        finally:
            # On an error (Ray failed to start) the sources not yet keyed are dropped, not waited for.
            pool.shutdown(wait=True, cancel_futures=True)
    if start_workers is not None:
        start_workers()
    import ray

    quiet_ray_data()
    items = [{"source": json.dumps({"audio": a, "start": s, "end": e})} for a, s, e in todo]
    blocks = max(1, min(len(items) // 8, 64))
    # One task per CPU at most: more would only add worker processes (memory), not speed.
    ds = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        key_batch, batch_size=8, num_cpus=cfg.cpus_per_task, compute=ray.data.TaskPoolStrategy(size=cpus))
    found = {}
    for r in ds.iter_rows():
        src = json.loads(r["source"])
        found[(src["audio"], src["start"], src["end"])] = (r["key"], float(r["duration"]), r["reason"])
    return [found[src] for src in todo]


def key_step(cfg: PipelineConfig, root: Location, instances: list[Any],
             on_new_audio: Callable[[], Any] | None = None) -> KeyStats:
    """Key every source of ``instances`` (deduplicated by audio and cut first; see ``key_sources``).

    Also clears what a killed job left half-written at the store root (the caller holds its lease).
    """
    t0 = time.perf_counter()
    clear_tmp(root)
    sources = sorted({(i.audio, i.start, i.end) for i in instances}, key=source_order)
    keyed = key_sources(root, sources, cfg, on_new_audio)
    return KeyStats(keyed=keyed, sources=len(sources), seconds=time.perf_counter() - t0)
