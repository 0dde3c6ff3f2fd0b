"""The feature store on object storage (a real S3 server): the job writes it as it writes a folder,
commits parts without rename, holds the store with a lease, and gc removes only abandoned attempts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from store_fixtures import good_corpus, write_manifest_rows
from store_trees import leftovers, markers, store_digest

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.objects import RemoteObjects, open_objects
from alarm.pipeline.part_writer import PartWriter
from alarm.pipeline.store import open_features
from alarm.pipeline.store_fence import read_lease, store_lock, take_lease
from alarm.pipeline.store_gc import collect
from alarm.pipeline.store_layout import (
    DONE,
    FencingError,
    StoreConfig,
    committed_parts,
    group_spec,
    init_group,
)
from alarm.pipeline.verify import store_status, verify_store

REPO = Path(__file__).resolve().parents[1]
CFG = StoreConfig(chunk_frames=8, shard_frames=32)
JOB = ["--encoders", "whisper,w2vbert", "--preset", "tiny", "--num-cpus", "2", "--no-progress"]


def run_cli(*args: str) -> object:
    from alarm.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A manifest of 10 short clips, and the job config that cuts them into parts of 1 s of audio."""
    folder = tmp_path_factory.mktemp("corpus")
    rows = good_corpus(folder / "audio", count=10, seconds=(0.3, 0.9))
    config = folder / "job.yaml"
    config.write_text("storage:\n  part_seconds: 1.0\ntorch_threads: 1\n")
    return write_manifest_rows(rows, folder / "m.jsonl"), config


