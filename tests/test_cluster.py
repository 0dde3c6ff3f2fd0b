"""The feature job on a real two-node Ray cluster, and the loss of a node in the middle of a job.

The cluster is two ``ray start`` processes on this machine (``cluster_fixtures``), one CPU each; the
job runs as a user runs it, ``alarm pipeline run --address``, in its own process. Each store is
compared with an embedded run's, part by part: the bytes of every committed part (by part id), each
group's spec and index, and the instance tables. The stores live on a real S3 server (``store_location``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_fixtures import TwoNodeCluster
from store_fixtures import good_corpus, write_manifest_rows

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a cluster start and three jobs: minutes on two busy cores

JOB_SECONDS = 600
# 30 short clips in parts of at most a second: about 25 units, so both nodes' actors get several.
CONFIG = "encoders: [whisper, w2vbert]\npreset: tiny\nprogress: false\nstorage:\n  part_seconds: 1.0\n"


def store_location(tmp_path: Path, name: str) -> str:
    """Where a test's store lives: a new bucket on the session's S3 server (moto, on 127.0.0.1).

    The nodes and the job reach it through the standard AWS variables that conftest set before any
    cluster started; ``tmp_path`` stays in the signature so a local folder is one line away.
    """
    from s3_fixtures import _SERVER

    return f"s3://{_SERVER.bucket()}/{name}"


def committed(location: str) -> dict[str, str]:
    """sha256 of what a store holds for readers: each committed part's files (by part id, whatever
    attempt wrote them), each group's spec and index, and the instance tables."""
    from alarm.pipeline.objects import open_objects
    from alarm.pipeline.store_layout import DONE, part_subdir

    objects = open_objects(location)
    keys = [o.key for o in objects.list()]
    out = {k: hashlib.sha256(objects.get(k)).hexdigest() for k in keys
           if k in ("instances.parquet", "rejects.parquet") or k.endswith(("/spec.json", "/index.parquet"))}
    for marker in (k for k in keys if k.endswith(f"/{DONE}") and "/parts/" in k):
        group, part = marker.split("/parts/")[0], marker.split("/")[-2]
        folder = f"{group}/{part_subdir(part, json.loads(objects.get(marker)))}/"
        for key in keys:
            if key.startswith(folder) and not key.endswith(DONE):
                out[f"{group}/parts/{part}/{key[len(folder):]}"] = hashlib.sha256(objects.get(key)).hexdigest()
    return out


def done_markers(location: str) -> int:
    """Committed parts in the store so far."""
    from alarm.pipeline.objects import open_objects
    from alarm.pipeline.store_layout import DONE

    return sum(o.key.endswith(f"/{DONE}") for o in open_objects(location).list("features"))


def summary_of(location: str) -> dict:
    from alarm.pipeline.objects import open_objects

    return json.loads(open_objects(location).get("summary.json"))


def job_command(manifest: Path, store: str, config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "alarm.cli", "pipeline", "run", str(manifest), "--store", store,
            "--config", str(config), "--no-progress", *extra]


def job_env(base: dict[str, str]) -> dict[str, str]:
    return {**base, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}


