"""The part writer's own shard writes are byte for byte what zarr writes, checksums included.

``zarr_part`` below is the writer as it was before ``shard_writer`` (zarr's ``create_array`` with
sharding, then checksums read back from the files); it stays here only to compare against.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from store_trees import part_folder

from alarm.pipeline.part_writer import PartWriter
from alarm.pipeline.shard_io import RawShardedArray
from alarm.pipeline.shard_writer import ShardedArrayWriter, StagedFiles, array_json
from alarm.pipeline.store import open_features
from alarm.pipeline.store_layout import DONE, DTYPES, StoreConfig, group_spec, init_group, tree_checksums
from alarm.pipeline.store_values import dequantize, quantize, zarr_dtype

LAYERS, DIM = 2, 12
ENC_SPEC = {"encoder": "toy", "weights_sha256": "abc", "layers": [1, 2]}


def zarr_part(folder: Path, part: str, clips: dict[str, np.ndarray], cfg: StoreConfig) -> dict:
    """The part as the zarr writer staged it: its files and its marker's ``files`` and ``chunks``."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zarr

    total = sum(len(v) for v in clips.values())
    root = zarr.open_group(str(folder), mode="w", zarr_format=3, attributes={"part": part})
    compressors = [zarr.codecs.ZstdCodec(level=cfg.compression_level)] if cfg.compressor == "zstd" else None
    shape, chunk, shard = (total, LAYERS, DIM), (cfg.chunk_frames, LAYERS, DIM), (cfg.shard_frames, LAYERS, DIM)
    features = root.create_array("features", shape=shape, chunks=chunk, shards=shard, dtype=zarr_dtype(cfg.dtype),
                                 compressors=compressors, fill_value=0, attributes={"dtype": cfg.dtype})
    pairs = [quantize(v, cfg.dtype) for v in clips.values()]
    if total:
        features[:] = np.concatenate([p[0] for p in pairs])
    if cfg.dtype == "int8":
        scales = root.create_array("scales", shape=shape[:2], chunks=chunk[:2], shards=shard[:2], dtype="float32",
                                   compressors=compressors, fill_value=0)
        if total:
            scales[:] = np.concatenate([p[1] for p in pairs])
    lengths = [len(v) for v in clips.values()]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    root.create_array("offsets", shape=offsets.shape, chunks=(max(len(offsets), 1),), dtype="int64",
                      compressors=None, fill_value=0)[:] = offsets
    table = pa.table({"key": list(clips), "offset": pa.array(offsets[:-1], pa.int64()),
                      "length": pa.array(lengths, pa.int64()),
                      "duration": pa.array([n / 50 for n in lengths], pa.float64())})
    sink = io.BytesIO()  # the old writer wrote to a path: the same bytes (checked below)
    pq.write_table(table, sink)
    (folder / "clips.parquet").write_bytes(sink.getvalue())
    pq.write_table(table, folder / "by-path.parquet")
    assert (folder / "by-path.parquet").read_bytes() == sink.getvalue()
    (folder / "by-path.parquet").unlink()
    chunks = {}
    for name in ("features", "scales"):
        raw = RawShardedArray.open(folder / name) if (folder / name / "zarr.json").is_file() else None
        if raw is not None:
            chunks[name] = raw.chunk_checksums()
            raw.close()
    return {"files": tree_checksums(folder), "chunks": chunks}


def part_clips(case: str) -> dict[str, np.ndarray]:
    """Clips of a part; chunks of 4 frames, shards of 12 (3 chunks: not a power of two)."""
    rng = np.random.default_rng(len(case))

    def noise(n: int) -> np.ndarray:
        return rng.standard_normal((n, LAYERS, DIM)).astype(np.float32)

    if case == "mixed":  # 51 frames: ends mid-chunk and mid-shard; zero chunks, a zero shard, a -0.0 chunk
        return {"a": noise(5), "b": np.zeros((23, LAYERS, DIM), np.float32), "empty": noise(0), "c": noise(4),
                "minus-zero": np.full((4, LAYERS, DIM), -0.0, np.float32), "d": noise(15)}
    if case == "one-frame":
        return {"a": noise(1)}
    if case == "whole-shards":
        return {"a": noise(13), "b": noise(11)}
    if case == "all-zero":  # no shard file at all (the int8 scales are ones)
        return {"a": np.zeros((9, LAYERS, DIM), np.float32)}
    if case == "zero-frames":
        return {"a": noise(0)}
    raise ValueError(case)


CASES = ["mixed", "one-frame", "whole-shards", "all-zero", "zero-frames"]


