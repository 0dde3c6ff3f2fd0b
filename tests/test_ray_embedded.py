"""Which Ray the jobs use: their own embedded one by default, even beside a running cluster.

A real second cluster (``ray start --head``) runs under its own temp dir and ports and is stopped by
its process group; its GCS is then asked which jobs and actors it saw. Also: a rerun with nothing to
compute starts no Ray and loads no model (the encoder facts come from their cache).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_servers import free_port
from store_fixtures import good_corpus, write_manifest_rows

from alarm.pipeline.job import PipelineConfig, run_pipeline

# Asks a cluster's GCS which jobs (by driver pid) and actors it has seen; the asking driver is a job too.
_PROBE = """
import json, sys, ray
from ray._private import state
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
print(json.dumps({"drivers": [j.get("DriverPid") for j in state.jobs()], "actors": len(state.actors())}))
"""


class ForeignCluster:
    """A cluster started with ``ray start --head --block`` in its own session (one process group)."""

    def __init__(self) -> None:
        # Short: Ray's unix socket paths live under it and must stay under ~107 characters.
        self.tmp = Path(tempfile.mkdtemp(prefix="rayf", dir="/tmp"))
        ports = {flag: free_port() for flag in ("port", "node-manager-port", "object-manager-port",
                                                   "dashboard-port", "dashboard-agent-listen-port",
                                                   "dashboard-agent-grpc-port", "runtime-env-agent-port",
                                                   "metrics-export-port")}
        ray_cli = Path(sys.executable).parent / "ray"
        cmd = [str(ray_cli), "start", "--head", "--block", f"--temp-dir={self.tmp / 'ray'}", "--num-cpus=1",
               "--include-dashboard=false", "--disable-usage-stats", *(f"--{k}={v}" for k, v in ports.items())]
        self.log = open(self.tmp / "start.log", "w")  # noqa: SIM115 (closed in stop)
        env = dict(os.environ, RAY_TMPDIR=str(self.tmp))
        self.proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=self.log, stderr=subprocess.STDOUT)
        address_file = self.tmp / "ray" / "ray_current_cluster"
        deadline = time.monotonic() + 120
        while not address_file.is_file() or not address_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"ray start failed: {(self.tmp / 'start.log').read_text()[-2000:]}")
            time.sleep(0.2)
        self.address = address_file.read_text().strip()

    def seen(self) -> dict:
        """Driver pids of every job the cluster has seen (the probe's among them) and its actor count."""
        out = subprocess.run([sys.executable, "-c", _PROBE, self.address], capture_output=True, text=True,
                             timeout=120, env=dict(os.environ, RAY_TMPDIR=str(self.tmp)))
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        """End the cluster by its process group (the ``ray start`` process leads it), never ``ray stop``."""
        pgid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                os.killpg(pgid, 0)  # members of the group may outlive its leader
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def foreign() -> Iterator[ForeignCluster]:
    import ray

    assert not ray.is_initialized(), "a previous test left its Ray running"
    cluster = ForeignCluster()
    # Ray finds a running cluster through ray_current_cluster under RAY_TMPDIR: the jobs below see this one.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", str(cluster.tmp))
        try:
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    return write_manifest_rows(good_corpus(folder, count=3), folder / "manifest.jsonl")


def _config(store: Path, manifest: Path, **kw: object) -> PipelineConfig:
    return PipelineConfig(store=str(store), manifest=str(manifest), encoders=["whisper"], preset="tiny",
                          progress=False, **kw)


def _record_gcs_at_shutdown(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The GCS address of every Ray session this process shuts down (the job ends its own)."""
    import ray

    seen: list[str] = []
    shutdown = ray.shutdown

    def record(*args: object, **kwargs: object) -> None:
        if ray.is_initialized():
            seen.append(ray.get_runtime_context().gcs_address)
        shutdown(*args, **kwargs)

    monkeypatch.setattr(ray, "shutdown", record)
    return seen


def test_job_starts_its_own_ray_beside_a_running_cluster(foreign, manifest, tmp_path, monkeypatch, capfd):
    import ray

    gcs = _record_gcs_at_shutdown(monkeypatch)
    summary = run_pipeline(_config(tmp_path / "store", manifest))
    assert summary.encoded == {"whisper": 3}
    assert not ray.is_initialized()  # its own Ray ended with it
    assert gcs and gcs[0] != foreign.address
    seen = foreign.seen()
    assert os.getpid() not in seen["drivers"] and seen["actors"] == 0, seen
    # Ray's token notice is silenced (it printed once per job).
    assert "Token authentication is enabled" not in "".join(capfd.readouterr())


def test_address_auto_joins_the_running_cluster(foreign, manifest, tmp_path, monkeypatch):
    import ray

    gcs = _record_gcs_at_shutdown(monkeypatch)
    summary = run_pipeline(_config(tmp_path / "store", manifest, address="auto"))
    assert summary.encoded == {"whisper": 3}
    assert not ray.is_initialized()
    assert gcs == [foreign.address]
    seen = foreign.seen()
    assert os.getpid() in seen["drivers"] and seen["actors"] >= 1, seen


def test_engine_pool_starts_its_own_ray_beside_a_running_cluster(foreign, tiny_qwen3_dir, monkeypatch):
    import ray

    from alarm.rephrase.engines import EngineConfig
    from alarm.rephrase.pool import EnginePool

    gcs = _record_gcs_at_shutdown(monkeypatch)
    pool = EnginePool(EngineConfig(name="transformers", model=str(tiny_qwen3_dir), workers=1,
                                   cpus_per_worker=0.25))
    assert ray.get_runtime_context().gcs_address != foreign.address
    pool.close()
    assert not ray.is_initialized() and gcs and gcs[0] != foreign.address


def test_rerun_with_nothing_to_do_starts_no_ray_and_loads_no_model(manifest, tmp_path, monkeypatch):
    import ray

    import alarm.pipeline.cluster
    import alarm.pipeline.encoders

    store = tmp_path / "store"
    first = run_pipeline(_config(store, manifest))
    assert first.encoded == {"whisper": 3} and not ray.is_initialized()

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a rerun with nothing to compute must not start Ray or build an encoder")

    monkeypatch.setattr(alarm.pipeline.cluster, "init_ray", forbidden)
    monkeypatch.setattr(alarm.pipeline.encoders, "build_encoder", forbidden)
    again = run_pipeline(_config(store, manifest))
    assert not ray.is_initialized()
    timing = ("stage_seconds", "throughput", "wall_seconds")
    expected = {k: v for k, v in first.to_dict().items() if k not in timing}
    expected.update(encoded={"whisper": 0}, skipped={"whisper": 3}, bytes_written={"whisper": 0}, nodes={})
    assert {k: v for k, v in again.to_dict().items() if k not in timing} == expected


def test_new_audio_starts_the_actors_before_keying_and_missing_files_do_not(tmp_path, monkeypatch):
    """With the encoders' facts cached, the actors still load their models while new audio is keyed
    (keying's threads start first, then Ray and the actors, from inside keying); a source whose file is
    missing is no new work."""
    import json

    import ray

    import alarm.pipeline.sources as sources

    folder = tmp_path / "corpus"
    rows = good_corpus(folder, count=4)
    store = tmp_path / "store"
    run_pipeline(_config(store, write_manifest_rows(rows[:2], tmp_path / "a.jsonl")))  # facts now cached

    seen = []
    real = sources._key_todo

    def spy(todo, cfg, start_workers=None):  # (Ray up before keying, workers to start, Ray up after it)
        before = ray.is_initialized()
        keyed = real(todo, cfg, start_workers)
        seen.append((before, start_workers is not None, ray.is_initialized()))
        return keyed

    monkeypatch.setattr(sources, "_key_todo", spy)
    more = run_pipeline(_config(store, write_manifest_rows(rows, tmp_path / "b.jsonl")))
    assert seen == [(False, True, True)] and more.encoded == {"whisper": 2}  # Ray and its actors started while keying

    missing = rows + [{"id": "gone", "audio": str(folder / "gone.wav"), "dataset": "toy"}]
    manifest = tmp_path / "c.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in missing))
    seen.clear()
    again = run_pipeline(_config(store, manifest))
    assert seen == [(False, False, False)] and again.encoded == {"whisper": 0} and not ray.is_initialized()


def test_encoder_facts_cache_follows_the_checkpoint_files(tiny_whisper_dir, tmp_path, monkeypatch):
    from alarm.pipeline.encoders import EncoderConfig
    from alarm.pipeline.encoders.facts import TINY_FOLDERS, _tiny_checkpoint, cached_facts, save_facts

    monkeypatch.setenv("ALARM_CACHE", str(tmp_path / "cache"))
    checkpoint = shutil.copytree(tiny_whisper_dir, tmp_path / "whisper-checkpoint")
    cfg = EncoderConfig(name="whisper", checkpoint=str(checkpoint))
    assert cached_facts(cfg) is None
    save_facts(cfg, {"spec": {"weights_sha256": "abc"}, "layers": 4, "dim": 32})
    assert cached_facts(cfg) is None  # an entry missing a fact (written by older code) is learnt again
    save_facts(cfg, {"spec": {"weights_sha256": "abc"}, "layers": 4, "dim": 32, "frame_rate": 50.0,
                     "sample_rate": 16000, "min_samples": 320})
    assert cached_facts(cfg)["spec"] == {"weights_sha256": "abc"}
    assert cached_facts(EncoderConfig(name="whisper", checkpoint=str(checkpoint), layers=(1,))) is None
    weights = next(checkpoint.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000))
    assert cached_facts(cfg) is None  # new weights (by identity): the facts are learnt again
    # The random preset has no files to identify it: never cached.
    random = EncoderConfig(name="whisper", preset="full-size-random")
    save_facts(random, {"spec": {}})
    assert cached_facts(random) is None
    # The tiny folders are found without importing the builders (torch): same folders as the builders'.
    monkeypatch.undo()
    from alarm.pipeline.encoders.muq import build_tiny_muq
    from alarm.pipeline.encoders.sslam import build_tiny_sslam
    from alarm.pipeline.encoders.tiny import build_tiny_w2vbert, build_tiny_whisper

    builders = {"whisper": build_tiny_whisper, "w2vbert": build_tiny_w2vbert, "muq": build_tiny_muq,
                "sslam": build_tiny_sslam}
    assert set(builders) == set(TINY_FOLDERS)
    for name, build in builders.items():
        assert _tiny_checkpoint(name) == build(), name


def test_an_address_nobody_listens_on_fails_at_once_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from alarm.cli import main

    manifest = write_manifest_rows(good_corpus(tmp_path / "audio", count=1), tmp_path / "m.jsonl")
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["pipeline", "run", str(manifest), "--store", str(tmp_path / "store"),
                                       "--preset", "tiny", "--encoders", "whisper",
                                       "--address", f"127.0.0.1:{free_port()}"])
    assert time.perf_counter() - started < 30  # ray.init alone would retry the address for minutes
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: no Ray cluster answers at 127.0.0.1:")
    assert len(result.output.strip().splitlines()) == 1
