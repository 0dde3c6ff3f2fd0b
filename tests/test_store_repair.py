"""Damage on disk: readers refuse a damaged part by name, and a rerun or `alarm pipeline repair`
recomputes exactly the parts verify rejects, back to the bytes of an undamaged run."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from store_fixtures import good_corpus, write_manifest_rows
from store_trees import part_folder, store_digest

from alarm.pipeline.part_writer import PartWriter
from alarm.pipeline.shard_io import RawShardedArray
from alarm.pipeline.store import open_features
from alarm.pipeline.store_index import write_index
from alarm.pipeline.store_layout import DONE, DamagedPartError, StoreConfig, group_spec, init_group
from alarm.pipeline.verify import verify_store

LAYERS, DIM = 3, 16
ENC_SPEC = {"encoder": "toy", "weights_sha256": "abc", "layers": [1, 2, 3]}


def flip_bytes(path: Path, offset: int, count: int = 4) -> None:
    """Invert ``count`` bytes of a file in place (what a bad disk or a stray write does)."""
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def first_chunk(array: Path) -> tuple[Path, int, int]:
    """(shard file, byte offset, first frame) of the first stored inner chunk of a sharded array."""
    raw = RawShardedArray.open(array)
    index = raw._shard_index(0)
    within = int(np.flatnonzero(index[:, 0] != np.uint64(2**64 - 1))[0])
    offset = int(index[within, 0])
    raw.close()
    return array / "c" / "0" / "0" / "0", offset, within * raw.chunk


def toy_store(root: Path, cfg: StoreConfig) -> tuple[Path, dict[str, np.ndarray]]:
    """Two parts of toy features (p0, p1), lengths straddling chunk and shard boundaries."""
    rng = np.random.default_rng(0)
    group = init_group(root, "toy", group_spec(ENC_SPEC, cfg), LAYERS, DIM, 50.0)
    data = {}
    for p, lengths in (("p0", (5, 20, 9)), ("p1", (3, 30, 12, 40))):
        writer = PartWriter(group, p, sum(lengths), LAYERS, DIM, cfg)
        for i, n in enumerate(lengths):
            key = f"{p}-{i}"
            data[key] = rng.standard_normal((n, LAYERS, DIM)).astype(np.float32)
            writer.append(key, data[key], n / 50)
        writer.commit()
    write_index(group)
    return group, data


def test_reader_refuses_a_part_whose_chunk_bytes_changed(tmp_path: Path) -> None:
    cfg = StoreConfig(chunk_frames=8, shard_frames=32)
    group, data = toy_store(tmp_path / "store", cfg)
    shard, offset, frame = first_chunk(part_folder(group, "p1") / "features")
    assert json.loads((group / "parts" / "p1" / DONE).read_text())["chunks"]["features"]["0"]["chunks"]
    flip_bytes(shard, offset + 10)
    reader = open_features(tmp_path / "store", "toy")
    # p0 is intact and served as stored; so is a clip of p1 outside the damaged chunk, read first.
    np.testing.assert_allclose(reader.read("p0-1"), data["p0-1"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(reader.read("p1-3"), data["p1-3"], rtol=1e-3, atol=1e-3)
    damaged = next(k for k in ("p1-0", "p1-1") if reader._offset[reader._index(k)] <= frame)
    with pytest.raises(DamagedPartError, match=rf"part toy/{group.name}/p1 of store .* chunk 0: checksum"):
        reader.read(damaged)
    assert reader.part_of(damaged) == f"toy/{group.name}/p1"
    # Once found, the whole part is refused (its other clips too); other parts still read.
    with pytest.raises(DamagedPartError, match="p1"):
        reader.read("p1-3")
    assert reader.read("p0-0").shape == data["p0-0"].shape
    # A reader sent to a DataLoader worker checks afresh and refuses too.
    with pytest.raises(DamagedPartError, match="p1"):
        pickle.loads(pickle.dumps(reader)).read(damaged)


def test_reader_checks_small_files_and_index_on_first_access(tmp_path: Path) -> None:
    cfg = StoreConfig(chunk_frames=8, shard_frames=32)
    group, _ = toy_store(tmp_path / "store", cfg)
    flip_bytes(part_folder(group, "p1") / "clips.parquet", 40)
    reader = open_features(tmp_path / "store", "toy")
    with pytest.raises(DamagedPartError, match="checksum of clips.parquet differs"):
        reader.read("p1-3")  # in no damaged chunk: the part's first access finds it
    assert reader.read("p0-2").shape == (9, LAYERS, DIM)

    # An index row that disagrees with the part's own clip table is refused too.
    group, _ = toy_store(tmp_path / "store2", cfg)
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = pq.read_table(group / "index.parquet")
    offsets = index.column("offset").to_pylist()
    offsets[index.column("key").to_pylist().index("p0-2")] += 1
    index = index.set_column(index.column_names.index("offset"), "offset", pa.array(offsets, pa.int64()))
    pq.write_table(index, group / "index.parquet")
    with pytest.raises(DamagedPartError, match="index row of clip p0-2 disagrees"):
        open_features(tmp_path / "store2", "toy").read("p0-0")


def test_compressed_parts_are_checked_whole_on_first_access(tmp_path: Path) -> None:
    cfg = StoreConfig(chunk_frames=8, shard_frames=32, compressor="zstd")
    group, data = toy_store(tmp_path / "store", cfg)
    assert json.loads((group / "parts" / "p1" / DONE).read_text())["chunks"] == {}
    shard = part_folder(group, "p1") / "features" / "c" / "0" / "0" / "0"
    flip_bytes(shard, 12)
    reader = open_features(tmp_path / "store", "toy")
    with pytest.raises(DamagedPartError, match=r"checksum of features/c/0/0/0 differs"):
        reader.read("p1-3")
    np.testing.assert_allclose(reader.read("p0-0"), data["p0-0"], rtol=1e-3, atol=1e-3)
    report = verify_store(tmp_path / "store")
    assert report.damaged == {f"toy/{group.name}": ["p1"]}


def test_dataset_skips_clips_of_a_damaged_part_and_logs_them_once(tmp_path: Path) -> None:
    from alarm.trainer.data import Example, FeatureDataset, SkipLog, collate

    cfg = StoreConfig(chunk_frames=8, shard_frames=32)
    group, _ = toy_store(tmp_path / "store", cfg)
    shard, offset, _ = first_chunk(part_folder(group, "p1") / "features")
    flip_bytes(shard, offset)
    reader = open_features(tmp_path / "store", "toy")
    examples = [Example(f"i-{k}", k, "d", np.zeros(2, np.int32), np.ones(3, np.int32), {"toy": reader.num_frames(k)},
                        10) for k in ("p0-0", "p1-0", "p1-1", "p0-1")]
    dataset = FeatureDataset(examples, {"toy": reader})
    batch = collate([dataset[i] for i in range(4)])
    assert batch["instance_ids"] == ["i-p0-0", "i-p0-1"]
    assert [s["instance_id"] for s in batch["skipped"]] == ["i-p1-0", "i-p1-1"]
    assert all(f"toy/{group.name}/p1" in s["reason"] for s in batch["skipped"])
    empty = collate([dataset[1], dataset[2]])
    assert empty["instance_ids"] == [] and len(empty["skipped"]) == 2
    log = SkipLog(tmp_path / "rejects.jsonl")
    log.add(batch["skipped"])
    log.add(empty["skipped"])  # the same clips again (a later batch or epoch): logged once
    rows = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["instance_id"] for r in rows] == ["i-p1-0", "i-p1-1"]


# ---------------------------------------------------------------------------------------- the job


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def tree_digest(root: Path) -> dict[str, str]:
    """Bytes of every object a job writes, parts keyed by part id (not attempt), except the summary and
    reports (timings) and the lease (its token)."""
    return store_digest(root, skip={"summary.json", "report.json", "report.md", ".lease"})


def test_rerun_and_repair_recompute_exactly_the_damaged_parts(ray_session, tiny_whisper_dir, tiny_w2vbert_dir,
                                                               tmp_path: Path) -> None:
    import torch

    from alarm.cli import main
    from alarm.pipeline.job import PipelineConfig, run_pipeline

    torch.set_num_threads(1)
    rows = good_corpus(tmp_path / "audio", count=6, seconds=(0.3, 0.9))
    manifest = write_manifest_rows(rows, tmp_path / "m.jsonl")

    def config(store: Path) -> PipelineConfig:
        return PipelineConfig(store=str(store), manifest=str(manifest), encoders=["whisper", "w2vbert"],
                              preset="tiny", progress=False, storage={"part_seconds": 1.5})

    original = tmp_path / "original"
    run_pipeline(config(original))
    want = tree_digest(original)
    whisper = next(original.glob("features/whisper/*"))
    parts = sorted(p.name for p in (whisper / "parts").iterdir())
    assert len(parts) >= 2
    damaged_part = parts[1]
    clips_in_part = json.loads((whisper / "parts" / damaged_part / DONE).read_text())["clips"]

    for how in ("rerun", "repair"):
        copy = tmp_path / how
        shutil.copytree(original, copy)
        shard, offset, _ = first_chunk(part_folder(copy / whisper.relative_to(original), damaged_part) / "features")
        flip_bytes(shard, offset + 100)
        report = verify_store(copy)
        assert report.damaged == {f"whisper/{whisper.name}": [damaged_part]}
        key = pq_keys(part_folder(copy / whisper.relative_to(original), damaged_part))[0]
        with pytest.raises(DamagedPartError, match=damaged_part):
            read_all(open_features(copy, "whisper"), [key])
        if how == "rerun":
            summary = run_pipeline(config(copy))
            assert summary.repaired == {"whisper": [damaged_part]}
            assert summary.encoded == {"whisper": clips_in_part, "w2vbert": 0}  # nothing else redone
        else:
            result = CliRunner().invoke(main, ["pipeline", "repair", str(manifest), "--store", str(copy),
                                               "--encoders", "whisper,w2vbert", "--preset", "tiny",
                                               "--no-progress"], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            assert f"1 damaged part(s): {damaged_part}" in result.output
            assert f"whisper: recomputed 1 part(s): {damaged_part}" in result.output
        assert verify_store(copy).ok
        assert tree_digest(copy) == want
        read_all(open_features(copy, "whisper"), [key])

    # Nothing damaged: repair says so and starts no job.
    result = CliRunner().invoke(main, ["pipeline", "repair", str(manifest), "--store", str(original)])
    assert result.exit_code == 0 and "nothing to repair" in result.output


def pq_keys(part: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(part / "clips.parquet").column("key").to_pylist()


def read_all(reader, keys: list[str]) -> None:  # noqa: ANN001 - a FeatureReader
    for key in keys:
        reader.read(key)
