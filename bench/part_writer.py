"""Part write throughput: the zarr writer the store used before against ``PartWriter``'s own shard writes.
Prints ONE JSON line.

One part (``--seconds`` of audio at 50 frames/s, clips of 2-12 s, random float32 features) is written
and committed into a local store by each writer, for each shape and compressor:

- ``zarr``: ``ZarrPartWriter`` below, a copy of the writer as it was (zarr's ``create_array`` with
  sharding, whole shards assigned, then ``tree_checksums`` and ``chunk_checksums`` read every file back);
- ``lean``: ``alarm.pipeline.part_writer.PartWriter`` (``shard_writer``: shards encoded in memory, written
  in one go, checksums from the bytes written).

Both include what the job pays per part: quantising (float16), the writes, the clip table, the
checksums, the hard links into the group and the done marker. Figures per writer: MB/s of stored
feature bytes (before compression) over wall time, and the process's CPU seconds (every thread:
zarr's event loop included); the median of ``--rounds`` rounds, the writers taking turns.

``cold`` is what an encoder actor pays for its first part: a new Python process (numpy, pandas,
pyarrow and ``store_layout`` already imported: ``pa.array`` imports pandas on first use, whichever
writer) imports the writer and writes one tiny-shaped part; wall and CPU seconds from the import
to the commit, the median of ``--rounds`` processes per writer (zarr's import and event loop are in it).

Shapes: the tiny encoders' ``(layers, dim)`` (``build_encoder(EncoderConfig(e, preset="tiny"))``; pass
``--tiny-shapes 4x32,...`` to skip building them) and whisper's real size, 4 x 1280.

Usage: ``python bench/part_writer.py [--seconds 300] [--rounds 3] [--tiny-shapes 4x32,5x32,3x32]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np


class ZarrPartWriter:
    """The part writer before ``shard_writer`` (no fence), kept only to measure against."""

    def __init__(self, group: Path, part_id: str, total_frames: int, layers: int, dim: int, cfg) -> None:
        import zarr

        from alarm.pipeline.store_layout import STAGING
        from alarm.pipeline.store_values import zarr_dtype

        self.group, self.part_id, self.cfg, self.total_frames = group, part_id, cfg, total_frames
        self.attempt = uuid.uuid4().hex[:16]
        self.tmp = group / STAGING / f"{part_id}.{self.attempt}"
        self.tmp.mkdir(parents=True)
        root = zarr.open_group(str(self.tmp), mode="w", zarr_format=3, attributes={"part": part_id})
        compressors = [zarr.codecs.ZstdCodec(level=cfg.compression_level)] if cfg.compressor == "zstd" else None
        shape, chunk, shard = (total_frames, layers, dim), (cfg.chunk_frames, layers, dim), (cfg.shard_frames,
                                                                                            layers, dim)
        self._features = root.create_array(
            "features", shape=shape, chunks=chunk, shards=shard, dtype=zarr_dtype(cfg.dtype),
            compressors=compressors, fill_value=0, attributes={"dtype": cfg.dtype})
        self._root = root
        self._rows: list[tuple[str, int, int, float]] = []
        self._buffer: list[np.ndarray] = []
        self._buffered = self._written = 0

    def append(self, key: str, features: np.ndarray, duration: float) -> None:
        from alarm.pipeline.store_values import quantize

        values, _ = quantize(features, self.cfg.dtype)  # float16 in this bench: no scales
        self._rows.append((key, self._written + self._buffered, len(features), float(duration)))
        self._buffer.append(values)
        self._buffered += len(features)
        if self._buffered >= self.cfg.shard_frames:
            self._flush(whole_shards=True)

    def _flush(self, whole_shards: bool) -> None:
        if not self._buffered:
            return
        values = np.concatenate(self._buffer)
        count = len(values) - (len(values) % self.cfg.shard_frames if whole_shards else 0)
        self._features[self._written:self._written + count] = values[:count]
        self._buffer = [values[count:]] if count < len(values) else []
        self._buffered -= count
        self._written += count

    def commit(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from alarm.pipeline.objects import open_objects
        from alarm.pipeline.shard_io import RawShardedArray
        from alarm.pipeline.store_layout import DONE, tree_checksums

        self._flush(whole_shards=False)
        offsets = np.array([r[1] for r in self._rows] + [self._written], dtype=np.int64)
        self._root.create_array("offsets", shape=offsets.shape, chunks=(max(len(offsets), 1),),
                                dtype="int64", compressors=None, fill_value=0)[:] = offsets
        table = pa.table({"key": [r[0] for r in self._rows],
                          "offset": pa.array([r[1] for r in self._rows], pa.int64()),
                          "length": pa.array([r[2] for r in self._rows], pa.int64()),
                          "duration": pa.array([r[3] for r in self._rows], pa.float64())})
        pq.write_table(table, self.tmp / "clips.parquet")
        files = tree_checksums(self.tmp)
        chunks = {}
        raw = RawShardedArray.open(self.tmp / "features")
        if raw is not None:
            chunks["features"] = raw.chunk_checksums()
            raw.close()
        marker = {"part": self.part_id, "clips": len(self._rows), "frames": self._written, "files": files,
                  "chunks": chunks, "attempt": self.attempt, "fence": None, "node": socket.gethostname()}
        objects = open_objects(self.group)
        prefix = f"parts/{self.part_id}/{self.attempt}"
        for rel in files:
            objects.put_file(f"{prefix}/{rel}", self.tmp / rel)
        objects.put_new(f"parts/{self.part_id}/{DONE}", (json.dumps(marker, indent=1, sort_keys=True) + "\n").encode())
        shutil.rmtree(self.tmp, ignore_errors=True)


def new_group(root: Path, layers: int, dim: int, cfg) -> Path:
    from alarm.pipeline.store_layout import group_spec, init_group

    return init_group(root, "whisper", group_spec({"name": "bench", "layers": layers, "dim": dim}, cfg),
                      layers=layers, dim=dim, frame_rate=50.0)


def write_once(kind: str, root: Path, clips: dict[str, np.ndarray], layers: int, dim: int, cfg) -> tuple[float, float]:
    """Wall and CPU seconds of writing and committing one part with writer ``kind`` into a new store."""
    times = write_part(kind, new_group(root, layers, dim, cfg), clips, layers, dim, cfg)
    shutil.rmtree(root)
    return times


def write_part(kind: str, group: Path, clips: dict[str, np.ndarray], layers: int, dim: int, cfg) -> tuple[float, float]:
    """Wall and CPU seconds of writing and committing one part with writer ``kind`` into ``group``."""
    wall, cpu = time.perf_counter(), time.process_time()
    if kind == "zarr":
        writer_class = ZarrPartWriter  # imports zarr in its constructor: counted
    else:
        from alarm.pipeline.part_writer import PartWriter as writer_class
    writer = writer_class(group, "part-0000", sum(len(v) for v in clips.values()), layers, dim, cfg)
    for key, value in clips.items():
        writer.append(key, value, len(value) / 50)
    writer.commit()
    return time.perf_counter() - wall, time.process_time() - cpu


def make_clips(layers: int, dim: int, seconds: float) -> dict[str, np.ndarray]:
    """Clips of 2-12 s at 50 frames/s adding up to ``seconds``."""
    rng = np.random.default_rng(0)
    clips, total = {}, 0
    while total < seconds * 50:
        n = min(int(rng.integers(100, 600)), int(seconds * 50) - total)
        # Values of few distinct bits (rounded) so zstd finds something to do, as on real features.
        clips[f"clip{len(clips)}"] = (rng.standard_normal((n, layers, dim)) * 4).round(1).astype(np.float32)
        total += n
    return clips


def cold_once(kind: str, layers: int, dim: int, seconds: float) -> tuple[float, float]:
    """Wall and CPU seconds of a new process's first part with writer ``kind`` (imports included)."""
    from alarm.pipeline.store_layout import StoreConfig

    with tempfile.TemporaryDirectory(prefix="bench-part-writer-") as tmp:
        group = new_group(Path(tmp), layers, dim, StoreConfig())  # here: it imports zarr, as the job's driver does
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import part_writer as b, json; "
                f"from pathlib import Path; clips = b.make_clips({layers}, {dim}, {seconds}); "
                f"import pandas, pyarrow.parquet; from alarm.pipeline.store_layout import StoreConfig; cfg = StoreConfig(); "
                f"print(json.dumps(b.write_part({kind!r}, Path({str(group)!r}), clips, {layers}, {dim}, cfg)))")
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return tuple(json.loads(out.strip().splitlines()[-1]))


