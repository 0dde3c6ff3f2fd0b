"""A stage-0 run's report: counts per pass, candidates per clip, accept rate per rule, leaks, diversity.

``report.json`` holds the numbers, ``report.md`` the same for people, ``prompt_lengths.png`` the
candidates' lengths in words and their most frequent first words.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from alarm.pipeline.formatting import truncate
from alarm.pipeline.report import (
    Section,
    _figure,
    _save,
    attempt,
    read_json,
    read_parquet_rows,
    read_yaml,
    reject_table,
    write_report,
)
from alarm.rephrase.prompt_check import words
from alarm.rephrase.prompt_config import CANDIDATES_FILE, CHECK, GENERATE, REJECTS_FILE, STATS_FILE
from alarm.rephrase.prompt_show import prompt_status
from alarm.rephrase.run_folder import published_location

ALARM_UNIQUE_PER_INSTANCE = 0.41  # ALARM's corpus: 2.49M unique prompts for 6.08M instances
FIGURE = "prompt_lengths.png"
FIRST_WORDS = 12


def prompt_figure(candidates: list[dict[str, Any]], path: Path) -> Path:
    """Two panels: candidate lengths in words (all, accepted), and the most frequent first words."""
    import numpy as np

    fig = _figure(10.0, 4.0)
    left, right = fig.subplots(1, 2)
    groups = {"all candidates": [len(c["prompt"].split()) for c in candidates],
              "accepted": [len(c["prompt"].split()) for c in candidates if c["accepted"]]}
    top = max([1, *groups["all candidates"]])
    bins = np.arange(0.5, top + 1.5, max(1, top // 30))
    for name, values in groups.items():
        if values:
            left.hist(values, bins=bins, histtype="step", linewidth=1.6, label=f"{name} ({len(values):,})")
    left.set_xlabel("prompt length (words)")
    left.set_ylabel("candidates")
    left.set_title("Prompt lengths")
    if candidates:
        left.legend(fontsize=8)
    first = Counter((words(c["prompt"]) or [""])[0] for c in candidates).most_common(FIRST_WORDS)
    accepted = Counter((words(c["prompt"]) or [""])[0] for c in candidates if c["accepted"])
    names = [w or "(none)" for w, _ in first][::-1]
    right.barh(names, [n for _, n in first][::-1], color="lightgrey", label="all candidates")
    right.barh(names, [accepted[w] for w, _ in first][::-1], color="tab:blue", label="accepted")
    right.set_xlabel("candidates")
    right.set_title("Most frequent first words")
    if first:
        right.legend(fontsize=8)
    return _save(fig, path)


def _pass_rows(run: dict[str, Any], states: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name in (GENERATE, CHECK):
        r, st = run.get(name) or {}, states.get(name) or {}
        tok_s = r["tokens"] / r["seconds"] if r.get("seconds") else None
        rows.append([name, st.get("requests", r.get("requested")), st.get("finished"), st.get("error"),
                     st.get("pending"), st.get("length_capped"), r.get("cached"), r.get("generated"), tok_s])
    return rows


def _sections(data: dict[str, Any], stats: dict[str, Any], candidates: list[dict[str, Any]]) -> list[Section]:
    rules = stats.get("rules") or {}
    leaks = stats.get("leaks") or {}
    ratio = stats.get("unique_per_instance")
    no_candidates = (data["states"].get(GENERATE) or {}).get("clips_without_candidates") or {}
    examples = [[c["clip_id"], c["prompt"], "yes" if c["accepted"] else "no", c["rule"] or "", truncate(c["reason"] or "", 80)]
                for c in (candidates[:6])]
    return [
        Section("Rows", text=stats.get("accounting") or "No statistics: the run has not finished."),
        Section("Passes", text="*generation* writes the candidates of each clip to prompt; *check* labels them, one "
                               "request per clip whose generation gave candidates. Each request is *finished*, "
                               "*error* (`alarm prompts retry-failed` retries it) or *pending*; *length-capped* ones "
                               "stopped at the token cap. *Cached* and *generated* are this run's.",
                headers=["pass", "requests", "finished", "error", "pending", "length-capped", "cached", "generated",
                         "tokens/s"], rows=_pass_rows(data["run"], data["states"])),
        Section("Candidates per clip",
                text=("Clips whose generation gave no candidate: " + ", ".join(f"{k} {v}" for k, v in no_candidates.items())
                      + " (a reply needs an `<answer>` block with one prompt per line).") if no_candidates else "",
                headers=["candidates", "clips"],
                rows=[[n, c] for n, c in (stats.get("candidates_per_clip") or {}).items()]),
        Section("Accept rate per rule", text="Each candidate is judged by code and by the checker LLM; a rule "
                "rejects it when either says it breaks it. *checker_verdict*: the checker gave no readable label.",
                headers=["rule", "judged", "rejected by code", "rejected by checker", "rejected", "accept rate"],
                rows=[[k, v["judged"], v["rejected_by_code"], v["rejected_by_checker"], v["rejected"], v["accept_rate"]]
                      for k, v in rules.items()]),
        Section("Rejected clips", text="A clip is rejected when no candidate is usable; the reason counts each "
                                       "candidate's first failing rule.",
                headers=["reason", "clips", "example ids", "example reason"],
                rows=[[r["reason"], r["count"], ", ".join(r["examples"]), truncate(r["example_reason"], 100)]
                      for r in data["rejected_clips"]]),
        Section("Leaks found in code", headers=["rule", "hits", "examples (prompt → matched)"],
                rows=[[k, v["hits"], "; ".join(f"{truncate(e['prompt'], 60)} → {e['matched']}" for e in v["examples"])]
                      for k, v in leaks.items()]),
        Section("Prompt diversity", text=(f"{stats.get('unique_prompts')} unique prompts for "
                                          f"{stats.get('generated_instances')} prompted instances: "
                                          f"{ratio:.2f} per instance (ALARM's corpus: {ALARM_UNIQUE_PER_INSTANCE})."
                                          if ratio is not None else "No prompt was chosen."),
                headers=["most repeated prompt", "instances"],
                rows=[[p["prompt"], p["count"]] for p in stats.get("top_repeated_prompts") or []]),
        Section("Prompt lengths and first words", figure=data["figures"].get("prompts"),
                caption="prompt lengths and most frequent first words"),
        Section("Example candidates", headers=["clip", "prompt", "usable", "rule", "reason"], rows=examples),
    ]


def write_prompts_report(out_dir: str | Path) -> tuple[Path, Path]:
    """Report a stage-0 run folder (``report.json``, ``report.md``, ``prompt_lengths.png``)."""
    out = Path(out_dir)
    missing: list[str] = []
    run = attempt("run_report.json", lambda: read_json(out / "run_report.json"), missing, {}) or {}
    stats = attempt(STATS_FILE, lambda: read_json(out / STATS_FILE), missing, {}) or {}
    config = attempt("config.yaml", lambda: read_yaml(out / "config.yaml"), missing, {}) or {}
    states = attempt("pass states (as `alarm prompts status`)", lambda: prompt_status(out), missing, {}) or {}
    candidates = attempt(CANDIDATES_FILE, lambda: read_parquet_rows(out / CANDIDATES_FILE), missing, []) or []
    rejects = attempt(REJECTS_FILE, lambda: read_parquet_rows(out / REJECTS_FILE), missing, []) or []
    figures = {}
    if candidates:
        figures["prompts"] = prompt_figure(candidates, out / FIGURE).name
    else:
        missing.append("no candidate reached the checker: no length figure")
    lengths = [len(c["prompt"].split()) for c in candidates]
    clip_rejects = [r for r in rejects if r.get("stage") in ("generate", "check")]
    data = {
        "kind": "prompts", "out_dir": published_location(out), "run": run, "states": {k: v for k, v in states.items()
                                                                                 if k != "outputs"},
        "statistics": stats, "alarm_unique_per_instance": ALARM_UNIQUE_PER_INSTANCE,
        "prompt_words": {"median": statistics.median(lengths) if lengths else None, "max": max(lengths, default=None)},
        "rejected_clips": reject_table(clip_rejects, id_key="id", reason_key="rule", audio_key=None, kind=str),
        "input_rejects": reject_table([r for r in rejects if r.get("stage") in ("input", "manifest")],
                                      id_key="id", audio_key=None),
        "figures": figures,
    }
    for row in data["rejected_clips"]:  # the first full reason of each rule, for people
        row["example_reason"] = next((r["reason"] for r in clip_rejects if r["rule"] == row["reason"]), "")
    key = {"manifest rows": stats.get("manifest_rows"), "clips to prompt": stats.get("to_prompt"),
           "clips prompted": stats.get("clips_prompted"), "clips rejected": stats.get("clips_rejected"),
           "passed through": stats.get("passed_through"), "instances written": stats.get("instances_written"),
           "pending": stats.get("pending"), "model": (config.get("engine") or {}).get("model")}
    return write_report(out, "Prompts report (stage 0)", data, _sections(data, stats, candidates), key, missing)
