"""The Ray stages of the feature job: key sources, decode units, encode and write parts.

Each stage is small and retry-safe: keying and decoding are pure functions of their input row, and
an encoder stage writes a part only through ``PartWriter`` (temporary folder, rename, done marker),
skipping parts an earlier run already committed. Rows inside Ray are plain dicts of JSON text and
bytes, so every row of a dataset has the same schema.

Two ways to run the encoders share these pieces: one Ray Data actor pool per encoder fed by decode
tasks (``decode_unit`` + ``EncodeStage``; GPU clusters), or one pool of ``SharedEncodeStage`` actors
that each hold every encoder and decode their own units (CPU machines: one decode feeds all encoders,
and no decoded audio crosses the object store).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from alarm.pipeline.decode import (
    DecodeConfig,
    DecodedClip,
    DecodeError,
    decode_clip,
    key_audio,
    mix_down,
    read_checked,
)
from alarm.pipeline.store_layout import DONE, Location, StoreConfig, group_spec, location, objects_at, spec_id

TRIM_SLACK = 1.25
"""A worker gives freed heap back to the OS once it is this many times its size after its first unit."""

_trim_above = 0.0  # resident bytes above which ``release_memory`` trims (set after the worker's first unit)


def resident_bytes() -> int:
    """This process's resident memory (0 where ``/proc`` cannot tell: then every call trims)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release_memory() -> None:
    """Collect after a unit, and give freed heap back to the OS when the worker has grown.

    glibc keeps freed blocks in its arenas; after many parts of mixed sizes a worker's resident memory
    would creep up with the corpus size instead of staying at one part's working set. Trimming after
    every unit kept it flat but cost about 3 % of the forward passes (measured once, on the tiny encoders: the
    next unit faults every page back in, 24.7 against 24.0 CPU-s over ten units). So the size after the
    worker's first unit (one of the costliest: they go first) is its reference, and the heap is trimmed
    only when a later unit leaves the worker ``TRIM_SLACK`` times larger.
    """
    import ctypes
    import gc

    global _trim_above
    gc.collect()
    rss = resident_bytes()
    if not _trim_above:
        _trim_above = rss * TRIM_SLACK
    if rss and rss <= _trim_above:
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def freeze_loaded() -> None:
    """After an actor has built its models: collect once, then keep every object alive so far out of later
    collections (``gc.freeze``).

    The models, torch and transformers are hundreds of thousands of objects that live as long as the
    actor; without this, the ``gc.collect`` that ``release_memory`` runs after every unit walks them all
    each time (0.24 CPU-s per unit with the four tiny encoders loaded, measured; under a millisecond after).
    """
    import gc

    gc.collect()
    gc.freeze()


def key_source(audio: str, start: float | None, end: float | None) -> tuple[str, float, str]:
    """Decode one source once for its (content key, duration, ""), or ("", 0.0, reject reason)."""
    # No length limit here: the limit is applied when planning, so changing it needs no re-keying.
    try:
        key, duration = key_audio(audio, start, end)
    except DecodeError as err:
        return "", 0.0, str(err)
    return key, duration, ""


def key_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray task stage: the content key and duration, or the reject reason, of each source."""
    if "source" not in batch:
        raise KeyError("key_batch needs a 'source' column")
    results = []
    for text in batch["source"]:
        src = json.loads(text)
        results.append(key_source(src["audio"], src["start"], src["end"]))
    return {"source": batch["source"], "key": np.array([r[0] for r in results], dtype=object),
            "duration": np.array([r[1] for r in results]), "reason": np.array([r[2] for r in results], dtype=object)}


def unchanged_on_disk(src: dict[str, Any]) -> bool:
    """True when a local source's file still has the size and modification time it was keyed with.

    The same test the cache of keyed sources trusts on a rerun (``sources.parquet``), so an unchanged
    file is not hashed a second time. A source on a URL (its GET is needed anyway, a HEAD would be one
    more request) or without a recorded stat is hashed again instead.
    """
    from alarm.pipeline.audio_source import audio_stat
    from alarm.pipeline.store_layout import is_url

    stat = src.get("stat")
    if not stat or stat[0] < 0 or is_url(src["audio"].split("#", 1)[0]):
        return False
    return list(audio_stat(src["audio"])) == list(stat)


def decode_planned(src: dict[str, Any], key: str) -> DecodedClip:
    """Decode a planned source; its content is checked against ``key`` unless its file is unchanged.

    Raises:
        RuntimeError: the source no longer decodes to the key it was planned with (changed on disk).
    """
    if unchanged_on_disk(src):
        samples, rate = read_checked(src["audio"], src["start"], src["end"])
        return DecodedClip(key=key, source_rate=rate, channels=samples.shape[1], mono=mix_down(samples))
    clip = decode_clip(src["audio"], src["start"], src["end"], DecodeConfig(max_seconds=float("inf")))
    if clip.key != key:
        raise RuntimeError(f"{src['audio']} changed while the job ran (content key differs); rerun the job")
    return clip


def decode_waves(unit: dict[str, Any], rates: list[int], quality: str) -> dict[int, list[np.ndarray]]:
    """A unit's clips decoded once and resampled to each of ``rates`` (float32 mono waves, in key order).

    Raises:
        RuntimeError: a source no longer decodes to the key it was planned with (changed on disk).
    """
    waves: dict[int, list[np.ndarray]] = {r: [] for r in rates}
    for src, key in zip(unit["sources"], unit["keys"], strict=True):
        clip = decode_planned(src, key)
        for r in rates:
            waves[r].append(clip.at(r, quality))
    return waves


def decode_unit(row: dict[str, Any], rates: dict[str, int], quality: str) -> dict[str, Any]:
    """Ray stage: decode a unit's clips and resample them to every rate its encoders need."""
    started = time.perf_counter()
    unit = json.loads(row["unit"])
    waves = decode_waves(unit, sorted({rates[e] for e in unit["encoders"]}), quality)
    out = {"unit": row["unit"]}
    # Every rate gets its columns (empty when unused) so all rows share one schema.
    for r in sorted(set(rates.values())):
        out[f"wave_{r}"] = np.concatenate(waves[r]).tobytes() if waves.get(r) else b""
        out[f"lengths_{r}"] = json.dumps([len(w) for w in waves.get(r, [])])
    del waves
    release_memory()
    out["decode_s"] = time.perf_counter() - started
    return out


