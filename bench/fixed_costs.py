"""The feature job's fixed costs: Ray's start and shutdown, the encoder actors' start, an empty job, the mix-down.

Prints ONE JSON line. Every figure is taken ``--repeats`` times; each repeat is listed with the median.
All of it runs the product's own code with the tiny preset and the config ``bench/extract.py`` runs the
job with (``compute_limit.job_config``: 2 CPUs, ``pools: auto``):

* ``ray_import_s``, ``ray_init_s``: ``import ray``, then ``JobWorkers.ray()`` (the job's embedded start
  through ``cluster.init_ray``, ``address="local"``) until it returns, in a fresh process per repeat.
* ``actor_ready_s``: from ``SharedPool(cfg)`` (the job's constructor: its actor count, CPUs and
  arguments) until each actor's first call returns (its models are built), for the job's shared pool
  (every encoder; right after Ray's start, as in the job) and for a job of each encoder alone (in a
  second Ray of the same process). ``process_start_s``: when each actor's process began, from
  ``/proc`` (negative: a worker Ray had started before the actor was asked for).
* ``actor_phases``: the same pools with their actor class swapped for a subclass that stamps its own
  phases (``ProbeStage``): process start, ``__init__`` entered (Ray's worker start, the class and
  ``alarm.pipeline.extract_stages`` loaded), seconds inside import statements during ``__init__`` (torch,
  transformers, the encoder modules), the rest of ``__init__`` (model builds, ``gc.freeze``), and the
  first call. Its total should match ``actor_ready_s``; the difference is the probe's own cost and noise.
* ``ray_shutdown_s``: ``JobWorkers.close()`` with the shared pool's actors up, as the job ends.
* ``empty_job_s``: ``run_pipeline`` over a 1-clip corpus into a new store, then again over the finished
  store (the cached rerun): each in its own process session and its own ``RAY_TMPDIR``; the rerun is
  checked to start no Ray (no session folder appears) and to encode nothing.
* ``mixdown_s``: numpy's ``mean(axis=1)`` (the job's mix-down before session 5, kept here) against
  ``decode.mix_down`` over the same multichannel float32 clips, and whether every output is bit-identical.

Beside the wall seconds, CPU-seconds (``ray_init_cpu_s``: the driver and every Ray process during the
call; ``cpu_s``: each actor's process once ready; the phases' ``*_cpu_s``), which the load moves much
less. Each process that starts Ray gets a ``RAY_TMPDIR`` of its own, so nothing here joins (or is joined
by) another Ray on the machine. The load average is printed at the start and the end: on a shared
machine the wall seconds swing with it.

Usage: ``python bench/fixed_costs.py [--repeats 3] [--encoders whisper,w2vbert,muq,sslam] [--mix-clips 40]
[--mix-channels 2,6] [--no-job]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from proc_stats import cpu_seconds, now, process_started, session_cpu, session_processes

REPO = Path(__file__).resolve().parents[1]
ALL_ENCODERS = "whisper,w2vbert,muq,sslam"


def summary(runs: list[Any]) -> dict[str, Any]:
    """Every repeat's figure and their median."""
    return {"runs": runs, "median": statistics.median(runs)}


# ------------------------------------------------------------------ the Ray side (a child process per repeat)


def probe_stage() -> type:
    """``SharedEncodeStage`` with its start-up phases stamped (see the module docstring)."""
    from alarm.pipeline.extract_stages import SharedEncodeStage

    class ProbeStage(SharedEncodeStage):
        def __init__(self, *args: Any) -> None:
            import builtins

            # Wall stamps on the driver's clock; CPU-seconds of this process (all its threads).
            self.stamps = {"process": process_started(os.getpid()), "init": now(), "init_cpu": time.process_time()}
            self.imports: Counter = Counter()
            self.imports_cpu: Counter = Counter()
            real, depth = builtins.__import__, [0]

            def timed(name: str, *rest: Any, **kwargs: Any) -> Any:
                if depth[0]:  # only the outermost import statement counts (it includes what it imports)
                    return real(name, *rest, **kwargs)
                depth[0], started, cpu = 1, now(), time.process_time()
                try:
                    return real(name, *rest, **kwargs)
                finally:
                    depth[0] = 0
                    self.imports[name] += now() - started
                    self.imports_cpu[name] += time.process_time() - cpu

            builtins.__import__ = timed
            try:
                super().__init__(*args)
            finally:
                builtins.__import__ = real
            self.stamps["built"], self.stamps["built_cpu"] = now(), time.process_time()

        def probe(self) -> dict[str, Any]:
            return {"stamps": self.stamps, "import_s": sum(self.imports.values()),
                    "import_cpu_s": sum(self.imports_cpu.values()),  # by module: [wall, CPU] seconds
                    "imports": {k: [v, self.imports_cpu[k]] for k, v in self.imports.items() if v >= 0.005}}

    return ProbeStage


