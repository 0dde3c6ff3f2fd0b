"""The Ray stages of the feature job: key sources, decode units, encode and write parts.

Each stage is small and retry-safe: keying and decoding are pure functions of their input row, and
an encoder stage writes a part only through ``PartWriter`` (temporary folder, rename, done marker),
skipping parts an earlier run already committed. Rows inside Ray are plain dicts of JSON text and
bytes, so every row of a dataset has the same schema.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.decode import DecodeConfig, DecodeError, decode_clip
from pipeline.store import StoreConfig, group_spec, spec_id


def release_memory() -> None:
    """Give freed heap back to the OS after a unit.

    glibc keeps freed blocks in its arenas; after many parts of mixed sizes a worker's resident memory
    would creep up with the corpus size instead of staying at one part's working set.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def key_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray task stage: decode each source once for its content key and duration, or its reject reason."""
    if "source" not in batch:
        raise KeyError("key_batch needs a 'source' column")
    # No length limit here: the limit is applied when planning, so changing it needs no re-keying.
    cfg = DecodeConfig(max_seconds=float("inf"))
    keys, durations, reasons = [], [], []
    for text in batch["source"]:
        src = json.loads(text)
        try:
            clip = decode_clip(src["audio"], src["start"], src["end"], cfg)
            keys.append(clip.key)
            durations.append(clip.duration)
            reasons.append("")
        except DecodeError as err:
            keys.append("")
            durations.append(0.0)
            reasons.append(str(err))
    return {"source": batch["source"], "key": np.array(keys, dtype=object),
            "duration": np.array(durations), "reason": np.array(reasons, dtype=object)}


def decode_unit(row: dict[str, Any], rates: dict[str, int], quality: str) -> dict[str, Any]:
    """Ray stage: decode a unit's clips and resample them to every rate its encoders need."""
    started = time.perf_counter()
    unit = json.loads(row["unit"])
    needed = sorted({rates[e] for e in unit["encoders"]})
    waves: dict[int, list[np.ndarray]] = {r: [] for r in sorted(set(rates.values()))}
    for src, key in zip(unit["sources"], unit["keys"], strict=True):
        clip = decode_clip(src["audio"], src["start"], src["end"], DecodeConfig(max_seconds=float("inf")))
        if clip.key != key:
            raise RuntimeError(f"{src['audio']} changed while the job ran (content key differs); rerun the job")
        for r in needed:
            waves[r].append(clip.at(r, quality))
    out = {"unit": row["unit"]}
    # Every rate gets its columns (empty when unused) so all rows share one schema.
    for r in waves:
        out[f"wave_{r}"] = np.concatenate(waves[r]).tobytes() if waves[r] else b""
        out[f"lengths_{r}"] = json.dumps([len(w) for w in waves[r]])
    del waves
    release_memory()
    out["decode_s"] = time.perf_counter() - started
    return out


class EncodeStage:
    """Ray actor stage for one encoder: encodes the units whose part it owns and writes that part."""

    def __init__(self, encoder: dict[str, Any], group: str, storage: dict[str, Any], threads: int) -> None:
        import torch

        from pipeline.encoders import EncoderConfig, build_encoder

        if threads > 0:
            torch.set_num_threads(threads)
        self.encoder = build_encoder(EncoderConfig(**encoder))
        self.name = encoder["name"]
        self.group = Path(group)
        self.storage = StoreConfig(**storage)
        # On a cluster this actor may sit on a node with other weights or code: never mix them in.
        sid = spec_id(group_spec(self.encoder.spec(), self.storage))
        if sid != self.group.name:
            raise RuntimeError(f"{self.name} on this node has spec {sid}, the job planned {self.group.name}; "
                               "the nodes do not share the same checkpoint or code")
        self.chunk_clips = max(1, 4 * int(encoder["batch_size"]))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rate = self.encoder.sample_rate
        missing = [c for c in ("unit", f"wave_{rate}", f"lengths_{rate}") if c not in batch]
        if missing:
            raise KeyError(f"EncodeStage({self.name}) needs columns {missing}")
        out = {k: batch[k] for k in batch}
        stats = []  # (encode seconds, bytes written, write seconds) per row
        for i, text in enumerate(batch["unit"]):
            unit = json.loads(text)
            if self.name not in unit["encoders"]:  # this unit's part for us is already committed
                stats.append((0.0, 0, 0.0))
                continue
            rate = self.encoder.sample_rate
            lengths = json.loads(batch[f"lengths_{rate}"][i])
            flat = np.frombuffer(batch[f"wave_{rate}"][i], dtype=np.float32)
            bounds = np.cumsum([0] + lengths)
            stats.append(self._write_part(unit, [flat[bounds[j]:bounds[j + 1]] for j in range(len(lengths))]))
        out[f"{self.name}_encode_s"] = np.array([s[0] for s in stats], dtype=np.float64)
        out[f"{self.name}_bytes"] = np.array([s[1] for s in stats], dtype=np.int64)
        out[f"{self.name}_write_s"] = np.array([s[2] for s in stats], dtype=np.float64)
        return out

    def _write_part(self, unit: dict[str, Any], waves: list[np.ndarray]) -> tuple[float, int, float]:
        from pipeline.store import DONE, PartWriter

        if (self.group / "parts" / unit["part"] / DONE).is_file():  # committed by an earlier run
            return 0.0, 0, 0.0
        enc = self.encoder
        total = sum(enc.num_frames(len(w)) for w in waves)
        writer = PartWriter(self.group, unit["part"], total, len(enc.layers), enc.dim, self.storage)
        encode_s = write_s = 0.0
        for start in range(0, len(waves), self.chunk_clips):
            t0 = time.perf_counter()
            feats = enc.encode(waves[start:start + self.chunk_clips])
            t1 = time.perf_counter()
            for j, f in enumerate(feats, start=start):
                writer.append(unit["keys"][j], f, unit["durations"][j])
            write_s += time.perf_counter() - t1
            encode_s += t1 - t0
        t0 = time.perf_counter()
        info = writer.commit()
        del writer, feats
        release_memory()
        return encode_s, info.bytes, write_s + time.perf_counter() - t0


def encoder_facts(encoder: dict[str, Any]) -> dict[str, Any]:
    """Build an encoder once on the driver for its spec and shape, then free it."""
    import gc

    from pipeline.encoders import EncoderConfig, build_encoder

    enc = build_encoder(EncoderConfig(**encoder))
    facts = {"spec": enc.spec(), "layers": len(enc.layers), "dim": enc.dim, "frame_rate": enc.frame_rate,
             "sample_rate": enc.sample_rate}
    del enc
    gc.collect()
    return facts
