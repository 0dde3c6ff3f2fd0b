"""Inputs on object storage: manifests, audio and WebDataset shards on a real S3 server (moto).

Each test builds the same tiny corpus on local disk and on S3 and checks that both read and decode
to the same instances and samples, that a missing object is a reject with its reason, and that a
member of a remote shard is read by one ranged GET, never by fetching its shard.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from store_fixtures import good_corpus, tone, write_manifest_rows, write_shard, write_wav

from alarm.pipeline import remote_audio
from alarm.pipeline.audio_source import DecodeError, audio_bytes
from alarm.pipeline.configs import ConfigError
from alarm.pipeline.decode import DecodeConfig, decode_clip, read_samples
from alarm.pipeline.manifest import read_manifest
from alarm.pipeline.objects import open_objects
from alarm.pipeline.probe import probe_duration
from alarm.pipeline.webdataset_input import expand_shards, read_webdataset


def upload(folder: Path, url: str) -> None:
    """Every file under ``folder`` to the same relative keys under ``url``."""
    objects = open_objects(url)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            objects.put_file(path.relative_to(folder).as_posix(), path)


@pytest.fixture
def corpus(tmp_path: Path, s3_url: str) -> tuple[Path, str]:
    """A manifest with relative audio paths (WAV, FLAC, a cut, a missing file, a bad row), local and on S3."""
    folder = tmp_path / "corpus"
    rows = good_corpus(folder / "audio", count=4)
    for row in rows:  # relative to the manifest's folder, as users write them
        row["audio"] = str(Path(row["audio"]).relative_to(folder))
    flac = write_wav(folder / "audio" / "x.flac", tone(1.2, 16000, seed=9), 16000)
    rows += [{"id": "flac", "audio": "audio/x.flac", "dataset": "toy"},
             {"id": "cut", "audio": "audio/x.flac", "dataset": "toy", "start": 0.2, "end": 0.7},
             {"id": "gone", "audio": "audio/nowhere.wav", "dataset": "toy"},
             {"id": "no-dataset", "audio": "audio/x.flac"}]
    assert flac.is_file()
    manifest = write_manifest_rows(rows, folder / "manifest.jsonl")
    upload(folder, f"{s3_url}/corpus")
    return manifest, f"{s3_url}/corpus/manifest.jsonl"


def test_manifest_on_s3_decodes_to_the_same_samples_as_the_local_one(corpus) -> None:
    local_path, url = corpus
    local, remote = read_manifest(local_path), read_manifest(url)
    assert [i.id for i in remote.instances] == [i.id for i in local.instances]
    assert len(remote.rejects) == 1 and "missing field" in remote.rejects[0].reason
    prefix = url.rsplit("/", 1)[0]
    assert remote.rejects_path == f"{prefix}/manifest.rejects.jsonl"  # beside the manifest, on S3
    objects = open_objects(prefix)
    assert json.loads(objects.get("manifest.rejects.jsonl"))["id"] == "no-dataset"
    by_id = {i.id: i for i in local.instances}
    for inst in remote.instances:
        assert inst.audio.startswith(f"{prefix}/audio/")  # relative paths resolve against the URL prefix
        mine = by_id[inst.id]
        if inst.id == "gone":
            with pytest.raises(DecodeError, match=r"^missing: audio object not found: s3://"):
                decode_clip(inst.audio, inst.start, inst.end, DecodeConfig())
            continue
        a, rate_a = read_samples(inst.audio, inst.start, inst.end)
        b, rate_b = read_samples(mine.audio, mine.start, mine.end)
        assert rate_a == rate_b and np.array_equal(a, b)
        assert decode_clip(inst.audio, inst.start, inst.end, DecodeConfig()).key == \
            decode_clip(mine.audio, mine.start, mine.end, DecodeConfig()).key
        assert probe_duration(inst.audio) == probe_duration(mine.audio)


def test_unreachable_store_fails_at_once_in_one_line(corpus, monkeypatch) -> None:
    import socket

    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _, url = corpus
    elsewhere = url.replace("s3://", "s3://unreachable-").replace("/corpus/", "/c/")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        read_manifest(elsewhere)
    assert time.monotonic() - started < 20
    assert "cannot reach s3://unreachable-" in str(err.value) and "\n" not in str(err.value)
    from alarm.cli import main

    result = CliRunner().invoke(main, ["manifest", "check", elsewhere])
    assert result.exit_code == 2 and "cannot reach" in result.output and "Traceback" not in result.output
    monkeypatch.undo()  # the right server, a bucket that does not exist
    with pytest.raises(ConfigError, match=r"^cannot reach s3://no-such-bucket-"):
        read_manifest(f"s3://no-such-bucket-{port}/m.jsonl")
    with pytest.raises(ConfigError, match=r"^cannot reach s3://no-such-bucket-"):
        read_webdataset(f"s3://no-such-bucket-{port}/shards/{{000..001}}.tar")


def test_audio_stat_of_objects_and_files(corpus) -> None:
    from alarm.pipeline.audio_source import audio_stat

    local_path, url = corpus
    prefix = url.rsplit("/", 1)[0]
    size, mtime = audio_stat(f"{prefix}/audio/x.flac")
    assert size == (local_path.parent / "audio" / "x.flac").stat().st_size and mtime > 0
    assert audio_stat(f"{prefix}/audio/nowhere.wav") == (-1, -1)
    assert audio_stat(str(local_path.parent / "audio" / "x.flac"))[0] == size


def test_cli_check_and_stats_accept_a_manifest_url(corpus) -> None:
    from alarm.cli import main

    _, url = corpus
    runner = CliRunner()
    checked = runner.invoke(main, ["manifest", "check", url])
    assert checked.exit_code == 0, checked.output
    assert "1 rejected rows" in checked.output and "manifest.rejects.jsonl" in checked.output
    stats = runner.invoke(main, ["stats", url, "--json"])
    assert stats.exit_code == 0, stats.output
    totals = json.loads(stats.output)["total"]
    assert totals["instances"] == 7 and totals["unreadable"] == 1  # the missing object


def test_probing_remote_audio_reads_its_header_not_the_clip(tmp_path: Path, s3_url: str) -> None:
    from alarm.pipeline.probe import AudioUnreadable

    folder = tmp_path / "long"
    wav = write_wav(folder / "a.wav", tone(20.0, 16000), 16000)
    write_wav(folder / "a.flac", tone(20.0, 16000, seed=2), 16000)
    write_wav(folder / "a.mp3", tone(3.0, 16000, seed=3), 16000, subtype="MPEG_LAYER_III")
    write_shard(folder / "s.tar", [("m0", wav, {"id": "m0", "dataset": "x"})])
    upload(folder, f"{s3_url}/long")
    for name in ("a.wav", "a.flac", "a.mp3", "s.tar#m0.wav"):
        remote_audio.FETCHED.clear()
        local = probe_duration(str(folder / name)) if "#" not in name else 20.0
        assert probe_duration(f"{s3_url}/long/{name}") == pytest.approx(local), name
        if name.endswith((".wav", ".flac")) and "#" not in name:
            # A header, not the 20 s clip: at most two windows, and never a whole-object GET.
            assert remote_audio.FETCHED["get"] == 0, name
            assert remote_audio.FETCHED["bytes"] <= 2 * remote_audio.WINDOW < (folder / name).stat().st_size / 4
    assert remote_audio.FETCHED["bytes"] < wav.stat().st_size / 4  # the member, after its shard's table walk
    with pytest.raises(AudioUnreadable, match="audio object not found: s3://"):
        probe_duration(f"{s3_url}/long/nowhere.wav")
    with pytest.raises(AudioUnreadable, match="no member 'm9.wav'"):
        probe_duration(f"{s3_url}/long/s.tar#m9.wav")


@pytest.fixture
def shards(tmp_path: Path, s3_url: str) -> tuple[Path, str, list[dict]]:
    """Two WebDataset shards (one sample without JSON), local and on S3."""
    good = good_corpus(tmp_path / "clips", count=5, seconds=(1.0, 2.0))
    members = [(f"s{i}", Path(r["audio"]), {"id": f"wds{i}", "dataset": "shards", "metadata": {"n": i}})
               for i, r in enumerate(good[:4])]
    write_shard(tmp_path / "shards" / "000.tar", members[:2])
    write_shard(tmp_path / "shards" / "001.tar", members[2:] + [("nojson", Path(good[4]["audio"]), {})])
    upload(tmp_path / "shards", f"{s3_url}/shards")
    return tmp_path / "shards", f"{s3_url}/shards", good


def _cold(monkeypatch, tmp_path: Path) -> None:
    """A fresh process on a fresh node: no member table in memory or in the local cache."""
    remote_audio._TABLES.clear()
    monkeypatch.setenv("ALARM_CACHE", str(tmp_path / f"cache-{time.monotonic_ns()}"))
    remote_audio.FETCHED.clear()


def test_webdataset_shards_on_s3_give_the_same_instances_and_audio(shards, monkeypatch, tmp_path) -> None:
    folder, url, _ = shards
    local, local_rejects = read_webdataset(str(folder / "{000..001}.tar"))
    assert expand_shards(url) == [f"{url}/000.tar", f"{url}/001.tar"]  # a prefix lists its .tar objects
    _cold(monkeypatch, tmp_path)
    monkeypatch.setattr(remote_audio, "WINDOW", 4096)  # smaller than every audio member
    remote, remote_rejects = read_webdataset(f"{url}/{{000..001}}.tar")
    shard_bytes = sum(p.stat().st_size for p in folder.glob("*.tar"))
    # Listing walked the headers and read the JSON members, skipping the audio: far less than the shards.
    assert remote_audio.FETCHED["get"] == 0 and remote_audio.FETCHED["bytes"] < shard_bytes / 3
    assert remote_rejects == local_rejects
    assert [(i.id, i.dataset, i.metadata) for i in remote] == [(i.id, i.dataset, i.metadata) for i in local]
    assert remote[0].audio == f"{url}/000.tar#s0.wav"
    remote_audio.FETCHED.clear()
    for mine, theirs in zip(local, remote, strict=True):
        assert audio_bytes(theirs.audio) == audio_bytes(mine.audio)
        assert decode_clip(theirs.audio, None, None, DecodeConfig()).key == \
            decode_clip(mine.audio, None, None, DecodeConfig()).key
    # Each member read is one ranged GET of its own bytes (twice: bytes, then decode), the shard never.
    member_bytes = sum(len(audio_bytes(i.audio)) for i in local)
    assert remote_audio.FETCHED["range"] == 2 * len(remote) and remote_audio.FETCHED["get"] == 0
    assert remote_audio.FETCHED["bytes"] == 2 * member_bytes


def test_a_new_process_reuses_the_member_table_or_walks_the_headers(shards, monkeypatch, tmp_path) -> None:
    folder, url, _ = shards
    _cold(monkeypatch, tmp_path)
    monkeypatch.setattr(remote_audio, "WINDOW", 4096)
    first = audio_bytes(f"{url}/001.tar#s2.wav")  # no table anywhere: walk the headers by ranged reads
    assert first == (folder.parent / "clips" / "clip2.wav").read_bytes()
    walked = remote_audio.FETCHED["bytes"] - len(first)
    assert 0 < walked < (folder / "001.tar").stat().st_size / 3
    remote_audio._TABLES.clear()  # another process of the same node: the table from the cache folder
    remote_audio.FETCHED.clear()
    assert audio_bytes(f"{url}/001.tar#s3.wav") == (folder.parent / "clips" / "clip3.wav").read_bytes()
    assert remote_audio.FETCHED["range"] == 1 and remote_audio.FETCHED["head"] == 1
    with pytest.raises(DecodeError, match=r"^missing: no member 'zz.wav'"):
        audio_bytes(f"{url}/001.tar#zz.wav")
    with pytest.raises(DecodeError, match=r"^missing: tar shard not found"):
        audio_bytes(f"{url}/009.tar#s0.wav")
    rows, rejects = read_webdataset([f"{url}/000.tar", f"{url}/009.tar"])
    assert len(rows) == 2 and rejects[0].reason.startswith("tar shard not found")


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_pipeline_run_on_an_s3_manifest_equals_the_local_run(ray_session, corpus, tmp_path) -> None:
    import torch

    from alarm.cli import main
    from alarm.pipeline.job import PipelineConfig, run_pipeline
    from alarm.pipeline.store import open_features

    torch.set_num_threads(1)
    local_path, url = corpus
    local_store, remote_store = tmp_path / "local-store", tmp_path / "s3-store"
    run_pipeline(PipelineConfig(store=str(local_store), manifest=str(local_path), encoders=["whisper"],
                                preset="tiny", progress=False))
    result = CliRunner().invoke(main, ["pipeline", "run", url, "--store", str(remote_store), "--encoders",
                                       "whisper", "--preset", "tiny", "--no-progress"])
    assert result.exit_code == 0, result.output

    def keys(store: Path) -> dict[str, str]:
        return {r["id"]: r["key"] for r in pq.read_table(store / "instances.parquet").to_pylist()}

    assert keys(remote_store) == keys(local_store) and len(keys(local_store)) == 6
    rejects = {r["id"]: r["reason"] for r in pq.read_table(remote_store / "rejects.parquet").to_pylist()}
    assert rejects["gone"].startswith("missing: audio object not found: s3://")
    mine, theirs = open_features(local_store, "whisper"), open_features(remote_store, "whisper")
    assert sorted(theirs.keys()) == sorted(mine.keys())
    for key in mine.keys():
        assert np.array_equal(theirs.read(key, stored=True), mine.read(key, stored=True))
