"""Step 6 of the feature job: the actor pools that encode the planned units and write their parts.

Two layouts (``PipelineConfig.pools``): ``SharedPool``, a few actors that each hold every encoder
(CPU machines: one decode per unit, one model load per actor), and ``encode_units``, Ray Data with
decode tasks and one actor pool per encoder (GPU clusters). Both count what they did in one
``EncodeStats``. ``JobWorkers`` starts Ray and the shared pool only when the job needs them.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alarm.pipeline.configs import ConfigError, to_dict
from alarm.pipeline.extract_stages import EncodeStage, SharedEncodeStage, decode_unit
from alarm.pipeline.job_config import PipelineConfig
from alarm.pipeline.work_units import WorkUnit

MAX_LOSSES_PER_UNIT = 3
"""Actors a unit may lose (node or process deaths while it runs) before the job gives up on it."""


def quiet_ray_data() -> Any:
    """Ray Data's context with its own progress output off (our bar speaks in clips and audio-hours).

    Imported only where a dataset runs: the shared layout never pays for importing Ray Data.
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return ctx


def progress_bar(cfg: PipelineConfig, units: list[WorkUnit]) -> Any:
    """A tqdm bar over the units' audio-hours (disabled unless ``cfg.progress``)."""
    from tqdm import tqdm

    total_h = sum(sum(u.durations) for u in units) / 3600
    return tqdm(total=total_h, disable=not cfg.progress, dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.4g}/{total:.4g} audio-h [{elapsed}<{remaining}{postfix}]")


def _advance(bar: Any, unit: WorkUnit, clips_done: int, t_start: float) -> None:
    bar.update(sum(unit.durations) / 3600)
    rate = bar.n / max(time.perf_counter() - t_start, 1e-9)
    bar.set_postfix_str(f"clips={clips_done}, {rate:.2e} audio-h/s")


@dataclass
class EncodeStats:
    """What step 6 did, counted the same way by both layouts."""

    seconds: dict[str, float] = field(default_factory=dict)
    """``decode``, then per encoder ``<encoder>`` (encoding) and ``<encoder>_write`` seconds, summed
    over the workers (the summary's ``stage_seconds``); the shared layout adds ``busy`` and ``busy_cpu``,
    the wall and CPU seconds its actors spent in units (decode, forward passes, writes and the rest)."""
    encoded: Counter = field(default_factory=Counter)
    """encoder -> clips encoded by this job."""
    written: Counter = field(default_factory=Counter)
    """encoder -> bytes written by this job."""
    nodes: dict[str, dict[str, int]] = field(default_factory=dict)
    """Ray node id -> ``{"parts": n, "clips": n}``: the parts (one per encoder) its workers wrote in
    this job, and the clips in them."""

    def add_unit(self, unit: WorkUnit, decode_s: float, stats: dict[str, tuple[float, int, float]],
                 nodes: dict[str, str] | None = None, busy: tuple[float, float] | None = None) -> None:
        """Add a finished unit.

        Args:
            unit: the planned unit (its ``encoders`` and ``keys``).
            decode_s: seconds spent decoding it.
            stats: encoder -> (encode seconds, bytes written, write seconds), as ``write_part`` returns;
                all zero for a part an earlier run committed (its clips are not counted as encoded).
            nodes: encoder -> id of the Ray node whose worker wrote the unit's part for it.
            busy: (wall, CPU) seconds of the whole unit in its actor, where one actor did all of it.
        """
        stage_s = self.seconds
        stage_s["decode"] = stage_s.get("decode", 0.0) + decode_s
        if busy is not None:
            stage_s["busy"] = stage_s.get("busy", 0.0) + busy[0]
            stage_s["busy_cpu"] = stage_s.get("busy_cpu", 0.0) + busy[1]
        for e in unit.encoders:
            encode_s, nbytes, write_s = stats[e]
            if encode_s > 0 or nbytes > 0:
                self.encoded[e] += len(unit.keys)
                if nodes and nodes.get(e):
                    done = self.nodes.setdefault(nodes[e], {"parts": 0, "clips": 0})
                    done["parts"] += 1
                    done["clips"] += len(unit.keys)
            self.written[e] += nbytes
            stage_s[e] = stage_s.get(e, 0.0) + encode_s
            stage_s[f"{e}_write"] = stage_s.get(f"{e}_write", 0.0) + write_s


