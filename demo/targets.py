"""Reference targets: training targets written from the demo corpus labels, true by construction.

A tiny *random* LLM cannot write an ``<answer>`` block, so validation rejects every generated
target; the demo trains on these instead, and says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alarm.pipeline.manifest import ManifestError, read_manifest
from alarm.pipeline.objects import is_url
from alarm.pipeline.store_layout import at, location, read_parquet, write_parquet_atomic
from alarm.rephrase.rules import split_for


def _reference_target(metadata: dict[str, Any], prompt: str) -> str:
    """A short think-then-answer text stating only what the labels say (demo reference)."""
    facts = []
    if metadata.get("transcript"):
        facts.append(f'someone saying "{metadata["transcript"]}"')
    if metadata.get("caption"):
        facts.append(metadata["caption"])
    if metadata.get("labels"):
        facts.append(", ".join(metadata["labels"]))
    extra = [f"{k.replace('_', ' ')} {v}" for k, v in metadata.items()
             if k not in ("transcript", "caption", "labels", "segments") and not isinstance(v, (list, dict))]
    heard = "; ".join(facts) or "a sound"
    detail = f" ({', '.join(extra)})" if extra else ""
    return (f"The question is: {prompt} Listening to the clip, I hear {heard}{detail}.\n</think>\n\n"
            f"I hear {heard}{detail}.")


def write_reference_targets(manifest: Path | str, store: Path | str, out: Path | str) -> int:
    """Targets from the corpus labels for every instance the store accepted; returns the count.

    The manifest, the store and ``out`` may each be a local path or an object-store URL.
    """
    import pyarrow as pa

    instances = read_parquet(at(location(store), "instances.parquet"))
    if instances is None:
        raise ManifestError(f"{store} is not a feature store (no instances.parquet); run `alarm pipeline run` first")
    keys = {r["id"]: r["key"] for r in instances.to_pylist()}
    rows = []
    for inst in read_manifest(manifest).instances:
        if inst.prompt is None or inst.id not in keys:
            continue
        rows.append({"instance_id": inst.id, "clip_key": keys[inst.id], "dataset": inst.dataset,
                     "prompt": inst.prompt, "target": _reference_target(inst.metadata, inst.prompt),
                     "incomplete": False, "split": split_for(inst.dataset, keys[inst.id], 0.1),  # by clip
                     "model": "demo-reference-from-labels"})
    if rows:
        if not is_url(out):
            Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(pa.Table.from_pylist(rows), location(out))
    return len(rows)
