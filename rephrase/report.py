"""A rephrase run's report: counts per pass, validation per rule, target lengths, examples."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from alarm.pipeline.formatting import truncate
from alarm.pipeline.report import (
    EXAMPLE_IDS,
    REPORT_JSON,
    Section,
    attempt,
    histogram_figure,
    read_json,
    read_parquet_rows,
    read_yaml,
    reject_table,
    summarize,
    write_report,
)
from alarm.rephrase.cache import PassCache
from alarm.rephrase.run_folder import cache_location, published_location
from alarm.rephrase.show import run_status


def _cache_counts(root: str, name: str) -> dict[str, int]:
    """ok / error / budget-forced / token counts of one pass's cache (its best row per key)."""
    rows = PassCache(root, name).read().values()
    return {"rows": len(rows), "ok": sum(r.ok for r in rows), "errors": sum(not r.ok for r in rows),
            "forced": sum(bool(r.forced) for r in rows), "tokens": sum(int(r.n_tokens or 0) for r in rows)}


def _run_states(out: Path) -> dict[str, Any]:
    """Per-pass request states of the run folder, as ``alarm rephrase status`` prints them."""
    return run_status(out)


def _run_record(out: Path, missing: list[str]) -> dict[str, Any]:
    """The per-pass statistics ``run_rephrase`` saved in report.json (or kept in an earlier report of ours)."""
    if (out / "run_report.json").is_file():  # what run_rephrase saves
        return attempt("run_report.json", lambda: read_json(out / "run_report.json"), missing, {}) or {}
    record = attempt("report.json (run statistics)", lambda: read_json(out / REPORT_JSON), missing, {}) or {}
    if "data" in record and "title" in record:  # our own report replaced the run's: take its copy
        record = (record["data"] or {}).get("run") or {}
    return record


def _pass_statistics(out: Path, run: dict[str, Any], cache_root: str,
                     missing: list[str]) -> dict[str, dict[str, Any]]:
    """Per pass: this run's statistics, its request states and its cache's counts."""
    # The states of this run's requests, exactly as `alarm rephrase status` counts them.
    states = attempt("pass states (as `alarm rephrase status`)", lambda: _run_states(out), missing, {}) or {}
    passes: dict[str, dict[str, Any]] = {}
    for name in ("answer", "rephrase", "judge"):
        in_cache = _cache_counts(cache_root, name) if PassCache(cache_root, name).parts() else None
        if run.get(name) or in_cache:
            passes[name] = {"run": run.get(name), "states": states.get(name), "cache": in_cache}
    if not passes:
        missing.append(f"no pass statistics (no run record, no cache under {cache_root})")
    return passes


