"""Feature extraction: the naive per-clip loop against the pipeline, store overhead, memory, compression.

Prints ONE JSON line. On the same generated corpus (``--clips`` clips, log-normal lengths in 1-30 s,
mixed rates and channel counts), with the ``tiny`` preset:

* naive: per clip decode, resample, run each encoder on that one clip, save one .npy per clip and
  encoder (float16); audio-seconds per second and CPU-seconds (this process, all threads).
* pipeline: ``run_pipeline`` (embedded local Ray, fresh store) in its own process session, once per
  layout in ``--pools``; audio-seconds per second, the ratio to naive, and the CPU-seconds and peak
  memory of the whole job (driver and every Ray process). Wall-time ratios swing with the machine's
  load; the CPU-seconds say how much work each way does, whatever else runs.
* compute limit (``bench/compute_limit.py``): the same encoders' forward passes alone on the job's
  units, chunks and workers, on audio decoded into memory first (no Ray, no store, no decode);
  ``pipeline_over_compute_limit`` is the pipeline's audio-seconds per second over the limit's, with
  the CPU-seconds of each, the job's phases, its CPU-seconds by process (driver, encoder actors, Ray)
  and ``pipeline_gap_s``, where the wall time beyond the limit goes;
  ``pipeline_steady_over_compute_limit`` (and ``_cpu_``) is the ratio a corpus large enough to hide
  the fixed costs tends to (the actors' busy seconds plus keying, against the limit's busy seconds;
  see ``steady_state``). With ``--repeats R`` the two
  alternate R times and the best run of each counts (every run is listed). The naive loop stays as
  context.
* store overhead: bytes on disk per audio-second against the raw payload (values x bytes per value).
* memory: peak memory (PSS) of the whole job at N and 4N clips (the N lengths four times over), in
  subprocesses, ``--memory-runs`` times (each run's growth reported).
* compression: float16 features without and with zstd (the tiny whisper outputs, and synthetic
  whisper-sized features): size ratio and random-read speed (direct reads, zarr reads, zstd).

Usage: ``python bench/extract.py [--clips 300] [--encoders whisper,w2vbert] [--pools auto,per-encoder]
[--rss-clips 60] [--memory-runs 3] [--repeats 3] [--no-naive] [--no-compression] [--no-memory | --only-memory]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from proc_stats import fields_cpu, stat_fields

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_corpus(folder: Path, count: int, seed: int = 0,
                lengths: list[float] | None = None) -> tuple[Path, float]:
    """``count`` clips with log-normal lengths in [1, 30] s (or the given ``lengths``).

    Returns the manifest and the total seconds.
    """
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, total = [], 0.0
    for i in range(count):
        seconds = float(np.clip(rng.lognormal(np.log(5.0), 0.8), 1.0, 30.0)) if lengths is None else lengths[i]
        rate = (16000, 22050, 44100, 24000)[i % 4]
        channels = 1 + i % 2
        t = np.arange(int(seconds * rate)) / rate
        x = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)[:, None] + 0.05 * rng.standard_normal(
            (len(t), channels))
        path = folder / f"clip{i:05d}.wav"
        sf.write(path, x.astype(np.float32), rate, subtype="PCM_16")
        rows.append({"id": f"c{i}", "audio": str(path), "dataset": "bench"})
        total += len(t) / rate
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, total


def corpus_lengths(manifest: Path) -> list[float]:
    """Clip lengths in seconds of a corpus written by ``make_corpus`` (from the file headers)."""
    import soundfile as sf

    return [sf.info(json.loads(line)["audio"]).duration for line in manifest.read_text().splitlines()]


def naive(manifest: Path, encoders: list[str], out: Path) -> tuple[float, float]:
    """The loop a user would write; returns wall and CPU seconds (model loading included)."""
    import soundfile as sf
    import soxr

    from alarm.pipeline.encoders import EncoderConfig, build_encoder

    started, cpu = time.perf_counter(), time.process_time()
    models = {e: build_encoder(EncoderConfig(e, preset="tiny")) for e in encoders}
    out.mkdir(parents=True, exist_ok=True)
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        samples, rate = sf.read(row["audio"], dtype="float32", always_2d=True)
        mono = samples.mean(axis=1)
        for name, model in models.items():
            wave = soxr.resample(mono, rate, model.sample_rate) if rate != model.sample_rate else mono
            feats = model.encode([wave])[0]
            np.save(out / f"{row['id']}.{name}.npy", feats.astype(np.float16))
    return time.perf_counter() - started, time.process_time() - cpu


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def store_overhead(store: Path, encoders: list[str]) -> dict[str, float]:
    """Bytes on disk per audio-second and their ratio to the raw payload, over all groups."""
    from alarm.pipeline.store import open_features

    disk = payload = seconds = 0
    for e in encoders:
        reader = open_features(store, e)
        frames = sum(reader.num_frames(k) for k in reader.keys())
        payload += frames * reader.layers * reader.dim * 2
        disk += folder_bytes(reader.group)
        seconds = sum(reader.duration(k) for k in reader.keys())
    return {"store_bytes_per_audio_s": disk / seconds, "payload_bytes_per_audio_s": payload / seconds,
            "store_over_payload": disk / payload}


def compression(clips: dict[str, np.ndarray], workdir: Path, reads: int = 300) -> dict[str, float]:
    """Write ``clips`` as float16 without and with zstd; compare size and random-read speed.

    The plain store is read twice: by the reader (direct shard reads) and through zarr, so the cost
    of decompression is told apart from the cost of zarr's own read path.
    """
    import zarr

    from alarm.pipeline.part_writer import PartWriter
    from alarm.pipeline.store import open_features
    from alarm.pipeline.store_index import write_index
    from alarm.pipeline.store_layout import StoreConfig, group_spec, init_group

    layers, dim = next(iter(clips.values())).shape[1:]
    readers = {}
    for name, cfg in (("plain", StoreConfig()), ("zstd", StoreConfig(compressor="zstd", compression_level=3))):
        root = workdir / f"compression-{name}"
        shutil.rmtree(root, ignore_errors=True)
        group = init_group(root, "x", group_spec({"bench": True}, cfg), layers, dim, 50.0)
        writer = PartWriter(group, "all", sum(len(v) for v in clips.values()), layers, dim, cfg)
        for key, value in clips.items():
            writer.append(key, value, len(value) / 50)
        writer.commit()
        write_index(group)
        readers[name] = open_features(root, "x")
    via_zarr = open_features(readers["plain"].root, "x")
    folder = via_zarr.group / "parts" / "all" / "features"
    via_zarr._open = lambda part: (zarr.open_array(str(folder), mode="r"), None)  # bench only: force zarr
    readers["plain_zarr"] = via_zarr
    order = [str(k) for k in np.random.default_rng(0).choice(sorted(clips), reads)]
    result = {"zstd_size_ratio": folder_bytes(readers["plain"].group) / folder_bytes(readers["zstd"].group)}
    for name, reader in readers.items():
        reader.read(order[0])  # open the part before timing
        t0 = time.perf_counter()
        nbytes = sum(reader.read(k).nbytes // 2 for k in order)  # stored float16 bytes
        elapsed = time.perf_counter() - t0
        result[f"{name}_reads_per_s"] = reads / elapsed
        result[f"{name}_read_MBps"] = nbytes / elapsed / 1e6
    return result


def real_dim_clips(count: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    """Whisper-sized features (4 x 1280 at 50 Hz) for log-normal 1-30 s clips: smooth in time plus noise."""
    rng = np.random.default_rng(seed)
    clips = {}
    for i in range(count):
        frames = int(np.clip(rng.lognormal(np.log(5.0), 0.8), 1.0, 30.0) * 50)
        base = rng.standard_normal((1, 4, 1280)).astype(np.float32)
        walk = np.cumsum(rng.standard_normal((frames, 4, 1280)).astype(np.float32) * 0.1, axis=0)
        clips[f"r{i}"] = base + walk + 0.3 * rng.standard_normal((frames, 4, 1280)).astype(np.float32)
    return clips


JOB_SCRIPT = """
import json, sys, time
from alarm.pipeline import encode_pools
from alarm.pipeline.job import PipelineConfig, run_pipeline
cfg = PipelineConfig(store=sys.argv[1], manifest=sys.argv[2], encoders=sys.argv[3].split(","), preset="tiny",
                     num_cpus=2, progress=False, pools=sys.argv[4])
