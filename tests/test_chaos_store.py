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
    group_spec,
    init_group,
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