def pool_ready(cfg: Any, probe: bool = False) -> tuple[Any, dict[str, Any]]:
    """Start the job's shared pool for ``cfg``; time each actor until its first call returns."""
    import ray

    from alarm.pipeline import encode_pools

    created = now()
    pool = encode_pools.SharedPool(cfg)
    pending = {a.facts.remote(): a for a in pool.actors}
    ready = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        ray.get(done[0])
        ready[pending.pop(done[0])] = now()
    pids = session_processes("ray::ProbeStage" if probe else "ray::SharedEncodeStage")
    result: dict[str, Any] = {"actors_s": sorted(t - created for t in ready.values()),
                              "all_s": max(ready.values()) - created,
                              "process_start_s": sorted(process_started(p) - created for p in pids),
                              "cpu_s": sorted(cpu_seconds(p) for p in pids)}  # each actor's process, when ready
    if probe:
        phases = []
        for actor, at in ready.items():
            got = ray.get(actor.probe.remote())
            st = got["stamps"]
            phases.append({"process_start_s": st["process"] - created, "to_init_s": st["init"] - created,
                           "imports_s": got["import_s"], "build_and_rest_s": st["built"] - st["init"] - got["import_s"],
                           "first_call_s": at - st["built"], "ready_s": at - created,
                           # CPU: the worker's own start and class load, imports, the rest of __init__
                           "boot_cpu_s": st["init_cpu"], "imports_cpu_s": got["import_cpu_s"],
                           "build_and_rest_cpu_s": st["built_cpu"] - st["init_cpu"] - got["import_cpu_s"],
                           "imports": got["imports"]})
        result["phases"] = phases
    return pool, result


def wait_free(cfg: Any, timeout: float = 60.0) -> None:
    """Until every CPU is free again and no actor process is left (``ray.kill`` returns before either)."""
    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        free = ray.available_resources().get("CPU", 0) >= cfg.num_cpus
        if free and not session_processes("ray::SharedEncodeStage") + session_processes("ray::ProbeStage"):
            return
        time.sleep(0.05)
    raise RuntimeError("the killed actors did not free their CPUs")


def ray_child(encoders: list[str]) -> dict[str, Any]:
    """One repeat of the Ray figures, in this (fresh) process."""
    started = now()
    import ray  # noqa: F401  (timed: the job pays it on its first Ray call)

    result: dict[str, Any] = {"ray_import_s": now() - started}
    from compute_limit import job_config

    from alarm.pipeline import encode_pools

    def config(names: list[str]) -> Any:
        return job_config(Path("unused.jsonl"), Path("unused-store"), names)

    # As the job: Ray's start, the shared pool at once, the shutdown with its actors up.
    workers = encode_pools.JobWorkers(config(encoders))
    t, cpu = now(), session_cpu()
    workers.ray()
    result["ray_init_s"] = now() - t
    result["ray_init_cpu_s"] = sum(session_cpu(cpu).values())  # the driver and every Ray process, in the call
    workers.pool, result["shared"] = pool_ready(workers.cfg)
    t = now()
    workers.close()
    result["ray_shutdown_s"] = now() - t
    # Then, in a second Ray, a job of each encoder alone, and every pool again with its phases stamped.
    second = encode_pools.JobWorkers(config(encoders))
    t, cpu = now(), session_cpu()
    second.ray()
    result["ray_init_second_s"] = now() - t
    result["ray_init_second_cpu_s"] = sum(session_cpu(cpu).values())
    # ``SharedPool`` looks its actor class up when it is built: swapping it there is how the probe gets the
    # job's own actor count, CPUs and arguments.
    stages = {False: encode_pools.SharedEncodeStage, True: probe_stage()}
    layouts = {"shared": encoders, **({e: [e] for e in encoders} if len(encoders) > 1 else {})}
    for name, names in layouts.items():
        for probe in ((False, True) if name != "shared" else (True,)):
            encode_pools.SharedEncodeStage = stages[probe]
            pool, timing = pool_ready(config(names), probe)
            result.setdefault(name, {}).update({"phases": timing["phases"]} if probe else timing)
            pool.close()
            wait_free(second.cfg)
    encode_pools.SharedEncodeStage = stages[False]
    second.close()
    return result


