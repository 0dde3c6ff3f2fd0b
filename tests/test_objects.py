"""The objects layer: the same operations, with the same meaning, on a local folder and on a real S3 server."""

from __future__ import annotations

import time

import pytest

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.objects import PreconditionFailed, is_url, join, open_objects


@pytest.fixture(params=["local", "s3"])
def objects(request, tmp_path):
    if request.param == "local":
        return open_objects(tmp_path / "root")
    return open_objects(request.getfixturevalue("s3_url"))


def test_put_get_list_delete(objects, tmp_path):
    objects.put("a/b/one.bin", b"0123456789")
    objects.put("a/two.txt", b"two")
    assert objects.get("a/b/one.bin") == b"0123456789"
    assert objects.get_range("a/b/one.bin", 2, 5) == b"234"
    assert [i.key for i in objects.list("a")] == ["a/b/one.bin", "a/two.txt"]
    assert objects.list_dirs("a") == ["b"]
    assert objects.head("a/two.txt").size == 3 and objects.head("nope") is None
    source = tmp_path / "src.bin"
    source.write_bytes(b"x" * 100_000)
    objects.put_file("f/src.bin", source)
    objects.get_file("f/src.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    assert objects.child("a").get("two.txt") == b"two"
    assert objects.delete_prefix("a") == 2
    assert objects.list("a") == []
    with pytest.raises(FileNotFoundError):
        objects.get("a/two.txt")
    objects.delete("a/two.txt")  # deleting what is gone is no error


def test_conditional_create_and_replace(objects):
    etag = objects.put_new("lease", b"first")
    assert etag is not None
    assert objects.put_new("lease", b"second") is None
    assert objects.get("lease") == b"first"
    new = objects.put_replace("lease", b"third", etag)
    assert objects.get("lease") == b"third"
    with pytest.raises(PreconditionFailed):
        objects.put_replace("lease", b"fourth", etag)  # stale tag: someone replaced it meanwhile
    objects.put_replace("lease", b"fifth", new)
    assert objects.get("lease") == b"fifth"


def test_urls_and_paths():
    assert is_url("s3://b/p") and is_url("gs://b") and not is_url("/tmp/x") and not is_url("file:///tmp/x")
    assert join("s3://b/p/", "features", "x") == "s3://b/p/features/x"


def test_unreachable_endpoint_fails_at_once_naming_the_url(monkeypatch, s3_server):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    start = time.time()
    with pytest.raises(ConfigError, match="s3://some-bucket/x"):
        open_objects("s3://some-bucket/x").check()
    assert time.time() - start < 30


def test_missing_bucket_fails_at_once(s3_server):
    with pytest.raises(ConfigError, match="cannot reach s3://no-such-bucket-here"):
        open_objects("s3://no-such-bucket-here/x").check()
