"""Feature stores on object storage (a real S3 server): reads equal the local store's in both part
layouts, the bounded part cache evicts least recently used files and serves a second pass without a
request, and a damaged remote part is refused."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from remote_store_fixtures import to_attempt_layout, to_flat_layout, upload_tree, write_parts

from alarm.pipeline.objects import open_objects
from alarm.pipeline.part_cache import PartCache
from alarm.pipeline.store import DamagedPartError, open_features

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "store-v1"


def read_all(reader, keys=None) -> dict[str, bytes]:
    return {k: reader.read(k, stored=True).tobytes() for k in (keys or reader.keys())}


@pytest.mark.parametrize("layout", ["flat", "attempt"])
def test_remote_reads_equal_local_reads(tmp_path: Path, s3_url: str, layout: str) -> None:
    # The store the feature job wrote (tiny whisper and MuQ) and a many-part toy store, both as-is and
    # with their parts under attempt prefixes.
    store = shutil.copytree(FIXTURE, tmp_path / "store")
    write_parts(store, parts=3, dtype="int8")
    if layout == "attempt":
        to_attempt_layout(store)
        assert not (next(store.glob("features/muq/*/parts/*")) / "clips.parquet").exists()
    else:
        to_flat_layout(store)
        assert all((p.parent / "clips.parquet").is_file() for p in store.glob("features/*/*/parts/*/_DONE"))
    upload_tree(store, s3_url)
    cache = PartCache(tmp_path / "cache", 10**9)
    for encoder in ("whisper", "muq", "toy"):
        local, remote = open_features(store, encoder), open_features(s3_url, encoder, cache=cache)
        assert remote.keys() == local.keys() and remote.spec_id == local.spec_id
        assert (remote.layers, remote.dim, remote.dtype) == (local.layers, local.dim, local.dtype)
        assert read_all(remote) == read_all(local)
        for key in local.keys():  # dequantised reads too
            assert np.array_equal(remote.read(key), local.read(key))
            assert remote.part_of(key) == local.part_of(key)
    assert cache.stats.misses > 0 and cache.size() == cache.stats.downloaded_bytes


def test_compressed_remote_store_reads_through_pinned_files(tmp_path: Path, s3_url: str) -> None:
    data = write_parts(tmp_path / "store", parts=2, dtype="float32", compressor="zstd")
    upload_tree(tmp_path / "store", s3_url)
    cache = PartCache(tmp_path / "cache", 10**9)
    remote = open_features(s3_url, "toy", cache=cache)
    for key, value in data.items():
        np.testing.assert_array_equal(remote.read(key), value)
    assert len(list((tmp_path / "cache" / "pinned").iterdir())) == 2  # one folder per part opened


def test_cache_evicts_least_recently_used_and_stays_under_its_limit(tmp_path: Path, s3_url: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import alarm.pipeline.store

    monkeypatch.setattr(alarm.pipeline.store, "OPEN_REMOTE_PARTS", 2)  # open files hold evicted ones on disk
    data = write_parts(tmp_path / "store", parts=4, dtype="float32")
    upload_tree(tmp_path / "store", s3_url)
    big = PartCache(tmp_path / "big", 10**9)
    everything = read_all(open_features(s3_url, "toy", cache=big))
    limit = big.size() * 2 // 5
    small = PartCache(tmp_path / "small", limit)
    reader = open_features(s3_url, "toy", cache=small)
    for key in reader.keys():
        assert reader.read(key, stored=True).tobytes() == everything[key]
        assert 0 < small.size() <= limit and len(reader._arrays) <= 2
    assert small.stats.evicted > 0
    # What is left is what was used last: the last part's files are all there, the first part's gone.
    last = reader.files.part(reader.part_of(reader.keys()[-1]).rsplit("/", 1)[-1])
    first = reader.files.part(reader.part_of(reader.keys()[0]).rsplit("/", 1)[-1])
    held = {p.name for _, _, p in small.files()}
    def entries(part):
        return {small.entry(part.objects.url, f"{part.subdir}/{rel}", c).name for rel, c in part.marker["files"].items()}
    assert entries(last) <= held
    assert not (entries(first) & held)
    assert set(data) == set(reader.keys())


def test_a_second_pass_with_room_makes_no_request(tmp_path: Path, s3_url: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    write_parts(tmp_path / "store", parts=3)
    upload_tree(tmp_path / "store", s3_url)
    cache = PartCache(tmp_path / "cache", 10**9)
    reader = open_features(s3_url, "toy", cache=cache)
    first = read_all(reader)
    blob = pickle.dumps(reader)  # what a DataLoader worker of the next epoch gets: nothing opened
    again = pickle.loads(blob)
    assert read_all(again) == first
    assert again.files.cache.stats.misses == 0 and again.files.cache.stats.hits > 0
    # Stronger: with the server unreachable (the client is rebuilt in the new process), every read still works.
    with socket_closed() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        offline = pickle.loads(blob)
        assert read_all(offline) == first


class socket_closed:
    """An endpoint URL on which nothing listens."""

    def __enter__(self) -> str:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return f"http://127.0.0.1:{sock.getsockname()[1]}"

    def __exit__(self, *exc) -> None:
        return None


def _read_in_child(args: tuple[bytes, list[str]]) -> dict[str, bytes]:
    reader = pickle.loads(args[0])
    return read_all(reader, args[1])


def test_worker_processes_share_a_small_cache(tmp_path: Path, s3_url: str) -> None:
    write_parts(tmp_path / "store", parts=4)
    upload_tree(tmp_path / "store", s3_url)
    expected = read_all(open_features(tmp_path / "store", "toy"))
    keys = sorted(expected)
    cache = PartCache(tmp_path / "cache", 20_000)  # a few files: the workers evict each other's
    blob = pickle.dumps(open_features(s3_url, "toy", cache=cache))
    orders = [keys, keys[::-1], keys[1::2] + keys[::2]]
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(_read_in_child, [(blob, order) for order in orders])
    assert all(r == {k: expected[k] for k in order} for r, order in zip(results, orders, strict=True))
    assert cache.size() <= 20_000
    assert not list((tmp_path / "cache" / "tmp").rglob("*.*"))


def test_a_killed_download_is_never_served(tmp_path: Path, s3_url: str) -> None:
    write_parts(tmp_path / "store", parts=1, dtype="float32")
    upload_tree(tmp_path / "store", s3_url)
    cache = PartCache(tmp_path / "cache", 10**9)
    reader = open_features(s3_url, "toy", cache=cache)
    part = reader.files.part("part-000")
    rel = next(r for r in part.marker["files"] if r.startswith("features/c/"))
    entry = cache.entry(part.objects.url, f"{part.subdir}/{rel}", part.marker["files"][rel])
    # A download killed half-way left its temporary file (its process is gone): never read, then cleared.
    child = multiprocessing.get_context("spawn").Process(target=os.getpid)
    child.start()
    child.join()
    leftover = tmp_path / "cache" / "tmp" / str(child.pid) / f"{entry.name}.deadbeef"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a shard")
    expected = read_all(open_features(tmp_path / "store", "toy"))
    assert read_all(reader) == expected
    assert entry.is_file() and not leftover.parent.exists()


def test_a_damaged_remote_part_is_refused(tmp_path: Path, s3_url: str) -> None:
    write_parts(tmp_path / "store", parts=2, dtype="float32")
    to_attempt_layout(tmp_path / "store")
    upload_tree(tmp_path / "store", s3_url)
    objects = open_objects(s3_url)
    shard = next(i.key for i in objects.list("features") if "/part-001/" in i.key and "/features/c/" in i.key)
    blob = bytearray(objects.get(shard))
    blob[5] ^= 0xFF
    objects.put(shard, bytes(blob))
    cache = PartCache(tmp_path / "cache", 10**9)
    reader = open_features(s3_url, "toy", cache=cache)
    good = [k for k in reader.keys() if reader.part_of(k).endswith("part-000")]
    bad = [k for k in reader.keys() if reader.part_of(k).endswith("part-001")]
    assert all(reader.read(k).shape[0] == reader.num_frames(k) for k in good)
    with pytest.raises(DamagedPartError, match=r"part toy/\w+/part-001 of store s3://.*is damaged"):
        for key in bad:
            reader.read(key)
    part = reader.files.part("part-001")
    rel = shard.split(f"/{part.subdir}/", 1)[1]
    assert not cache.entry(objects.url, f"features/toy/{reader.spec_id}/{part.subdir}/{rel}",
                           part.marker["files"][rel]).exists()  # the bad download was not kept
    assert not list((tmp_path / "cache" / "tmp").rglob("*.*"))


def test_a_stale_remote_index_is_rebuilt_from_the_committed_parts(tmp_path: Path, s3_url: str) -> None:
    data = write_parts(tmp_path / "store", parts=3, dtype="float32")
    to_attempt_layout(tmp_path / "store")
    upload_tree(tmp_path / "store", s3_url)
    objects = open_objects(s3_url)
    (index_key,) = [i.key for i in objects.list("features") if i.key.endswith("index.parquet")]
    objects.delete(index_key)  # as if the job was killed before writing it
    marker = next(i.key for i in objects.list("features") if i.key.endswith("part-002/_DONE"))
    objects.delete(marker)  # an uncommitted part: invisible
    reader = open_features(s3_url, "toy", cache=PartCache(tmp_path / "cache", 10**9))
    assert reader.keys() == sorted(k for k in data if not k.startswith("p2-"))
    for key in reader.keys():
        np.testing.assert_array_equal(reader.read(key), data[key])


def test_a_wrong_url_or_cache_setting_fails_at_once_in_one_line(tmp_path: Path, s3_server,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from alarm.pipeline.configs import ConfigError
    from alarm.pipeline.part_cache import default_cache

    start = time.perf_counter()
    with pytest.raises(ConfigError, match="cannot reach s3://no-such-bucket-here/store") as err:
        open_features("s3://no-such-bucket-here/store", "toy")
    assert "\n" not in str(err.value) and time.perf_counter() - start < 20
    monkeypatch.setenv("ALARM_PART_CACHE_GB", "lots")
    with pytest.raises(ConfigError, match="ALARM_PART_CACHE_GB must be a number"):
        default_cache()
    monkeypatch.setenv("ALARM_PART_CACHE_GB", "0.5")
    monkeypatch.setenv("ALARM_PART_CACHE", str(tmp_path / "here"))
    assert default_cache() == PartCache(tmp_path / "here", 500_000_000)
    assert default_cache(tmp_path / "there", 2).limit == 2_000_000_000
