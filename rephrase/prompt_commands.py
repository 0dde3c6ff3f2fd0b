"""``alarm prompts``: stage 0, generated prompts with a checker (run, status, show, retry-failed)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from alarm.pipeline.commands import build_config, fail


@click.group()
def prompts() -> None:
    """Stage 0: write candidate prompts per clip with the LLM, check them, choose k per clip."""


def _summary(report: dict) -> str:
    results = report.get("results") or {}
    return (f"{results.get('accounting', '')}\n"
            f"instances written: {results.get('instances_written')} (unique prompts per prompted instance: "
            f"{results.get('unique_per_instance')})")


@prompts.command("run")
@click.argument("manifest", type=click.Path())
@click.option("--out", "out_dir", type=click.Path(), required=True,
              help="Run folder (a path or an s3:// URL): config, cache, candidates, rejects, manifest.jsonl, stats.")
@click.option("--config", type=click.Path(path_type=Path), default=None, help="PromptsConfig YAML.")
@click.option("--engine", default=None, help="Engine name (vllm, transformers).")
@click.option("--model", default=None, help="Local model folder (or a hub id in the local cache).")
@click.option("--candidates", type=int, default=None, help="Candidate prompts per clip (default 5).")
@click.option("--choose", type=int, default=None, help="Prompts chosen per clip (k, default 1).")
@click.option("--seed", type=int, default=None, help="Seed of the cache keys and of the choice.")
@click.option("--replace-prompts", is_flag=True, default=None,
              help="Prompt rows that already have a prompt too (they keep theirs by default).")
def prompts_run(manifest: str, out_dir: str, config: Path | None, engine: str | None, model: str | None,
                candidates: int | None, choose: int | None, seed: int | None, replace_prompts: bool | None) -> None:
    """Generate, check and choose prompts; writes OUT/manifest.jsonl (cached and resumable)."""
    from alarm.pipeline.manifest import ManifestError
    from alarm.pipeline.objects import join
    from alarm.rephrase.prompt_config import MANIFEST_FILE, PromptsConfig
    from alarm.rephrase.prompt_job import run_prompts

    cfg = build_config(PromptsConfig, config, {
        "engine.name": engine, "engine.model": model, "candidates": candidates, "choose": choose, "seed": seed,
        "replace_given_prompts": replace_prompts or None})
    try:
        report = run_prompts(manifest, out_dir, cfg)
    except (ManifestError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    click.echo(_summary(report))
    click.echo(f"manifest: {join(out_dir, MANIFEST_FILE)}\nreport: {join(out_dir, 'report.md')}")


@prompts.command("status")
@click.argument("out_dir", type=click.Path())
def prompts_status(out_dir: str) -> None:
    """Counts per pass and state (finished, error, pending), tokens and throughput."""
    from alarm.rephrase.prompt_show import prompt_status

    try:
        click.echo(json.dumps(prompt_status(out_dir), indent=2))
    except (FileNotFoundError, ValueError) as err:  # ValueError: a saved config this version refuses
        fail(str(err))


@prompts.command("show")
@click.argument("out_dir", type=click.Path())
@click.option("-n", "count", type=int, default=3, help="How many random clips.")
@click.option("--seed", type=int, default=None, help="Seed of the random choice.")
def prompts_show(out_dir: str, count: int, seed: int | None) -> None:
    """N random clips: the description, each candidate with its verdict, and the chosen prompts."""
    from alarm.rephrase.prompt_show import sample_clips

    try:
        clips = sample_clips(out_dir, count, seed)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    if not clips:
        click.echo("no generation gave candidates; see rejects.parquet and report.md in the run folder")
    for clip in clips:
        click.secho(f"== {clip['clip_id']} ({clip['dataset']}, {clip['domain']})", bold=True)
        click.echo(f"description: {clip['description']}")
        for c in clip["candidates"]:
            verdict = "usable" if c["accepted"] else f"{c['rule']}: {c['reason']}"
            mark = click.style("chosen", fg="green", bold=True) + " " if c["chosen"] else ""
            click.echo(f"  {c['index'] + 1}. {mark}{c['prompt']}  [{verdict}]")
        click.echo("")


@prompts.command("retry-failed")
@click.argument("out_dir", type=click.Path())
def prompts_retry_failed(out_dir: str) -> None:
    """Regenerate only the requests whose cached result is an error, then choose again."""
    from alarm.rephrase.prompt_job import retry_failed

    try:
        click.echo(_summary(retry_failed(out_dir)))
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
