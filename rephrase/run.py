"""The self-rephrasing job: pass 1 (answer), pass 2 (rephrase with budget forcing), validation.

Every generation is cached by content (``cache.py``), chunk by chunk, so the job can be killed at
any moment and rerun: finished chunks are skipped, nothing is generated twice, and a changed
rephrase template only misses pass 2's keys. A request that fails becomes an error row; the job
goes on, and ``retry_failed`` (or ``run_rephrase(retry_failed=True)``) retries only those.

The run folder may be an object-store URL (``run_folder``): the cache is written there chunk by
chunk, the other files are published there after the inputs, after each pass and at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Any

from alarm.pipeline.store_layout import atomic_path
from alarm.rephrase import prompts
from alarm.rephrase.cache import PassCache
from alarm.rephrase.config import (
    CONFIG_FILE,
    INPUT_REJECTS_FILE,
    INPUTS_FILE,
    RUN_FILE,
    RephraseConfig,
    load_run,
    load_tokenizer,
    pass_specs,
)
from alarm.rephrase.engines import weights_fingerprint
from alarm.rephrase.execute import LazyPool, execute_pass, forced_chunk, plain_chunk
from alarm.rephrase.generation import Engine
from alarm.rephrase.passes import ANSWER, REPHRASE, answer_request, rephrase_request
from alarm.rephrase.report import write_rephrase_report
from alarm.rephrase.run_folder import cache_location, run_folder
from alarm.rephrase.validate import validate_run

log = logging.getLogger(__name__)


def _write_table(rows: list[Any], path: Path) -> None:
    import pyarrow.parquet as pq

    from alarm.rephrase.inputs import rows_to_table

    with atomic_path(path) as tmp:
        pq.write_table(rows_to_table(rows), tmp)


def run_rephrase(manifest: str | Path, out_dir: str | Path, cfg: RephraseConfig | None = None,
                 instances: str | Path | None = None, retry_failed: bool = False,
                 progress: bool = True, engine: Engine | None = None) -> dict[str, Any]:
    """Run both passes over a manifest, then validate into ``<out>/targets.parquet``.

    Args:
        manifest: the manifest (JSONL or Parquet).
        out_dir: the run folder (a path or an object-store URL): config, inputs, cache (unless
            ``cfg.cache_dir``), targets, rejects.
        cfg: the job config (defaults: docs/method.md §5).
        instances: the feature store's ``instances.parquet``, to fill each target's clip key
            (left null without it).
        retry_failed: regenerate keys whose cached row is an error.
        progress: show progress bars.
        engine: an already loaded engine to use in this process instead of loading ``cfg.engine``
            (benchmarks and tests reuse one); it must be the model ``cfg.engine.model`` names.

    Returns:
        Per-pass statistics and the validation report.
    """
    from alarm.pipeline.configs import model_folder

    cfg = cfg or RephraseConfig()
    # A model that is not on disk fails here, in one line, before any work (a hub id in the local cache
    # resolves to its snapshot folder; downloads only with ALARM_ALLOW_DOWNLOAD=1).
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, model=model_folder(cfg.engine.model)))
    with run_folder(out_dir) as (out, work):
        publish = work.publish if work is not None else (lambda: 0)
        return _run_in(manifest, out, cfg, instances, retry_failed, progress, engine, publish)


def _resolved(location: str | Path | None) -> str | None:
    from alarm.rephrase.run_folder import absolute_location

    return absolute_location(location)


def _run_in(manifest: str | Path, out: Path, cfg: RephraseConfig, instances: str | Path | None,
            retry_failed: bool, progress: bool, engine: Engine | None, publish: Any) -> dict[str, Any]:
    """``run_rephrase`` in a local folder (the run's own, or the work folder of a URL run)."""
    from alarm.pipeline.configs import save_config
    from alarm.rephrase.inputs import collect_inputs

    out.mkdir(parents=True, exist_ok=True)
    # Whole or not at all (a kill mid-write): `rephrase retry` and `status` resume from these two.
    with atomic_path(out / CONFIG_FILE) as tmp:
        save_config(cfg, tmp)
    with atomic_path(out / RUN_FILE) as tmp:
        tmp.write_text(json.dumps({"manifest": _resolved(manifest), "instances": _resolved(instances)}, indent=2)
                       + "\n")

    rows, input_rejects = collect_inputs(manifest, cfg.max_audio_seconds, instances)
    _write_table(rows, out / INPUTS_FILE)
    _write_table(input_rejects, out / INPUT_REJECTS_FILE)
    publish()

    tokenizer = load_tokenizer(cfg.engine.model)
    specs = pass_specs(cfg, weights_fingerprint(cfg.engine.model))
    cache_root = cache_location(out, cfg.cache_dir)
    pool = LazyPool(cfg.engine, engine)
    report: dict[str, Any] = {"inputs": len(rows), "input_rejects": len(input_rejects)}
    try:
        answer_cache = PassCache(cache_root, ANSWER)
        answers = {row.instance_id: answer_request(specs[ANSWER], tokenizer, row) for row in rows}
        report[ANSWER] = dataclasses.asdict(execute_pass(
            specs[ANSWER], list(answers.values()), answer_cache, pool, plain_chunk, cfg.chunk_size,
            retry_failed, progress))
        publish()

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
        publish()
        report["validation"] = validate_run(out, cfg.validate, tokenizer=tokenizer, pool=pool,
                                            progress=progress)
    finally:
        pool.close()
    with atomic_path(out / "run_report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    write_rephrase_report(out)  # report.json, report.md and target_lengths.png, for people
    return report


def retry_failed(out_dir: str | Path, progress: bool = True, engine: Engine | None = None) -> dict[str, Any]:
    """Rerun a run folder, regenerating only the requests that failed (and anything never done)."""
    cfg, record = load_run(out_dir)
    return run_rephrase(record["manifest"], out_dir, cfg, record.get("instances"), retry_failed=True,
                        progress=progress, engine=engine)
