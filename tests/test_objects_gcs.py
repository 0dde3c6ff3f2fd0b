"""The objects layer and the feature store on GCS (``gs://``), against ``gcs_server.py``, a stand-in for
GCS's XML API written from its documentation: the contract the S3 and Azure tests hold, and what
differs underneath (a conditional replace names the object's generation, which listings do not carry)."""

from __future__ import annotations

import pytest

# The contract tests of the local and S3 roots, run here against the `objects` fixture below.
from test_objects import test_conditional_create_and_replace, test_put_get_list_delete  # noqa: F401

# The S3 job test's corpus, its clean local run and the checks a GCS run must pass, and its lease,
# fencing, twin-commit and gc tests, run here against the `root` fixture below.
from test_store_objects import (  # noqa: F401
    check_big_file_round_trip,
    check_run_equals_local,
    corpus,
    local_store,
    test_a_renewed_lease_outlives_its_duration,
    test_a_twin_attempt_keeps_the_first_marker,
    test_an_expired_lease_cannot_commit,
    test_gc_removes_only_abandoned_attempts_older_than_grace,
)

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.objects import PreconditionFailed, open_objects


@pytest.fixture
def objects(gs_url: str):  # noqa: F811
    return open_objects(gs_url)


@pytest.fixture
def root(gs_url: str) -> str:  # noqa: F811
    return gs_url


def test_a_listed_etag_is_the_one_head_and_put_give(objects) -> None:
    etag = objects.put("lease", b"one")
    assert etag.startswith('"') and objects.head("lease").etag == etag
    assert [(i.key, i.etag, i.size) for i in objects.list()] == [("lease", etag, 3)]
    # A tag read from a listing is good for a conditional replace (the markers' tags come from listings),
    # though a listing carries no generation, which is what GCS checks.
    new = objects.put_replace("lease", b"two", objects.list()[0].etag)
    assert new != etag and objects.list()[0].etag == new == objects.head("lease").etag
    assert objects.get("lease") == b"two"


def test_conditional_puts_refuse_with_a_reason(objects) -> None:
    etag = objects.put_new("a/lease", b"first")
    assert etag and objects.put_new("a/lease", b"again") is None and objects.get("a/lease") == b"first"
    fresh = objects.put_replace("a/lease", b"second", etag)
    with pytest.raises(PreconditionFailed, match=r"a/lease changed since it was read"):
        objects.put_replace("a/lease", b"third", etag)
    with pytest.raises(PreconditionFailed, match="no such object"):
        objects.put_replace("a/none", b"x", fresh)  # nothing to replace
    assert objects.head("a/none") is None and objects.get("a/lease") == b"second"


def test_a_replace_loses_to_a_write_after_its_generation_was_read(objects, monkeypatch) -> None:
    etag = objects.put_new("lease", b"first")
    mode = objects._generation_match("lease", etag)  # what the replace will send, read before the race
    assert mode["e_tag"] == etag and int(mode["version"]) > 0
    objects.put("lease", b"theirs")  # another writer replaces that generation meanwhile
    monkeypatch.setattr(objects, "_generation_match", lambda key, tag: mode)
    with pytest.raises(PreconditionFailed, match=r"412 Precondition Failed: PreconditionFailed"):
        objects.put_replace("lease", b"mine", etag)  # the server, not the client, refuses it
    assert objects.get("lease") == b"theirs"


def test_listing_is_by_prefix_of_whole_names(objects) -> None:
    for key in ("g/parts/p0/_DONE", "g/parts/p0/a/x.bin", "g/parts/p1/a/y.bin", "g/partsx/z", "top"):
        objects.put(key, b"1")
    assert [i.key for i in objects.list("g/parts")] == ["g/parts/p0/_DONE", "g/parts/p0/a/x.bin",
                                                         "g/parts/p1/a/y.bin"]
    assert objects.list_dirs() == ["g"] and objects.list_dirs("g/parts") == ["p0", "p1"]
    assert objects.child("g/parts").list_dirs() == ["p0", "p1"] and objects.list("nothing") == []
    assert objects.delete_prefix("g/parts") == 3 and [i.key for i in objects.list()] == ["g/partsx/z", "top"]
    with pytest.raises(FileNotFoundError, match=r"^gs://.*/store/g/parts/p0/_DONE$"):
        objects.get("g/parts/p0/_DONE")


def test_a_missing_bucket_is_one_line(gcs_server) -> None:  # noqa: F811
    objects = open_objects("gs://no-such-bucket-here/x")
    with pytest.raises(ConfigError) as caught:
        objects.check()
    line = str(caught.value)
    assert "\n" not in line and line.startswith("cannot reach gs://no-such-bucket-here/x: ")
    assert "404 Not Found: NoSuchBucket" in line and "Debug" not in line
    open_objects(f"gs://{gcs_server.bucket()}/x").check()  # an existing, empty one is fine


def test_gcs_scheme_is_the_same_bucket_as_gs(gs_url: str) -> None:  # noqa: F811
    """``gcs://`` (gsutil's and fsspec's spelling), which object_store does not parse, names the same objects."""
    open_objects(gs_url).put("a/b.bin", b"same")
    other = open_objects(gs_url.replace("gs://", "gcs://", 1))
    other.check()
    assert other.get("a/b.bin") == b"same" and [i.key for i in other.list("a")] == ["a/b.bin"]


def test_run_to_gcs_equals_a_local_run(corpus, local_store, gs_url: str) -> None:  # noqa: F811
    check_run_equals_local(corpus, local_store, gs_url)


def test_a_file_larger_than_a_chunk_goes_up_in_parts(objects, tmp_path) -> None:
    info = check_big_file_round_trip(objects, tmp_path)
    assert info.etag.endswith('-3"')  # an XML multipart upload
