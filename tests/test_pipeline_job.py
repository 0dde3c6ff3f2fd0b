"""The feature job on real local Ray, real tiny encoders and a real Zarr store on disk."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from store_fixtures import good_corpus, hostile_corpus, tone, write_manifest_rows, write_shard, write_wav
from store_trees import part_folder, store_digest

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.decode import DecodeConfig, decode_clip
from alarm.pipeline.job import PipelineConfig, run_pipeline
from alarm.pipeline.store import open_features
from alarm.pipeline.store_layout import StoreConfig, StoreSpecError, committed_parts
from alarm.pipeline.verify import store_status, verify_store
from alarm.pipeline.work_units import plan_parts

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def encoders(tiny_whisper_dir: Path, tiny_w2vbert_dir: Path) -> dict:
    import torch

    from alarm.pipeline.encoders import EncoderConfig, build_encoder

    torch.set_num_threads(1)  # the actors run one thread each on 2 cores: same kernels, same bytes
    job = PipelineConfig(store="unused", manifest="unused", preset="tiny")  # the job's batch size too
    return {n: build_encoder(EncoderConfig(**job.encoder_config(n))) for n in ("whisper", "w2vbert")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], list[dict]]:
    folder = tmp_path_factory.mktemp("corpus")
    good = good_corpus(folder / "good", count=5)
    bad, expected = hostile_corpus(folder / "bad")
    # The same audio under another id, the same samples in another container, and a cut.
    import soundfile as sf

    samples, rate = sf.read(good[0]["audio"], dtype="int16")
    flac = write_wav(folder / "good" / "copy.flac", samples, rate)
    extra = [{"id": "same-audio", "audio": good[0]["audio"], "dataset": "toy"},
             {"id": "same-content", "audio": str(flac), "dataset": "other"},
             {"id": "cut", "audio": good[1]["audio"], "dataset": "toy", "start": 0.1, "end": 0.5}]
    manifest = write_manifest_rows(good + extra + bad + [{"id": "no-dataset", "audio": "x.wav"}],
                                   folder / "manifest.jsonl")
    return manifest, expected, good + extra


def config(store: Path, manifest: Path, **kw: object) -> PipelineConfig:
    base = {"encoders": ["whisper", "w2vbert"], "preset": "tiny", "progress": False}
    return PipelineConfig(store=str(store), manifest=str(manifest), **{**base, **kw})


def tree_digest(root: Path) -> dict[str, str]:
    """Bytes of every object a job writes (parts by part id, not attempt), except the summary and the
    report (timings, dates) and the lease."""
    return store_digest(root, skip={"summary.json", "report.json", "report.md", ".lease"})


def test_plan_parts_is_stable_when_whole_parts_are_removed() -> None:
    rng = np.random.default_rng(0)
    clips = {f"k{i}": float(rng.uniform(0.5, 3)) for i in range(40)}
    parts = plan_parts(clips, 5.0)
    assert sorted(k for p in parts for k in p) == sorted(clips)
    assert all(sum(clips[k] for k in p) <= 5.0 for p in parts)
    done = {k for p in parts[1::3] for k in p}
    rest = {k: d for k, d in clips.items() if k not in done}
    assert plan_parts(rest, 5.0) == [p for i, p in enumerate(parts) if i % 3 != 1]


def test_pools_setting() -> None:
    base = {"store": "s", "manifest": "m.jsonl"}
    assert PipelineConfig(**base).shared_pools()  # CPU: one shared pool
    assert not PipelineConfig(**base, device="cuda", gpus_per_actor=1).shared_pools()
    assert PipelineConfig(**base, device="cuda", pools="shared").shared_pools()
    with pytest.raises(ConfigError, match="pools must be one of"):
        PipelineConfig(**base, pools="one")
    with pytest.raises(ConfigError, match="shared_actors"):
        PipelineConfig(**base, shared_actors=-1)


def test_encoder_build_error_reaches_the_caller(ray_session, corpus, tmp_path: Path) -> None:
    manifest, _, _ = corpus
    # The shared actors build the encoders; their error must arrive as itself (the CLI prints it).
    with pytest.raises(ConfigError, match=r"layers \[99\] do not exist"):
        run_pipeline(config(tmp_path / "store", manifest, encoders=["whisper"], layers={"whisper": [99]}))


def test_store_equals_direct_encoding_and_rejects_have_reasons(ray_session, encoders, corpus, tmp_path: Path):
    manifest, expected, good = corpus
    store = tmp_path / "store"
    summary = run_pipeline(config(store, manifest, encoders=["whisper"],
                                  storage={"dtype": "float32", "part_seconds": 2.0}))
    # 5 files + a cut = 6 clips; same-audio and same-content rows are the same clip as good0.
    assert summary.clips == 6 and summary.encoded == {"whisper": 6}
    # The shared actors' time in units covers their decode, forward passes and writes.
    stages = summary.stage_seconds
    assert stages["busy"] >= stages["decode"] + stages["whisper"] + stages["whisper_write"] > 0
    assert stages["busy_cpu"] > 0
    # The shared pool's actors are gone: the caller's Ray session has its CPUs back.
    deadline = time.monotonic() + 30
    while ray_session.available_resources().get("CPU", 0) < 2:
        assert time.monotonic() < deadline, ray_session.available_resources()
        time.sleep(0.1)
    instances = pq.read_table(store / "instances.parquet").to_pylist()
    by_id = {r["id"]: r for r in instances}
    assert by_id["same-audio"]["key"] == by_id["same-content"]["key"] == by_id["good0"]["key"]
    assert by_id["cut"]["duration"] == pytest.approx(0.4)
    rejects = {r["id"]: r["reason"] for r in pq.read_table(store / "rejects.parquet").to_pylist()}
    for rid, kind in expected.items():
        assert rejects[rid].startswith(kind), (rid, rejects[rid])
    assert rejects["no-dataset"].startswith("manifest: line")  # invalid row: no dataset
    assert summary.rejected["missing"] == 1 and summary.rejected["too long"] == 1

    reader = open_features(store, "whisper", encoders["whisper"].spec())
    assert len(reader) == 6 and reader.spec["store"]["dtype"] == "float32"
    for row in good:
        clip = decode_clip(row["audio"], row.get("start"), row.get("end"), DecodeConfig())
        direct = encoders["whisper"].encode([clip.at(16000)])[0]
        np.testing.assert_allclose(reader.read(clip.key), direct, rtol=1e-5, atol=1e-5)
    # Exact: the same call the stage made for a part (its clips in order) gives the same bytes.
    group = reader.group
    part = part_folder(group, committed_parts(group)[0])
    keys = pq.read_table(part / "clips.parquet").column("key").to_pylist()
    sources = {r["key"]: r for r in instances}
    waves = [decode_clip(sources[k]["audio"], sources[k]["start"], sources[k]["end"], DecodeConfig()).at(16000)
             for k in keys]
    for key, feats in zip(keys, encoders["whisper"].encode(waves), strict=True):
        np.testing.assert_array_equal(reader.read(key), feats)
    assert verify_store(store).ok

    # Adding an encoder computes only that encoder; a rerun computes nothing.
    before = tree_digest(store / "features" / "whisper")
    summary = run_pipeline(config(store, manifest, storage={"dtype": "float32", "part_seconds": 2.0}))
    assert summary.encoded == {"whisper": 0, "w2vbert": 6} and summary.skipped["whisper"] == 6
    assert tree_digest(store / "features" / "whisper") == before
    w2v = open_features(store, "w2vbert")
    for key in w2v.keys():
        row = sources[key]
        clip = decode_clip(row["audio"], row["start"], row["end"], DecodeConfig())
        np.testing.assert_allclose(w2v.read(key), encoders["w2vbert"].encode([clip.at(16000)])[0],
                                   rtol=1e-5, atol=1e-5)
    summary = run_pipeline(config(store, manifest, storage={"dtype": "float32", "part_seconds": 2.0}))
    assert summary.encoded == {"whisper": 0, "w2vbert": 0}
    status = store_status(store)
    assert {g["encoder"]: (g["done"], g["pending"]) for g in status["groups"].values()} == \
        {"whisper": (6, 0), "w2vbert": (6, 0)}
    assert status["rejected"]["manifest"] == 1
    # The reader refuses a spec the store was not written with (here: float16 storage).
    with pytest.raises(StoreSpecError, match="no 'whisper' features for this spec"):
        open_features(store, "whisper", {"encoder": encoders["whisper"].spec(), "store": StoreConfig().settings()})


def test_webdataset_input_reuses_content_keys(ray_session, encoders, corpus, tmp_path: Path) -> None:
    _, _, good = corpus
    members = [(f"s{i}", Path(r["audio"]), {"id": f"wds{i}", "dataset": "shards"}) for i, r in enumerate(good[:4])]
    write_shard(tmp_path / "shards" / "000.tar", members[:2])
    write_shard(tmp_path / "shards" / "001.tar", members[2:] + [("nojson", Path(good[4]["audio"]), {})])
    # All four encoders at once on 2 CPUs in the cluster layout (one pool per encoder, keys from Ray
    # tasks): the actors must leave CPU to the decode tasks (no deadlock), and MuQ gets its 24 kHz audio.
    cfg = PipelineConfig(store=str(tmp_path / "store"), shards=[str(tmp_path / "shards" / "{000..001}.tar")],
                         encoders=["whisper", "w2vbert", "muq", "sslam"], preset="tiny", progress=False,
                         pools="per-encoder", address=ray_session.get_runtime_context().gcs_address)
    assert not cfg.shared_pools()
    summary = run_pipeline(cfg)
    assert summary.instances == 5 and set(summary.encoded.values()) == {summary.clips}
    muq = open_features(tmp_path / "store", "muq")
    assert muq.spec["encoder"]["sample_rate"] == 24000
    for key in muq.keys():
        assert abs(muq.num_frames(key) - muq.duration(key) * 24000 / 960) <= 1
    instances = {r["id"]: r for r in pq.read_table(tmp_path / "store" / "instances.parquet").to_pylist()}
    assert instances["001/nojson"]["dataset"] == "webdataset"
    assert instances["wds0"]["audio"].endswith("000.tar#s0.wav")
    for i, row in enumerate(good[:4]):
        assert instances[f"wds{i}"]["key"] == decode_clip(row["audio"], None, None, DecodeConfig()).key
    reader = open_features(tmp_path / "store", "whisper")
    assert sorted(reader.keys()) == sorted({r["key"] for r in instances.values()})


KILL_SCRIPT = """
import sys
from alarm.pipeline.job import PipelineConfig, run_pipeline
run_pipeline(PipelineConfig(store=sys.argv[1], manifest=sys.argv[2], encoders=["whisper", "w2vbert"],
             preset="tiny", num_cpus=2, progress=False, storage={"part_seconds": 1.0}))
