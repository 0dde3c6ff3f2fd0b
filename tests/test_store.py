"""The Zarr store: round trips per dtype, shard flushing, commits, spec refusal, verify, picklable reader."""

from __future__ import annotations

import json
import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest
from store_trees import part_folder

from alarm.pipeline.part_writer import PartWriter
from alarm.pipeline.shard_io import RawShardedArray
from alarm.pipeline.store import open_features
from alarm.pipeline.store_index import load_index, write_index
from alarm.pipeline.store_layout import (
    DONE,
    DTYPES,
    StoreConfig,
    StoreSpecError,
    committed_parts,
    group_spec,
    init_group,
    spec_id,
)
from alarm.pipeline.store_values import dequantize, quantize
from alarm.pipeline.verify import store_status, verify_store

LAYERS, DIM = 3, 16
ENC_SPEC = {"encoder": "toy", "weights_sha256": "abc", "layers": [1, 2, 3]}


def clips(seed: int = 0, count: int = 9) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Lengths straddle chunk (8) and shard (32) boundaries; one clip is empty.
    lengths = [0, 1, 7, 8, 31, 33, 50, 3, 64][:count]
    return {f"{seed}-{i:02d}": (rng.standard_normal((n, LAYERS, DIM)) * (i + 1)).astype(np.float32)
            for i, n in enumerate(lengths)}


def write_part(root: Path, cfg: StoreConfig, data: dict[str, np.ndarray], part: str = "p0") -> Path:
    group = init_group(root, "toy", group_spec(ENC_SPEC, cfg), LAYERS, DIM, 50.0)
    writer = PartWriter(group, part, sum(len(v) for v in data.values()), LAYERS, DIM, cfg)
    for key, value in data.items():
        writer.append(key, value, len(value) / 50)
    writer.commit()
    write_index(group)
    return group


@pytest.mark.parametrize("dtype,compressor", [(d, None) for d in DTYPES] + [("float16", "zstd"), ("int8", "zstd")])
def test_round_trip_per_dtype(tmp_path: Path, dtype: str, compressor: str | None) -> None:
    import zarr

    cfg = StoreConfig(dtype=dtype, chunk_frames=8, shard_frames=32, compressor=compressor)
    data = clips()
    data["zeros"] = np.zeros((20, LAYERS, DIM), np.float32)  # chunks of fill values are never written
    group = write_part(tmp_path, cfg, data)
    reader = open_features(tmp_path, "toy")
    # The direct shard reader is used exactly when there is no compressor, and agrees with zarr.
    features, _ = reader._open(0)
    assert isinstance(features, RawShardedArray) == (compressor is None)
    stored = zarr.open_array(str(part_folder(group, "p0") / "features"), mode="r")
    for start, stop in [(0, 0), (0, 5), (3, 40), (31, 33), (0, stored.shape[0]), (90, 171)]:
        raw = RawShardedArray.open(part_folder(group, "p0") / "features")
        if raw is not None:
            np.testing.assert_array_equal(raw.read(start, stop), stored[start:stop])
    assert reader.keys() == sorted(data) and len(reader) == len(data)
    assert (reader.layers, reader.dim, reader.encoder) == (LAYERS, DIM, "toy")
    for key, value in data.items():
        got = reader.read(key)
        assert got.dtype == np.float32 and got.shape == value.shape
        assert reader.num_frames(key) == len(value)
        assert reader.duration(key) == pytest.approx(len(value) / 50)
        if dtype == "float32":
            np.testing.assert_array_equal(got, value)
        elif dtype == "float16":
            np.testing.assert_array_equal(got, value.astype(np.float16).astype(np.float32))
        else:
            peak = np.abs(value).max(initial=0)
            tol = peak / 127 if dtype == "int8" else peak * 2 ** -8
            assert np.abs(got - value).max(initial=0) <= tol + 1e-6
    assert "nope" not in reader
    with pytest.raises(KeyError, match="nope"):
        reader.read("nope")


def test_quantize_int8_scales_per_frame_and_layer() -> None:
    x = np.zeros((2, 2, 4), np.float32)
    x[0, 0] = [1, -2, 0.5, 0]
    x[1, 1] = [100, 0, 0, -50]
    q, scales = quantize(x, "int8")
    assert q.dtype == np.int8 and scales.shape == (2, 2)
    np.testing.assert_allclose(dequantize(q, scales, "int8"), x, atol=100 / 127 / 2 + 1e-6)
    assert q[0, 0, 1] == -127 and q[1, 1, 0] == 127


def test_bfloat16_rounds_to_nearest() -> None:
    x = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -9, -3.5], np.float32)
    bits, _ = quantize(x, "bfloat16")
    np.testing.assert_array_equal(dequantize(bits, None, "bfloat16"), [1.0, 1.0, 1.0 + 2 ** -7, -3.5])


def test_uncommitted_part_is_invisible_and_commit_replaces_it(tmp_path: Path) -> None:
    cfg = StoreConfig(chunk_frames=8, shard_frames=32)
    group = write_part(tmp_path, cfg, clips(0, 4), "p0")
    # A writer killed between its uploads and its done marker leaves parts/p1 without _DONE.
    writer = PartWriter(group, "p1", sum(len(v) for v in clips(1, 4).values()), LAYERS, DIM, cfg)
    for key, value in clips(1, 4).items():
        writer.append(key, value, 1.0)
    info = writer.commit()
    (group / "parts" / "p1" / DONE).unlink()
    assert committed_parts(group) == ["p0"]
    assert len(open_features(tmp_path, "toy")) == 4
    report = verify_store(tmp_path)
    assert any("p1: no done marker" in p for p in report.problems)
    # The rerun's writer commits a new attempt; the abandoned one stays invisible.
    writer = PartWriter(group, "p1", info.frames, LAYERS, DIM, cfg)
    for key, value in clips(1, 4).items():
        writer.append(key, value, 1.0)
    writer.commit()
    assert committed_parts(group) == ["p0", "p1"]
    # The index on disk is stale now: the reader rebuilds it in memory, verify names it.
    assert len(open_features(tmp_path, "toy")) == 8
    assert any("index.parquet covers 1 parts" in p for p in verify_store(tmp_path).problems)
    write_index(group)
    assert verify_store(tmp_path).ok


