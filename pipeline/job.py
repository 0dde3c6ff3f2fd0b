"""The feature job: manifest or shards -> decode -> one actor pool per encoder -> store, resumable.

``run_pipeline`` runs these steps, top to bottom; each is a small function that returns its own
stats object, and the summary is built from those alone:

1. **Read** the manifest or WebDataset shards (``sources.read_input``).
2. **Key** every source not already keyed: decode, hash, duration, or a reject reason
   (``sources.key_step`` -> ``KeyStats``; cached in ``sources.parquet``, so a rerun skips this).
   The encoders' facts (spec, shape, shortest clip) come next: from their cache, the shared pool's
   actors, or built here (``encoder_facts_step``).
3. **Instance tables**: ``instances.parquet`` and ``rejects.parquet``; clips too long or too short for
   some encoder are rejected with their reason (``instance_tables.table_step`` -> ``ClipStats``).
4. **Plan** per encoder, with repair: damaged committed parts are taken out, the missing clips cut
   into parts, parts with the same clips for several encoders merged into one ``WorkUnit``
   (``work_units.plan_units`` -> ``PlanStats``).
5. **Check space**: the planned parts' size against the store's free disk (``check_space``; local
   stores only: object storage has no free-space figure).
6. **Encode and write**, in one of two layouts (``pools``; ``JobWorkers.encode`` -> ``EncodeStats``):

   * ``per-encoder`` (Ray Data; GPU clusters): units are decoded and resampled by CPU tasks, then flow
     through one actor pool per encoder; the actor that gets a unit's part for its encoder encodes it
     and writes it (staged locally, put under an attempt prefix, done marker last: ``part_writer``).
   * ``shared`` (CPU machines): one pool of actors that each hold every encoder; an actor decodes a
     unit once and writes its part for each encoder. On a small machine this saves the decode tasks,
     an actor start and a model load per encoder, and the object-store traffic of the decoded audio;
     the actors start while the sources are keyed, and the driver loads no model.
7. **Index**: rebuild each group's index from the done parts (``index_step`` -> ``IndexStats``).
8. **Summary**: ``summary.json`` and the report beside the store (``summarize``, ``write_summary``).

The store may be a local folder or an object-store URL; every byte goes through ``pipeline.objects``
the same way for both. The job first probes the store once (a wrong URL or credentials fail at once,
naming it), then holds the store's lease for its whole run (``store_fence``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from alarm.pipeline.configs import to_dict
from alarm.pipeline.encode_pools import EncodeStats, JobWorkers
from alarm.pipeline.extract_stages import encoder_facts
from alarm.pipeline.instance_tables import ClipStats, table_step
from alarm.pipeline.job_config import PipelineConfig
from alarm.pipeline.plan import bytes_to_write, check_free_space
from alarm.pipeline.sources import KeyStats, key_step, read_input
from alarm.pipeline.store_fence import store_lock
from alarm.pipeline.store_index import write_index
from alarm.pipeline.store_layout import (
    Location,
    StoreError,
    at,
    group_spec,
    is_url,
    location,
    objects_at,
    spec_id,
    write_atomic,
)
from alarm.pipeline.work_units import PlanStats, WorkUnit, plan_units


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
    nodes: dict[str, dict[str, int]] = field(default_factory=dict)
    """Ray node id -> the parts (one per encoder) and clips its workers wrote in this job."""

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


@dataclass
class IndexStats:
    """What step 7 did: each group's index rebuilt from its committed parts."""

    stored: dict[str, int]
    """encoder -> clips its group holds."""
    seconds: float


# ------------------------------------------------------------------------------------------ steps


def shortest_clip(facts: dict[str, dict[str, Any]]) -> float:
    """Seconds below which a clip gives some encoder of ``facts`` no frame (see ``shortest_clip_seconds``)."""
    from alarm.pipeline.encoders import shortest_clip_seconds

    return shortest_clip_seconds((f["min_samples"], f["sample_rate"]) for f in facts.values())


def cached_encoder_facts(cfg: PipelineConfig) -> dict[str, dict[str, Any]] | None:
    """Every encoder's facts from the cache of ``pipeline.encoders``, or None if one is missing."""
    from alarm.pipeline.encoders import EncoderConfig
    from alarm.pipeline.encoders.facts import cached_facts

    facts = {e: cached_facts(EncoderConfig(**cfg.encoder_config(e))) for e in cfg.encoders}
    return None if any(f is None for f in facts.values()) else facts


def encoder_facts_step(cfg: PipelineConfig, workers: JobWorkers) -> dict[str, dict[str, Any]]:
    """Every encoder's facts from the shared pool's actors, or by building the encoders here; cached."""
    from alarm.pipeline.encoders import EncoderConfig
    from alarm.pipeline.encoders.facts import save_facts

    if workers.pool is not None:
        facts = workers.pool.facts()
    else:
        facts = {e: encoder_facts(cfg.encoder_config(e)) for e in cfg.encoders}
    for e in cfg.encoders:
        save_facts(EncoderConfig(**cfg.encoder_config(e)), facts[e])
    return facts


def check_space(cfg: PipelineConfig, root: Location, facts: dict[str, dict[str, Any]],
                units: list[WorkUnit]) -> float:
    """The bytes the planned units will write; raises ``NotEnoughSpace`` if the disk has less (unless
    ``force``). Object storage has no free-space figure: only a local store's disk is checked."""
    needed = bytes_to_write(cfg, facts, units)
    if units and not cfg.force and not is_url(root):
        check_free_space(root, needed)
    return needed


