"""From cached generations to stage 0's outputs: each candidate's verdict, the choice, the manifest.

Reads only the caches (never generates), so a new code rule or a new ``choose`` re-derives every
output without a request. Each candidate's verdict is its first code rule that hits, else the
checker's label; a clip without a usable candidate is a reject with the count of each reason.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alarm.rephrase.cache import CachedGeneration
from alarm.rephrase.prompt_check import RULE_GROUP, LeakSource, code_checks
from alarm.rephrase.prompt_choice import choose_prompts, instance_id
from alarm.rephrase.prompt_clips import PROMPT, ClipRow, write_rows
from alarm.rephrase.prompt_config import (
    CANDIDATES_FILE,
    MANIFEST_FILE,
    REJECTS_FILE,
    STATS_FILE,
    PromptsConfig,
)
from alarm.rephrase.prompt_parse import parse_verdicts
from alarm.rephrase.prompt_passes import Plan
from alarm.rephrase.prompt_templates import CHECK_RULES

LEAK_EXAMPLES = 3  # examples kept per leak rule


@dataclass
class Outcome:
    """What the results step found, before it is written."""

    candidates: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    manifest: list[dict[str, Any]] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    prompted: int = 0  # clips that got at least one prompt
    passed_through: int = 0


def _reject(clip: ClipRow, stage: str, reason: str) -> dict[str, Any]:
    return {"id": clip.id, "dataset": clip.dataset, "stage": stage, "reason": reason,
            "rule": reason.split(":", 1)[0]}


def _judge(clip: ClipRow, prompts: tuple[str, ...], check_text: str, cfg: PromptsConfig) -> list[dict[str, Any]]:
    """One row per candidate: code hits, the checker's verdict, and the first reason it is unusable."""
    source = LeakSource.from_metadata(clip.metadata, clip.description or "")
    verdicts = parse_verdicts(check_text, len(prompts))
    rows = []
    for index, (prompt, hits, verdict) in enumerate(zip(prompts, code_checks(prompts, source, cfg.max_words),
                                                        verdicts, strict=True)):
        if hits:
            rule, reason = f"code:{hits[0][0]}", hits[0][1]
        elif verdict.keep is None:
            rule, reason = "checker:no_verdict", "the checker gave this candidate no readable verdict"
        elif not verdict.keep:
            rule, reason = f"checker:{verdict.rule or 'unspecified'}", verdict.reason
        else:
            rule, reason = None, ""
        rows.append({
            "clip_id": clip.id, "dataset": clip.dataset, "domain": clip.domain, "index": index, "prompt": prompt,
            "accepted": rule is None, "rule": rule, "reason": reason,
            "code_rules": [name for name, _ in hits], "code_matches": [what for _, what in hits],
            "checker_verdict": None if verdict.keep is None else ("keep" if verdict.keep else "reject"),
            "checker_rule": verdict.rule, "checker_reason": verdict.reason, "chosen": False, "instance_id": None,
        })
    return rows


def _choose(clip: ClipRow, rows: list[dict[str, Any]], cfg: PromptsConfig, outcome: Outcome) -> None:
    accepted = [r["prompt"] for r in rows if r["accepted"]]
    chosen = choose_prompts(accepted, cfg.choose, cfg.seed, clip.id)
    if not chosen:
        why = Counter(r["rule"] for r in rows)
        outcome.rejects.append(_reject(clip, "check", f"no_usable_prompt: {len(rows)} candidates: "
                                       + ", ".join(f"{rule} {n}" for rule, n in why.most_common())))
        return
    outcome.prompted += 1
    base = json.loads(clip.row)
    for j, prompt in enumerate(chosen):
        new_id = instance_id(clip.id, j, cfg.choose)
        outcome.manifest.append({**base, "id": new_id, "prompt": prompt})
        row = next(r for r in rows if r["prompt"] == prompt and not r["chosen"])
        row["chosen"], row["instance_id"] = True, new_id


def collect_outcome(clips: list[ClipRow], plan: Plan, generated: dict[str, CachedGeneration],
                    checked: dict[str, CachedGeneration], cfg: PromptsConfig) -> Outcome:
    """Every clip's fate: passed through, prompted, rejected with a reason, or pending."""
    outcome = Outcome()
    for clip in clips:
        if clip.action != PROMPT:
            outcome.manifest.append(json.loads(clip.row))
            outcome.passed_through += 1
            continue
        gen = generated.get(plan.generate[clip.id].key)
        if gen is None:
            outcome.pending.append(clip.id)
            continue
        if not gen.ok:
            outcome.rejects.append(_reject(clip, "generate", f"generation_error: prompt: {gen.error}"))
            continue
        found = plan.candidates[clip.id]
        if found.problem is not None:
            outcome.rejects.append(_reject(clip, "generate", f"no_candidates: {found.problem}"))
            continue
        check = checked.get(plan.check[clip.id].key)
        if check is None:
            outcome.pending.append(clip.id)
            continue
        if not check.ok:
            outcome.rejects.append(_reject(clip, "check", f"generation_error: check: {check.error}"))
            continue
        rows = _judge(clip, found.prompts, check.text, cfg)
        _choose(clip, rows, cfg, outcome)
        outcome.candidates.extend(rows)
    return outcome