marks = {}
def timed(name, method):  # the job's phases, for the bench only: when encoding began and ended, and the close
    def call(*args, **kwargs):
        marks[name + "_start"] = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            marks[name + "_end"] = time.perf_counter()
    return call
encode_pools.JobWorkers.encode = timed("encode", encode_pools.JobWorkers.encode)
encode_pools.JobWorkers.close = timed("close", encode_pools.JobWorkers.close)
started = time.perf_counter()
summary = run_pipeline(cfg)
ended = time.perf_counter()
phases = {"before_encode_s": marks["encode_start"] - started, "encode_s": marks["encode_end"] - marks["encode_start"],
          "after_encode_s": ended - marks["encode_end"], "close_s": marks["close_end"] - marks["close_start"]}
print(json.dumps({"wall_s": ended - started, "stage_seconds": summary.stage_seconds, "phases": phases}))
"""


def process_role(pid: int, session: int) -> str:
    """``driver`` (the job's own process), ``actor`` (an encoder actor: Ray titles it ``ray::<Class>``) or ``ray``."""
    if pid == session:
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline") as handle:
            title = handle.read()
    except OSError:
        return "ray"
    return "actor" if "EncodeStage" in title else "ray"


def session_usage(sid: int, cpu_seen: dict[int, float], roles: dict[int, str] | None = None) -> tuple[int, int]:
    """Memory of every process in session ``sid`` (the job and its Ray); records their CPU-seconds.

    Returns (PSS, RSS) sums. PSS is the honest one: Ray's object store is shared memory mapped into
    several processes, and summing their RSS counts the same pages once per process. ``cpu_seen``
    keeps each process's latest user+system seconds, so processes that have ended still count;
    ``roles`` (if given) each process's ``process_role``, the last one seen.
    """
    pss = rss = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = stat_fields(int(entry))
            if int(fields[3]) != sid:  # field 6 of stat: session id
                continue
            cpu_seen[int(entry)] = fields_cpu(fields)
            if roles is not None and roles.get(int(entry)) != "actor":
                roles[int(entry)] = process_role(int(entry), sid)
            with open(f"/proc/{entry}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return pss, rss


def run_job(manifest: Path, store: Path, encoders: list[str], pools: str = "auto") -> dict[str, Any]:
    """Run the job in its own process session; its wall time, CPU-seconds, peak PSS and peak RSS sum."""
    import alarm

    # The job runs the same ``alarm`` this process imported (a worktree, not the installed copy).
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(alarm.__file__))}
    proc = subprocess.Popen([sys.executable, "-c", JOB_SCRIPT, str(store), str(manifest), ",".join(encoders), pools],
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    peak_pss = peak_rss = 0
    cpu_seen: dict[int, float] = {}
    roles: dict[int, str] = {}
    while proc.poll() is None:
        pss, rss = session_usage(proc.pid, cpu_seen, roles)
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(0.2)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode:
        raise RuntimeError(f"pipeline subprocess failed with {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    by_role = {r: sum(c for p, c in cpu_seen.items() if roles.get(p) == r) for r in ("driver", "actor", "ray")}
    return {**result, "cpu_s": sum(cpu_seen.values()), "cpu_by_role": by_role, "peak_pss": peak_pss,
            "peak_rss": peak_rss}


def timing(args: argparse.Namespace, encoders: list[str], workdir: Path) -> dict[str, Any]:
    """Naive loop, pipeline (each layout of ``--pools``) and compute limit on one corpus, back to back."""
    from compute_limit import compute_limit, gap, steady_state

    manifest, seconds = make_corpus(workdir / "corpus", args.clips)
    result: dict[str, Any] = {"clips": args.clips, "audio_seconds": round(seconds, 1)}
    naive_s = None
    if not args.no_naive:
        naive_s, naive_cpu = naive(manifest, encoders, workdir / "naive")
        result.update({"naive_audio_s_per_s": seconds / naive_s, "naive_wall_s": naive_s, "naive_cpu_s": naive_cpu})
    store = workdir / "store"
    layouts = [p for p in args.pools.split(",") if p]
    # Pipeline and compute limit alternate ``--repeats`` times; the best (shortest) run of each is kept,
    # the least disturbed by whatever else the machine runs, and every run's figure is listed.
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in layouts}
    limits = []
    for _ in range(args.repeats):
        for pools in layouts:
            shutil.rmtree(store, ignore_errors=True)
            runs[pools].append(run_job(manifest, store, encoders, pools))
        limits.append(compute_limit(manifest, encoders))
    for i, pools in enumerate(layouts):
        job = min(runs[pools], key=lambda j: j["wall_s"])
        tag = "pipeline" if i == 0 else f"pipeline_{pools.replace('-', '_')}"
        if naive_s is not None:
            result[f"{tag}_over_naive"] = naive_s / job["wall_s"]
        result.update({f"{tag}_pools": pools, f"{tag}_audio_s_per_s": seconds / job["wall_s"],
                       f"{tag}_wall_s": job["wall_s"], f"{tag}_wall_s_runs": [j["wall_s"] for j in runs[pools]],
                       f"{tag}_cpu_s": job["cpu_s"], f"{tag}_peak_pss_MB": job["peak_pss"] / 1e6,
                       f"{tag}_stage_seconds": job["stage_seconds"], f"{tag}_phases": job["phases"],
                       f"{tag}_cpu_by_role": job["cpu_by_role"]})
    limit = min(limits, key=lambda x: x["compute_limit_wall_s"])
    result.update({**limit, "compute_limit_audio_s_per_s": seconds / limit["compute_limit_wall_s"],
                   "compute_limit_wall_s_runs": [x["compute_limit_wall_s"] for x in limits],
                   # audio-seconds per second of the pipeline over those of the compute limit
                   "pipeline_over_compute_limit": limit["compute_limit_wall_s"] / result["pipeline_wall_s"],
                   # the same in CPU-seconds (the forward passes' share of the job's CPU): on a shared machine
                   # the wall times swing with the load, the CPU-seconds much less
                   "pipeline_cpu_over_compute_limit": limit["compute_limit_cpu_s"] / result["pipeline_cpu_s"],
                   # each repeat's own pair (run back to back)
                   "pipeline_over_compute_limit_runs": [x["compute_limit_wall_s"] / j["wall_s"]
                                                        for x, j in zip(limits, runs[layouts[0]], strict=True)],
                   "pipeline_gap_s": gap(result, limit, encoders),
                   **steady_state(result, limit)})
    result.update(store_overhead(store, encoders))
    if not args.no_compression:
        from alarm.pipeline.store import open_features

        tiny = open_features(store, "whisper")
        result.update({f"tiny_whisper_{k}": v for k, v in
                       compression({k: tiny.read(k) for k in tiny.keys()}, workdir).items()})
        result.update({f"real_dims_{k}": v for k, v in compression(real_dim_clips(), workdir).items()})
    return result


def memory(n: int, runs: int, encoders: list[str], workdir: Path) -> dict[str, Any]:
    """Peak PSS of the whole job at N and 4N clips, ``runs`` times; the growth of each run."""
    small, _ = make_corpus(workdir / "rss-n", n, seed=1)
    # 4N clips with the N lengths four times over (new audio): the same longest clip, so the
    # comparison sees the corpus size alone. A job's peak follows its longest 30 s windows (W2V-BERT's
    # relative-position attention), which an independent, larger draw is likelier to hold.
    large, _ = make_corpus(workdir / "rss-4n", 4 * n, seed=2,
                           lengths=[x for x in corpus_lengths(small) for _ in range(4)])
    pss_n, pss_4n, rss_n, rss_4n = [], [], [], []
    for run in range(runs):
        job_n = run_job(small, workdir / f"rss-store-n-{run}", encoders)
        job_4n = run_job(large, workdir / f"rss-store-4n-{run}", encoders)
        pss_n.append(job_n["peak_pss"] / 1e6)
        pss_4n.append(job_4n["peak_pss"] / 1e6)
        rss_n.append(job_n["peak_rss"] / 1e6)
        rss_4n.append(job_4n["peak_rss"] / 1e6)
    return {"memory_clips_n": n, "memory_runs": runs, "peak_pss_n_MB": pss_n, "peak_pss_4n_MB": pss_4n,
            "pss_growth_4n_over_n": [round(b / a, 4) for a, b in zip(pss_n, pss_4n, strict=True)],
            "peak_rss_sum_n_MB": rss_n, "peak_rss_sum_4n_MB": rss_4n,
            "rss_sum_growth_4n_over_n": [round(b / a, 4) for a, b in zip(rss_n, rss_4n, strict=True)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=300)
    parser.add_argument("--encoders", default="whisper,w2vbert")
    parser.add_argument("--pools", default="auto", help="pipeline layouts to time (auto, shared, per-encoder)")
    parser.add_argument("--rss-clips", type=int, default=60, help="N of the memory test (also runs 4N)")
    parser.add_argument("--memory-runs", type=int, default=1, help="how many times to run the N vs 4N pair")
    parser.add_argument("--no-compression", action="store_true", help="skip the compression figures")
    parser.add_argument("--repeats", type=int, default=1,
                        help="pipeline and compute limit alternate this many times; the best run of each counts")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive per-clip loop (context only)")
    parser.add_argument("--no-memory", action="store_true", help="skip the N vs 4N memory runs")
    parser.add_argument("--only-memory", action="store_true", help="only the N vs 4N memory runs")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("ALARM_CACHE", str(REPO / ".cache" / "alarm"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    encoders = [e for e in args.encoders.split(",") if e]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="alarm-bench-"))
    result: dict[str, Any] = {"bench": "extract", "encoders": encoders, "preset": "tiny", "cpus": os.cpu_count(),
                              "load_avg_1m_start": os.getloadavg()[0]}
    if not args.only_memory:
        result.update(timing(args, encoders, workdir))
    if not args.no_memory:
        result.update(memory(args.rss_clips, args.memory_runs, encoders, workdir))
    result["load_avg_1m_end"] = os.getloadavg()[0]
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}))


if __name__ == "__main__":
    main()
