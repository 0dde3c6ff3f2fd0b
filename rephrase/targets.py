"""Reading a run's cached generations back per instance, and writing targets and rejects.

The keys are recomputed from the run's inputs and config exactly as the passes built them, so
validation sees precisely the generations the current templates would use, never stale ones.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alarm.pipeline.store_layout import atomic_path
from alarm.rephrase.cache import PassCache
from alarm.rephrase.config import INPUTS_FILE, RUN_FILE, pass_specs
from alarm.rephrase.engines import weights_fingerprint
from alarm.rephrase.inputs import InputRow
from alarm.rephrase.parse import answer_target, extract_last_answer, is_incomplete, restore_tags
from alarm.rephrase.passes import ANSWER, REPHRASE, answer_request, rephrase_request, template_opens_thinking
from alarm.rephrase.rules import split_for
from alarm.rephrase.run_folder import cache_location

TARGETS_FILE = "targets.parquet"
REJECTS_FILE = "rejects.parquet"
STATS_FILE = "stats.json"


@dataclass
class Candidate:
    """A row on its way to becoming a target."""

    row: Any
    answer: str
    target: str | None = None
    incomplete: bool = False
    forced: bool = False
    answer_key: str = ""
    rephrase_key: str | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _cache_root(out: Path, run_cfg: Any) -> str:
    return cache_location(out, run_cfg.cache_dir)


def collect_candidates(out: Path, run_cfg: Any, tokenizer: Any) -> tuple[list[Any], list[str]]:
    """One ``Candidate`` per input whose generations are all done; ids still pending separately."""
    import pyarrow.parquet as pq

    specs = pass_specs(run_cfg, weights_fingerprint(run_cfg.engine.model))
    root = _cache_root(out, run_cfg)
    answers = PassCache(root, ANSWER).read()
    rephrased = PassCache(root, REPHRASE).read()
    opens = template_opens_thinking(tokenizer)
    candidates: list[Candidate] = []
    pending: list[str] = []
    for raw in pq.read_table(out / INPUTS_FILE).to_pylist():
        row = InputRow(**raw)
        key = answer_request(specs[ANSWER], tokenizer, row).key
        answer = answers.get(key)
        if answer is None:
            pending.append(row.instance_id)
            continue
        cand = Candidate(row=row, answer=answer.text, answer_key=key)
        candidates.append(cand)
        if not answer.ok:
            cand.reason = f"generation_error: answer: {answer.error}"
            continue
        if row.kind == "instruction":
            cand.target = answer_target(answer.text, opens)
            cand.incomplete = is_incomplete(answer.text)
            continue
        request, prepared = rephrase_request(specs[REPHRASE], tokenizer, answer.text)
        cand.rephrase_key = request.key
        cand.incomplete = prepared.incomplete
        done = rephrased.get(request.key)
        if done is None:
            candidates.pop()
            pending.append(row.instance_id)
            continue
        cand.forced = done.forced
        if not done.ok:
            cand.reason = f"generation_error: rephrase: {done.error}"
            continue
        extracted = extract_last_answer(done.text)
        if extracted is None:
            cand.reason = "unparseable"
            continue
        cand.target = restore_tags(extracted, prepared.incomplete, opens)
    return candidates, pending


def _write(rows: list[dict[str, Any]], schema: Any, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)


def _schemas() -> tuple[Any, Any]:
    import pyarrow as pa

    targets = pa.schema([
        ("instance_id", pa.string()), ("clip_key", pa.string()), ("dataset", pa.string()),
        ("kind", pa.string()), ("prompt", pa.string()), ("target", pa.string()),
        ("incomplete", pa.bool_()), ("split", pa.string()), ("n_tokens", pa.int64()),
        ("model", pa.string()), ("model_fingerprint", pa.string()),
        ("answer_template_hash", pa.string()), ("rephrase_template_hash", pa.string()),
        ("sampling", pa.string()), ("answer_key", pa.string()), ("rephrase_key", pa.string()),
        ("budget_forced", pa.bool_()), ("description", pa.string()), ("answer", pa.string()),
        ("audio", pa.string()), ("duration", pa.float64()),
    ])
    rejects = pa.schema([
        ("instance_id", pa.string()), ("dataset", pa.string()), ("stage", pa.string()),
        ("reason", pa.string()), ("rule", pa.string()), ("target", pa.string()),
    ])
    return targets, rejects


def _clip_of(row: Any) -> str:
    """What must not straddle the splits: the clip's store key, else its file's name (not its full path:
    the same corpus read from a copy elsewhere, on object storage say, must split the same)."""
    return row.clip_key or row.audio.replace("\\", "/").rsplit("/", 1)[-1]


def _clip_key_note(out: Path, n_inputs: int) -> str:
    """Where the targets' clip keys come from, and how many generation inputs got one."""
    import pyarrow.parquet as pq

    record = json.loads((out / RUN_FILE).read_text()) if (out / RUN_FILE).is_file() else {}
    if not record.get("instances"):
        return "null: no --instances given (targets cannot be joined with a feature store)"
    keys = pq.read_table(out / INPUTS_FILE).column("clip_key").to_pylist() if n_inputs else []
    have = sum(1 for k in keys if k)
    return f"from {record['instances']}: {have} of {n_inputs} generation inputs have a clip key"


