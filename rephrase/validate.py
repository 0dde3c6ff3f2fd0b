"""Validation: cached generations -> training targets, with every dropped row's reason.

Re-filtering reads only the caches, so a new or changed rule never regenerates anything. Each rule
has a name; a rejected row records the first rule that hit, and the statistics count every hit.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from alarm.rephrase import targets as target_io
from alarm.rephrase.config import INPUT_REJECTS_FILE, INPUTS_FILE, load_run, load_tokenizer
from alarm.rephrase.judge import judge_candidates
from alarm.rephrase.rules import ValidateConfig, rule_hits
from alarm.rephrase.run_folder import run_folder


def validate_run(out_dir: str | Path, cfg: ValidateConfig | None = None, tokenizer: Any = None,
                 pool: Any = None, progress: bool = True) -> dict[str, Any]:
    """Filter a run folder's cached generations into ``targets.parquet`` and ``rejects.parquet``.

    Args:
        out_dir: the run folder (``run_rephrase`` wrote its config and inputs there); a path or a URL.
        cfg: the filters; default: the run config's.
        tokenizer: the model's tokenizer (loaded from the run config when None).
        pool: an engine pool for the judge pass (made on demand when the judge is on).
        progress: progress bar for the judge pass.

    Returns:
        Counts: kept, per split, pending, rejected per reason, hits per rule.
    """
    with run_folder(out_dir) as (out, _):
        return _validate_in(out, cfg, tokenizer, pool, progress)


def _validate_in(out: Path, cfg: ValidateConfig | None, tokenizer: Any, pool: Any, progress: bool) -> dict[str, Any]:
    """``validate_run`` in a local folder (the run's own, or the work folder of a URL run)."""
    import pyarrow.parquet as pq

    run_cfg, _ = load_run(out)
    cfg = cfg or run_cfg.validate
    tokenizer = tokenizer or load_tokenizer(run_cfg.engine.model)
    candidates, pending = target_io.collect_candidates(out, run_cfg, tokenizer)
    rules = cfg.rules()
    hits: Counter[str] = Counter()
    for cand in candidates:
        if cand.reason is not None:
            continue
        text = cand.target or ""
        if not text.strip():
            cand.reason = "empty"
            continue
        n = len(tokenizer(text, add_special_tokens=False).input_ids)
        cand.extra["n_tokens"] = n
        found = rule_hits(text, rules)
        hits.update(found)
        if n < cfg.min_tokens:
            cand.reason = f"too_short: {n} < {cfg.min_tokens} tokens"
        elif n > cfg.max_tokens:
            cand.reason = f"too_long: {n} > {cfg.max_tokens} tokens"
        elif found:
            cand.reason = found[0]
    if cfg.judge:
        judge_candidates([c for c in candidates if c.reason is None], out, run_cfg, tokenizer, pool, progress)
    input_rejects = pq.read_table(out / INPUT_REJECTS_FILE).to_pylist() if (
        out / INPUT_REJECTS_FILE).is_file() else []
    rows = pq.read_table(out / INPUTS_FILE).to_pylist()
    return target_io.write_outputs(out, run_cfg, cfg, candidates, pending, input_rejects, hits, len(rows))