def cpu_budget(cfg: PipelineConfig) -> int:
    """CPUs the job may use: ``num_cpus``, else all CPUs of the Ray cluster.

    Before an embedded Ray is started (it starts only when there is something to encode), the CPUs
    this process may run on: what that Ray will have.
    """
    import os
    import sys

    if cfg.num_cpus:
        return cfg.num_cpus
    ray = sys.modules.get("ray")  # not imported: not started (and a rerun with no work never imports it)
    if ray is None or not ray.is_initialized():
        return len(os.sched_getaffinity(0))
    return int(ray.cluster_resources().get("CPU", 1))


def actor_cpus(cfg: PipelineConfig, actors: int, cpus: int) -> float:
    """CPUs each encoder actor requests; raises if the actors would leave none to the tasks."""
    per_actor = cfg.cpus_per_actor
    if per_actor is None:
        per_actor = 1.0 if cfg.gpus_per_actor else round(min(1.0, 0.75 * cpus / actors), 3)
    if per_actor * actors + cfg.cpus_per_task > cpus:
        raise ConfigError(f"{actors} encoder actors x {per_actor} CPUs leave no CPU for the decode tasks "
                          f"({cpus} CPUs); lower cpus_per_actor or the number of actors")
    return per_actor


def unit_cost(unit: WorkUnit) -> float:
    """Rough CPU cost of a unit: per clip a fixed share, one growing with its length, one with its square.

    Whisper pads every clip to a 30 s window (a cost per clip whatever its length), convolutions and
    feed-forward layers grow with the length, and the others' attention over the whole clip with its
    square. Fitted once (a one-off trace, not a bench) on the job's own units (the four tiny encoders on
    CPU, 20 parts of 10 to 177 clips):
    1 per clip, 1/12 per second, 1/130 per second squared predict each unit's time within 14 %, where
    counting a window per clip and its length in windows was off by up to 74 % (it put the long-clip
    parts last, and the job ended on one of them). Only the order of the units depends on it.
    """
    return sum(1.0 + d / 12.0 + d * d / 130.0 for d in unit.durations)