def write_outputs(out: Path, run_cfg: Any, cfg: Any, candidates: list[Any], pending: list[str],
                  input_rejects: list[dict[str, Any]], hits: Counter, n_inputs: int) -> dict[str, Any]:
    """Write targets, rejects and statistics; return the statistics."""

    fingerprint = weights_fingerprint(run_cfg.engine.model)
    specs = pass_specs(run_cfg, fingerprint)
    target_schema, reject_schema = _schemas()
    kept: list[dict[str, Any]] = []
    rejects = [{"instance_id": r["instance_id"], "dataset": r["dataset"], "stage": r["stage"],
                "reason": r["reason"], "rule": r["reason"].split(":", 1)[0], "target": None}
               for r in input_rejects]
    for cand in candidates:
        row = cand.row
        if cand.reason is not None:
            stage = "generate" if cand.reason.startswith("generation_error") else "validate"
            rejects.append({"instance_id": row.instance_id, "dataset": row.dataset, "stage": stage,
                            "reason": cand.reason, "rule": cand.reason.split(":", 1)[0]
                            if not cand.reason.startswith(("leak:", "refusal:")) else cand.reason,
                            "target": cand.target})
            continue
        audio = row.kind == "audio"
        kept.append({
            "instance_id": row.instance_id, "clip_key": row.clip_key, "dataset": row.dataset,
            "kind": row.kind, "prompt": row.prompt, "target": cand.target, "incomplete": cand.incomplete,
            "split": split_for(row.dataset, _clip_of(row), cfg.val_fraction),
            "n_tokens": cand.extra.get("n_tokens"), "model": run_cfg.engine.model,
            "model_fingerprint": fingerprint, "answer_template_hash": specs[ANSWER].template_hash,
            "rephrase_template_hash": specs[REPHRASE].template_hash if audio else None,
            "sampling": specs[ANSWER].sampling.to_json(), "answer_key": cand.answer_key,
            "rephrase_key": cand.rephrase_key, "budget_forced": cand.forced,
            "description": row.description, "answer": cand.answer, "audio": row.audio,
            "duration": row.duration,
        })
    _write(kept, target_schema, out / TARGETS_FILE)
    _write(rejects, reject_schema, out / REJECTS_FILE)
    stages = Counter(r["stage"] for r in rejects)
    before = stages["input"]
    after = stages["generate"] + stages["validate"]
    stats = {
        # Every valid manifest row ends in exactly one of: kept, pending, rejected before generation
        # (stage "input"), rejected after it (stages "generate", "validate"). Manifest lines that are
        # not valid rows (stage "manifest") are counted on their own.
        "manifest_rows": n_inputs + before,
        "inputs": n_inputs,
        "kept": len(kept),
        "pending": len(pending),
        "rejected_before_generation": before,
        "rejected_after_generation": after,
        "rejected_manifest_lines": stages["manifest"],
        "rejected": len(rejects),
        "accounting": (f"{n_inputs + before} manifest rows = {len(kept)} kept + {after} rejected after generation "
                       f"+ {before} rejected before generation + {len(pending)} pending; {n_inputs} rows went "
                       f"to generation"),
        "split": dict(Counter(r["split"] for r in kept)),
        "kept_per_dataset": dict(Counter(r["dataset"] for r in kept)),
        "incomplete_kept": sum(1 for r in kept if r["incomplete"]),
        "rejected_per_rule": dict(Counter(r["rule"] for r in rejects).most_common()),
        "rule_hits": dict(hits.most_common()),
        "clip_keys": _clip_key_note(out, n_inputs),
    }
    (out / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    return stats
