"""The compute limit of the feature job: the encoders' forward passes alone, as the job runs them.

What no orchestration can remove: on the corpus the job would encode, the same encoders (same preset,
batch size and windows), the job's own units (``plan_parts`` over the clip keys, ``part_seconds``
audio each) cut into the job's chunks (``4 x batch_size`` clips per ``encode`` call, as
``write_part`` does), and the job's own parallelism (as many single-threaded workers as the shared
pool has actors, costliest units first). The audio is decoded and resampled into memory before the
clock starts; there is no Ray, no store and no decode in the timed part.

``python bench/extract.py`` reports the pipeline's audio-seconds per second over this one's as
``pipeline_over_compute_limit``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def job_config(manifest: Path, store: Path, encoders: list[str]) -> Any:
    """The ``PipelineConfig`` that ``bench/extract.py`` runs the job with."""
    from alarm.pipeline.job import PipelineConfig

    return PipelineConfig(store=str(store), manifest=str(manifest), encoders=encoders, preset="tiny",
                          num_cpus=2, progress=False, pools="auto")


def job_units(manifest: Path, part_seconds: float) -> list[dict[str, Any]]:
    """The units the job plans for a fresh store: keys, sources and durations of each part."""
    from alarm.pipeline.extract_stages import key_source
    from alarm.pipeline.work_units import plan_parts

    sources: dict[str, dict[str, Any]] = {}
    durations: dict[str, float] = {}
    for line in manifest.read_text().splitlines():
        audio = json.loads(line)["audio"]
        key, duration, reason = key_source(audio, None, None)
        if not reason:
            sources[key] = {"audio": audio, "start": None, "end": None}
            durations[key] = duration
    return [{"keys": keys, "sources": [sources[k] for k in keys], "durations": [durations[k] for k in keys]}
            for keys in plan_parts(durations, part_seconds)]


def split_lpt(units: list[dict[str, Any]], workers: int) -> list[list[dict[str, Any]]]:
    """Costliest units first, each to the least loaded worker (what the shared pool's queue does)."""
    from alarm.pipeline.encode_pools import unit_cost

    def cost(unit: dict[str, Any]) -> float:
        return unit_cost(SimpleNamespace(durations=unit["durations"]))

    shares: list[list[dict[str, Any]]] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for unit in sorted(units, key=cost, reverse=True):
        i = load.index(min(load))
        shares[i].append(unit)
        load[i] += cost(unit)
    return shares


def _worker(encoders: list[dict[str, Any]], units: list[dict[str, Any]], quality: str, threads: int,
            barrier: Any, results: Any) -> None:
    """One single-threaded encoder worker: load, decode (untimed), wait for the others, encode (timed)."""
    import torch

    from alarm.pipeline.encoders import EncoderConfig, build_encoder
    from alarm.pipeline.extract_stages import decode_waves

    torch.set_num_threads(threads)
    models = {e["name"]: build_encoder(EncoderConfig(**e)) for e in encoders}
    chunk = {e["name"]: max(1, 4 * int(e["batch_size"])) for e in encoders}
    rates = sorted({m.sample_rate for m in models.values()})
    decoded = [decode_waves(u, rates, quality) for u in units]
    barrier.wait()
    start, cpu = time.perf_counter(), time.process_time()
    for waves in decoded:
        for name, model in models.items():
            clips = waves[model.sample_rate]
            for k in range(0, len(clips), chunk[name]):
                model.encode(clips[k : k + chunk[name]])
    results.put((start, time.perf_counter(), time.process_time() - cpu))


def compute_limit(manifest: Path, encoders: list[str]) -> dict[str, float]:
    """Time the forward passes alone on the job's units: wall seconds, the workers' CPU-seconds and busy
    seconds (each worker's own span, summed), and the CPU-seconds of keying the corpus (untimed part)."""
    cfg = job_config(manifest, manifest.parent / "unused-store", encoders)
    cpus = cfg.num_cpus
    workers = cfg.shared_actors or min(cpus, 8)  # the shared pool's size for the tiny preset
    threads = cfg.torch_threads or max(1, cpus // workers)
    cpu0 = time.process_time()
    units = job_units(manifest, cfg.storage.part_seconds)
    keying_cpu = time.process_time() - cpu0  # the job's keying pass over the corpus, on one thread
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    configs = [cfg.encoder_config(e) for e in encoders]
    procs = [ctx.Process(target=_worker, args=(configs, share, cfg.decode.resample_quality, threads, barrier,
                                               results))
             for share in split_lpt(units, workers)]
    for p in procs:
        p.start()
    done = [results.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"compute-limit worker failed with {p.exitcode}")
    return {"compute_limit_wall_s": max(d[1] for d in done) - min(d[0] for d in done),
            "compute_limit_cpu_s": sum(d[2] for d in done), "compute_limit_workers": workers,
            "compute_limit_busy_s": sum(d[1] - d[0] for d in done), "keying_cpu_s": keying_cpu,
            "compute_limit_threads": threads, "compute_limit_units": len(units)}


# ------------------------------------------------------------------ the job's figures against the limit


def steady_state(result: dict[str, Any], limit: dict[str, Any]) -> dict[str, float]:
    """What ``pipeline_over_compute_limit`` tends to as the corpus grows (shared layout only).

    Ray's start, the actors' model loads, the last unit's tail and the shutdown cost the same for any
    corpus; what grows with it is the actors' busy time (decode, forward passes, writes, per-unit work)
    and the keying pass (one decode and hash of every source, before planning). Against the limit's
    busy time, in wall seconds and in CPU-seconds: keying's CPU-seconds count in both, as the worker-
    seconds the keying threads take from the encoders.
    """
    stages = result["pipeline_stage_seconds"]
    if "busy" not in stages:
        return {}
    keying = limit["keying_cpu_s"]
    return {"pipeline_busy_s": stages["busy"], "pipeline_busy_cpu_s": stages["busy_cpu"], "keying_cpu_s": keying,
            "pipeline_steady_over_compute_limit": limit["compute_limit_busy_s"] / (stages["busy"] + keying),
            "pipeline_steady_cpu_over_compute_limit": limit["compute_limit_cpu_s"] / (stages["busy_cpu"] + keying)}


def gap(result: dict[str, Any], limit: dict[str, Any], encoders: list[str]) -> dict[str, float]:
    """Where the pipeline's wall time beyond the compute limit's goes, in seconds.

    ``before_encode`` (manifest, keying, Ray start, until the pool takes the first unit) and
    ``after_encode`` (index, summary, Ray shutdown) are the job's own phases. The encoding phase's excess
    over the limit splits into ``decode_write`` (the actors' decode and write seconds, per actor),
    ``forward_over_limit`` (the actors' forward-pass seconds per actor, minus the limit's wall) and
    ``rest`` (actor start-up not hidden by keying, per-unit overhead, an actor idle at the end).
    """
    stages, phases, workers = result["pipeline_stage_seconds"], result["pipeline_phases"], limit["compute_limit_workers"]
    decode_write = (stages.get("decode", 0.0) + sum(stages.get(f"{e}_write", 0.0) for e in encoders)) / workers
    forward = sum(stages.get(e, 0.0) for e in encoders) / workers - limit["compute_limit_wall_s"]
    excess = phases["encode_s"] - limit["compute_limit_wall_s"]
    return {"total": result["pipeline_wall_s"] - limit["compute_limit_wall_s"],
            "before_encode": phases["before_encode_s"], "after_encode": phases["after_encode_s"],
            "encode_phase_over_limit": excess, "decode_write": decode_write, "forward_over_limit": forward,
            "rest": excess - decode_write - forward}