def rule_statistics(candidates: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per checker rule: candidates judged, rejected by code, by the checker, by either, accept rate."""
    total = len(candidates)
    stats: dict[str, dict[str, Any]] = {}
    for rule in CHECK_RULES:
        by_code = {i for i, c in enumerate(candidates) if any(RULE_GROUP.get(r) == rule for r in c["code_rules"])}
        by_checker = {i for i, c in enumerate(candidates) if c["checker_rule"] == rule}
        rejected = len(by_code | by_checker)
        stats[rule] = {"judged": total, "rejected_by_code": len(by_code), "rejected_by_checker": len(by_checker),
                       "rejected": rejected, "accept_rate": (total - rejected) / total if total else None}
    no_verdict = sum(1 for c in candidates if c["checker_verdict"] is None)
    stats["checker_verdict"] = {"judged": total, "rejected_by_code": 0, "rejected_by_checker": no_verdict,
                                "rejected": no_verdict, "accept_rate": (total - no_verdict) / total if total else None}
    return stats


def leak_examples(candidates: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per code ``no_leak`` rule: how many candidates it hit, and a few of them with what matched."""
    out: dict[str, dict[str, Any]] = {}
    for c in candidates:
        for rule, what in zip(c["code_rules"], c["code_matches"], strict=True):
            if RULE_GROUP.get(rule) != "no_leak":
                continue
            entry = out.setdefault(rule, {"hits": 0, "examples": []})
            entry["hits"] += 1
            if len(entry["examples"]) < LEAK_EXAMPLES:
                entry["examples"].append({"clip_id": c["clip_id"], "prompt": c["prompt"], "matched": what})
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["hits"]))


def _statistics(clips: list[ClipRow], input_rejects: list[dict[str, Any]], outcome: Outcome,
                plan: Plan) -> dict[str, Any]:
    to_prompt = sum(1 for c in clips if c.action == PROMPT)
    stages = Counter(r["stage"] for r in input_rejects)
    chosen = [c["prompt"] for c in outcome.candidates if c["chosen"]]
    repeated = Counter(chosen)
    per_clip = Counter(len(found.prompts) for found in plan.candidates.values())
    return {
        "manifest_rows": len(clips) + stages["input"], "to_prompt": to_prompt, "passed_through": outcome.passed_through,
        "rejected_before_generation": stages["input"], "rejected_manifest_lines": stages["manifest"],
        "clips_prompted": outcome.prompted, "clips_rejected": len(outcome.rejects), "pending": len(outcome.pending),
        "accounting": (f"{len(clips) + stages['input']} manifest rows = {outcome.passed_through} passed through + "
                       f"{outcome.prompted} prompted + {len(outcome.rejects)} rejected after generation + "
                       f"{stages['input']} rejected before generation + {len(outcome.pending)} pending"),
        "instances_written": len(outcome.manifest), "generated_instances": len(chosen),
        "unique_prompts": len(repeated),
        "unique_per_instance": len(repeated) / len(chosen) if chosen else None,
        "candidates": sum(per_clip[n] * n for n in per_clip), "candidates_per_clip": dict(sorted(per_clip.items())),
        "accepted_candidates": sum(1 for c in outcome.candidates if c["accepted"]),
        "rules": rule_statistics(outcome.candidates),
        "rejected_candidates_per_rule": dict(Counter(c["rule"] for c in outcome.candidates if c["rule"]).most_common()),
        "code_rule_hits": dict(Counter(r for c in outcome.candidates for r in c["code_rules"]).most_common()),
        "rejected_clips_per_rule": dict(Counter(r["rule"] for r in outcome.rejects).most_common()),
        "leaks": leak_examples(outcome.candidates),
        "top_repeated_prompts": [{"prompt": p, "count": n} for p, n in repeated.most_common(10) if n > 1],
    }


def _candidate_schema():
    import pyarrow as pa

    text = pa.string()
    return pa.schema([("clip_id", text), ("dataset", text), ("domain", text), ("index", pa.int64()),
                      ("prompt", text), ("accepted", pa.bool_()), ("rule", text), ("reason", text),
                      ("code_rules", pa.list_(text)), ("code_matches", pa.list_(text)), ("checker_verdict", text),
                      ("checker_rule", text), ("checker_reason", text), ("chosen", pa.bool_()), ("instance_id", text)])


def _reject_schema():
    import pyarrow as pa

    return pa.schema([(name, pa.string()) for name in ("id", "dataset", "stage", "reason", "rule")])


def write_results(out: Path, clips: list[ClipRow], input_rejects: list[dict[str, Any]], plan: Plan,
                  generated: dict[str, CachedGeneration], checked: dict[str, CachedGeneration],
                  cfg: PromptsConfig) -> dict[str, Any]:
    """Write candidates.parquet, rejects.parquet, manifest.jsonl and stats.json; return the statistics."""
    from alarm.pipeline.manifest import write_manifest

    outcome = collect_outcome(clips, plan, generated, checked, cfg)
    write_rows(outcome.candidates, out / CANDIDATES_FILE, _candidate_schema())
    rejects = [{**r, "rule": r["reason"].split(":", 1)[0]} for r in input_rejects] + outcome.rejects
    write_rows(rejects, out / REJECTS_FILE, _reject_schema())
    write_manifest(outcome.manifest, out / MANIFEST_FILE)
    stats = _statistics(clips, input_rejects, outcome, plan)
    (out / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    return stats
