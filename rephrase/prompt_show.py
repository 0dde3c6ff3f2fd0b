"""Looking at a stage-0 run: per-pass status from the caches, and sample clips with their candidates."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from alarm.rephrase.cache import PassCache
from alarm.rephrase.prompt_clips import read_clips
from alarm.rephrase.prompt_config import (
    CANDIDATES_FILE,
    CHECK,
    CLIPS_FILE,
    GENERATE,
    STATS_FILE,
    cache_root,
    load_prompt_run,
)
from alarm.rephrase.prompt_passes import Models, plan_run
from alarm.rephrase.run_folder import published_location, run_folder


def prompt_status(out_dir: str | Path) -> dict[str, Any]:
    """Counts per pass and state, tokens and throughput, from the caches alone.

    Each request of the run is in exactly one state, so ``finished + error + pending == requests``:
    *finished* (generated without error), *error* (the engine failed on it; ``alarm prompts
    retry-failed`` retries these) or *pending* (not generated yet). The checker's requests exist only
    for clips whose generation gave candidates; ``clips_without_candidates`` counts the others by why
    (clips, not requests: rows with the same description share one request). ``outputs`` repeats
    ``stats.json``. ``out_dir`` may be a URL.
    """
    with run_folder(out_dir, publish=False) as (out, _):
        return _status_in(out)


def _status_in(out: Path) -> dict[str, Any]:
    cfg, _ = load_prompt_run(out)
    clips = read_clips(out / CLIPS_FILE)
    root = cache_root(out, cfg)
    caches = {name: PassCache(root, name).read() for name in (GENERATE, CHECK)}
    plan = plan_run(cfg, Models.load(cfg), clips, caches[GENERATE])
    status: dict[str, Any] = {}
    for name, requests in ((GENERATE, plan.generate), (CHECK, plan.check)):
        keys = {r.key for r in requests.values()}
        rows = [caches[name][k] for k in keys if k in caches[name]]
        tokens = sum(r.n_tokens for r in rows)
        seconds = sum(r.gen_seconds for r in rows)
        status[name] = {
            "requests": len(keys), "finished": sum(1 for r in rows if r.ok), "error": sum(1 for r in rows if not r.ok),
            "pending": len(keys) - len(rows), "length_capped": sum(1 for r in rows if r.ok and r.finish_reason == "length"),
            "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        }
    problems: dict[str, int] = {}
    for found in plan.candidates.values():
        if found.problem:
            problems[found.problem] = problems.get(found.problem, 0) + 1
    status[GENERATE]["clips_without_candidates"] = problems
    if (out / STATS_FILE).is_file():
        status["outputs"] = json.loads((out / STATS_FILE).read_text())
    return status


def sample_clips(out_dir: str | Path, n: int = 3, seed: int | None = None) -> list[dict[str, Any]]:
    """``n`` random clips that reached the checker: description, each candidate's verdict, the choice.

    Returns:
        One dict per clip: ``clip_id``, ``dataset``, ``domain``, ``description`` and ``candidates``
        (prompt, accepted, rule, reason, chosen), candidate order.
    """
    with run_folder(out_dir, publish=False) as (out, _):
        return _sample_in(out, n, seed)


def _sample_in(out: Path, n: int, seed: int | None) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    load_prompt_run(out)
    path = out / CANDIDATES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{CANDIDATES_FILE} does not exist in {published_location(out)}; "
                                "run `alarm prompts run` first")
    by_clip: dict[str, list[dict[str, Any]]] = {}
    for row in pq.read_table(path).to_pylist():
        by_clip.setdefault(row["clip_id"], []).append(row)
    descriptions = {c.id: c.description for c in read_clips(out / CLIPS_FILE)}
    picked = random.Random(seed).sample(sorted(by_clip), min(n, len(by_clip)))
    return [{"clip_id": cid, "dataset": by_clip[cid][0]["dataset"], "domain": by_clip[cid][0]["domain"],
             "description": descriptions.get(cid), "candidates": sorted(by_clip[cid], key=lambda r: r["index"])}
            for cid in picked]
