"""Stage 0: generate candidate prompts per clip, check them, choose k, write a manifest with prompts.

The two passes run through the rephrase stage's engine seam and content-addressed pass cache
(``execute.execute_pass``), chunk by chunk, so the job can be killed at any moment and rerun: finished
chunks are skipped and nothing is generated twice. The checker's requests are built from the
generation's cached output, so a changed checker template misses only the checker's keys. A failed
request is an error row; ``retry_failed`` regenerates only those.

The run folder may be an object-store URL (``run_folder``): the caches are written there chunk by
chunk, the other files are published there after the inputs, after the generation pass and at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

from alarm.pipeline.configs import save_config
from alarm.pipeline.store_layout import atomic_path
from alarm.rephrase.cache import PassCache
from alarm.rephrase.execute import LazyPool, PassStats, execute_pass, forced_chunk, plain_chunk
from alarm.rephrase.generation import Engine
from alarm.rephrase.prompt_clips import collect_clips, write_rows
from alarm.rephrase.prompt_config import (
    CHECK,
    CLIPS_FILE,
    CONFIG_FILE,
    GENERATE,
    INPUT_REJECTS_FILE,
    RUN_FILE,
    PromptsConfig,
    cache_root,
    check_spec,
    load_prompt_run,
    with_local_models,
)
from alarm.rephrase.prompt_passes import Models, check_requests, generation_requests, plan_run
from alarm.rephrase.prompt_report import write_prompts_report
from alarm.rephrase.prompt_results import write_results
from alarm.rephrase.prompt_templates import BUDGET_FORCING_CLOSER
from alarm.rephrase.run_folder import absolute_location, run_folder


def run_prompts(manifest: str | Path, out_dir: str | Path, cfg: PromptsConfig | None = None,
                retry_failed: bool = False, progress: bool = True, engine: Engine | None = None,
                checker_engine: Engine | None = None) -> dict[str, Any]:
    """Generate, check and choose prompts for a manifest's clips; write ``<out>/manifest.jsonl``.

    Args:
        manifest: the manifest (JSONL or Parquet); rows without a prompt are prompted.
        out_dir: the run folder (a path or an object-store URL): config, clips, cache (unless
            ``cfg.cache_dir``), candidates, rejects, the output manifest, statistics and report.
        cfg: the job config.
        retry_failed: regenerate keys whose cached row is an error.
        progress: show progress bars.
        engine: an already loaded engine for the generation pass (and the checker when
            ``cfg.checker`` is None); it must be the model ``cfg.engine.model`` names.
        checker_engine: an already loaded engine for the checker when ``cfg.checker`` is set.

    Returns:
        Per-pass statistics and the outputs' statistics.
    """
    cfg = with_local_models(cfg or PromptsConfig())  # a model not on disk fails here, before any work
    with run_folder(out_dir) as (out, work):
        publish = work.publish if work is not None else (lambda: 0)
        return _run_in(manifest, out, cfg, retry_failed, progress, engine, checker_engine, publish)


def _run_in(manifest: str | Path, out: Path, cfg: PromptsConfig, retry_failed: bool, progress: bool,
            engine: Engine | None, checker_engine: Engine | None, publish: Any) -> dict[str, Any]:
    """``run_prompts`` in a local folder (the run's own, or the work folder of a URL run)."""
    out.mkdir(parents=True, exist_ok=True)
    # Whole or not at all (a kill mid-write): `prompts retry` and `status` resume from these two.
    with atomic_path(out / CONFIG_FILE) as tmp:
        save_config(cfg, tmp)
    with atomic_path(out / RUN_FILE) as tmp:
        tmp.write_text(json.dumps({"manifest": absolute_location(manifest)}, indent=2) + "\n")
    clips, rejects = collect_clips(manifest, cfg)
    write_rows(clips, out / CLIPS_FILE)
    write_rows(rejects, out / INPUT_REJECTS_FILE)
    publish()

    models = Models.load(cfg)
    root = cache_root(out, cfg)
    generator = LazyPool(cfg.engine, engine)
    checker = generator if cfg.checker is None else LazyPool(cfg.checker, checker_engine)
    report: dict[str, Any] = {"clips": len(clips), "input_rejects": len(rejects)}
    try:
        plan = generation_requests(cfg, models, clips)
        gen_cache = PassCache(root, GENERATE)
        report[GENERATE] = _generate(plan, gen_cache, generator, cfg, retry_failed, progress)
        publish()
        if checker is not generator:
            generator.close()  # one model in memory at a time
        plan = check_requests(cfg, models, clips, plan, gen_cache.read())
        report[CHECK] = dataclasses.asdict(execute_pass(
            check_spec(cfg, models.check_fingerprint), list(plan.check.values()), PassCache(root, CHECK), checker,
            _chunk_fn(cfg, cfg.check_max_tokens), cfg.chunk_size, retry_failed, progress))
    finally:
        generator.close()
        checker.close()
    report["results"] = finish_run(out, cfg, models, clips, rejects)
    (out / "run_report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_prompts_report(out)
    return report


def _chunk_fn(cfg: PromptsConfig, max_tokens: int) -> Any:
    """What a replica runs per chunk: budget forcing when a thinking budget is set, else plain generation."""
    if cfg.think_budget is None:
        return plain_chunk
    return functools.partial(forced_chunk, total_max_tokens=max_tokens, closer=BUDGET_FORCING_CLOSER)


def _generate(plan: Any, cache: PassCache, pool: LazyPool, cfg: PromptsConfig, retry_failed: bool,
              progress: bool) -> dict[str, Any]:
    """The generation pass, one ``execute_pass`` per system prompt (each records its own template hash)."""
    by_spec: dict[str, tuple[Any, list[Any]]] = {}
    for request in plan.generate.values():
        spec = plan.specs[request.key]
        by_spec.setdefault(spec.template_hash, (spec, []))[1].append(request)
    total = PassStats()
    for spec, requests in by_spec.values():
        stats = execute_pass(spec, requests, cache, pool, _chunk_fn(cfg, cfg.generate_max_tokens), cfg.chunk_size,
                             retry_failed, progress)
        for name, value in dataclasses.asdict(stats).items():
            setattr(total, name, getattr(total, name) + value)
    return dataclasses.asdict(total)


def finish_run(out: Path, cfg: PromptsConfig, models: Any, clips: list[Any], input_rejects: list[Any]) -> dict[str, Any]:
    """Re-derive the run's outputs from its caches alone (candidates, choice, manifest, statistics)."""
    root = cache_root(out, cfg)
    generated = PassCache(root, GENERATE).read()
    plan = plan_run(cfg, models, clips, generated)
    rows = [r if isinstance(r, dict) else dataclasses.asdict(r) for r in input_rejects]
    return write_results(out, clips, rows, plan, generated, PassCache(root, CHECK).read(), cfg)


def retry_failed(out_dir: str | Path, progress: bool = True, engine: Engine | None = None,
                 checker_engine: Engine | None = None) -> dict[str, Any]:
    """Rerun a run folder, regenerating only the requests that failed (and anything never done)."""
    with run_folder(out_dir, publish=False) as (out, _):
        cfg, record = load_prompt_run(out)
    return run_prompts(record["manifest"], out_dir, cfg, retry_failed=True, progress=progress, engine=engine,
                       checker_engine=checker_engine)