def test_planned_frames_are_enforced(tmp_path: Path) -> None:
    cfg = StoreConfig(chunk_frames=8, shard_frames=32)
    group = init_group(tmp_path, "toy", group_spec(ENC_SPEC, cfg), LAYERS, DIM, 50.0)
    writer = PartWriter(group, "p", 10, LAYERS, DIM, cfg)
    writer.append("a", np.zeros((6, LAYERS, DIM), np.float32), 1.0)
    with pytest.raises(Exception, match="more frames"):
        writer.append("b", np.zeros((6, LAYERS, DIM), np.float32), 1.0)
    with pytest.raises(Exception, match="shape"):
        writer.append("c", np.zeros((2, LAYERS, DIM + 1), np.float32), 1.0)
    with pytest.raises(Exception, match="planned 10"):
        writer.commit()


def test_spec_mismatch_is_refused(tmp_path: Path) -> None:
    f16 = StoreConfig()
    write_part(tmp_path, f16, clips(0, 3))
    assert open_features(tmp_path, "toy", ENC_SPEC).spec_id == spec_id(group_spec(ENC_SPEC, f16))
    assert open_features(tmp_path, "toy", group_spec(ENC_SPEC, f16)).spec["store"]["dtype"] == "float16"
    with pytest.raises(StoreSpecError, match="differs in: weights_sha256"):
        open_features(tmp_path, "toy", {**ENC_SPEC, "weights_sha256": "other"})
    with pytest.raises(StoreSpecError, match="no 'toy' features for this spec"):
        open_features(tmp_path, "toy", group_spec(ENC_SPEC, StoreConfig(dtype="float32")))
    with pytest.raises(StoreSpecError, match="no features for encoder 'whisper'"):
        open_features(tmp_path, "whisper")
    # A second spec makes a second group; then the choice must be explicit.
    write_part(tmp_path, StoreConfig(dtype="float32"), clips(0, 3))
    with pytest.raises(StoreSpecError, match="2 groups"):
        open_features(tmp_path, "toy")
    with pytest.raises(StoreSpecError, match="several groups"):
        open_features(tmp_path, "toy", ENC_SPEC)
    # A tampered spec.json no longer hashes to its folder.
    group = tmp_path / "features" / "toy" / spec_id(group_spec(ENC_SPEC, f16))
    meta = json.loads((group / "spec.json").read_text())
    meta["spec"]["encoder"]["layers"] = [9]
    (group / "spec.json").write_text(json.dumps(meta))
    with pytest.raises(StoreSpecError, match="does not hash"):
        open_features(tmp_path, "toy", group.name)


def test_verify_names_a_corrupted_file(tmp_path: Path) -> None:
    group = write_part(tmp_path, StoreConfig(chunk_frames=8, shard_frames=32), clips())
    assert verify_store(tmp_path).ok
    shard = next(p for p in sorted((part_folder(group, "p0") / "features").rglob("*")) if p.is_file()
                 and p.name != "zarr.json")
    blob = bytearray(shard.read_bytes())
    blob[10] ^= 0xFF
    shard.write_bytes(bytes(blob))
    problems = verify_store(tmp_path).problems
    assert any("checksum of features/" in p for p in problems), problems
    assert verify_store(tmp_path, checksums=False).ok
    status = store_status(tmp_path)
    assert status["groups"][f"toy/{group.name}"]["stored"] == len(clips())


def _read_in_child(args: tuple[bytes, str]) -> float:
    reader = pickle.loads(args[0])
    return float(reader.read(args[1]).sum())


def test_reader_is_picklable_and_reads_in_worker_processes(tmp_path: Path) -> None:
    data = clips()
    write_part(tmp_path, StoreConfig(dtype="float32", chunk_frames=8, shard_frames=32), data)
    reader = open_features(tmp_path, "toy")
    reader.read(next(iter(data)))  # open handles in the parent first: they must not travel
    blob = pickle.dumps(reader)
    keys = sorted(data)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        sums = pool.map(_read_in_child, [(blob, k) for k in keys])
    np.testing.assert_allclose(sums, [data[k].sum() for k in keys], rtol=1e-5)
    assert len(load_index(reader.group)) == len(data)


def test_stored_read_keeps_float16_and_widens_exactly(tmp_path: Path) -> None:
    from train_fixtures import write_feature_store

    reader = write_feature_store(tmp_path / "s", {"a": 7, "b": 12}, dtype="float16")
    for key in ("a", "b"):
        wide, stored = reader.read(key), reader.read(key, stored=True)
        assert wide.dtype == np.float32 and stored.dtype == np.float16
        assert np.array_equal(stored.astype(np.float32), wide)
    f32 = write_feature_store(tmp_path / "t", {"a": 5}, dtype="float32")
    assert f32.read("a", stored=True).dtype == np.float32  # nothing narrower to keep