@pytest.fixture(scope="module")
def local_store(corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store a clean local run writes: what every S3 run must equal."""
    manifest, config = corpus
    store = tmp_path_factory.mktemp("local") / "store"
    result = run_cli("pipeline", "run", str(manifest), "--store", str(store), "--config", str(config), *JOB)
    assert result.exit_code == 0, result.output
    return store


def toy_writer(group: str, part: str, fence: str | None, seed: int = 0) -> PartWriter:
    writer = PartWriter(group, part, 10, 2, 4, CFG, fence=fence)
    writer.append(f"k{seed}", np.random.default_rng(seed).standard_normal((10, 2, 4)).astype(np.float32), 0.2)
    return writer


# ------------------------------------------------------------------------------------------ the job


def check_run_equals_local(corpus, local_store: Path, url: str) -> None:  # noqa: ANN001 - the fixture's tuple
    """What every object store must give (the S3 test checks more): the job's store on ``url`` equals a
    local run by digest and clip by clip, leaves nothing behind, releases its lease, and a rerun writes nothing."""
    manifest, config = corpus
    result = run_cli("pipeline", "run", str(manifest), "--store", url, "--config", str(config), *JOB)
    assert result.exit_code == 0, result.output
    assert store_digest(url) == store_digest(local_store) and leftovers(url) == []
    assert open_objects(url).head(".lease") is None  # taken with put_new, renewed conditionally, released
    assert verify_store(url).ok
    for encoder in ("whisper", "w2vbert"):
        mine, theirs = open_features(local_store, encoder), open_features(url, encoder)
        assert sorted(theirs.keys()) == sorted(mine.keys()) and len(mine.keys()) > 0
        for key in mine.keys():
            assert np.array_equal(theirs.read(key, stored=True), mine.read(key, stored=True))
    # A rerun sees every part's marker (through the store's listing) and writes nothing.
    result = run_cli("pipeline", "run", str(manifest), "--store", url, "--config", str(config), *JOB, "--json")
    assert result.exit_code == 0 and '"bytes_written": {\n    "whisper": 0,\n    "w2vbert": 0' in result.output


def check_big_file_round_trip(objects, tmp_path: Path):  # noqa: ANN001, ANN201 - an Objects; its ObjectInfo
    """A 12 MiB file (above obstore's 5 MiB chunks, so it goes up in parts) comes back whole and by range."""
    source = tmp_path / "big.bin"
    source.write_bytes(np.random.default_rng(0).bytes(12 * 2**20))
    objects.put_file("big.bin", source)
    info = objects.head("big.bin")
    assert info.size == source.stat().st_size
    objects.get_file("big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    assert objects.get_range("big.bin", 6 * 2**20, 6 * 2**20 + 5) == source.read_bytes()[6 * 2**20:6 * 2**20 + 5]
    return info


def test_run_to_s3_equals_a_local_run_byte_for_byte(corpus, local_store: Path, s3_url: str) -> None:
    manifest, config = corpus
    result = run_cli("pipeline", "run", str(manifest), "--store", s3_url, "--config", str(config), *JOB)
    assert result.exit_code == 0, result.output
    assert f"summary: {s3_url}/summary.json" in result.output
    want = store_digest(local_store)
    assert any("/parts/" in k and k.endswith("clips.parquet") for k in want)
    assert store_digest(s3_url) == want  # spec.json, parts' arrays and clip tables by part id, index, tables
    assert leftovers(s3_url) == []
    objects = open_objects(s3_url)
    assert objects.head(".lease") is None  # released at the end
    assert {"summary.json", "report.json", "report.md"} <= {i.key for i in objects.list() if "/" not in i.key}
    assert verify_store(s3_url).ok
    status = store_status(s3_url)
    assert {g["done"] for g in status["groups"].values()} == {status["clips"]} and status["clips"] > 0
    # The commands that read a store take the URL too.
    for command in (["verify"], ["verify", "--quick"], ["status"]):
        result = run_cli("pipeline", *command, "--store", s3_url)
        assert result.exit_code == 0, result.output
    # A rerun finds everything committed and writes no part.
    before = markers(s3_url)
    result = run_cli("pipeline", "run", str(manifest), "--store", s3_url, "--config", str(config), *JOB, "--json")
    assert result.exit_code == 0 and '"bytes_written": {\n    "whisper": 0,\n    "w2vbert": 0' in result.output
    assert markers(s3_url) == before


def test_repair_recomputes_a_damaged_part_on_s3(corpus, local_store: Path, s3_url: str) -> None:
    from remote_store_fixtures import upload_tree

    manifest, config = corpus
    upload_tree(local_store, s3_url)
    objects = open_objects(s3_url)
    shards = sorted(i.key for i in objects.list("features/whisper")
                    if "/parts/" in i.key and i.key.endswith("/features/c/0/0/0"))
    assert len(shards) >= 2
    damaged = shards[1].split("/parts/", 1)[1].split("/", 1)[0]
    data = bytearray(objects.get(shards[1]))
    data[100] ^= 0xFF  # a byte of the first stored chunk (the shard index is at the end)
    objects.put(shards[1], bytes(data))
    assert [parts for name, parts in verify_store(s3_url).damaged.items() if name.startswith("whisper/")] == [[damaged]]
    result = run_cli("pipeline", "repair", str(manifest), "--store", s3_url, "--config", str(config), *JOB)
    assert result.exit_code == 0, result.output
    assert f"1 damaged part(s): {damaged}" in result.output and f"whisper: recomputed 1 part(s): {damaged}" in result.output
    assert verify_store(s3_url).ok
    assert store_digest(s3_url) == store_digest(local_store)  # the recomputed part has the undamaged bytes
    assert objects.head(".lease") is None


KILL_SCRIPT = """
import sys
from alarm.cli import main
sys.argv = ["alarm", "pipeline", "run", sys.argv[1], "--store", sys.argv[2], "--config", sys.argv[3],
            "--encoders", "whisper,w2vbert", "--preset", "tiny", "--num-cpus", "2", "--no-progress"]
main()
"""


def kill_processes_of(ray_tmpdir: Path) -> None:
    """SIGKILL every process whose environment names ``ray_tmpdir`` (the killed job's own Ray), by pid."""
    marker = f"RAY_TMPDIR={ray_tmpdir}".encode()
    for _ in range(300):
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    raise AssertionError("processes of the killed job survive")


def test_sigkill_then_rerun_on_s3_gives_the_same_objects(corpus, local_store: Path, s3_url: str) -> None:
    manifest, config = corpus
    objects = open_objects(s3_url)
    ray_tmpdir = Path(tempfile.mkdtemp(prefix="rays", dir="/tmp"))
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p)  # this checkout's code
    env = {**os.environ, "PYTHONPATH": path, "RAY_TMPDIR": str(ray_tmpdir)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(manifest), s3_url, str(config)], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    try:
        while not any(i.key.endswith("/" + DONE) for i in objects.list("features")):
            assert proc.poll() is None, "the job ended before any part was committed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kill_processes_of(ray_tmpdir)
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    at_kill = markers(s3_url)
    total = sum(1 for k in store_digest(local_store) if k.endswith("/" + DONE))
    assert 0 < len(at_kill) < total
    assert read_lease(objects)[0] is not None  # the killed job's lease is still there

    # The rerun takes over the dead job's lease (its holder, on this host, is gone) and finishes, with
    # one pool per encoder (the GPU layout) this time: the objects must not depend on the layout.
    result = run_cli("pipeline", "run", str(manifest), "--store", s3_url, "--config", str(config), *JOB,
                     "--pools", "per-encoder")
    assert result.exit_code == 0, result.output
    after = markers(s3_url)
    assert {p: after[p] for p in at_kill} == at_kill  # no part committed before the kill was written again
    assert store_digest(s3_url) == store_digest(local_store)
    assert verify_store(s3_url).ok
    # What the killed writers left (attempts without a marker) goes with gc; the store stays the same.
    result = run_cli("pipeline", "gc", s3_url, "--grace", "0")
    assert result.exit_code == 0 and "removed:" in result.output, result.output
    assert leftovers(s3_url) == [] and store_digest(s3_url) == store_digest(local_store)


def test_second_job_on_an_s3_store_is_refused(corpus, s3_url: str) -> None:
    manifest, config = corpus
    with store_lock(s3_url, seconds=60) as token:
        result = run_cli("pipeline", "run", str(manifest), "--store", s3_url, "--config", str(config), *JOB)
        assert result.exit_code == 2
        line = result.output.strip()
        assert "\n" not in line and f"another job is writing the store {s3_url}" in line and "until" in line
        assert read_lease(open_objects(s3_url))[0]["token"] == token  # the holder's lease is untouched
        init_group(s3_url, "toy", group_spec({"encoder": "toy"}, CFG), 2, 4, 50.0)
        assert "another job" in run_cli("pipeline", "gc", s3_url).output  # gc waits for the job too


def test_bad_url_fails_at_once_with_one_line(corpus, s3_server) -> None:
    manifest, config = corpus
    start = time.monotonic()
    result = run_cli("pipeline", "run", str(manifest), "--store", "s3://no-such-bucket-anywhere/x", *JOB)
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "cannot reach s3://no-such-bucket-anywhere/x" in result.output
    assert time.monotonic() - start < 30


# ------------------------------------------------------------------------------------ lease and fencing


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path: Path) -> str:
    return str(tmp_path / "store") if request.param == "local" else request.getfixturevalue("s3_url")


def test_an_expired_lease_cannot_commit(root: str) -> None:
    lease = take_lease(root, seconds=1.0, renew=False)  # a job that stopped renewing (paused, cut off)
    group = init_group(root, "toy", group_spec({"encoder": "toy"}, CFG), 2, 4, 50.0)
    writer = toy_writer(group, "p0", lease.token)
    time.sleep(1.5)
    with pytest.raises(FencingError, match="expired"):
        writer.commit()
    objects = open_objects(group)
    assert committed_parts(group) == [] and objects.list("parts/p0") == []  # no marker, no attempt
    # Another job takes the lapsed lease over; the old one can neither renew nor commit.
    with store_lock(root, seconds=30) as token:
        with pytest.raises(FencingError):
            lease.renew()
        with pytest.raises(FencingError, match="refused"):
            toy_writer(group, "p0", lease.token).commit()
        toy_writer(group, "p0", token).commit()
        assert committed_parts(group) == ["p0"]


def test_a_renewed_lease_outlives_its_duration(root: str) -> None:
    with store_lock(root, seconds=1.0) as token:
        group = init_group(root, "toy", group_spec({"encoder": "toy"}, CFG), 2, 4, 50.0)
        time.sleep(2.5)  # more than twice the duration: only renewal keeps it
        toy_writer(group, "p0", token).commit()
        assert committed_parts(group) == ["p0"]
    assert read_lease(open_objects(root))[0] is None


def test_a_twin_attempt_keeps_the_first_marker(root: str, monkeypatch) -> None:
    group = init_group(root, "toy", group_spec({"encoder": "toy"}, CFG), 2, 4, 50.0)
    first, twin, late = (toy_writer(group, "p0", None) for _ in range(3))
    assert first.commit().bytes > 0
    won = markers(root)
    assert late.commit().bytes == 0  # sees the marker before uploading anything
    # A twin that uploaded its attempt meanwhile loses the conditional create and deletes its attempt.
    monkeypatch.setattr(twin.objects, "exists", lambda key: False)
    assert twin.commit().bytes == 0
    assert markers(root) == won and leftovers(root) == []


def test_a_failing_request_leaves_the_part_uncommitted(s3_url: str, monkeypatch) -> None:
    group = init_group(s3_url, "toy", group_spec({"encoder": "toy"}, CFG), 2, 4, 50.0)
    writer = toy_writer(group, "p0", None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the store goes away mid-job
    writer.objects = RemoteObjects(str(group), retry={"max_retries": 1, "retry_timeout": __import__(
        "datetime").timedelta(seconds=2)})
    with pytest.raises(Exception):  # noqa: B017 - whatever the client raises after its retries
        writer.commit()
    monkeypatch.undo()
    assert committed_parts(group) == []
    toy_writer(group, "p0", None).commit()  # the rerun's writer finishes it
    assert committed_parts(group) == ["p0"]


# ---------------------------------------------------------------------------------------------- gc


def test_gc_removes_only_abandoned_attempts_older_than_grace(root: str) -> None:
    group = init_group(root, "toy", group_spec({"encoder": "toy"}, CFG), 2, 4, 50.0)
    toy_writer(group, "p0", None).commit()
    toy_writer(group, "p1", None, seed=1).commit()
    objects = open_objects(group)
    objects.delete(f"parts/p1/{DONE}")  # a writer killed before its marker
    for info in objects.list("parts/p0"):  # and an abandoned attempt beside a committed part
        if not info.key.endswith(DONE):
            rel = info.key.split("/", 3)[3]
            objects.put(f"parts/p0/0123456789abcdef/{rel}", objects.get(info.key))
    committed = store_digest(root)
    assert len(leftovers(root)) > 0
    assert collect(root, grace_seconds=3600).removed == []  # all younger than an hour
    dry = collect(root, grace_seconds=0, dry_run=True)
    assert dry.attempts == 2 and len(leftovers(root)) > 0
    result = run_cli("pipeline", "gc", root, "--grace", "0")
    assert result.exit_code == 0, result.output
    assert "removed: 2 abandoned attempt(s)" in result.output
    assert leftovers(root) == [] and store_digest(root) == committed  # the committed part is whole
    assert committed_parts(group) == ["p0"] and objects.list("parts/p1") == []
    with pytest.raises(ConfigError, match="not a duration"):
        from alarm.pipeline.store_gc import parse_seconds

        parse_seconds("soon")


def test_a_client_error_in_a_workers_chain_is_reported_in_one_line(s3_server, monkeypatch) -> None:
    from datetime import timedelta

    from alarm.pipeline.job import _request_error

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    dead = RemoteObjects("s3://some-bucket/store", retry={"max_retries": 0, "retry_timeout": timedelta(seconds=2)})
    try:
        try:
            dead.put("x", b"1")
        except Exception as err:  # as a worker's error reaches the driver: wrapped in another
            raise RuntimeError("worker failed") from err
    except RuntimeError as wrapped:
        line = _request_error(wrapped)
    assert line is not None and "\n" not in line and "127.0.0.1:9" in line
    assert _request_error(RuntimeError("not a client error")) is None