class SharedPool:
    """Driver side of the ``shared`` layout: a few actors that each hold every encoder of the job.

    Each actor has one unit at a time and gets the next as it finishes: nothing piles up in memory
    however large the corpus, and no unit waits behind a busy actor while another is idle.
    """

    def __init__(self, cfg: PipelineConfig) -> None:
        import ray

        self.cfg = cfg
        cpus = cpu_budget(cfg)
        # Small models: one single-threaded actor per CPU (their kernels are too small for threads),
        # at most 8 so a big machine does not load the models dozens of times for a small job.
        size = cfg.shared_actors or (min(cpus, 8) if cfg.preset == "tiny" else 1)
        # From the CPUs, not from the work left: a resumed job must run the same kernels.
        threads = cfg.torch_threads or max(1, cpus // size)
        # No restarts by Ray: a lost actor's restart would wait for room on its own node's kind, and
        # its unit with it, forever once the node is gone. ``run`` gives the unit to another actor and
        # starts a replacement, which joins once it is up (wherever there is room).
        remote = ray.remote(SharedEncodeStage).options(
            num_cpus=actor_cpus(cfg, size, cpus), num_gpus=cfg.gpus_per_actor or None, max_restarts=0)
        args = ([cfg.encoder_config(e) for e in cfg.encoders], to_dict(cfg.storage), threads,
                cfg.decode.resample_quality)
        self._start = lambda: remote.remote(*args)
        self.actors = [self._start() for _ in range(size)]
        self.lost = 0
        """Actors lost while the job ran (their node died, or their process)."""

    def facts(self) -> dict[str, dict[str, Any]]:
        """``encoder_facts`` of every encoder, from the first actor (the actors check theirs match).

        Raises:
            ConfigError, FileNotFoundError: an encoder cannot be built (as ``build_encoder`` raises it).
        """
        import ray

        try:
            return ray.get(self.actors[0].facts.remote())
        except ray.exceptions.RayTaskError as err:
            raise err.cause from None  # the error itself, as building on the driver would raise it

    def run(self, groups: dict[str, Path], units: list[WorkUnit], on_unit: Callable[[], None] | None = None
            ) -> EncodeStats:
        """Encode and write every unit; return the time, clips and bytes it took (``on_unit``: after each).

        A unit whose actor is lost (its node died, its process was killed) goes to another actor; it
        rewrites only the parts not yet committed. A unit that loses ``MAX_LOSSES_PER_UNIT`` actors
        ends the job, naming it.
        """
        import ray

        # Costliest units first, so the last ones to run are small and no actor idles long at the end
        # (a few actors share a few units). Whisper pads every clip to a 30 s window, so a unit of many
        # short clips costs more than its audio-seconds say: count a window per clip plus its length.
        todo = sorted(units, key=lambda u: (unit_cost(u), u.part))
        paths = {e: str(g) for e, g in groups.items()}
        inflight: dict[Any, tuple[Any, WorkUnit]] = {}  # object ref -> (the actor computing it, its unit)
        starting: dict[Any, Any] = {}  # readiness ref -> a replacement actor not yet up
        losses: Counter = Counter()  # part -> actors lost while computing it
        idle = list(self.actors)
        bar = progress_bar(self.cfg, units)
        t_start, clips_done = time.perf_counter(), 0
        stats = EncodeStats(seconds={"decode": 0.0})
        while todo or inflight:
            while todo and idle:
                unit = todo.pop()
                actor = idle.pop(0)
                inflight[actor.__call__.remote(unit.to_row(), paths)] = (actor, unit)
            if not inflight and not starting:
                raise RuntimeError(f"every encoder actor was lost, {len(todo)} units left; rerun the job")
            ready, _ = ray.wait([*inflight, *starting], num_returns=1)
            if ready[0] in starting:
                actor = starting.pop(ready[0])
                if self._alive(ready[0], actor):
                    idle.append(actor)
                continue
            actor, unit = inflight.pop(ready[0])
            try:
                out = ray.get(ready[0])
            except ray.exceptions.RayActorError as err:
                logging.getLogger(__name__).warning(
                    "an encoder actor was lost while computing part %s (%s); another actor takes it over",
                    unit.part, type(err).__name__)
                losses[unit.part] += 1
                if losses[unit.part] >= MAX_LOSSES_PER_UNIT:
                    raise RuntimeError(f"part {unit.part}: {MAX_LOSSES_PER_UNIT} encoder actors were lost while "
                                       "computing it; see the Ray logs of their nodes") from None
                todo.append(unit)
                ref, new = self._replace(actor)
                starting[ref] = new
                continue
            idle.append(actor)
            stats.add_unit(unit, out["decode_s"], {e: out[e] for e in unit.encoders},
                           dict.fromkeys(unit.encoders, out.get("node", "")), (out["busy_s"], out["busy_cpu_s"]))
            clips_done += len(unit.keys)
            _advance(bar, unit, clips_done, t_start)
            if on_unit:
                on_unit()
        bar.close()
        return stats

    def _replace(self, lost: Any) -> tuple[Any, Any]:
        """Count ``lost``, start an actor in its place; returns (its readiness ref, the new actor)."""
        self.lost += 1
        self.actors.remove(lost)
        actor = self._start()
        self.actors.append(actor)
        return actor.facts.remote(), actor

    def _alive(self, ref: Any, actor: Any) -> bool:
        """Whether a replacement actor came up (its readiness call returned); a lost one is dropped."""
        import ray

        try:
            ray.get(ref)
            return True
        except ray.exceptions.RayActorError:
            self.lost += 1
            self.actors.remove(actor)
            return False

    def close(self) -> None:
        """Stop the actors (a caller's own Ray session gets its CPUs back)."""
        import ray

        for actor in self.actors:
            ray.kill(actor)


def encode_units(cfg: PipelineConfig, groups: dict[str, Path], facts: dict[str, dict],
                 units: list[WorkUnit], on_unit: Callable[[], None] | None = None) -> EncodeStats:
    """Run decode + one actor pool per encoder over the units; return the time, clips and bytes it took.

    A lost actor is restarted by Ray Data where there is room for it (its tasks are retried);
    ``on_unit`` is called after each unit.
    """
    import ray

    ctx = quiet_ray_data()
    rates = {e: facts[e]["sample_rate"] for e in cfg.encoders}
    cpus = cpu_budget(cfg)
    # From the configured encoders, not the busy ones: a resumed job must run the same kernels.
    threads = cfg.torch_threads or max(1, cpus // len(cfg.encoders))
    busy = [e for e in cfg.encoders if any(e in u.encoders for u in units)]
    per_actor = actor_cpus(cfg, len(busy) * cfg.actors_per_encoder, cpus)
    # Short units first: the first parts commit early, so a killed job has lost little.
    units = sorted(units, key=lambda u: (sum(u.durations), u.part))
    if cfg.inflight_parts is not None:
        # Decoding runs ahead of the encoders as far as the object-store budget allows.
        part_bytes = cfg.storage.part_seconds * sum(set(rates.values())) * 4  # float32 waves per rate
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
            object_store_memory=int(cfg.inflight_parts * part_bytes))
    ds = ray.data.from_items([{"unit": json.dumps(u.to_row())} for u in units],
                             override_num_blocks=max(1, len(units)))
    ds = ds.map(decode_unit, fn_kwargs={"rates": rates, "quality": cfg.decode.resample_quality},
                num_cpus=cfg.cpus_per_task, compute=ray.data.TaskPoolStrategy(size=cpus))
    for e in busy:  # an encoder with nothing to do gets no actors
        ds = ds.map_batches(
            EncodeStage, batch_size=1, compute=ray.data.ActorPoolStrategy(size=cfg.actors_per_encoder),
            num_cpus=per_actor,
            num_gpus=cfg.gpus_per_actor or None,
            fn_constructor_kwargs={"encoder": cfg.encoder_config(e), "group": str(groups[e]),
                                   "storage": to_dict(cfg.storage), "threads": threads})
    # Its own small CPU share too: a default 1-CPU task never fits beside the actors on 2 cores,
    # and the job would wait for it forever.
    ds = ds.drop_columns([f"{c}_{r}" for r in sorted(set(rates.values())) for c in ("wave", "lengths")],
                         num_cpus=cfg.cpus_per_task)
    bar = progress_bar(cfg, units)
    t_start = time.perf_counter()
    clips_done = 0
    by_part = {u.part: u for u in units}
    stats = EncodeStats(seconds={"decode": 0.0})
    for row in ds.iter_rows():
        unit = by_part[json.loads(row["unit"])["part"]]
        parts = {e: (float(row[f"{e}_encode_s"]), int(row[f"{e}_bytes"]), float(row[f"{e}_write_s"]))
                 for e in unit.encoders}
        stats.add_unit(unit, float(row["decode_s"]), parts, {e: str(row[f"{e}_node"]) for e in unit.encoders})
        clips_done += len(unit.keys)
        _advance(bar, unit, clips_done, t_start)
        if on_unit:
            on_unit()
    bar.close()
    return stats


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

    def encode(self, groups: dict[str, Path], facts: dict[str, dict], units: list[WorkUnit]) -> EncodeStats:
        """Encode and write every unit in the layout the job chose (``pools``); nothing to do starts nothing."""
        from alarm.pipeline.cluster import NodeLossWatch, joins_cluster

        if not units:
            return EncodeStats()
        pool = self.shared_pool() if self.cfg.shared_pools() else None
        self.ray()
        # On a cluster, say so when the job waits for room for the actors of a node that died.
        watch = NodeLossWatch(self.cfg.stall_warning_seconds) if joins_cluster(self.cfg.address) else None
        on_unit = watch.progress if watch else None
        try:
            if pool is not None:
                return pool.run(groups, units, on_unit)
            return encode_units(self.cfg, groups, facts, units, on_unit)
        finally:
            if watch:
                watch.close()

    def close(self) -> None:
        """End this job's own Ray (with its actors), or stop the shared pool in a caller's Ray."""
        if self.own_ray:
            import ray

            # Our own Ray takes the actors with it. Killing them one by one first would make Ray
            # announce a retry of each unit still in flight when an error ends the job.
            ray.shutdown()
        elif self.pool is not None:
            self.pool.close()