def index_step(cfg: PipelineConfig, groups: dict[str, Location]) -> IndexStats:
    """Rebuild each group's ``index.parquet`` from its done parts."""
    t0 = time.perf_counter()
    stored = {e: len(write_index(groups[e])) for e in cfg.encoders}
    return IndexStats(stored=stored, seconds=time.perf_counter() - t0)


def summarize(cfg: PipelineConfig, root: Location, instances: int, keyed: KeyStats, tables: ClipStats,
              plan: PlanStats, encoded: EncodeStats, index: IndexStats, facts: dict[str, dict[str, Any]],
              started: float) -> PipelineSummary:
    """The job's summary, from the stats of its steps."""
    # Keying covers the instance tables too; the encoders' facts in between are not timed.
    stage_s = {"key": keyed.seconds + tables.seconds, **encoded.seconds, "index": index.seconds}
    audio_s = tables.audio_seconds
    wall = time.perf_counter() - started
    throughput = {k: (audio_s / v if v > 0 else 0.0) for k, v in stage_s.items() if k != "index"}
    return PipelineSummary(
        store=str(root), instances=instances, clips=len(tables.clips), audio_hours=audio_s / 3600,
        rejected=dict(sorted(tables.rejected.items())), encoded={e: encoded.encoded[e] for e in cfg.encoders},
        skipped=plan.skipped, stored=index.stored, bytes_written={e: encoded.written[e] for e in cfg.encoders},
        stage_seconds=stage_s, throughput=throughput, wall_seconds=wall,
        spec_ids={e: spec_id(group_spec(facts[e]["spec"], cfg.storage)) for e in cfg.encoders},
        repaired={e: parts for e, parts in plan.repaired.items() if parts}, nodes=encoded.nodes)


def write_summary(root: Location, summary: PipelineSummary) -> None:
    """``summary.json``, then report.json, report.md (rejection table) and durations.png, beside the store."""
    from alarm.pipeline.report import write_pipeline_report

    write_atomic(at(root, "summary.json"), (json.dumps(summary.to_dict(), indent=2) + "\n").encode())
    write_pipeline_report(root)


# ------------------------------------------------------------------------------------------ job


def run_pipeline(cfg: PipelineConfig) -> PipelineSummary:
    """Compute every missing feature of the input into the store; see the module docstring.

    Raises:
        ConfigError: bad settings, a store URL that cannot be reached, or another job holds the store.
        StoreError: a request to the object store failed past its retries (the parts committed so far
            are kept; a rerun finishes the others).
        ManifestError: the input has no usable row.
        NotEnoughSpace: the store's disk is fuller than the job's estimate (unless ``force``), or
            filled up during the job (the finished parts are kept: rerun once there is room).
    """
    from alarm.pipeline.cluster import joins_cluster
    from alarm.pipeline.plan import NotEnoughSpace, is_disk_full

    started = time.perf_counter()
    root = location(cfg.store)
    objects_at(root).check()  # a wrong URL, endpoint or credentials: one line, at once
    instances, input_rejects = read_input(cfg)
    workers = JobWorkers(cfg)
    try:
        if joins_cluster(cfg.address):
            workers.ray()  # keying runs as Ray tasks there
        with store_lock(root, cfg.lease_seconds):
            return run_steps(cfg, root, instances, input_rejects, workers, started)
    except Exception as err:
        if is_disk_full(err) and not isinstance(err, NotEnoughSpace):
            raise NotEnoughSpace.during_job(root, workers.bytes_needed) from None
        cause = getattr(err, "cause", None)  # a worker's error, as Ray wraps it
        if isinstance(cause, StoreError) and not isinstance(err, NotEnoughSpace):  # e.g. fencing: one line
            raise type(cause)(str(cause)) from None
        failed = _request_error(err)
        if failed is not None:
            raise StoreError(f"a request to {root} failed after its retries ({failed}); the parts committed "
                             "so far are kept: rerun the job to finish the others") from None
        raise
    finally:
        workers.close()


def _request_error(err: BaseException) -> str | None:
    """One line for an object-store client error in ``err``'s chain (Ray wraps a worker's), else None."""
    seen = 0
    while err is not None and seen < 10:
        if type(err).__module__.startswith("obstore"):
            return " ".join(str(err).split("\n\nDebug source")[0].split())[:300]
        err = getattr(err, "cause", None) or err.__cause__
        seen += 1
    return None


def run_steps(cfg: PipelineConfig, root: Location, instances: list[Any], input_rejects: list[Any],
              workers: JobWorkers, started: float) -> PipelineSummary:
    """Steps 2 to 8 of the job, in order, while it holds the store's lease."""
    facts = cached_encoder_facts(cfg)
    # The shared actors load their models while the sources are keyed: at once when the facts must be
    # learnt from them, else as soon as keying meets new audio (a rerun with none starts no Ray).
    start_pool = workers.shared_pool if cfg.shared_pools() else None
    if facts is None and start_pool is not None:
        start_pool()
    keyed = key_step(cfg, root, instances, on_new_audio=start_pool)
    # The encoders' facts give the shortest usable clip, so they come before the instance tables.
    if facts is None:
        facts = encoder_facts_step(cfg, workers)
    tables = table_step(root, instances, input_rejects, keyed.keyed, cfg.decode.max_seconds, shortest_clip(facts))
    plan = plan_units(cfg, root, facts, tables.clips)
    workers.bytes_needed = check_space(cfg, root, facts, plan.units)
    encoded = workers.encode(plan.groups, facts, plan.units)
    index = index_step(cfg, plan.groups)
    summary = summarize(cfg, root, len(instances), keyed, tables, plan, encoded, index, facts, started)
    write_summary(root, summary)
    return summary
