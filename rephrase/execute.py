"""One pass over an engine pool: generate what the cache lacks, chunk by chunk, and cache each chunk.

The chunk functions run on a replica; ``execute_pass`` drives them and writes every finished chunk
to the pass's cache at once, so a killed job loses at most the chunks in flight.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from alarm.rephrase import prompts
from alarm.rephrase.cache import CachedGeneration, PassCache
from alarm.rephrase.engines import EngineConfig
from alarm.rephrase.generation import FINISH_LENGTH, Engine, GenRequest, GenResult
from alarm.rephrase.passes import PassSpec


@dataclass
class PassStats:
    """What one pass did in one run."""

    requested: int = 0
    cached: int = 0
    generated: int = 0
    errors: int = 0
    tokens: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------- chunk work (runs on a replica)


def plain_chunk(engine: Engine, chunk: list[GenRequest]) -> tuple[list[tuple[GenResult, bool]], float]:
    """Generate a chunk as is; returns the results (none forced) and the wall time."""
    start = time.perf_counter()
    results = engine.generate(chunk)
    return [(r, False) for r in results], time.perf_counter() - start


def forced_chunk(engine: Engine, chunk: list[GenRequest], total_max_tokens: int,
                 closer: str) -> tuple[list[tuple[GenResult, bool]], float]:
    """Generate with a thinking budget (each request's ``max_tokens``), then budget forcing.

    A request that ran out of budget inside its thinking gets ``closer`` (a closing sentence and
    ``</think>``) appended and continues; one that had already closed its thinking just continues.
    Either way the whole generation stays within ``total_max_tokens``.
    """
    start = time.perf_counter()
    first = engine.generate(chunk)
    follow: list[GenRequest] = []
    forced: dict[str, str] = {}
    for request, result in zip(chunk, first, strict=True):
        if result.error or result.finish_reason != FINISH_LENGTH or result.n_tokens >= total_max_tokens:
            continue
        forced[request.key] = "" if prompts.THINK_CLOSE in result.text else closer
        follow.append(dataclasses.replace(
            request, prompt=request.prompt + result.text + forced[request.key],
            max_tokens=total_max_tokens - result.n_tokens, seed=request.seed + 1))
    second = {r.key: r for r in engine.generate(follow)} if follow else {}
    out: list[tuple[GenResult, bool]] = []
    for result in first:
        more = second.get(result.key)
        if more is None:
            out.append((result, False))
            continue
        text = result.text + forced[result.key] + more.text
        out.append((GenResult(result.key, "" if more.error else text, result.n_prompt_tokens,
                              result.n_tokens + more.n_tokens, more.finish_reason, more.error),
                    bool(forced[result.key])))
    return out, time.perf_counter() - start


# --------------------------------------------------------------------------- driver


class LazyPool:
    """Loads the engine only when some request is not cached (a cached rerun loads no model)."""

    def __init__(self, cfg: EngineConfig, engine: Engine | None = None) -> None:
        self.cfg = cfg
        self.pool = None
        if engine is not None:
            from alarm.rephrase.pool import EnginePool

            self.pool = EnginePool.wrap(engine)
        self.owned = engine is None

    def get(self):
        if self.pool is None:
            from alarm.rephrase.pool import EnginePool

            self.pool = EnginePool(self.cfg)
        return self.pool

    def close(self) -> None:
        if self.pool is not None and self.owned:
            self.pool.close()
            self.pool = None


def execute_pass(spec: PassSpec, requests: list[GenRequest], cache: PassCache, pool: LazyPool,
                 fn: Any, chunk_size: int, retry_failed: bool = False, progress: bool = True) -> PassStats:
    """Generate every request whose key the cache lacks (or holds as an error, when retrying)."""
    from tqdm import tqdm

    unique = list({r.key: r for r in requests}.values())  # equal content is generated once
    done = cache.read()
    todo = [r for r in unique if r.key not in done or (retry_failed and not done[r.key].ok)]
    stats = PassStats(requested=len(unique), cached=len(unique) - len(todo))
    if not todo:
        return stats
    chunks = [todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size)]
    replicas = pool.get()  # loads the model on first use; not part of the pass's throughput
    bar = tqdm(total=len(todo), desc=f"{spec.name}", unit="req", disable=not progress)
    started = time.perf_counter()
    try:
        for chunk, (results, seconds) in replicas.map_chunks(fn, chunks):
            by_key = {r.key: r for r in chunk}
            created = time.time()
            rows = [
                CachedGeneration(
                    key=res.key, text=res.text, n_prompt_tokens=res.n_prompt_tokens, n_tokens=res.n_tokens,
                    finish_reason=res.finish_reason, error=res.error, seed=by_key[res.key].seed,
                    model=spec.model, template_hash=spec.template_hash, sampling=spec.sampling.to_json(),
                    forced=forced, gen_seconds=seconds / max(1, len(results)), created=created,
                )
                for res, forced in results
            ]
            cache.write(rows)
            stats.generated += len(rows)
            stats.errors += sum(1 for row in rows if not row.ok)
            stats.tokens += sum(row.n_tokens for row in rows)
            stats.seconds = time.perf_counter() - started
            bar.update(len(rows))
            bar.set_postfix(tok_s=f"{stats.tokens / max(stats.seconds, 1e-9):.1f}", errors=stats.errors)
    finally:
        bar.close()
    return stats