@pytest.mark.parametrize("compressor", [None, "zstd"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_part_files_are_those_zarr_writes(tmp_path: Path, case: str, dtype: str, compressor: str | None) -> None:
    import zarr

    cfg = StoreConfig(dtype=dtype, chunk_frames=4, shard_frames=12, compressor=compressor)
    clips = part_clips(case)
    expected = zarr_part(tmp_path / "zarr", "p0", clips, cfg)
    group = init_group(tmp_path / "store", "toy", group_spec(ENC_SPEC, cfg), LAYERS, DIM, 50.0)
    total = sum(len(v) for v in clips.values())
    writer = PartWriter(group, "p0", total, LAYERS, DIM, cfg)
    for key, value in clips.items():
        writer.append(key, value, len(value) / 50)
    info = writer.commit()

    folder = part_folder(group, "p0")
    marker = json.loads((group / "parts" / "p0" / DONE).read_text())
    assert marker["files"] == expected["files"] == tree_checksums(folder)
    assert marker["chunks"] == expected["chunks"]
    assert ("features" in marker["chunks"]) == (compressor is None)
    for rel in expected["files"]:
        assert (folder / rel).read_bytes() == (tmp_path / "zarr" / rel).read_bytes(), rel
    assert info.bytes == sum((folder / rel).stat().st_size for rel in expected["files"])
    shards = {rel for rel in expected["files"] if rel.startswith("features/c/")}
    if case == "mixed":  # shard 1 (frames 12-24) is all zeros: no file
        assert shards == {"features/c/0/0/0", "features/c/2/0/0", "features/c/3/0/0", "features/c/4/0/0"}
        if compressor is None:
            # Shard 0: chunk 1 (frames 4-8) holds frame 4 of "a"; chunk 2 (8-12) is zeros. Shard 2 (24-36):
            # chunk 1 is "c", chunk 2 is "-0.0": no fill value (zarr compares bits), stored unless int8 makes it 0.
            assert marker["chunks"]["features"]["0"]["chunks"][2] is None
            assert (marker["chunks"]["features"]["2"]["chunks"][2] is None) == (dtype == "int8")
            # Shard 4 (48-60) holds the last 3 frames: one padded chunk, two past the end.
            assert marker["chunks"]["features"]["4"]["chunks"][1:] == [None, None]
    if case in ("all-zero", "zero-frames"):
        assert shards == set()

    # Read back through zarr and through the store's reader.
    stored = zarr.open_array(str(folder / "features"), mode="r")
    values = [quantize(v, dtype) for v in clips.values()]
    if total:
        np.testing.assert_array_equal(stored[:], np.concatenate([v for v, _ in values]))
    reader = open_features(tmp_path / "store", "toy")
    for (key, value), (q, scales) in zip(clips.items(), values, strict=True):
        got = reader.read(key)
        np.testing.assert_array_equal(got, dequantize(q, scales, dtype))
        assert got.shape == value.shape


def test_writes_must_be_whole_shards(tmp_path: Path) -> None:
    files = StagedFiles(tmp_path)
    writer = ShardedArrayWriter(files, "x", (30, 2), "float32", 4, 12)
    rows = np.ones((12, 2), np.float32)
    with pytest.raises(ValueError, match="not whole shards"):
        writer.write(4, rows)  # starts mid-shard
    with pytest.raises(ValueError, match="not whole shards"):
        writer.write(0, rows[:8])  # ends mid-shard, before the array's end
    with pytest.raises(ValueError, match="shape"):
        writer.write(0, np.ones((12, 3), np.float32))
    writer.write(24, np.ones((6, 2), np.float32))  # the last shard, cut at the array's end
    assert list(files.checksums) == ["x/c/2/0", "x/zarr.json"]  # sorted as tree_checksums sorts
    assert files.sizes["x/c/2/0"] == 2 * 4 * 2 * 4 + 3 * 16 + 4  # two stored chunks, the index and its CRC
    assert writer.chunks is not None and list(writer.chunks) == ["2"]


@pytest.mark.parametrize("dtype", ["int8", "uint16", "float32", "int64"])
def test_array_metadata_is_zarrs(dtype: str) -> None:
    import zarr
    from zarr.storage import MemoryStore

    store = MemoryStore()
    zarr.create_array(store, shape=(10, 3), chunks=(2, 3), shards=(4, 3), dtype=dtype, compressors=None,
                      fill_value=0, attributes={"dtype": "x"})
    mine = array_json((10, 3), dtype, (2, 3), (4, 3), attributes={"dtype": "x"})
    assert mine == bytes(store._store_dict["zarr.json"].to_bytes())
