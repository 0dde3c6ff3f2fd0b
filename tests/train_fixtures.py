"""Tiny data for the trainer tests: a real feature store written with pipeline.store, and targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

WORDS = ("dog", "bark", "rain", "speech", "music", "guitar", "voice", "bird", "engine", "bell")


def write_feature_store(root: Path, clips: dict[str, int], encoder: str = "whisper", layers: int = 2,
                        dim: int = 16, seed: int = 0, dtype: str = "float32") -> Any:
    """Write ``clips`` (key -> frames) as random features of one encoder; return the reader."""
    from alarm.pipeline.part_writer import PartWriter
    from alarm.pipeline.store import open_features
    from alarm.pipeline.store_index import write_index
    from alarm.pipeline.store_layout import StoreConfig, group_spec, init_group

    cfg = StoreConfig(dtype=dtype, chunk_frames=16, shard_frames=64)
    spec = group_spec({"name": encoder, "preset": "test-random", "layers": layers, "dim": dim, "seed": seed}, cfg)
    group = init_group(root, encoder, spec, layers=layers, dim=dim, frame_rate=50.0)
    rng = np.random.default_rng(seed)
    writer = PartWriter(group, "part-000000", sum(clips.values()), layers, dim, cfg)
    for key, frames in clips.items():
        writer.append(key, rng.standard_normal((frames, layers, dim)).astype(np.float32), frames / 50.0)
    writer.commit()
    write_index(group)
    return open_features(root, encoder)


def target_rows(clips: dict[str, int], per_clip: int = 1, val_every: int = 4,
                datasets: tuple[str, ...] = ("dsA", "dsB")) -> list[dict[str, Any]]:
    """Target rows: one text per clip decided by its index, every ``val_every``-th row validation."""
    rows = []
    for c, key in enumerate(clips):
        for j in range(per_clip):
            n = c * per_clip + j
            word = WORDS[c % len(WORDS)]
            rows.append({
                "instance_id": f"i{n:04d}", "clip_key": key, "dataset": datasets[(c // 3) % len(datasets)],
                "prompt": f"What do you hear in clip {c}?",
                "target": f"I hear a {word}. The {word} sounds clear.</think>\n\nA {word}.",
                "incomplete": False, "split": "validation" if n % val_every == val_every - 1 else "train",
                "source": "test",
            })
    return rows


def write_targets(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write target rows as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def tiny_clips(n: int = 8, lo: int = 12, hi: int = 40, seed: int = 0) -> dict[str, int]:
    """``n`` clip keys with frame counts in [lo, hi)."""
    rng = np.random.default_rng(seed)
    return {f"clip{c:03d}": int(rng.integers(lo, hi)) for c in range(n)}