def _target_lengths(targets: list[dict[str, Any]], rejects: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Target lengths in tokens: of the kept targets, and of those rejected as too short or too long."""
    import re

    # Lengths: kept targets carry n_tokens; length rejects carry it in their reason ("too_short: 37 < 100").
    lengths: dict[str, list[float]] = {"kept": [float(r["n_tokens"]) for r in targets if r.get("n_tokens") is not None]}
    for r in rejects:
        m = re.match(r"(too_short|too_long): (\d+)", str(r.get("reason") or ""))
        if m:
            lengths.setdefault(m.group(1).replace("_", " "), []).append(float(m.group(2)))
    return {k: v for k, v in lengths.items() if v}


def _rejects_by_rule(rejects: list[dict[str, Any]], hits: dict[str, Any]) -> list[dict[str, Any]]:
    """The reject table by rule, each row with the stages that rejected and the rule's hits."""
    # The rephrase rejects name their rule already ("leak:source_says" keeps its colon).
    by_rule = reject_table(rejects, id_key="instance_id", reason_key="rule", audio_key=None, kind=str)
    stages: dict[str, set[str]] = defaultdict(set)  # one pass over the rejects, not one per rule
    for r in rejects:
        if r.get("stage"):
            stages[str(r.get("rule") or "unknown")].add(r["stage"])
    for row in by_rule:
        row["stage"] = ", ".join(sorted(stages[row["reason"]]))
        row["hits"] = hits.get(row["reason"])
    return by_rule


def _rephrase_sections(data: dict[str, Any], passes: dict[str, dict[str, Any]], targets: list[dict[str, Any]],
                       lengths: dict[str, list[float]]) -> list[Section]:
    """The rephrase report's Markdown body: rows, passes, validation, lengths, examples."""
    inputs, before, after = data["inputs"], data["rejected_before_generation"], data["rejected_after_generation"]
    pass_rows = []
    for name, p in passes.items():
        r, st, c = p["run"] or {}, p["states"] or {}, p["cache"] or {}
        tok_s = r["tokens"] / r["seconds"] if r.get("seconds") else None
        pass_rows.append([name, st.get("requests", r.get("requested")), st.get("complete"), st.get("incomplete"),
                          st.get("error", c.get("errors")), st.get("pending"), r.get("cached"), r.get("generated"),
                          st.get("budget_forced", c.get("forced")), tok_s])
    accounting = (f"{data['manifest_rows']} manifest rows = {data['kept']} kept + {after} rejected after generation "
                  f"+ {before} rejected before generation (too long, no prompt, not in the feature store, ...) "
                  f"+ {data['pending']} pending; {inputs} rows went to generation."
                  if inputs is not None else "The run record is missing: no row accounting.")
    return [
        Section("Rows", text=accounting),
        Section("Passes", text="Each request of this run is in one state, as `alarm rephrase status` counts it: "
                               "*complete*, *incomplete* (stopped by the cap: an answer whose thinking never "
                               "closed, a rephrasing that hit the total cap), *error*, or *pending*. *Cached* and "
                               "*generated* are this run's: served from the cache, generated now.",
                headers=["pass", "requests", "complete", "incomplete", "error", "pending", "cached", "generated",
                         "budget-forced", "tokens/s"], rows=pass_rows),
        Section("Validation", text="Each rejected row counts once, under the first rule that hit it; "
                                   "*hits* counts every rule that matched a generated target.",
                headers=["rule", "stage", "rejected", "hits", "example ids"],
                rows=[["kept", "", data["kept"], None, ", ".join(r["instance_id"] for r in targets[:EXAMPLE_IDS])]]
                + [[r["reason"], r["stage"], r["count"], r["hits"], ", ".join(r["examples"])]
                   for r in data["rejected_per_rule"]]),
        Section("Target lengths", headers=["group", "targets", "min", "median", "max"],
                rows=[[k, len(v), min(v), statistics.median(v), max(v)] for k, v in lengths.items()],
                figure=data["figures"].get("target_lengths"), caption="target length histogram"),
        Section("Example targets" if targets else "Example rejected targets",
                headers=["instance", "dataset", "target"],
                rows=[[e["instance_id"], e["dataset"], truncate(e["target"] or "")] for e in data["examples"]]),
    ]


def write_rephrase_report(out_dir: str | Path) -> tuple[Path, Path]:
    """Report a rephrase run folder: per-pass counts, validation per rule, target lengths, examples.

    Args:
        out_dir: the run folder of ``run_rephrase``; the report is written into it (its report.json,
            which held the run's per-pass statistics, becomes our report, which keeps them under ``run``).

    Returns:
        The paths of report.json and report.md.
    """
    out = Path(out_dir)
    missing: list[str] = []
    run = _run_record(out, missing)
    stats = attempt("stats.json", lambda: read_json(out / "stats.json"), missing, {}) or run.get("validation") or {}
    config = attempt("config.yaml", lambda: read_yaml(out / "config.yaml"), missing, {}) or {}
    targets = attempt("targets.parquet", lambda: read_parquet_rows(
        out / "targets.parquet", ["instance_id", "dataset", "split", "n_tokens", "budget_forced", "target"]),
        missing, [])
    rejects = attempt("rejects.parquet", lambda: read_parquet_rows(out / "rejects.parquet"), missing, [])
    passes = _pass_statistics(out, run, cache_location(out, config.get("cache_dir")), missing)
    lengths = _target_lengths(targets, rejects)
    figures = {}
    validate_cfg = config.get("validate") or {}
    if lengths:
        marks = {f"{k} {validate_cfg[k]}": float(validate_cfg[k]) for k in ("min_tokens", "max_tokens")
                 if isinstance(validate_cfg.get(k), (int, float))}
        figures["target_lengths"] = histogram_figure(lengths, out / "target_lengths.png", "target length (tokens)",
                                                     "Target lengths", ylabel="targets", marks=marks).name
    else:
        missing.append("no target length known: no length histogram")
    hits = stats.get("rule_hits") or {}
    by_rule = _rejects_by_rule(rejects, hits)
    examples = [{"instance_id": r["instance_id"], "dataset": r["dataset"], "target": r["target"]}
                for r in targets[:2]]
    if not examples:  # nothing kept: show what was rejected instead, so the reader sees why
        examples = [{"instance_id": r["instance_id"], "dataset": r.get("dataset"), "rule": r.get("rule"),
                     "target": r.get("target")} for r in rejects if r.get("target")][:2]
    stages = Counter(str(r.get("stage")) for r in rejects)
    inputs = run.get("inputs", stats.get("inputs"))
    before = stats.get("rejected_before_generation", stages["input"])
    after = stats.get("rejected_after_generation", stages["generate"] + stages["validate"])
    data = {
        "kind": "rephrase", "out_dir": published_location(out),
        "manifest_rows": inputs + before if inputs is not None else None,
        "inputs": inputs, "input_rejects": run.get("input_rejects"),
        "passes": passes, "kept": stats.get("kept", len(targets)), "rejected": stats.get("rejected", len(rejects)),
        "rejected_before_generation": before, "rejected_after_generation": after,
        "rejected_manifest_lines": stats.get("rejected_manifest_lines", stages["manifest"]),
        "pending": stats.get("pending"), "split": stats.get("split", {}),
        "kept_per_dataset": stats.get("kept_per_dataset", {}), "rejected_per_rule": by_rule, "rule_hits": hits,
        "target_tokens": {k: summarize(v) for k, v in lengths.items()},
        "examples": examples, "run": run, "figures": figures,
    }
    key = {"manifest rows": data["manifest_rows"], "rows sent to generation": inputs, "kept targets": data["kept"],
           "rejected before generation": before, "rejected after generation": after, "pending": data["pending"],
           "model": (config.get("engine") or {}).get("model")}
    if data["rejected_manifest_lines"]:
        key["manifest lines rejected (not rows)"] = data["rejected_manifest_lines"]
    return write_report(out, "Rephrase report", data, _rephrase_sections(data, passes, targets, lengths), key, missing)
