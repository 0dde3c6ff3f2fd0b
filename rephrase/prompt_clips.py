"""The clips stage 0 starts from: one per manifest row, to prompt or to pass through, with its description.

A row is prompted when it is an audio row without a prompt (or with one, under
``replace_given_prompts``); every other valid row passes through to the output manifest unchanged.
Rows that cannot be prompted are dropped here, before any generation is paid for, each with a reason:
unreadable audio, clips at or over the length limit, no description.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from alarm.pipeline.store_layout import atomic_path

PROMPT, KEEP = "prompt", "keep"  # what happens to a row


@dataclass(frozen=True)
class ClipRow:
    """One manifest row as stage 0 sees it.

    Attributes:
        id: the row's id, which is also the clip key of the seeded choice.
        dataset: its dataset.
        domain: speech, sound or music (``pipeline.stats.domain_of``, or the config's override);
            ``instruction`` for spoken instructions.
        action: ``prompt`` (candidates are generated) or ``keep`` (passes through unchanged).
        description: the text the LLM sees in place of the audio (prompted rows only).
        row: the manifest row as JSON (audio resolved to an absolute path), written back out with its
            prompt filled.
    """

    id: str
    dataset: str
    domain: str
    action: str
    description: str | None
    row: str

    @property
    def metadata(self) -> dict[str, Any]:
        return json.loads(self.row).get("metadata") or {}


@dataclass(frozen=True)
class ClipReject:
    """A manifest row left out of stage 0, with why."""

    id: str | None
    dataset: str | None
    stage: str
    reason: str


def _probe(instance: Any) -> tuple[float | None, str | None]:
    from alarm.pipeline.probe import instance_duration

    try:
        return instance_duration(instance), None
    except Exception as err:  # any unreadable file becomes a reject, never a crash
        return None, f"unreadable_audio: {err}"


def _reason(instance: Any, probe: tuple[float | None, str | None], max_seconds: float) -> tuple[str | None, str | None]:
    """(reject reason, description) of a row to prompt."""
    from alarm.rephrase.describe import instance_description

    duration, error = probe
    if error is not None or duration is None:
        return error or "unreadable_audio", None
    if duration >= max_seconds:
        return f"audio_too_long: {duration:.1f}s >= {max_seconds:g}s", None
    try:
        return None, instance_description(instance, duration)
    except ValueError as err:
        return f"no_description: {err}", None


def collect_clips(manifest: str | Path, cfg: Any, probe_threads: int = 8) -> tuple[list[ClipRow], list[ClipReject]]:
    """Read the manifest, decide each row's action, probe durations (headers only) and describe the clips.

    Args:
        manifest: the manifest path (JSONL or Parquet).
        cfg: the ``PromptsConfig`` (``replace_given_prompts``, ``max_audio_seconds``, ``dataset_domains``).
        probe_threads: header reads run in threads (they wait on the disk, not the CPU).
    """
    from alarm.pipeline.manifest import read_manifest
    from alarm.pipeline.stats import domain_of

    result = read_manifest(manifest)
    rejects = [ClipReject(r.id, None, "manifest", r.reason) for r in result.rejects]
    wanted = [i for i in result.instances
              if i.kind == "audio" and (not i.prompt or cfg.replace_given_prompts)]
    with ThreadPoolExecutor(max_workers=probe_threads) as pool:
        probes = dict(zip([i.id for i in wanted], pool.map(_probe, wanted), strict=True))
    clips: list[ClipRow] = []
    for instance in result.instances:
        domain = cfg.dataset_domains.get(instance.dataset) or domain_of(instance)
        row = json.dumps(instance.to_row(), ensure_ascii=False, sort_keys=True)
        if instance.id not in probes:
            if not instance.prompt:  # an instruction row without its question
                rejects.append(ClipReject(instance.id, instance.dataset, "input", "no_prompt: instruction row"))
                continue
            clips.append(ClipRow(instance.id, instance.dataset, domain, KEEP, None, row))
            continue
        reason, description = _reason(instance, probes[instance.id], cfg.max_audio_seconds)
        if reason is not None:
            rejects.append(ClipReject(instance.id, instance.dataset, "input", reason))
            continue
        clips.append(ClipRow(instance.id, instance.dataset, domain, PROMPT, description, row))
    return clips, rejects


def write_rows(rows: list[Any], path: Path, schema: Any = None) -> None:
    """Dataclass rows (or dicts) as a Parquet file: temporary file, then rename."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = [r if isinstance(r, dict) else asdict(r) for r in rows]
    table = pa.Table.from_pylist(data, schema=schema) if schema is not None or data else pa.table({})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_clips(path: Path) -> list[ClipRow]:
    """The clips a run folder holds."""
    import pyarrow.parquet as pq

    return [ClipRow(**r) for r in pq.read_table(path).to_pylist()]
