"""The self-rephrasing job: pass 1 (answer), pass 2 (rephrase with budget forcing), validation.

Every generation is cached by content (``cache.py``), chunk by chunk, so the job can be killed at
any moment and rerun: finished chunks are skipped, nothing is generated twice, and a changed
rephrase template only misses pass 2's keys. A request that fails becomes an error row; the job
goes on, and ``retry_failed`` (or ``run_rephrase(retry_failed=True)``) retries only those.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alarm.rephrase import prompts
from alarm.rephrase.cache import CachedGeneration, PassCache
from alarm.rephrase.engines import (
    FINISH_LENGTH,
    Engine,
    EngineConfig,
    GenRequest,
    GenResult,
    model_sampling,
    weights_fingerprint,
)
from alarm.rephrase.passes import ANSWER, JUDGE, REPHRASE, PassSpec, answer_request, rephrase_request
from alarm.rephrase.validate import ValidateConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
INPUTS_FILE = "inputs.parquet"
INPUT_REJECTS_FILE = "input_rejects.parquet"


@dataclass
class RephraseConfig:
    """The whole rephrasing job.

    Attributes:
        engine: which LLM engine and model, and how it is replicated.
        answer_max_tokens: pass 1 cap, thinking included (ALARM.md §5: 512).
        think_budget: pass 2 thinking budget before budget forcing (1536).
        total_max_tokens: pass 2 cap over thinking and answer (4096).
        judge_max_tokens: cap of the optional judge pass.
        temperature: overrides the model's generation config when set.
        top_p: overrides the model's generation config when set.
        top_k: overrides the model's generation config when set.
        seed: base seed, part of every cache key; each request's seed derives from its key.
        chunk_size: requests per engine call and per cache part. vLLM batches only within one
            call, so keep it at least ``engine.max_num_seqs`` on GPUs; a killed job loses at most
            the chunk each replica had in flight.
        max_audio_seconds: clips this long or longer are dropped before generation (60).
        answer_system_prompt: replaces ``prompts.ANSWER_SYSTEM_PROMPT`` when set.
        rephrase_system_prompt: replaces ``prompts.REPHRASE_SYSTEM_PROMPT`` when set.
        judge_system_prompt: replaces ``prompts.JUDGE_SYSTEM_PROMPT`` when set.
        cache_dir: the generation cache (default: ``<out>/cache``); share it between runs.
        validate: the filters that turn generations into targets.
    """

    engine: EngineConfig = field(default_factory=EngineConfig)
    answer_max_tokens: int = 512
    think_budget: int = 1536
    total_max_tokens: int = 4096
    judge_max_tokens: int = 1024
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int = 0
    chunk_size: int = 2048
    max_audio_seconds: float = 60.0
    answer_system_prompt: str | None = None
    rephrase_system_prompt: str | None = None
    judge_system_prompt: str | None = None
    cache_dir: str | None = None
    validate: ValidateConfig = field(default_factory=ValidateConfig)

    def __post_init__(self) -> None:
        for name in ("answer_max_tokens", "think_budget", "total_max_tokens", "judge_max_tokens",
                     "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.think_budget > self.total_max_tokens:
            raise ValueError(f"think_budget ({self.think_budget}) must not exceed total_max_tokens "
                             f"({self.total_max_tokens})")
        if self.max_audio_seconds <= 0:
            raise ValueError("max_audio_seconds must be > 0")


@dataclass
class PassStats:
    """What one pass did in one run."""

    requested: int = 0
    cached: int = 0
    generated: int = 0
    errors: int = 0
    tokens: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------- pass specifications


def pass_specs(cfg: RephraseConfig, fingerprint: str) -> dict[str, PassSpec]:
    """The three passes' specs for this config (templates, sampling, caps)."""
    sampling = model_sampling(cfg.engine.model, {"temperature": cfg.temperature, "top_p": cfg.top_p,
                                                 "top_k": cfg.top_k})
    answer_system = cfg.answer_system_prompt or prompts.ANSWER_SYSTEM_PROMPT
    rephrase_system = cfg.rephrase_system_prompt or prompts.REPHRASE_SYSTEM_PROMPT
    judge_system = cfg.judge_system_prompt or prompts.JUDGE_SYSTEM_PROMPT
    common = {"model": cfg.engine.model, "fingerprint": fingerprint, "sampling": sampling, "seed": cfg.seed}
    return {
        ANSWER: PassSpec(
            ANSWER, system_prompt=answer_system,
            template_hash=prompts.template_hash(answer_system, prompts.ANSWER_USER_TEMPLATE,
                                                prompts.INSTRUCTION_USER_TEMPLATE),
            caps={"max_tokens": cfg.answer_max_tokens}, **common),
        REPHRASE: PassSpec(
            REPHRASE, system_prompt=rephrase_system,
            template_hash=prompts.template_hash(rephrase_system, prompts.REPHRASE_USER_TEMPLATE,
                                                prompts.BUDGET_FORCING_CLOSER),
            caps={"max_tokens": cfg.total_max_tokens, "think_budget": cfg.think_budget}, **common),
        JUDGE: PassSpec(
            JUDGE, system_prompt=judge_system,
            template_hash=prompts.template_hash(judge_system, prompts.JUDGE_USER_TEMPLATE),
            caps={"max_tokens": cfg.judge_max_tokens}, **common),
    }


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


