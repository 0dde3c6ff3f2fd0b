"""Looking at a run: per-pass status, and sample rows with the rephraser's edits highlighted."""

from __future__ import annotations

import difflib
import json
import random
from pathlib import Path
from typing import Any

from alarm.rephrase.cache import PassCache
from alarm.rephrase.config import INPUTS_FILE, load_run, load_tokenizer, pass_specs
from alarm.rephrase.engines import weights_fingerprint
from alarm.rephrase.inputs import InputRow
from alarm.rephrase.parse import is_incomplete
from alarm.rephrase.passes import ANSWER, REPHRASE, answer_request, rephrase_request
from alarm.rephrase.run_folder import run_folder
from alarm.rephrase.targets import STATS_FILE, TARGETS_FILE, _cache_root


def run_status(out_dir: str | Path) -> dict[str, Any]:
    """Counts per pass and state, tokens generated and throughput, from the cache alone.

    Each request of the run is in exactly one state, so ``complete + incomplete + error + pending ==
    requests``:

    * ``complete``: generated without error and within its cap;
    * ``incomplete``: generated without error but stopped by the cap (an answer whose thinking
      never closed, a rephrasing that hit the total cap). A tiny random LLM leaves every answer here;
    * ``error``: the engine failed on it (``alarm rephrase retry-failed`` retries these);
    * ``pending``: not generated yet.

    ``finished`` is ``complete + incomplete``: what the run report counts as generated. The
    ``targets`` entry repeats the validation counts of ``stats.json``.
    """
    with run_folder(out_dir, publish=False) as (out, _):
        return _status_in(out)


def _status_in(out: Path) -> dict[str, Any]:
    """``run_status`` of a local folder (the run's own, or the work folder of a URL run)."""
    import pyarrow.parquet as pq

    cfg, _ = load_run(out)
    tokenizer = load_tokenizer(cfg.engine.model)
    specs = pass_specs(cfg, weights_fingerprint(cfg.engine.model))
    root = _cache_root(out, cfg)
    caches = {name: PassCache(root, name).read() for name in (ANSWER, REPHRASE)}
    wanted: dict[str, set[str]] = {ANSWER: set(), REPHRASE: set()}
    for raw in pq.read_table(out / INPUTS_FILE).to_pylist():
        row = InputRow(**raw)
        key = answer_request(specs[ANSWER], tokenizer, row).key
        wanted[ANSWER].add(key)
        answer = caches[ANSWER].get(key)
        if row.kind == "audio" and answer is not None and answer.ok:
            wanted[REPHRASE].add(rephrase_request(specs[REPHRASE], tokenizer, answer.text)[0].key)
    status: dict[str, Any] = {}
    for name, keys in wanted.items():
        rows = [caches[name][k] for k in keys if k in caches[name]]
        tokens = sum(r.n_tokens for r in rows)
        seconds = sum(r.gen_seconds for r in rows)
        incomplete = [r for r in rows if r.ok and (
            is_incomplete(r.text) if name == ANSWER else r.finish_reason == "length")]
        finished = sum(1 for r in rows if r.ok)
        status[name] = {
            "requests": len(keys), "finished": finished, "complete": finished - len(incomplete),
            "incomplete": len(incomplete), "error": sum(1 for r in rows if not r.ok),
            "pending": len(keys) - len(rows), "budget_forced": sum(1 for r in rows if r.forced),
            "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        }
    if (out / STATS_FILE).is_file():
        status["targets"] = json.loads((out / STATS_FILE).read_text())
    return status


def highlight_changes(before: str, after: str, mark: Any = None) -> str:
    """``after`` with the words that differ from ``before`` marked (``mark(word)``; default ``[[w]]``)."""
    mark = mark or (lambda word: f"[[{word}]]")
    old, new = before.split(" "), after.split(" ")
    out: list[str] = []
    for op, _, _, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        words = new[j1:j2]
        out.extend(words if op == "equal" else [mark(w) for w in words])
    return " ".join(out)


def sample_targets(out_dir: str | Path, n: int = 3, seed: int | None = None) -> list[dict[str, Any]]:
    """``n`` random kept targets with their description, prompt, pass-1 answer and target."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from alarm.pipeline.objects import join, open_objects

    objects = open_objects(out_dir)
    objects.check()
    try:
        data = objects.get(TARGETS_FILE)
    except FileNotFoundError:
        raise FileNotFoundError(f"{join(out_dir, TARGETS_FILE)} does not exist; run `alarm rephrase run` or "
                                f"`validate` first") from None
    rows = pq.read_table(pa.BufferReader(data)).to_pylist()
    return random.Random(seed).sample(rows, min(n, len(rows)))
