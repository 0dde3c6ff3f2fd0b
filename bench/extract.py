"""Feature extraction: the naive per-clip loop against the pipeline, store overhead, memory, compression.

Prints ONE JSON line. On the same generated corpus (``--clips`` clips, log-normal lengths in 1-30 s,
mixed rates and channel counts), with the ``tiny`` preset:

* naive: per clip decode, resample, run each encoder on that one clip, save one .npy per clip and
  encoder (float16); audio-seconds per second.
* pipeline: ``run_pipeline`` (embedded local Ray, fresh store); audio-seconds per second, the ratio.
* store overhead: bytes on disk per audio-second against the raw payload (values x bytes per value).
* memory: peak RSS of the whole job (driver + Ray processes) at N and 4N clips, in subprocesses.
* compression: the float16 whisper group rewritten with zstd: size ratio and random-read speed of both.

Usage: ``python bench/extract.py [--clips 300] [--encoders whisper,w2vbert] [--rss-clips 60]``
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_corpus(folder: Path, count: int, seed: int = 0) -> tuple[Path, float]:
    """``count`` clips with log-normal lengths in [1, 30] s; returns the manifest and total seconds."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, total = [], 0.0
    for i in range(count):
        seconds = float(np.clip(rng.lognormal(np.log(5.0), 0.8), 1.0, 30.0))
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


def naive(manifest: Path, encoders: list[str], out: Path) -> float:
    """The loop a user would write; returns wall seconds (model loading included)."""
    import soundfile as sf
    import soxr

    from pipeline.encoders import EncoderConfig, build_encoder

    started = time.perf_counter()
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
    return time.perf_counter() - started


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def store_overhead(store: Path, encoders: list[str]) -> dict[str, float]:
    """Bytes on disk per audio-second and their ratio to the raw payload, over all groups."""
    from pipeline.store import open_features

    disk = payload = seconds = 0
    for e in encoders:
        reader = open_features(store, e)
        frames = sum(reader.num_frames(k) for k in reader.keys())
        payload += frames * reader.layers * reader.dim * 2
        disk += folder_bytes(reader.group)
        seconds = sum(reader.duration(k) for k in reader.keys())
    return {"store_bytes_per_audio_s": disk / seconds, "payload_bytes_per_audio_s": payload / seconds,
            "store_over_payload": disk / payload}


def compression(store: Path, workdir: Path, reads: int = 400) -> dict[str, float]:
    """Rewrite the whisper float16 group with zstd; compare size and random-read speed."""
    from pipeline.store import PartWriter, StoreConfig, group_spec, init_group, open_features, write_index

    plain = open_features(store, "whisper")
    zstd_cfg = StoreConfig(compressor="zstd", compression_level=3)
    root = workdir / "zstd-store"
    shutil.rmtree(root, ignore_errors=True)
    group = init_group(root, "whisper", group_spec(plain.spec["encoder"], zstd_cfg), plain.layers, plain.dim,
                       plain.frame_rate)
    keys = plain.keys()
    writer = PartWriter(group, "all", sum(plain.num_frames(k) for k in keys), plain.layers, plain.dim, zstd_cfg)
    for k in keys:
        writer.append(k, plain.read(k), plain.duration(k))
    writer.commit()
    write_index(group)
    packed = open_features(root, "whisper")
    rng = np.random.default_rng(0)
    order = [keys[i] for i in rng.integers(0, len(keys), reads)]
    speeds = {}
    for name, reader in (("plain", plain), ("zstd", packed)):
        for k in order[:20]:  # open every part once before timing
            reader.read(k)
        t0 = time.perf_counter()
        nbytes = sum(reader.read(k).nbytes // 2 for k in order)  # stored float16 bytes
        speeds[name] = (reads / (time.perf_counter() - t0), nbytes / (time.perf_counter() - t0) / 1e6)
    return {"zstd_size_ratio": folder_bytes(plain.group) / folder_bytes(group),
            "plain_reads_per_s": speeds["plain"][0], "zstd_reads_per_s": speeds["zstd"][0],
            "plain_read_MBps": speeds["plain"][1], "zstd_read_MBps": speeds["zstd"][1]}


RSS_SCRIPT = """
import sys
from pipeline.job import PipelineConfig, run_pipeline
run_pipeline(PipelineConfig(store=sys.argv[1], manifest=sys.argv[2], encoders=sys.argv[3].split(","),
             preset="tiny", num_cpus=2, progress=False))
"""


def session_rss(sid: int) -> int:
    """Total resident bytes of every process in session ``sid`` (the job and the Ray it started)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            if int(fields[3]) != sid:  # field 6 of stat: session id
                continue
            with open(f"/proc/{entry}/statm") as handle:
                total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    return total


def peak_rss(manifest: Path, store: Path, encoders: list[str]) -> tuple[int, float]:
    """Run the job in its own session; return its peak total RSS and wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", RSS_SCRIPT, str(store), str(manifest), ",".join(encoders)],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, session_rss(proc.pid))
        time.sleep(0.2)
    if proc.returncode:
        raise RuntimeError(f"pipeline subprocess failed with {proc.returncode}")
    return peak, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=300)
    parser.add_argument("--encoders", default="whisper,w2vbert")
    parser.add_argument("--rss-clips", type=int, default=60, help="N of the memory test (also runs 4N)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("ALARM_CACHE", str(REPO / ".cache" / "alarm"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    encoders = [e for e in args.encoders.split(",") if e]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="alarm-bench-"))
    manifest, seconds = make_corpus(workdir / "corpus", args.clips)

    naive_s = naive(manifest, encoders, workdir / "naive")

    from pipeline.job import PipelineConfig, run_pipeline

    store = workdir / "store"
    started = time.perf_counter()
    summary = run_pipeline(PipelineConfig(store=str(store), manifest=str(manifest), encoders=encoders,
                                          preset="tiny", num_cpus=2, progress=False))
    pipeline_s = time.perf_counter() - started
    result = {
        "bench": "extract", "clips": args.clips, "audio_seconds": round(seconds, 1), "encoders": encoders,
        "preset": "tiny", "cpus": os.cpu_count(),
        "naive_audio_s_per_s": seconds / naive_s, "pipeline_audio_s_per_s": seconds / pipeline_s,
        "pipeline_over_naive": naive_s / pipeline_s, "naive_wall_s": naive_s, "pipeline_wall_s": pipeline_s,
        "pipeline_stage_seconds": summary.stage_seconds,
    }
    result.update(store_overhead(store, encoders))
    result.update(compression(store, workdir))
    n = args.rss_clips
    small, _ = make_corpus(workdir / "rss-n", n, seed=1)
    large, _ = make_corpus(workdir / "rss-4n", 4 * n, seed=2)
    rss_n, _ = peak_rss(small, workdir / "rss-store-n", encoders)
    rss_4n, _ = peak_rss(large, workdir / "rss-store-4n", encoders)
    result.update({"rss_clips_n": n, "peak_rss_n_MB": rss_n / 1e6, "peak_rss_4n_MB": rss_4n / 1e6,
                   "rss_growth_4n_over_n": rss_4n / rss_n})
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}))


if __name__ == "__main__":
    main()