def is_committed(group: Location, part: str) -> bool:
    """True when ``part`` of ``group`` carries its done marker (an earlier run or a twin committed it)."""
    return objects_at(group).exists(f"parts/{part}/{DONE}")


def write_part(encoder: Any, group: Location, storage: StoreConfig, unit: dict[str, Any], waves: list[np.ndarray],
               chunk_clips: int) -> tuple[float, int, float]:
    """Encode a unit's clips with ``encoder`` and write them as the unit's part of ``group``.

    Returns (encode seconds, bytes written, write seconds); all zero when an earlier run committed it.
    """
    from alarm.pipeline.part_writer import PartWriter

    if is_committed(group, unit["part"]):
        return 0.0, 0, 0.0
    total = sum(encoder.num_frames(len(w)) for w in waves)
    # The job's fencing token: the commit is refused if another job has taken the store since.
    writer = PartWriter(group, unit["part"], total, len(encoder.layers), encoder.dim, storage,
                        fence=unit.get("fence"))
    encode_s = write_s = 0.0
    try:
        for start in range(0, len(waves), chunk_clips):
            t0 = time.perf_counter()
            feats = encoder.encode(waves[start:start + chunk_clips])
            t1 = time.perf_counter()
            for j, f in enumerate(feats, start=start):
                writer.append(unit["keys"][j], f, unit["durations"][j])
            write_s += time.perf_counter() - t1
            encode_s += t1 - t0
        t0 = time.perf_counter()
        info = writer.commit()
    except BaseException:
        writer.abort()
        raise
    del writer
    return encode_s, info.bytes, write_s + time.perf_counter() - t0


def check_spec(encoder: Any, storage: StoreConfig, group: Location) -> None:
    """Refuse to write when this process's encoder has another spec than the group the job planned.

    On a cluster an actor may sit on a node with other weights or code: never mix them in.
    """
    sid = spec_id(group_spec(encoder.spec(), storage))
    planned = str(group).rstrip("/").rsplit("/", 1)[-1]
    if sid != planned:
        raise RuntimeError(f"{encoder.name} on this node has spec {sid}, the job planned {planned}; "
                           "the nodes do not share the same checkpoint or code")


class EncodeStage:
    """Ray actor stage for one encoder: encodes the units whose part it owns and writes that part."""

    def __init__(self, encoder: dict[str, Any], group: str, storage: dict[str, Any], threads: int) -> None:
        import torch

        from alarm.pipeline.encoders import EncoderConfig, build_encoder

        if threads > 0:
            torch.set_num_threads(threads)
        self.encoder = build_encoder(EncoderConfig(**encoder))
        self.name = encoder["name"]
        self.group = location(group)
        self.storage = StoreConfig(**storage)
        check_spec(self.encoder, self.storage, self.group)
        self.chunk_clips = max(1, 4 * int(encoder["batch_size"]))
        freeze_loaded()

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
            lengths = json.loads(batch[f"lengths_{rate}"][i])
            flat = np.frombuffer(batch[f"wave_{rate}"][i], dtype=np.float32)
            bounds = np.cumsum([0] + lengths)
            waves = [flat[bounds[j]:bounds[j + 1]] for j in range(len(lengths))]
            stats.append(write_part(self.encoder, self.group, self.storage, unit, waves, self.chunk_clips))
            release_memory()
        out[f"{self.name}_encode_s"] = np.array([s[0] for s in stats], dtype=np.float64)
        out[f"{self.name}_bytes"] = np.array([s[1] for s in stats], dtype=np.int64)
        out[f"{self.name}_write_s"] = np.array([s[2] for s in stats], dtype=np.float64)
        out[f"{self.name}_node"] = np.array([node_id()] * len(stats), dtype=object)
        return out


