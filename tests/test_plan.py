"""``alarm pipeline plan``: store size, objects, GPU time and wall time, checked against hand arithmetic.

The figures of the ALARM corpus (18.9K hours, about 96 TB in float16 for the four encoders,
/work/shared/ALARM.md §2) are recomputed here by hand; the object layout is checked against the
parts a real job cuts and the shard files it writes.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from store_fixtures import good_corpus, write_manifest_rows

from alarm.cli import main
from alarm.pipeline.configs import ConfigError
from alarm.pipeline.job import PipelineConfig
from alarm.pipeline.plan import plan_hours, plan_job
from alarm.pipeline.plan_objects import pack_parts, part_shards
from alarm.pipeline.store_layout import StoreConfig
from alarm.pipeline.work_units import plan_parts

HOURS = 18_900
SECONDS = HOURS * 3600  # 68,040,000 audio-seconds
CLIPS = SECONDS // 10  # 6,804,000 clips of 10 s
PARTS = CLIPS // 30  # 300 s parts of 10 s clips: 30 clips, 226,800 parts
INDEX = (4096 // 64) * 16 + 4  # a shard's index: 64 chunks of (offset, length) uint64, and a crc32c


def _cfg(**kw: object) -> PipelineConfig:
    return PipelineConfig(**{"store": "unused", "manifest": "unused", **kw})


def _bench_line(path: Path, preset: str = "full-size-random") -> Path:
    """A bench/gpu_extract.py result line with round figures (another bench's line before it)."""
    row = {"bench": "gpu_extract", "device": "NVIDIA H200", "preset": preset, "dtype": "bfloat16",
           "encoders": {
               # whisper: 100 windows' worth of counted FLOPs in 10 s: 10 windows per GPU-second
               "whisper": {"flops": 100 * 2.27e12, "seconds": 10.0, "audio_seconds_per_second": 150.0},
               "w2vbert": {"flops": 1.0, "seconds": 1.0, "audio_seconds_per_second": 500.0},
               "muq": {"flops": 1.0, "seconds": 1.0, "audio_seconds_per_second": 1000.0},
               # sslam: 300 windows in 3 s: 100 windows per GPU-second
               "sslam": {"flops": 300 * 1.0e11, "seconds": 3.0, "audio_seconds_per_second": 900.0}}}
    path.write_text(json.dumps({"bench": "train"}) + "\n" + json.dumps(row) + "\n")
    return path


def test_alarm_corpus_is_96_tb_in_tens_of_mb_objects() -> None:
    report = plan_hours(_cfg(), HOURS, 10.0, gpus=8)
    per_second = {"whisper": 4 * 1280 * 50 * 2, "w2vbert": 5 * 1024 * 50 * 2, "sslam": 3 * 768 * 50 * 2,
                  "muq": 3 * 1024 * 25 * 2}  # bytes per audio-second in float16
    for e, rate in per_second.items():
        assert report.bytes_per_encoder[e] == pytest.approx(rate * SECONDS, rel=1e-9), e
    assert report.bytes_total == pytest.approx(1_408_000 * SECONDS, rel=1e-9)
    assert 95.5e12 < report.bytes_total < 96.5e12  # "about 96 TB"

    # Whisper: a part of 30 clips of 500 frames is 15,000 frames: 3 full shards of 4096 frames and one
    # of 2712 frames, stored as 43 whole chunks of 64 (2752 frames). 4 x 1280 x 2 bytes a frame.
    whisper = report.objects_per_encoder["whisper"]
    frame = 4 * 1280 * 2
    assert whisper.parts == PARTS and whisper.shard_objects == 4 * PARTS
    assert whisper.full_shard_bytes == 4096 * frame + INDEX  # 41.9 MB
    assert whisper.bytes == pytest.approx(PARTS * (3 * (4096 * frame + INDEX) + 2752 * frame + INDEX))
    assert whisper.small_objects == 6 * PARTS
    # muq at 25 Hz: 7500 frames a part, 2 shards (4096 + 3404 frames, stored as 54 chunks = 3456 frames).
    muq = report.objects_per_encoder["muq"]
    assert muq.shard_objects == 2 * PARTS
    assert muq.bytes == pytest.approx(PARTS * ((4096 + 3456) * 3 * 1024 * 2 + 2 * INDEX))
    for e, o in report.objects_per_encoder.items():
        assert 10e6 < o.average_shard_bytes < 50e6 and o.full_shard_bytes < 50e6, (e, o)  # tens of MB

    # The FLOP estimate: whisper pads each 10 s clip to one 30 s window of 2.27 TFLOP.
    rate = 989e12 * 0.35
    assert report.gpu_hours_per_encoder["whisper"] == pytest.approx(CLIPS * 2.27e12 / rate / 3600)
    # w2vbert and muq by audio-second (69.0 G and 42.7 G, counted: bench/RESULTS.md); sslam pads each 10 s
    # clip to one 10.24 s window of 1.0e11.
    assert report.gpu_hours_per_encoder["w2vbert"] == pytest.approx(SECONDS * 69.0e9 / rate / 3600)
    assert report.gpu_hours_per_encoder["muq"] == pytest.approx(SECONDS * 42.7e9 / rate / 3600)
    # 6,804,000 x 2.27e12 + 68,040,000 x (69.0e9 + 42.7e9) + 6,804,000 x 1.0e11 = 2.3725548e19 FLOP
    assert report.gpu_hours_total == pytest.approx(2.3725548e19 / rate / 3600)  # 19.04 GPU-hours
    assert report.gpu_basis.startswith("FLOP estimate")
    assert report.wall_hours == pytest.approx(report.gpu_hours_total / 8)


def test_measured_throughput_gives_the_gpu_hours(tmp_path: Path) -> None:
    bench = _bench_line(tmp_path / "gpu.jsonl")
    report = plan_hours(_cfg(), HOURS, 10.0, gpus=64, bench=str(bench))
    hours = {"whisper": CLIPS / 10,  # one window a clip, 10 windows per GPU-second
             "w2vbert": SECONDS / 500, "muq": SECONDS / 1000,
             "sslam": CLIPS / 100}  # 10 s clips fit one 10.24 s window each
    for e, gpu_s in hours.items():
        assert report.gpu_hours_per_encoder[e] == pytest.approx(gpu_s / 3600), e
    assert report.gpu_hours_total == pytest.approx(sum(hours.values()) / 3600)  # 189 + 37.8 + 18.9 + 18.9 h
    assert report.wall_hours == pytest.approx(sum(hours.values()) / 3600 / 64)
    assert report.gpu_basis.startswith("measured: NVIDIA H200, bfloat16")
    # Shorter clips cost whisper as much each: 5 s clips are twice the windows for the same audio.
    short = plan_hours(_cfg(encoders=["whisper"]), HOURS, 5.0, bench=str(bench))
    assert short.gpu_hours_total == pytest.approx(2 * hours["whisper"] / 3600)

    with pytest.raises(ConfigError, match="tiny models"):
        plan_hours(_cfg(), 1.0, 10.0, bench=str(_bench_line(tmp_path / "tiny.jsonl", preset="tiny")))
    with pytest.raises(ConfigError, match="no bench/gpu_extract.py line"):
        plan_hours(_cfg(), 1.0, 10.0, bench=str(write_manifest_rows([{"x": 1}], tmp_path / "other.jsonl")))
    with pytest.raises(ConfigError, match="gpus must be at least 1"):
        plan_hours(_cfg(), 1.0, 10.0, gpus=0)


def test_parts_are_packed_as_the_job_cuts_them() -> None:
    rng = random.Random(0)
    durations = {f"k{i}": rng.choice([0.5, 1.5, 2.0, 7.25, 12.0, 29.0, 31.0]) for i in range(400)}
    for part_seconds in (1.0, 10.0, 30.0, 300.0):
        job = Counter(tuple(sorted(Counter(durations[k] for k in part).items()))
                      for part in plan_parts(durations, part_seconds))
        planned = Counter({tuple(segments): n for segments, n in pack_parts(Counter(durations.values()),
                                                                            part_seconds).items()})
        assert planned == job, part_seconds


@pytest.mark.slow  # a real job: ~45 s on two busy cores
def test_shard_objects_match_a_real_store(tmp_path: Path) -> None:
    """The shard files a real job writes: as many, and as large, as ``part_shards`` says."""
    import pyarrow.parquet as pq

    from alarm.pipeline.job import run_pipeline

    rows = good_corpus(tmp_path / "audio", count=5, seconds=(1.5, 3.0))
    storage = {"dtype": "float16", "chunk_frames": 16, "shard_frames": 64, "part_seconds": 4.0}
    cfg = PipelineConfig(store=str(tmp_path / "store"), manifest=str(write_manifest_rows(rows, tmp_path / "m.jsonl")),
                         encoders=["whisper"], preset="tiny", progress=False, num_cpus=2, storage=storage)
    run_pipeline(cfg)
    group = next((tmp_path / "store" / "features" / "whisper").glob("*/spec.json")).parent
    spec = json.loads((group / "spec.json").read_text())
    frame_bytes = spec["layers"] * spec["dim"] * 2
    index = pq.read_table(group / "index.parquet").to_pylist()
    parts = Counter()
    for row in index:
        parts[row["part"]] += row["length"]
    assert len(parts) >= 2
    for part, frames in parts.items():
        shards = [p for p in (group / "parts" / part).rglob("*") if p.is_file() and "/features/c/" in p.as_posix()]
        count, nbytes = part_shards(frames, frame_bytes, StoreConfig(**storage))
        assert len(shards) == count == math.ceil(frames / 64), part
        assert sum(p.stat().st_size for p in shards) == nbytes, part


def test_plan_command_on_a_manifest(tmp_path: Path) -> None:
    manifest = write_manifest_rows(good_corpus(tmp_path / "audio", count=3, seconds=(2.0, 4.0)), tmp_path / "m.jsonl")
    bench = _bench_line(tmp_path / "gpu.jsonl")
    runner = CliRunner()
    result = runner.invoke(main, ["pipeline", "plan", str(manifest), "--gpus", "4", "--bench", str(bench),
                                  "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    report = plan_job(_cfg(manifest=str(manifest)), gpus=4, bench=str(bench))
    assert plan["clips"] == 3 and plan["gpus"] == 4
    assert plan["bytes_per_encoder"] == report.bytes_per_encoder
    assert plan["wall_hours"] == pytest.approx(report.gpu_hours_total / 4)
    # Three short clips: one part, one small shard object per encoder (muq: 25 Hz).
    assert plan["objects_per_encoder"]["muq"]["shard_objects"] == 1
    assert plan["objects_per_encoder"]["muq"]["parts"] == 1

    text = runner.invoke(main, ["pipeline", "plan", str(manifest), "--gpus", "4", "--bench", str(bench)])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert re.match(r"  whisper: [0-9.]+ MB, 1 objects of [0-9.]+ MB on average \(full shard 41\.9 MB\) "
                    r"\+ 6 small, in 1 parts; ~[0-9.]+ GPU-hours", lines[1]), lines[1]
    assert "(measured: NVIDIA H200, bfloat16" in text.output
    assert re.search(r"^on 4 GPUs: ~[0-9.]+ h wall", text.output, flags=re.M)

    # Small objects get a note; bad input is one line.
    small = runner.invoke(main, ["pipeline", "plan", "--hours", "1", "--shard-frames", "256"])
    assert small.exit_code == 0 and "note: whisper's shards are 2.6 MB" in small.output, small.output
    for args, message in ((["--bench", str(tmp_path / "none.jsonl")], "error: --bench"),
                          (["--gpus", "0"], "error: --gpus must be at least 1"),
                          (["--clip-seconds", "90"], "error: --hours must be positive")):
        bad = runner.invoke(main, ["pipeline", "plan", "--hours", "1", *args])
        assert bad.exit_code == 2 and bad.output.startswith(message) and len(bad.output.splitlines()) == 1, \
            bad.output