def cold(layers: int, dim: int, seconds: float, rounds: int) -> dict:
    out: dict = {"shape": f"{layers}x{dim}", "compressor": None}
    runs: dict[str, list] = {"zarr": [], "lean": []}
    for _ in range(rounds):
        for kind in runs:
            runs[kind].append(cold_once(kind, layers, dim, seconds))
    for kind, times in runs.items():
        out[kind] = {"wall_s": round(statistics.median(t[0] for t in times), 4),
                     "cpu_s": round(statistics.median(t[1] for t in times), 4)}
    return out


def measure(layers: int, dim: int, compressor: str | None, seconds: float, rounds: int) -> dict:
    from alarm.pipeline.store_layout import StoreConfig

    cfg = StoreConfig(compressor=compressor)
    clips = make_clips(layers, dim, seconds)
    total = sum(len(v) for v in clips.values())
    mb = total * layers * dim * 2 / 1e6
    times: dict[str, list[tuple[float, float]]] = {"zarr": [], "lean": []}
    with tempfile.TemporaryDirectory(prefix="bench-part-writer-") as tmp:
        for r in range(rounds + 1):  # round 0 warms imports and the page cache, and is not counted
            for kind in times:
                wall, cpu = write_once(kind, Path(tmp) / f"{kind}{r}", clips, layers, dim, cfg)
                if r:
                    times[kind].append((wall, cpu))
    out: dict = {"shape": f"{layers}x{dim}", "compressor": compressor, "frames": total, "mb": round(mb, 1)}
    for kind, runs in times.items():
        wall, cpu = statistics.median(t[0] for t in runs), statistics.median(t[1] for t in runs)
        out[kind] = {"mb_s": round(mb / wall, 1), "wall_s": round(wall, 4), "cpu_s": round(cpu, 4)}
    out["cpu_ratio"] = round(out["lean"]["cpu_s"] / out["zarr"]["cpu_s"], 3)
    return out


def tiny_shapes() -> list[tuple[int, int]]:
    from alarm.pipeline.encoders import ENCODERS, EncoderConfig, build_encoder

    shapes = []
    for name in ENCODERS:
        encoder = build_encoder(EncoderConfig(name, preset="tiny"))
        shapes.append((len(encoder.layers), encoder.dim))
    return sorted(set(shapes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="audio-seconds in the part (the default part)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiny-shapes", default=None, help="LxD,... instead of building the tiny encoders")
    args = parser.parse_args()
    shapes = ([tuple(int(v) for v in s.split("x")) for s in args.tiny_shapes.split(",")] if args.tiny_shapes
              else tiny_shapes())
    first = cold(*shapes[0], args.seconds, args.rounds)
    shapes.append((4, 1280))
    runs = [measure(layers, dim, compressor, args.seconds, args.rounds)
            for layers, dim in shapes for compressor in (None, "zstd")]
    print(json.dumps({"bench": "part_writer", "seconds": args.seconds, "rounds": args.rounds, "cold": first,
                      "runs": runs}))


if __name__ == "__main__":
    main()