@contextmanager
def own_ray_tmpdir() -> Iterator[str]:
    """A new, short ``RAY_TMPDIR`` (Ray's socket paths must stay under 107 characters), removed afterwards."""
    path = tempfile.mkdtemp(prefix="rayfc", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_ray_child(encoders: list[str]) -> dict[str, Any]:
    """``ray_child`` in a new process session with its own Ray folder; ends whatever it left running."""
    import alarm

    with own_ray_tmpdir() as ray_tmp:
        # The child runs the same ``alarm`` this process imported (a worktree, not the installed copy).
        env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONPATH": os.path.dirname(os.path.dirname(alarm.__file__))}
        proc = subprocess.Popen([sys.executable, __file__, "--child", "--encoders", ",".join(encoders)], env=env,
                                start_new_session=True, stdout=subprocess.PIPE, text=True)
        out, _ = proc.communicate()
        for pid in filter(str.isdigit, os.listdir("/proc")):  # a failed child may leave its Ray behind
            try:
                if os.getsid(int(pid)) == proc.pid:
                    os.kill(int(pid), signal.SIGKILL)
            except OSError:
                continue
    if proc.returncode:
        raise RuntimeError(f"the Ray child failed with {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def ray_figures(encoders: list[str], repeats: int) -> dict[str, Any]:
    """Every Ray figure, a fresh process per repeat; each listed with its median."""
    runs = [run_ray_child(encoders) for _ in range(repeats)]
    result: dict[str, Any] = {k: summary([r[k] for r in runs])
                              for k in ("ray_import_s", "ray_init_s", "ray_init_cpu_s", "ray_init_second_s",
                                        "ray_init_second_cpu_s", "ray_shutdown_s")}
    ready, phases = {}, {}
    for name in [k for k in runs[0] if not k.startswith("ray_")]:
        rows = [r[name] for r in runs]
        if "all_s" in rows[0]:
            ready[name] = {**summary([r["all_s"] for r in rows]), "actors_s": [r["actors_s"] for r in rows],
                           "process_start_s": [r["process_start_s"] for r in rows],
                           "cpu_s": [r["cpu_s"] for r in rows]}
        every = [p for r in rows for p in r["phases"]]  # every actor of every repeat
        phases[name] = {"median": {k: statistics.median(p[k] for p in every) for k in every[0] if k != "imports"},
                        "imports_median": imports_median(every),
                        "runs": [r["phases"] for r in rows]}
    return {**result, "actor_ready_s": ready, "actor_phases": phases}


def imports_median(actors: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per module imported in ``__init__``: the median [wall, CPU] seconds over ``actors`` (5 ms and more)."""
    names = sorted({m for a in actors for m in a["imports"]})
    medians = {m: [statistics.median(a["imports"].get(m, [0.0, 0.0])[i] for a in actors) for i in (0, 1)]
               for m in names}
    return {m: v for m, v in medians.items() if v[0] >= 0.005}


# ------------------------------------------------------------------ the whole job over one clip, and a cached rerun


def empty_job(encoders: list[str], repeats: int, workdir: Path) -> dict[str, Any]:
    """``run_pipeline`` over a 1-clip corpus (new store), then over the finished store, ``repeats`` times."""
    from extract import make_corpus, run_job

    manifest, seconds = make_corpus(workdir / "one-clip", 1)
    first, rerun = [], []
    for r in range(repeats):
        store = workdir / f"store-{r}"
        for runs in (first, rerun):
            with own_ray_tmpdir() as ray_tmp:
                os.environ["RAY_TMPDIR"] = ray_tmp
                try:
                    job = run_job(manifest, store, encoders)
                finally:
                    del os.environ["RAY_TMPDIR"]
                job["ray_started"] = any(Path(ray_tmp).rglob("session_*"))
            job["encoded"] = json.loads((store / "summary.json").read_text())["encoded"]
            runs.append(job)

    def figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {**summary([j["wall_s"] for j in runs]), "phases": [j["phases"] for j in runs],
                "cpu_s": [j["cpu_s"] for j in runs], "cpu_by_role": [j["cpu_by_role"] for j in runs],
                "ray_started": [j["ray_started"] for j in runs], "encoded": [j["encoded"] for j in runs]}

    return {"empty_job_audio_s": round(seconds, 2),
            "empty_job_s": {"one_clip": figures(first), "cached_rerun": figures(rerun)}}


# ------------------------------------------------------------------ the mix-down


def multichannel_clips(count: int, channels: list[int], seed: int = 0) -> list[np.ndarray]:
    """``count`` float32 ``(frames, channels)`` clips per channel count: log-normal 1-30 s at mixed rates."""
    rng = np.random.default_rng(seed)
    clips = []
    for c in channels:
        for i in range(count):
            seconds = float(np.clip(rng.lognormal(np.log(5.0), 0.8), 1.0, 30.0))
            rate = (16000, 22050, 44100, 24000)[i % 4]
            clips.append(0.1 * rng.standard_normal((int(seconds * rate), c), dtype=np.float32))
    return clips


def mixdown(count: int, channels: list[int], repeats: int) -> dict[str, Any]:
    """The old mix-down against ``mix_down`` on the same clips: seconds per pass over all, and bit identity."""
    from alarm.pipeline.decode import mix_down

    def numpy_mean(samples: np.ndarray) -> np.ndarray:
        return samples.mean(axis=1, dtype=np.float32)  # the job's mix-down before session 5

    clips = multichannel_clips(count, channels)
    identical = all(np.array_equal(numpy_mean(c).view(np.uint32), mix_down(c).view(np.uint32)) for c in clips)
    runs: dict[str, list[float]] = {"numpy_mean": [], "mix_down": []}
    ways = {"numpy_mean": numpy_mean, "mix_down": mix_down}
    for r in range(repeats):
        for name in sorted(ways, reverse=bool(r % 2)):  # they take turns going first
            fn, t = ways[name], time.perf_counter()
            for c in clips:
                fn(c)
            runs[name].append(time.perf_counter() - t)
    old, new = (statistics.median(runs[k]) for k in ("numpy_mean", "mix_down"))
    return {"mixdown_s": {"clips": len(clips), "channels": channels, "frames": sum(len(c) for c in clips),
                          "numpy_mean": summary(runs["numpy_mean"]), "mix_down": summary(runs["mix_down"]),
                          "numpy_over_mix_down": old / new, "bit_identical": identical}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoders", default=ALL_ENCODERS)
    parser.add_argument("--repeats", type=int, default=3, help="times each figure is taken (all listed, and the median)")
    parser.add_argument("--mix-clips", type=int, default=40, help="clips per channel count for the mix-down")
    parser.add_argument("--mix-channels", default="2,6", help="channel counts of the mix-down clips")
    parser.add_argument("--no-job", action="store_true", help="skip the 1-clip job and its cached rerun")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one repeat of the Ray figures
    args = parser.parse_args()
    os.environ.setdefault("ALARM_CACHE", str(REPO / ".cache" / "alarm"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    encoders = [e for e in args.encoders.split(",") if e]
    if args.child:
        print(json.dumps(ray_child(encoders)))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="alarm-bench-"))
    result: dict[str, Any] = {"bench": "fixed_costs", "encoders": encoders, "preset": "tiny", "cpus": os.cpu_count(),
                              "repeats": args.repeats, "load_avg_start": list(os.getloadavg())}
    result.update(ray_figures(encoders, args.repeats))
    if not args.no_job:
        result.update(empty_job(encoders, args.repeats, workdir))
    result.update(mixdown(args.mix_clips, [int(c) for c in args.mix_channels.split(",")], args.repeats))
    result["load_avg_end"] = list(os.getloadavg())
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(rounded(result)))


def rounded(obj: Any) -> Any:
    """Floats to 4 decimals, all the way down."""
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v) for v in obj]
    return obj


if __name__ == "__main__":
    main()
