"""The feature job: manifest or shards -> decode -> one actor pool per encoder -> store, resumable.

Steps (each a small piece below):

1. **Read** the manifest or WebDataset shards; rows sharing audio and cut are one *source*.
2. **Key** every source not already keyed: decode, hash, duration, or a reject reason (threads of the
   driver on an embedded Ray, Ray tasks on a cluster). The results are cached in ``sources.parquet``
   (by path, cut, size and mtime), so a rerun skips this.
3. **Plan** per encoder: committed parts that fail verification (a checksum that differs from the
   done marker, a missing file) are taken out first; then the clip keys missing from its group, sorted by (duration, key), cut greedily
   into parts of ``part_seconds`` audio. Greedy cutting restarts at every part boundary, so removing
   whole committed parts from the list leaves the other parts unchanged: a rerun after a kill plans
   exactly the parts the first run had not committed, and the store ends byte-identical. A part's id
   is a hash of its keys; parts with the same keys for several encoders become one *unit* of work,
   decoded once.
4. **Encode and write**, in one of two layouts (``pools``):

   * ``per-encoder`` (Ray Data; GPU clusters): units are decoded and resampled by CPU tasks, then flow
     through one actor pool per encoder; the actor that gets a unit's part for its encoder encodes it
     and is the only writer of that part (temporary folder, rename, done marker).
   * ``shared`` (CPU machines): one pool of actors that each hold every encoder; an actor decodes a
     unit once and writes its part for each encoder. On a small machine this saves the decode tasks,
     an actor start and a model load per encoder, and the object-store traffic of the decoded audio;
     the actors start while the sources are keyed, and the driver loads no model.
5. **Commit**: rebuild each group's index from the done parts; write the summary beside the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alarm.pipeline.configs import ConfigError, from_dict, to_dict
from alarm.pipeline.decode import DecodeConfig
from alarm.pipeline.encode_pools import SharedPool, cpu_budget, encode_units, quiet_ray_data
from alarm.pipeline.extract_stages import (
    encoder_facts,
    key_batch,
    key_source,
)
from alarm.pipeline.manifest import reason_kind
from alarm.pipeline.plan import bytes_to_write, check_free_space
from alarm.pipeline.store_fence import store_lock
from alarm.pipeline.store_layout import StoreConfig, group_spec, spec_id

ALL_ENCODERS = ("whisper", "w2vbert", "muq", "sslam")
POOLS = ("auto", "shared", "per-encoder")


@dataclass
class PipelineConfig:
    """One feature job.

    Attributes:
        store: store folder (created if missing).
        manifest: manifest path (JSONL/Parquet); exactly one of ``manifest`` and ``shards``.
        shards: WebDataset shard paths or brace patterns (``shards/{000..127}.tar``).
        encoders: registry keys to compute.
        preset: encoder preset: alarm (real checkpoints, offline), tiny, full-size-random.
        checkpoints: encoder -> local checkpoint folder or HF id (alarm preset).
        layers: encoder -> hidden-state indices to keep (default: ALARM.md §2).
        device: torch device of the encoder actors (``cpu`` or ``cuda``).
        compute_dtype: encoder compute dtype (float32, float16, bfloat16).
        batch_size: windows per encoder forward pass; 0 = 4 on CPU (the tiny encoders ran fastest
            there, and one batch of 30 s windows holds less memory), 8 on GPUs.
        decode: decoding settings (max clip length).
        storage: store layout (dtype, chunks, compression, part size).
        address: None (or ``local``): the job starts its own embedded Ray, even where a cluster runs on
            the machine; ``auto``: join the cluster ``ray start`` runs here; ``host:port``: join that one.
        num_cpus: CPUs of the embedded Ray (None: all).
        pools: ``per-encoder`` (one Ray Data actor pool per encoder, fed by decode tasks), ``shared``
            (one pool of actors each holding every encoder and decoding its own units), or ``auto``:
            shared on CPU (``device: cpu``), per-encoder with GPUs.
        shared_actors: size of the shared pool; 0 = one single-threaded actor per CPU (at most 8) for
            the ``tiny`` preset, else one actor with every CPU's threads.
        actors_per_encoder: actor pool size per encoder (per-encoder pools).
        cpus_per_actor: CPUs each encoder actor requests; None: 1 with GPUs, else a share of 3/4 of the
            CPUs, so the actors never hold every CPU and starve the decode tasks (a deadlock on 2 cores).
        gpus_per_actor: GPUs each encoder actor requests (0 on CPU machines).
        cpus_per_task: CPUs each decode task requests.
        torch_threads: torch threads per encoder actor; 0 = CPUs / number of actors.
        inflight_parts: if set, the object-store budget of the encode dataset in parts of decoded audio
            (bounds how far decoding runs ahead of the encoders). None: Ray Data's default budget. Values
            of a few parts stalled Ray Data 2.60 on 2 CPUs (each operator's share fell below one part).
        progress: show a progress bar.
        verify_checksums: before planning, recompute the checksum of every committed part's files and
            redo the parts that differ from their done marker (reads the store once); False checks
            only each part's files and shapes.
        force: start even when the store's disk has less free space than the job's estimate.
    """

    store: str
    manifest: str | None = None
    shards: list[str] | None = None
    encoders: list[str] = field(default_factory=lambda: list(ALL_ENCODERS))
    preset: str = "alarm"
    checkpoints: dict[str, str] = field(default_factory=dict)
    layers: dict[str, list[int]] = field(default_factory=dict)
    device: str = "cpu"
    compute_dtype: str = "float32"
    batch_size: int = 0
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    storage: StoreConfig = field(default_factory=StoreConfig)
    address: str | None = None
    num_cpus: int | None = None
    pools: str = "auto"
    shared_actors: int = 0
    actors_per_encoder: int = 1
    cpus_per_actor: float | None = None
    gpus_per_actor: float = 0.0
    cpus_per_task: float = 0.25
    torch_threads: int = 0
    inflight_parts: int | None = None
    progress: bool = True
    verify_checksums: bool = True
    force: bool = False

    def __post_init__(self) -> None:
        from alarm.pipeline.cluster import joins_cluster
        from alarm.pipeline.encoders import ENCODERS

        if not joins_cluster(self.address):
            self.address = None  # "local" is the default: an embedded Ray

        if (self.manifest is None) == (self.shards is None):
            raise ConfigError("give exactly one input: manifest or shards")
        if isinstance(self.encoders, str):
            self.encoders = [e for e in self.encoders.split(",") if e]
        unknown = [e for e in self.encoders if e not in ENCODERS]
        if unknown or not self.encoders:
            raise ConfigError(f"unknown encoder(s) {unknown or '(none)'}; choose from {', '.join(ENCODERS)}")
        if len(set(self.encoders)) != len(self.encoders):
            raise ConfigError(f"encoders listed twice: {self.encoders}")
        if isinstance(self.decode, dict):
            self.decode = from_dict(DecodeConfig, self.decode, "decode")
        if isinstance(self.storage, dict):
            self.storage = from_dict(StoreConfig, self.storage, "storage")
        if self.actors_per_encoder < 1 or (self.cpus_per_actor or 0) < 0 or self.gpus_per_actor < 0:
            raise ConfigError("actors_per_encoder must be >= 1 and per-actor resources >= 0")
        if self.batch_size < 0:
            raise ConfigError(f"batch_size must be >= 0 (0: automatic), got {self.batch_size}")
        if self.pools not in POOLS:
            raise ConfigError(f"pools must be one of {', '.join(POOLS)}, got {self.pools!r}")
        if self.shared_actors < 0:
            raise ConfigError("shared_actors must be >= 0 (0: automatic)")
        if self.cpus_per_task <= 0:
            raise ConfigError("cpus_per_task must be positive")
        if self.inflight_parts is not None and self.inflight_parts < 1:
            raise ConfigError("inflight_parts must be >= 1 (or null for Ray Data's default)")
        if self.gpus_per_actor > 0 and not self.device.startswith("cuda"):
            raise ConfigError(f"gpus_per_actor={self.gpus_per_actor} needs device 'cuda', not {self.device!r}")

    def shared_pools(self) -> bool:
        """Whether the encoders share one actor pool (see ``pools``)."""
        if self.pools == "auto":
            return self.device == "cpu" and not self.gpus_per_actor
        return self.pools == "shared"

    def encoder_config(self, name: str) -> dict[str, Any]:
        """The EncoderConfig fields (as a dict, so it travels to Ray actors) for ``name``."""
        layers = self.layers.get(name)
        return {"name": name, "preset": self.preset, "checkpoint": self.checkpoints.get(name),
                "layers": tuple(layers) if layers else None, "device": self.device,
                "dtype": self.compute_dtype,
                "batch_size": self.batch_size or (4 if self.device == "cpu" else 8)}


@dataclass
class PipelineSummary:
    """What a job did; saved as ``summary.json`` beside the store."""

    store: str
    instances: int
    clips: int
    audio_hours: float
    rejected: dict[str, int]
    encoded: dict[str, int]
    skipped: dict[str, int]
    stored: dict[str, int]
    bytes_written: dict[str, int]
    stage_seconds: dict[str, float]
    throughput: dict[str, float]
    wall_seconds: float
    spec_ids: dict[str, str]
    repaired: dict[str, list[str]] = field(default_factory=dict)
    """encoder -> damaged parts that were taken out and recomputed."""

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-able data, floats to 6 significant digits (timings are not finer)."""
        return _rounded(to_dict(self))


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------ helpers


def source_stat(audio: str) -> tuple[int, int]:
    """(size, mtime_ns) of the file holding ``audio`` (the shard for a tar member); (-1, -1) if missing."""
    path = audio.split("#", 1)[0] if ".tar#" in audio else audio
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


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


# ------------------------------------------------------------------------------------------ job


def key_sources(root: Path, sources: list[tuple[str, float | None, float | None]],
                cfg: PipelineConfig) -> dict[tuple, dict[str, Any]]:
    """Content key, duration and reason of every source, from the cache or by decoding."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from alarm.pipeline.store_layout import write_parquet_atomic

    cache_path = root / "sources.parquet"
    cached: dict[tuple, dict[str, Any]] = {}
    if cache_path.is_file():
        for r in pq.read_table(cache_path).to_pylist():
            cached[(r["audio"], r["start"], r["end"], r["size"], r["mtime_ns"])] = r
    result: dict[tuple, dict[str, Any]] = {}
    todo = []
    for src in sources:
        stat = source_stat(src[0])
        hit = cached.get((*src, *stat))
        if hit is not None and stat[0] >= 0:
            result[src] = hit
        else:
            todo.append(src)
    if todo:
        for src, (key, duration, reason) in zip(todo, _key_todo(todo, cfg), strict=True):
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


def _key_todo(todo: list[tuple], cfg: PipelineConfig) -> list[tuple[str, float, str]]:
    """(key, duration, reason) of each source in ``todo``, in order.

    On an embedded Ray the driver's threads do it (decoding and hashing release the GIL): no dataset
    start and no worker processes, while the encoder actors load their models. On a cluster, Ray
    tasks spread the decoding over the nodes.
    """
    cpus = cpu_budget(cfg)
    if cfg.address is None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, cpus)) as pool:
            return list(pool.map(lambda src: key_source(*src), todo, chunksize=8))
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


def shortest_clip(facts: dict[str, dict[str, Any]]) -> float:
    """Seconds below which a clip gives some encoder of ``facts`` no frame (see ``shortest_clip_seconds``)."""
    from alarm.pipeline.encoders import shortest_clip_seconds

    return shortest_clip_seconds((f["min_samples"], f["sample_rate"]) for f in facts.values())


def write_instance_tables(root: Path, instances: list[Any], input_rejects: list[Any],
                          keyed: dict[tuple, dict[str, Any]], max_seconds: float,
                          min_seconds: float = 0.0) -> tuple[dict, Counter]:
    """Write instances.parquet and rejects.parquet (merged with earlier jobs' rows by instance id).

    A clip of ``max_seconds`` or more, or shorter than ``min_seconds`` (too short to give every
    encoder one frame: ``shortest_clip``), is rejected with its reason.

    Returns the accepted clips (key -> duration, first source) and the reject counts by kind.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from alarm.pipeline.encoders import too_short_reason
    from alarm.pipeline.store_layout import write_parquet_atomic

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
        clip = clips.setdefault(info["key"], {"duration": info["duration"], "source": src})
        if source_order(src) < source_order(clip["source"]):
            clip["source"] = src  # the smallest source decodes it: the same whatever the row order
    new_ids = {r["id"] for r in accepted} | {r["id"] for r in rejected if r["id"] is not None}
    schemas = {
        "instances.parquet": pa.schema([("id", pa.string()), ("key", pa.string()), ("dataset", pa.string()),
                                        ("duration", pa.float64()), ("audio", pa.string()),
                                        ("start", pa.float64()), ("end", pa.float64())]),
        "rejects.parquet": pa.schema([("id", pa.string()), ("audio", pa.string()), ("reason", pa.string())]),
    }
    for name, rows in (("instances.parquet", accepted), ("rejects.parquet", rejected)):
        path = root / name
        old = pq.read_table(path).to_pylist() if path.is_file() else []
        # Instances seen before but not in this input keep their rows (stores may serve many manifests).
        merged = [r for r in old if r["id"] not in new_ids] + rows
        # Rows without an id (unparseable manifest lines) come back on every run: keep one of each.
        unique = {tuple(sorted((k, str(v)) for k, v in r.items())): r for r in merged}
        merged = sorted(unique.values(), key=lambda r: (r["id"] is None, r["id"] or "", r.get("reason", "")))
        write_parquet_atomic(pa.Table.from_pylist(merged, schema=schemas[name]), path)
    return clips, Counter(reason_kind(r["reason"]) for r in rejected)


class JobWorkers:
    """The job's Ray side, started only when it is needed: the Ray instance and the shared pool.

    A rerun with nothing to compute starts neither (the encoder facts come from their cache). An
    embedded Ray is this job's own (``address="local"``, see ``pipeline.cluster``) and ends with it;
    a Ray session the caller already started is used as it is and left running.
    """

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.own_ray = False
        self.pool: SharedPool | None = None
        self.bytes_needed: float | None = None
        """The estimate of what is still to write, once planned (for the disk-full message)."""

    def ray(self) -> None:
        """Start or join Ray unless this process is already connected."""
        import ray

        from alarm.pipeline.cluster import init_ray

        if not ray.is_initialized():
            init_ray(self.cfg.address, self.cfg.num_cpus, log_to_driver=False, configure_logging=False)
            self.own_ray = True

    def shared_pool(self) -> SharedPool:
        """The shared actor pool (its actors start loading their models at once)."""
        if self.pool is None:
            self.ray()
            self.pool = SharedPool(self.cfg)
        return self.pool

    def close(self) -> None:
        if self.own_ray:
            import ray

            # Our own Ray takes the actors with it. Killing them one by one first would make Ray
            # announce a retry of each unit still in flight when an error ends the job.
            ray.shutdown()
        elif self.pool is not None:
            self.pool.close()


def cached_encoder_facts(cfg: PipelineConfig) -> dict[str, dict[str, Any]] | None:
    """Every encoder's facts from the cache of ``pipeline.encoders``, or None if one is missing."""
    from alarm.pipeline.encoders import EncoderConfig, cached_facts

    facts = {e: cached_facts(EncoderConfig(**cfg.encoder_config(e))) for e in cfg.encoders}
    return None if any(f is None for f in facts.values()) else facts


def run_pipeline(cfg: PipelineConfig) -> PipelineSummary:
    """Compute every missing feature of the input into the store; see the module docstring.

    Raises:
        ConfigError: bad settings, or another job holds the store.
        ManifestError: the input has no usable row.
        NotEnoughSpace: the store's disk is fuller than the job's estimate (unless ``force``), or
            filled up during the job (the finished parts are kept: rerun once there is room).
    """
    from alarm.pipeline.cluster import joins_cluster
    from alarm.pipeline.plan import NotEnoughSpace, is_disk_full

    started = time.perf_counter()
    root = Path(cfg.store)
    instances, input_rejects = read_input(cfg)
    workers = JobWorkers(cfg)
    try:
        if joins_cluster(cfg.address):
            workers.ray()  # keying runs as Ray tasks there
        with store_lock(root):
            return _run_locked(cfg, root, instances, input_rejects, started, workers)
    except Exception as err:
        if is_disk_full(err) and not isinstance(err, NotEnoughSpace):
            raise NotEnoughSpace.during_job(root, workers.bytes_needed) from None
        raise
    finally:
        workers.close()


def _run_locked(cfg: PipelineConfig, root: Path, instances: list[Any], input_rejects: list[Any],
                started: float, workers: JobWorkers) -> PipelineSummary:
    facts = cached_encoder_facts(cfg)
    if facts is None and cfg.shared_pools():
        workers.shared_pool()  # its actors load their models while the sources are keyed
    return _plan_and_run(cfg, root, instances, input_rejects, started, workers, facts)


def _plan_and_run(cfg: PipelineConfig, root: Path, instances: list[Any], input_rejects: list[Any],
                  started: float, workers: JobWorkers,
                  facts: dict[str, dict[str, Any]] | None) -> PipelineSummary:
    from alarm.pipeline.store_fence import current_fence
    from alarm.pipeline.store_index import load_index, write_index
    from alarm.pipeline.store_layout import clear_tmp, init_group
    from alarm.pipeline.verify import drop_damaged_parts

    stage_s: dict[str, float] = {}
    # Key every source (dedupe by audio and cut first).
    t0 = time.perf_counter()
    clear_tmp(root)
    sources = sorted({(i.audio, i.start, i.end) for i in instances}, key=source_order)
    keyed = key_sources(root, sources, cfg)
    stage_s["key"] = time.perf_counter() - t0

    # The encoders' facts give the shortest usable clip, so they come before the instance tables.
    if facts is None:
        from alarm.pipeline.encoders import EncoderConfig, save_facts

        if workers.pool is not None:
            facts = workers.pool.facts()
        else:
            facts = {e: encoder_facts(cfg.encoder_config(e)) for e in cfg.encoders}
        for e in cfg.encoders:
            save_facts(EncoderConfig(**cfg.encoder_config(e)), facts[e])
    t0 = time.perf_counter()
    clips, rejected = write_instance_tables(root, instances, input_rejects, keyed, cfg.decode.max_seconds,
                                            shortest_clip(facts))
    stage_s["key"] += time.perf_counter() - t0

    # Groups and plans per encoder.
    groups, units, skipped, repaired = {}, {}, {}, {}
    fence = current_fence(root)  # written by store_lock: every commit of this job carries it
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
            unit = units.setdefault(pid, {"part": pid, "keys": keys, "encoders": [], "fence": fence,
                                          "durations": [clips[k]["duration"] for k in keys],
                                          "sources": [dict(zip(("audio", "start", "end"), clips[k]["source"],
                                                               strict=True)) for k in keys]})
            unit["encoders"].append(e)

    encoded = Counter()
    written = Counter()
    workers.bytes_needed = bytes_to_write(cfg, facts, units)
    if units and not cfg.force:
        check_free_space(root, workers.bytes_needed)
    if units and cfg.shared_pools():
        workers.shared_pool().run(groups, list(units.values()), stage_s, encoded, written)
    elif units:
        workers.ray()
        encode_units(cfg, groups, facts, list(units.values()), stage_s, encoded, written)
    t0 = time.perf_counter()
    stored = {e: len(write_index(groups[e])) for e in cfg.encoders}
    stage_s["index"] = time.perf_counter() - t0
    audio_s = sum(c["duration"] for c in clips.values())
    wall = time.perf_counter() - started
    throughput = {k: (audio_s / v if v > 0 else 0.0) for k, v in stage_s.items() if k != "index"}
    summary = PipelineSummary(
        store=str(root), instances=len(instances), clips=len(clips), audio_hours=audio_s / 3600,
        rejected=dict(sorted(rejected.items())), encoded={e: encoded[e] for e in cfg.encoders},
        skipped=skipped, stored=stored, bytes_written={e: written[e] for e in cfg.encoders},
        stage_seconds=stage_s, throughput=throughput, wall_seconds=wall,
        spec_ids={e: spec_id(group_spec(facts[e]["spec"], cfg.storage)) for e in cfg.encoders},
        repaired={e: parts for e, parts in repaired.items() if parts})
    from alarm.pipeline.report import write_pipeline_report
    from alarm.pipeline.store_layout import write_atomic

    write_atomic(root / "summary.json", (json.dumps(summary.to_dict(), indent=2) + "\n").encode())

    write_pipeline_report(root)  # report.json, report.md (rejection table) and durations.png
    return summary
