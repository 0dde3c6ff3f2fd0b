"""The objects layer and the feature store on Azure Blob (azurite): the contract the S3 tests hold, and
what differs underneath (conditional puts are If-None-Match/If-Match with Azure's own error codes,
listings return entity tags bare)."""

from __future__ import annotations

import pytest

# The contract tests of the local and S3 roots, run here against the `objects` fixture below.
from test_objects import test_conditional_create_and_replace, test_put_get_list_delete  # noqa: F401

# The S3 job test's corpus, its clean local run and the checks an Azure run must pass, and its lease,
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
def objects(az_url: str):
    return open_objects(az_url)


@pytest.fixture
def root(az_url: str) -> str:
    return az_url


def test_a_listed_etag_is_the_one_head_and_put_give(objects) -> None:
    etag = objects.put("lease", b"one")
    assert etag.startswith('"') and objects.head("lease").etag == etag
    assert [(i.key, i.etag, i.size) for i in objects.list()] == [("lease", etag, 3)]
    # A tag read from a listing is good for a conditional replace (the markers' tags come from listings).
    listed = objects.list()[0].etag
    new = objects.put_replace("lease", b"two", listed)
    assert new != etag and objects.list()[0].etag == new == objects.head("lease").etag


def test_conditional_puts_refuse_with_the_servers_reason(objects) -> None:
    etag = objects.put_new("a/lease", b"first")
    assert etag and objects.put_new("a/lease", b"again") is None and objects.get("a/lease") == b"first"
    fresh = objects.put_replace("a/lease", b"second", etag)
    with pytest.raises(PreconditionFailed, match=r"a/lease: 412 Precondition Failed: ConditionNotMet"):
        objects.put_replace("a/lease", b"third", etag)
    with pytest.raises(PreconditionFailed):
        objects.put_replace("a/none", b"x", fresh)  # no such object: nothing to replace
    assert objects.head("a/none") is None and objects.get("a/lease") == b"second"


def test_listing_is_by_prefix_of_whole_names(objects) -> None:
    for key in ("g/parts/p0/_DONE", "g/parts/p0/a/x.bin", "g/parts/p1/a/y.bin", "g/partsx/z", "top"):
        objects.put(key, b"1")
    assert [i.key for i in objects.list("g/parts")] == ["g/parts/p0/_DONE", "g/parts/p0/a/x.bin",
                                                         "g/parts/p1/a/y.bin"]
    assert objects.list_dirs() == ["g"] and objects.list_dirs("g/parts") == ["p0", "p1"]
    assert objects.child("g/parts").list_dirs() == ["p0", "p1"] and objects.list("nothing") == []
    assert objects.delete_prefix("g/parts") == 3 and [i.key for i in objects.list()] == ["g/partsx/z", "top"]
    with pytest.raises(FileNotFoundError, match=r"^az://.*/store/g/parts/p0/_DONE$"):
        objects.get("g/parts/p0/_DONE")


def test_a_missing_container_is_one_line(azurite) -> None:
    objects = open_objects("az://no-such-container-here/x")
    with pytest.raises(ConfigError) as caught:
        objects.check()
    line = str(caught.value)
    assert "\n" not in line and line.startswith("cannot reach az://no-such-container-here/x: ")
    assert "ContainerNotFound" in line and "Debug" not in line
    open_objects(f"az://{azurite.container()}/x").check()  # an existing, empty one is fine


def test_run_to_azure_equals_a_local_run(corpus, local_store, az_url: str) -> None:  # noqa: F811
    check_run_equals_local(corpus, local_store, az_url)


def test_a_file_larger_than_a_chunk_goes_up_in_blocks(objects, tmp_path) -> None:
    check_big_file_round_trip(objects, tmp_path)