class SharedEncodeStage:
    """Ray actor holding every encoder of a job: decodes a unit once and writes its part for each encoder.

    On a CPU machine this replaces the decode tasks and the per-encoder pools: one process start and
    one model load per actor instead of one per encoder, and the decoded audio never leaves the actor.
    """

    def __init__(self, encoders: list[dict[str, Any]], storage: dict[str, Any], threads: int,
                 quality: str) -> None:
        import torch

        from alarm.pipeline.encoders import EncoderConfig, build_encoder

        if threads > 0:
            torch.set_num_threads(threads)
        self.chunk = {e["name"]: max(1, 4 * int(e["batch_size"])) for e in encoders}
        self.storage = StoreConfig(**storage)
        self.quality = quality
        self.checked: set[str] = set()
        # A build error (bad layers, checkpoint not available offline) is kept and raised by the first
        # call, so the driver gets it as the error it is instead of a dead actor.
        self.error: Exception | None = None
        self.encoders: dict[str, Any] = {}
        try:
            self.encoders = {e["name"]: build_encoder(EncoderConfig(**e)) for e in encoders}
        except Exception as err:  # any build error: re-raised as is by facts() and __call__
            self.error = err
        freeze_loaded()

    def facts(self) -> dict[str, dict[str, Any]]:
        """``encoder_facts`` of every encoder held (the driver then needs no model of its own)."""
        if self.error is not None:
            raise self.error
        return {name: facts_of(enc) for name, enc in self.encoders.items()}

    def __call__(self, unit: dict[str, Any], groups: dict[str, str]) -> dict[str, Any]:
        """Encode and write ``unit`` for each of its encoders (a group folder per encoder).

        Returns the unit's part id, ``decode_s``, per encoder (encode seconds, bytes, write seconds)
        as ``write_part`` returns them, and the call's own ``busy_s`` and ``busy_cpu_s``.
        """
        if self.error is not None:
            raise self.error
        missing = [k for k in ("part", "keys", "sources", "durations", "encoders") if k not in unit]
        if missing:
            raise KeyError(f"SharedEncodeStage needs unit fields {missing}")
        t0, cpu0 = time.perf_counter(), time.process_time()
        # Parts committed by an earlier run (or a retried call) need no audio at all.
        todo = [e for e in unit["encoders"] if not is_committed(groups[e], unit["part"])]
        waves = decode_waves(unit, sorted({self.encoders[e].sample_rate for e in todo}), self.quality)
        out: dict[str, Any] = {"part": unit["part"], "decode_s": time.perf_counter() - t0, "node": node_id()}
        for e in unit["encoders"]:
            enc, group = self.encoders[e], location(groups[e])
            if e not in self.checked:
                check_spec(enc, self.storage, group)
                self.checked.add(e)
            out[e] = (0.0, 0, 0.0)
            if e in todo:
                out[e] = write_part(enc, group, self.storage, unit, waves[enc.sample_rate], self.chunk[e])
        del waves
        release_memory()
        # The whole call, wall and CPU (every thread of the actor): how busy the actors were, and what a
        # unit costs beyond its forward passes (the job summary's ``busy`` and ``busy_cpu``).
        out["busy_s"], out["busy_cpu_s"] = time.perf_counter() - t0, time.process_time() - cpu0
        return out


def node_id() -> str:
    """The id of the Ray node this worker runs on ("" outside Ray): the job summary counts parts by node."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def facts_of(enc: Any) -> dict[str, Any]:
    """What the driver needs to know of a built encoder: its spec, output shape and shortest clip."""
    return {"spec": enc.spec(), "layers": len(enc.layers), "dim": enc.dim, "frame_rate": enc.frame_rate,
            "sample_rate": enc.sample_rate, "min_samples": enc.min_samples()}


def encoder_facts(encoder: dict[str, Any]) -> dict[str, Any]:
    """Build an encoder once on the driver for its spec and shape, then free it."""
    import gc

    from alarm.pipeline.encoders import EncoderConfig, build_encoder

    enc = build_encoder(EncoderConfig(**encoder))
    facts = facts_of(enc)
    del enc
    gc.collect()
    return facts
