"""What a killed or damaged store leaves for the next command, each case made deterministic.

Found by killing `alarm pipeline run` at random moments and damaging its files (a scratch chaos
run, not part of the suite); each test here reproduces one finding at a chosen point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from alarm.pipeline.part_writer import PartWriter
from alarm.pipeline.store_index import write_index
from alarm.pipeline.store_layout import (
    StoreConfig,
    StoreError,
    group_spec,
    init_group,
    read_parquet,
    write_atomic,
    write_parquet_atomic,
)

LAYERS, DIM = 2, 4
SPEC = {"encoder": "toy", "weights_sha256": "abc", "layers": [1, 2]}


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _group(root: Path, parts: int) -> Path:
    cfg = StoreConfig(chunk_frames=4, shard_frames=8)
    group = init_group(root, "toy", group_spec(SPEC, cfg), LAYERS, DIM, 50.0)
    for p in range(parts):
        writer = PartWriter(group, f"p{p}", 5, LAYERS, DIM, cfg)
        writer.append(f"clip{p}", np.full((5, LAYERS, DIM), p, np.float32), 0.1)
        writer.commit()
    return group


def test_rebuilding_an_unchanged_index_writes_nothing(tmp_path: Path) -> None:
    # A rerun with nothing to compute rebuilt every index (and the instance and source tables) with
    # the same bytes: new files, new times, for a store nothing had changed in.
    group = _group(tmp_path / "store", parts=2)
    write_index(group)
    before = _stamp(group / "index.parquet")
    write_index(group)
    assert _stamp(group / "index.parquet") == before
    _group(tmp_path / "store", parts=3)  # a new committed part: the index must change
    write_index(group)
    assert _stamp(group / "index.parquet") != before


@pytest.mark.parametrize("same", [True, False])
def test_write_atomic_replaces_only_what_differs(tmp_path: Path, same: bool) -> None:
    path = tmp_path / "table.parquet"
    write_parquet_atomic(pa.table({"k": ["a", "b"]}), path)
    before, data = _stamp(path), path.read_bytes()
    write_parquet_atomic(pa.table({"k": ["a", "b" if same else "c"]}), path)
    assert (_stamp(path) == before) is same
    write_atomic(path, data[:-1] + b"X")  # same size, other bytes: written
    assert path.read_bytes() == data[:-1] + b"X"


def _cli(*args: str):  # noqa: ANN202 - click's Result
    from click.testing import CliRunner

    from alarm.cli import main

    return CliRunner().invoke(main, list(args))


def _damage(group: Path, what: str) -> None:
    store = group.parents[2]
    target = {"marker": group / "parts" / "p0" / "_DONE", "spec": group / "spec.json",
              "index": group / "index.parquet", "instances": store / "instances.parquet",
              "rejects": store / "rejects.parquet", "sources": store / "sources.parquet"}[what]
    target.write_bytes(b"\x00garbage\xff")


@pytest.mark.parametrize("what,named", [("marker", "done marker"), ("spec", "spec.json is unreadable"),
                                        ("index", "index.parquet is unreadable"),
                                        ("instances", "instances.parquet is unreadable"),
                                        ("rejects", "rejects.parquet is unreadable"),
                                        ("sources", "sources.parquet is unreadable")])
def test_verify_status_and_gc_name_an_unreadable_file_in_one_line(tmp_path: Path, what: str, named: str) -> None:
    # A torn done marker, spec.json, index or instance table made `verify` (and `repair`, which
    # verifies first) end in a traceback, `gc` did too for a marker, and `status` for a torn
    # sources table; verify passed a torn reject or sources table, on which the job stopped.
    group = _group(tmp_path / "store", parts=2)
    write_index(group)
    write_parquet_atomic(pa.table({"key": ["clip0", "clip1"]}), tmp_path / "store" / "instances.parquet")
    assert _cli("pipeline", "verify", "--store", str(tmp_path / "store")).exit_code == 0
    _damage(group, what)
    out = _cli("pipeline", "verify", "--store", str(tmp_path / "store"))
    assert out.exit_code == 1 and named in out.output and _no_crash(out), out.output
    status = _cli("pipeline", "status", "--store", str(tmp_path / "store"))
    assert _no_crash(status) and (status.exit_code == 0 or "unreadable" in status.output), status.output
    gc = _cli("pipeline", "gc", str(tmp_path / "store"), "--grace", "0s")
    assert _no_crash(gc), gc.output
    if what == "marker":  # gc refuses to judge attempts against a marker it cannot read
        assert gc.exit_code == 2 and "unreadable" in gc.output
        assert len(list((group / "parts" / "p0").iterdir())) == 2  # the marker and its attempt, kept


def _no_crash(result) -> bool:  # noqa: ANN001 - click's Result
    return result.exception is None or isinstance(result.exception, SystemExit)


def test_the_job_rewrites_a_torn_spec_json(tmp_path: Path) -> None:
    # The job itself ended in a JSONDecodeError on a torn spec.json; it knows the spec (the folder
    # name is its hash), so it writes it again.
    group = _group(tmp_path / "store", parts=1)
    whole = (group / "spec.json").read_bytes()
    (group / "spec.json").write_bytes(whole[:10])
    assert _group(tmp_path / "store", parts=1) == group
    assert (group / "spec.json").read_bytes() == whole


@pytest.mark.parametrize("name,remedy", [("index.parquet", "rebuilds it"), ("sources.parquet", "keys the audio"),
                                         ("instances.parquet", "every input"), ("clips.parquet", "repair")])
def test_a_torn_table_fails_in_one_line_that_says_what_to_do(tmp_path: Path, name: str, remedy: str) -> None:
    # The job ended in pyarrow's traceback on a torn index, sources, instance or reject table.
    path = tmp_path / name
    write_parquet_atomic(pa.table({"k": list("abcdefgh")}), path)
    path.write_bytes(path.read_bytes()[:-9])
    with pytest.raises(StoreError, match=rf"{name} is unreadable \(.*\); .*{remedy}") as caught:
        read_parquet(path)
    assert isinstance(caught.value, ValueError)  # as pyarrow's error was, for callers that handled that
    assert read_parquet(tmp_path / "absent.parquet") is None


def test_a_torn_index_or_sources_cache_is_rebuilt_not_fatal(tmp_path: Path) -> None:
    # Both are derived (the index from the committed parts, the sources table from the audio): a job
    # or reader that meets one torn rebuilds it, where it used to stop and ask for a deletion.
    from store_fixtures import tone, write_wav

    from alarm.pipeline.job_config import PipelineConfig
    from alarm.pipeline.sources import key_sources
    from alarm.pipeline.store_index import load_index

    group = _group(tmp_path / "store", parts=3)
    whole = write_index(group)
    (group / "index.parquet").write_bytes(b"\x00garbage\xff")
    assert load_index(group).equals(whole.replace_schema_metadata(None).select(whole.column_names))

    store = tmp_path / "store"
    audio = str(write_wav(tmp_path / "a.wav", tone(1.0, 16000, seed=1), 16000))
    cfg = PipelineConfig(store=str(store), manifest=str(tmp_path / "unused.jsonl"), encoders=["whisper"], preset="tiny")
    first = key_sources(store, [(audio, None, None)], cfg)
    (store / "sources.parquet").write_bytes(b"\x00garbage\xff")
    assert key_sources(store, [(audio, None, None)], cfg) == first
    assert read_parquet(store / "sources.parquet").to_pylist() == [first[(audio, None, None)]]
