"""Published responses as a targets Parquet the trainer reads directly (``alarm-corpora --targets``).

The file has the columns of the rephrase stage's ``targets.parquet`` (``rephrase/targets.py``), so
``alarm train run`` and every reader of targets take it unchanged; the generation-only columns
(template hashes, cache keys, sampling, and ``answer``: the corpus publishes only the final answers)
are null and ``model`` says ``published:<answer column>``.

The trainer joins targets with the feature store by **clip key**, the hash of a clip's decoded
samples. The importer computes it the way the feature job does (``extract_stages.key_source``), so
the targets match any store built from the imported manifest; ``--instances STORE/instances.parquet``
takes the keys from a store already built instead of decoding again. A clip that does not decode is
rejected from the manifest too, with the decoder's reason (the feature job would reject it anyway).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from alarm.pipeline.importers.rows import Collected
from alarm.pipeline.manifest import Reject, optional_seconds, resolve_audio
from alarm.pipeline.store_layout import atomic_path

TARGET_FIELDS = (
    ("instance_id", "string"), ("clip_key", "string"), ("dataset", "string"), ("kind", "string"),
    ("prompt", "string"), ("target", "string"), ("incomplete", "bool"), ("split", "string"),
    ("n_tokens", "int64"), ("model", "string"), ("model_fingerprint", "string"),
    ("answer_template_hash", "string"), ("rephrase_template_hash", "string"), ("sampling", "string"),
    ("answer_key", "string"), ("rephrase_key", "string"), ("budget_forced", "bool"),
    ("description", "string"), ("answer", "string"), ("audio", "string"), ("duration", "float64"),
)
"""The rephrase stage's targets schema, column for column (a test compares the two)."""


def target_schema() -> Any:
    import pyarrow as pa

    types = {"string": pa.string(), "bool": pa.bool_(), "int64": pa.int64(), "float64": pa.float64()}
    return pa.schema([(name, types[kind]) for name, kind in TARGET_FIELDS])


def _source(row: dict[str, Any], base: Path) -> tuple[str, float | None, float | None]:
    return resolve_audio(row["audio"], base), optional_seconds(row, "start"), optional_seconds(row, "end")


def key_clips(collected: Collected, out: Path, instances: Path | None = None, workers: int = 8
              ) -> dict[str, tuple[str, float]]:
    """instance id -> (clip key, duration) of every row; rows whose clip has no key become rejects.

    With ``instances`` (a feature store's ``instances.parquet``) the keys are read from it; else each
    distinct clip is decoded once (threads) exactly as the feature job keys it.
    """
    base = Path(out).resolve().parent
    keyed: dict[str, tuple[str, float]] = {}
    if instances is not None:
        import pyarrow.parquet as pq

        table = pq.read_table(instances, columns=["id", "key", "duration"]).to_pylist()
        store = {r["id"]: (r["key"], r["duration"]) for r in table if r["key"]}
        reason = {r[1]["id"]: f"unkeyed: not in the feature store's {instances}" for r in collected.rows}
        results = {r["id"]: store.get(r["id"]) for _, r in collected.rows}
    else:
        from alarm.pipeline.extract_stages import key_source

        sources = sorted({_source(r, base) for _, r in collected.rows}, key=str)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            by_source = dict(zip(sources, pool.map(lambda s: key_source(*s), sources), strict=True))
        results, reason = {}, {}
        for _, row in collected.rows:
            key, duration, why = by_source[_source(row, base)]
            results[row["id"]] = (key, duration) if key else None
            reason[row["id"]] = why
    kept = []
    for line, row in collected.rows:
        if results[row["id"]] is None:
            collected.rejects.append(Reject(line, row["id"], reason[row["id"]]))
        else:
            keyed[row["id"]] = results[row["id"]]
            kept.append((line, row))
    collected.rows = kept
    return keyed


def split_of(corpus_split: str) -> str:
    """The trainer's split of a corpus split (``raw_validation`` -> ``validation``)."""
    return "validation" if corpus_split.endswith("validation") else "train"


def write_targets(path: Path, rows: list[dict[str, Any]], published: dict[str, dict[str, Any]],
                  answers: Iterable[tuple[str, Any]], keyed: dict[str, tuple[str, float]], answer_column: str,
                  base: Path, flush_rows: int = 8192) -> int:
    """Write one target per manifest row with a published answer; returns how many were written.

    ``answers`` streams (instance id, answer) from the corpus, so the answers (kilobytes each, millions
    of them) are never all in memory: rows are written in Parquet row groups of ``flush_rows``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = {r["id"]: r for r in rows}
    schema = target_schema()
    written, pending = 0, []
    with atomic_path(Path(path)) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for row_id, target in answers:
            row = manifest.pop(row_id, None)  # pop: a key repeated in the corpus gives one target
            if row is None or not isinstance(target, str) or not target.strip():
                continue
            info = published[row_id]
            key, duration = keyed[row_id]
            pending.append({
                "instance_id": row_id, "clip_key": key, "dataset": row["dataset"], "kind": "audio",
                "prompt": info["prompt"], "target": target, "incomplete": "</think>" not in target,
                "split": split_of(info["split"]), "n_tokens": None, "model": f"published:{answer_column}",
                "model_fingerprint": None, "answer_template_hash": None, "rephrase_template_hash": None,
                "sampling": None, "answer_key": None, "rephrase_key": None, "budget_forced": False,
                "description": info.get("description") or None, "answer": None,
                "audio": resolve_audio(row["audio"], base), "duration": float(duration),
            })
            if len(pending) >= flush_rows:
                writer.write_table(pa.Table.from_pylist(pending, schema=schema))
                written, pending = written + len(pending), []
        writer.write_table(pa.Table.from_pylist(pending, schema=schema))
        written += len(pending)
    return written