"""


def kill_processes_of(ray_tmpdir: Path) -> None:
    """SIGKILL every process whose environment names ``ray_tmpdir`` (a killed job's own Ray), by pid.

    Its actors run in their own process groups and outlive the job's for a moment (issue 10, item 5):
    this test is about resuming, so the whole job must be gone before the rerun plans.
    """
    marker = f"RAY_TMPDIR={ray_tmpdir}".encode()
    deadline = time.monotonic() + 30
    while True:
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to read
                continue
        if not pids:
            return
        assert time.monotonic() < deadline, f"processes of the killed job survive: {pids}"
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def test_sigkill_then_rerun_gives_the_same_store(ray_session, encoders, tmp_path: Path) -> None:
    rows = good_corpus(tmp_path / "audio", count=14, seconds=(0.3, 0.9))
    manifest = write_manifest_rows(rows, tmp_path / "m.jsonl")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # The uninterrupted run uses one pool per encoder, the killed one and its rerun the shared pool
    # (the default on CPU): the stores must agree byte for byte across layouts too.
    run_pipeline(config(whole, manifest, storage={"part_seconds": 1.0}, pools="per-encoder"))

    ray_tmpdir = Path(tempfile.mkdtemp(prefix="rayk", dir="/tmp"))  # short: Ray's socket paths live under it
    # This checkout's code first (a PYTHONPATH given to the tests), else the repository's.
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p)
    env = {**os.environ, "PYTHONPATH": path, "RAY_TMPDIR": str(ray_tmpdir)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(killed), str(manifest)], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not list(killed.glob("features/*/*/parts/*/_DONE")):
            assert proc.poll() is None, "the job ended before any part was committed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the job and its own Ray processes, all at once
        proc.wait()
        kill_processes_of(ray_tmpdir)
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    done_at_kill = len(list(killed.glob("features/*/*/parts/*/_DONE")))
    total = len(list(whole.glob("features/*/*/parts/*/_DONE")))
    assert 0 < done_at_kill < total
    assert not verify_store(killed).ok

    summary = run_pipeline(config(killed, manifest, storage={"part_seconds": 1.0}))
    assert sum(summary.encoded.values()) < 2 * summary.clips  # finished parts were not redone
    assert verify_store(killed).ok
    assert tree_digest(killed) == tree_digest(whole)

    # The default float16 store holds the direct encoder outputs within float16 rounding.
    for name, encoder in encoders.items():
        reader = open_features(whole, name, encoder.spec())
        assert reader.spec["store"]["dtype"] == "float16" and len(reader) == len(rows)
        for row in rows:
            clip = decode_clip(row["audio"], None, None, DecodeConfig())
            direct = encoder.encode([clip.at(16000)])[0]
            np.testing.assert_allclose(reader.read(clip.key), direct, rtol=2 ** -10, atol=1e-4)


def test_plan_predicts_alarm_bytes_per_audio_second(tmp_path: Path) -> None:
    from alarm.pipeline.plan import plan_job

    rows = []
    for i, seconds in enumerate((20.0, 40.0)):
        path = write_wav(tmp_path / f"a{i}.wav", tone(seconds, 8000), 8000)
        rows.append({"id": f"a{i}", "audio": str(path), "dataset": "d"})
    rows.append({"id": "cut", "audio": rows[1]["audio"], "dataset": "d", "start": 10.0, "end": 30.0})
    cfg = PipelineConfig(store=str(tmp_path / "s"), manifest=str(write_manifest_rows(rows, tmp_path / "m.jsonl")))
    report = plan_job(cfg)
    assert report.clips == 3 and report.audio_hours == pytest.approx(80 / 3600)
    assert report.bytes_per_audio_second == pytest.approx(1.408e6, rel=1e-3)
    assert report.bytes_per_encoder["muq"] == pytest.approx(80 * 25 * 3 * 1024 * 2, rel=1e-3)
    # Whisper pads every clip to a 30 s window: 3 clips, one of them 40 s long = 4 windows.
    assert report.gpu_hours_per_encoder["whisper"] == pytest.approx(4 * 2.27e12 / (989e12 * 0.35) / 3600)
    cfg.storage.dtype = "int8"
    assert plan_job(cfg).bytes_per_audio_second == pytest.approx(1.408e6 / 2, rel=0.01)


def test_cli_plan_status_verify(ray_session, corpus, tmp_path: Path) -> None:
    from alarm.cli import main

    manifest, _, _ = corpus
    runner = CliRunner()
    result = runner.invoke(main, ["pipeline", "plan", str(manifest)])
    assert result.exit_code == 0, result.output
    assert "6 clips" not in result.output  # plan counts distinct audio+cut, not content
    per_second = float(re.search(r"([0-9.]+) MB per audio-second", result.output).group(1))
    assert per_second == pytest.approx(1.408, abs=0.015)  # short clips lose a partial frame each
    assert "1 too long" in result.output
    store = tmp_path / "store"
    result = runner.invoke(main, ["pipeline", "run", str(manifest), "--store", str(store), "--encoders",
                                  "w2vbert", "--preset", "tiny", "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["pipeline", "status", "--store", str(store)])
    assert result.exit_code == 0 and "6 done, 0 pending" in result.output, result.output
    assert "rejected (truncated): 1" in result.output
    assert runner.invoke(main, ["pipeline", "verify", "--store", str(store)]).exit_code == 0
    index = next(store.glob("features/w2vbert/*/index.parquet"))
    index.unlink()
    result = runner.invoke(main, ["pipeline", "verify", "--store", str(store)])
    assert result.exit_code == 1 and "index.parquet is missing" in result.output
    result = runner.invoke(main, ["pipeline", "run", str(manifest), "--encoders", "nope", "--store", str(store)])
    assert result.exit_code == 2 and "unknown encoder" in result.output