def _write_table(rows: list[Any], path: Path) -> None:
    import pyarrow.parquet as pq

    from alarm.rephrase.inputs import rows_to_table

    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(rows_to_table(rows), tmp)
    tmp.replace(path)


@functools.lru_cache(maxsize=4)
def load_tokenizer(model: str) -> Any:
    """The model's tokenizer, loaded once per process (it is only read from)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def run_rephrase(manifest: str | Path, out_dir: str | Path, cfg: RephraseConfig | None = None,
                 instances: str | Path | None = None, retry_failed: bool = False,
                 progress: bool = True, engine: Engine | None = None) -> dict[str, Any]:
    """Run both passes over a manifest, then validate into ``<out>/targets.parquet``.

    Args:
        manifest: the manifest (JSONL or Parquet).
        out_dir: the run folder: config, inputs, cache (unless ``cfg.cache_dir``), targets, rejects.
        cfg: the job config (defaults: ALARM.md §5).
        instances: the feature store's ``instances.parquet``, to fill each target's clip key
            (left null without it).
        retry_failed: regenerate keys whose cached row is an error.
        progress: show progress bars.
        engine: an already loaded engine to use in this process instead of loading ``cfg.engine``
            (benchmarks and tests reuse one); it must be the model ``cfg.engine.model`` names.

    Returns:
        Per-pass statistics and the validation report.
    """
    from alarm.pipeline.configs import local_llm, save_config
    from alarm.rephrase.inputs import collect_inputs
    from alarm.rephrase.validate import validate_run

    cfg = cfg or RephraseConfig()
    # A model that is not on disk fails here, in one line, before any work (a hub id in the local cache
    # resolves to its snapshot folder; downloads only with ALARM_ALLOW_DOWNLOAD=1).
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, model=local_llm(cfg.engine.model)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / CONFIG_FILE)
    (out / RUN_FILE).write_text(json.dumps({
        "manifest": str(Path(manifest).resolve()),
        "instances": str(Path(instances).resolve()) if instances else None,
    }, indent=2) + "\n")

    rows, input_rejects = collect_inputs(manifest, cfg.max_audio_seconds, instances)
    _write_table(rows, out / INPUTS_FILE)
    _write_table(input_rejects, out / INPUT_REJECTS_FILE)

    tokenizer = load_tokenizer(cfg.engine.model)
    specs = pass_specs(cfg, weights_fingerprint(cfg.engine.model))
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    pool = LazyPool(cfg.engine, engine)
    report: dict[str, Any] = {"inputs": len(rows), "input_rejects": len(input_rejects)}
    try:
        answer_cache = PassCache(cache_root, ANSWER)
        answers = {row.instance_id: answer_request(specs[ANSWER], tokenizer, row) for row in rows}
        report[ANSWER] = dataclasses.asdict(execute_pass(
            specs[ANSWER], list(answers.values()), answer_cache, pool, plain_chunk, cfg.chunk_size,
            retry_failed, progress))

        done = answer_cache.read()
        rephrase_requests = [
            rephrase_request(specs[REPHRASE], tokenizer, done[answers[row.instance_id].key].text)[0]
            for row in rows
            if row.kind == "audio" and done.get(answers[row.instance_id].key, None) is not None
            and done[answers[row.instance_id].key].ok
        ]
        forcing = functools.partial(forced_chunk, total_max_tokens=cfg.total_max_tokens,
                                    closer=prompts.BUDGET_FORCING_CLOSER)
        report[REPHRASE] = dataclasses.asdict(execute_pass(
            specs[REPHRASE], rephrase_requests, PassCache(cache_root, REPHRASE), pool, forcing,
            cfg.chunk_size, retry_failed, progress))
        report["validation"] = validate_run(out, cfg.validate, tokenizer=tokenizer, pool=pool,
                                            progress=progress)
    finally:
        pool.close()
    (out / "run_report.json").write_text(json.dumps(report, indent=2) + "\n")
    from alarm.rephrase.report import write_rephrase_report

    write_rephrase_report(out)  # report.json, report.md and target_lengths.png, for people
    return report


def load_run(out_dir: str | Path) -> tuple[RephraseConfig, dict[str, Any]]:
    """The config and run record saved in a run folder."""
    from alarm.pipeline.configs import load_config

    out = Path(out_dir)
    if not (out / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{out} is not a rephrase run folder (no {CONFIG_FILE}); "
                                f"start one with `alarm rephrase run`")
    return load_config(RephraseConfig, out / CONFIG_FILE), json.loads((out / RUN_FILE).read_text())


def retry_failed(out_dir: str | Path, progress: bool = True, engine: Engine | None = None) -> dict[str, Any]:
    """Rerun a run folder, regenerating only the requests that failed (and anything never done)."""
    cfg, record = load_run(out_dir)
    return run_rephrase(record["manifest"], out_dir, cfg, record.get("instances"), retry_failed=True,
                        progress=progress, engine=engine)