@pytest.fixture(scope="module")
def cluster(s3_server) -> Iterator[TwoNodeCluster]:  # the server first: the nodes inherit its variables
    started = TwoNodeCluster()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def job_input(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cluster-input")
    manifest = write_manifest_rows(good_corpus(folder / "audio", count=30, seconds=(0.3, 0.9)),
                                   folder / "manifest.jsonl")
    config = folder / "job.yaml"
    config.write_text(CONFIG)
    return manifest, config


@pytest.fixture(scope="module")
def embedded(job_input: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory, s3_server) -> dict[str, str]:
    """The store of the same job on an embedded Ray of 2 CPUs (the cluster's CPUs: the same kernels)."""
    manifest, config = job_input
    store = store_location(tmp_path_factory.mktemp("embedded"), "store")
    ray_tmp = tempfile.mkdtemp(prefix="raye", dir="/tmp")  # short: Ray's socket paths live under it
    env = job_env({k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": ray_tmp})
    try:
        out = subprocess.run(job_command(manifest, store, config, "--num-cpus", "2"), env=env,
                             capture_output=True, text=True, timeout=JOB_SECONDS)
    finally:
        subprocess.run(["rm", "-rf", ray_tmp], check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return committed(store)


def test_a_job_on_two_nodes_uses_both_and_equals_an_embedded_run(cluster, job_input, embedded, tmp_path):
    manifest, config = job_input
    store = store_location(tmp_path, "store")
    out = subprocess.run(job_command(manifest, store, config, "--address", cluster.address),
                         env=job_env(cluster.env), capture_output=True, text=True, timeout=JOB_SECONDS)
    assert out.returncode == 0, out.stderr[-3000:]
    ids = cluster.node_ids()
    nodes = summary_of(store)["nodes"]
    assert set(nodes) == {ids["head"], ids["worker"]}, nodes
    assert all(n["parts"] > 0 for n in nodes.values()), nodes
    parts = [k for k in committed(store) if k.endswith("/clips.parquet")]
    assert sum(n["parts"] for n in nodes.values()) == len(parts)
    assert sum(n["clips"] for n in nodes.values()) == 2 * 30  # two encoders, every clip once
    assert "nodes: 2 wrote parts: " in out.stdout
    assert committed(store) == embedded


def _process_on(node: object, title: bytes) -> bool:
    """Whether a process of ``node`` has ``title`` in its command line (Ray titles a worker by what it runs)."""
    for pid in node.pids():
        try:
            if title in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def test_losing_a_node_mid_job_finishes_on_the_other_and_equals_an_embedded_run(cluster, job_input, embedded,
                                                                                  tmp_path):
    """SIGKILL the worker node's raylet while its actor encodes a unit: its processes go, the head's
    actor takes the lost unit over, and the job ends with the store an embedded run writes."""
    from alarm.pipeline.verify import verify_store

    manifest, config = job_input
    store = store_location(tmp_path, "store")
    ids = cluster.node_ids()
    log = tmp_path / "job.log"
    with open(log, "w") as out:
        job = subprocess.Popen(job_command(manifest, store, config, "--address", cluster.address),
                               env=job_env(cluster.env), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + JOB_SECONDS
            # The shared pool's actor there is in the middle of a unit (Ray titles it by the method).
            while not (_process_on(cluster.worker, b"SharedEncodeStage.__call__") and done_markers(store)):
                assert job.poll() is None, f"the job ended before the worker node encoded: {log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "the worker node never took a unit"
                time.sleep(0.05)
            os.kill(cluster.worker.raylet_pid(), signal.SIGKILL)
            assert job.wait(JOB_SECONDS) == 0, log.read_text()[-3000:]
            assert "an encoder actor was lost while computing part" in log.read_text()
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
    deadline = time.monotonic() + 120  # the head marks the node dead after missed heartbeats
    while (alive := {n["id"]: n["alive"] for n in cluster.node_table()})[ids["worker"]]:
        assert time.monotonic() < deadline, alive
        time.sleep(2)
    assert alive == {ids["head"]: True, ids["worker"]: False}
    nodes = summary_of(store)["nodes"]
    assert nodes[ids["head"]]["parts"] > 0 and set(nodes) <= {ids["head"], ids["worker"]}, nodes
    assert committed(store) == embedded
    assert verify_store(store).ok


def test_per_encoder_pools_that_lose_a_node_say_so_and_a_rerun_finishes(cluster, job_input, embedded, tmp_path):
    """One Ray Data actor pool per encoder: Ray restarts a lost actor only where there is room, and a
    one-CPU head has none. The job warns that it waits; stopped and run again on the nodes left, it
    resumes and ends with the store an embedded run writes."""
    manifest, config = job_input
    per_encoder = tmp_path / "per-encoder.yaml"
    per_encoder.write_text(config.read_text() + "pools: per-encoder\nstall_warning_seconds: 15\n")
    store = store_location(tmp_path, "store")
    worker = cluster.add_worker()  # the previous test's worker node is gone
    log = tmp_path / "job.log"
    with open(log, "w") as out:
        job = subprocess.Popen(job_command(manifest, store, per_encoder, "--address", cluster.address),
                               env=job_env(cluster.env), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + JOB_SECONDS
            while not (_process_on(worker, b"EncodeStage") and done_markers(store)):
                assert job.poll() is None, f"the job ended before the worker node encoded: {log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "the worker node never took a unit"
                time.sleep(0.05)
            os.kill(worker.raylet_pid(), signal.SIGKILL)
            while "no part finished for" not in log.read_text():
                assert job.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no warning that the job waits for the lost node's actors"
                time.sleep(1)
        finally:
            job.kill()
            job.wait()
    assert "(add a node), or stop the job and run it again on the nodes left" in log.read_text()
    before = done_markers(store)
    again = subprocess.run(job_command(manifest, store, config, "--address", cluster.address, "--pools", "shared"),
                           env=job_env(cluster.env), capture_output=True, text=True, timeout=JOB_SECONDS)
    assert again.returncode == 0, again.stderr[-3000:]
    assert before < done_markers(store)
    assert committed(store) == embedded
