"""The rows the two passes start from: one per usable manifest instance, with its description.

Instances that cannot be answered are dropped here, before any generation is paid for, each with a
reason: unreadable audio, clips at or over the length limit, audio rows without a prompt.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class InputRow:
    """One instance ready for pass 1."""

    instance_id: str
    dataset: str
    kind: str
    audio: str
    prompt: str
    description: str | None
    context: str | None
    duration: float
    clip_key: str | None


@dataclass(frozen=True)
class InputReject:
    """An instance left out of the passes, with why."""

    instance_id: str | None
    dataset: str | None
    stage: str
    reason: str


def read_clip_keys(path: str | Path | None) -> dict[str, str]:
    """instance id -> clip key from the feature store's ``instances.parquet`` (empty without one).

    Accepts the documented ``instance_id``/``clip_key`` columns and the store's ``id``/``key``.
    """
    if path is None:
        return {}
    table = _read_table(path)
    if table is None:
        raise FileNotFoundError(f"{path} does not exist")
    names = set(table.column_names)
    id_col = "instance_id" if "instance_id" in names else "id"
    key_col = "clip_key" if "clip_key" in names else "key"
    if id_col not in names or key_col not in names:
        raise ValueError(f"{path} has no instance_id/clip_key (or id/key) columns: {sorted(names)}")
    ids = table.column(id_col).to_pylist()
    keys = table.column(key_col).to_pylist()
    return {i: k for i, k in zip(ids, keys, strict=True) if i is not None and k is not None}


def read_store_rejects(instances_path: str | Path | None) -> dict[str, str]:
    """instance id -> reason from the ``rejects.parquet`` beside a store's ``instances.parquet``."""
    if instances_path is None:
        return {}
    from alarm.pipeline.objects import is_url

    beside = (f"{str(instances_path).rsplit('/', 1)[0]}/rejects.parquet" if is_url(instances_path)
              else Path(instances_path).parent / "rejects.parquet")
    table = _read_table(beside)
    if table is None or not {"id", "reason"} <= set(table.column_names):
        return {}
    return dict(zip(table.column("id").to_pylist(), table.column("reason").to_pylist(), strict=True))


def _read_table(location: str | Path) -> Any:
    """A Parquet table from a path or an object URL (one GET); None when it does not exist."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from alarm.pipeline.objects import is_url

    if not is_url(location):
        return pq.read_table(location) if Path(location).is_file() else None
    from alarm.pipeline.remote_audio import locate, read_object

    locate(str(location))[0].check()  # a wrong endpoint or bad credentials: one line, at once
    try:
        return pq.read_table(pa.BufferReader(read_object(str(location))))
    except FileNotFoundError:
        return None


def _probe(instance: Any) -> tuple[float | None, str | None]:
    from alarm.pipeline.probe import instance_duration

    try:
        return instance_duration(instance), None
    except Exception as err:  # any unreadable file becomes a reject, never a crash
        return None, f"unreadable_audio: {err}"


def collect_inputs(manifest: str | Path, max_audio_seconds: float, instances_path: str | Path | None = None,
                   probe_threads: int = 8) -> tuple[list[InputRow], list[InputReject]]:
    """Read the manifest, probe durations (headers only) and build descriptions.

    Args:
        manifest: the manifest path (JSONL or Parquet).
        max_audio_seconds: clips this long or longer are dropped (docs/method.md §5: 60 s).
        instances_path: optional feature-store ``instances.parquet`` giving each instance's clip key.
        probe_threads: header reads run in threads (they wait on the disk, not the CPU).
    """
    from alarm.pipeline.manifest import read_manifest
    from alarm.rephrase.describe import instance_description

    result = read_manifest(manifest)
    rejects = [InputReject(r.id, None, "manifest", r.reason) for r in result.rejects]
    clip_keys = read_clip_keys(instances_path)
    store_rejects = read_store_rejects(instances_path)
    with ThreadPoolExecutor(max_workers=probe_threads) as pool:
        probes = list(pool.map(_probe, result.instances))
    rows: list[InputRow] = []
    for instance, (duration, error) in zip(result.instances, probes, strict=True):
        reason = None
        description = None
        if instances_path is not None and instance.id not in clip_keys:
            # No features will exist for it: a target for it could never be trained on.
            reason = f"rejected_by_store: {store_rejects.get(instance.id, 'not in the feature store')}"
        elif error is not None or duration is None:
            reason = error or "unreadable_audio"
        elif duration >= max_audio_seconds:
            reason = f"audio_too_long: {duration:.1f}s >= {max_audio_seconds:g}s"
        elif not (instance.prompt or "").strip():  # whitespace asks nothing either
            reason = "no_prompt"
        elif instance.kind == "audio":
            try:
                description = instance_description(instance, duration)
            except ValueError as err:
                reason = f"no_description: {err}"
        if reason is not None:
            rejects.append(InputReject(instance.id, instance.dataset, "input", reason))
            continue
        rows.append(InputRow(
            instance_id=instance.id, dataset=instance.dataset, kind=instance.kind, audio=instance.audio,
            prompt=instance.prompt, description=description, context=instance.context,
            duration=duration, clip_key=clip_keys.get(instance.id),
        ))
    return rows, rejects


def rows_to_table(rows: list[Any]):
    """A pyarrow table from dataclass rows (all columns, in field order)."""
    import pyarrow as pa

    return pa.Table.from_pylist([asdict(r) for r in rows])
