"""The optional LLM judge: does a target still reveal that it was written from text?

Off by default (as in the published recipe). Its generations are cached like the two passes, so
turning it on twice costs one pass, and its verdicts never change a cached target.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from alarm.rephrase.cache import PassCache
from alarm.rephrase.config import pass_specs
from alarm.rephrase.engines import weights_fingerprint
from alarm.rephrase.execute import LazyPool, execute_pass, plain_chunk
from alarm.rephrase.passes import JUDGE, judge_request
from alarm.rephrase.run_folder import cache_location

_VERDICT_RE = re.compile(r"<answer>\s*(yes|no)\s*</answer>", re.I)


def parse_verdict(output: str) -> bool | None:
    """True for "reveals text access", False for "does not", None when there is no verdict."""
    tail = output.rsplit("</think>", 1)[-1]
    found = _VERDICT_RE.findall(tail)
    if not found:
        return None
    return found[-1].lower() == "yes"


def judge_candidates(candidates: list[Any], out: Path, run_cfg: Any, tokenizer: Any, pool: Any,
                     progress: bool = True) -> None:
    """Ask the judge about each candidate's target; flagged ones get ``reason`` set.

    A judge output without a verdict keeps the target (the judge is advisory) and is counted under
    ``judge_no_verdict`` in the candidate's extras.
    """
    spec = pass_specs(run_cfg, weights_fingerprint(run_cfg.engine.model))[JUDGE]
    cache = PassCache(cache_location(out, run_cfg.cache_dir), JUDGE)
    requests = {id(c): judge_request(spec, tokenizer, c.target) for c in candidates}
    own_pool = pool is None
    pool = pool or LazyPool(run_cfg.engine)
    try:
        execute_pass(spec, list(requests.values()), cache, pool, plain_chunk, run_cfg.chunk_size,
                     progress=progress)
    finally:
        if own_pool:
            pool.close()
    done = cache.read()
    for cand in candidates:
        result = done.get(requests[id(cand)].key)
        if result is None or not result.ok:
            cand.extra["judge"] = "error"
            continue
        verdict = parse_verdict(result.text)
        cand.extra["judge"] = {True: "yes", False: "no", None: "no_verdict"}[verdict]
        if verdict:
            cand.reason = "judge:text_access"
