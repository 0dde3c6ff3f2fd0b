"""The commands of the rephrasing layer: ``alarm rephrase``.

Each command parses its arguments, builds its config with ``build_config`` and calls one library
function; heavy imports stay inside the commands so that ``alarm --help`` answers at once.
"""

from __future__ import annotations

from pathlib import Path

import click

from alarm.pipeline.commands import build_config, fail


@click.group()
def rephrase() -> None:
    """Self-rephrasing: answer from descriptions, rewrite as heard, validate into targets."""


@rephrase.command("run")
@click.argument("manifest", type=click.Path())
@click.option("--out", "out_dir", type=click.Path(), required=True,
              help="Run folder (a path or an s3:// URL): config, cache, targets.parquet, rejects.parquet, "
                   "stats.json.")
@click.option("--config", type=click.Path(path_type=Path), default=None,
              help="RephraseConfig YAML (defaults: docs/method.md §5).")
@click.option("--engine", default=None, help="LLM engine: vllm or transformers (overrides the config).")
@click.option("--model", default=None, help="Model folder or id (overrides the config).")
@click.option("--workers", type=int, default=None,
              help="Engine replicas as Ray actors, each with its GPU share (0: in this process).")
@click.option("--instances", type=click.Path(), default=None,
              help="The feature store's instances.parquet, to fill clip_key (null without it).")
def rephrase_run(manifest: str, out_dir: str, config: Path | None, engine: str | None,
                 model: str | None, workers: int | None, instances: str | None) -> None:
    """Answer (pass 1), rephrase (pass 2) and validate into targets; cached and resumable."""
    import json

    from alarm.pipeline.manifest import ManifestError
    from alarm.rephrase.run import RephraseConfig, run_rephrase

    cfg = build_config(RephraseConfig, config,
                       {"engine.name": engine, "engine.model": model, "engine.workers": workers})
    try:
        report = run_rephrase(manifest, out_dir, cfg, instances=instances)
    except (ManifestError, FileNotFoundError, ValueError) as err:  # ConfigError is a ValueError
        fail(str(err))
    click.echo(json.dumps(report, indent=2))


@rephrase.command("status")
@click.argument("out_dir", type=click.Path())
def rephrase_status(out_dir: str) -> None:
    """Counts per pass and state (ok, incomplete, error, pending), tokens and throughput."""
    import json

    from alarm.rephrase.show import run_status

    try:
        click.echo(json.dumps(run_status(out_dir), indent=2))
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))


@rephrase.command("validate")
@click.argument("out_dir", type=click.Path())
@click.option("--config", type=click.Path(path_type=Path), default=None,
              help="ValidateConfig YAML (default: the run's own validate settings).")
def rephrase_validate(out_dir: str, config: Path | None) -> None:
    """Re-filter cached generations into targets (never generates, unless the judge is on)."""
    import json

    from alarm.rephrase.validate import ValidateConfig, validate_run

    cfg = build_config(ValidateConfig, config) if config else None  # None: the run's own settings
    try:
        click.echo(json.dumps(validate_run(out_dir, cfg), indent=2))
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))


@rephrase.command("show")
@click.argument("out_dir", type=click.Path())
@click.option("-n", "count", type=int, default=3, help="How many random targets.")
@click.option("--seed", type=int, default=None, help="Seed of the random choice.")
def rephrase_show(out_dir: str, count: int, seed: int | None) -> None:
    """N random targets: description, prompt, answer, and the target with the edits highlighted."""
    from alarm.rephrase.show import highlight_changes, sample_targets

    try:
        rows = sample_targets(out_dir, count, seed)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    if not rows:
        click.echo("no targets were kept; see rejects.parquet and stats.json in the run folder")
    for row in rows:
        click.secho(f"== {row['instance_id']} ({row['dataset']}, {row['split']}, "
                    f"{'incomplete' if row['incomplete'] else 'complete'})", bold=True)
        click.echo(f"description: {row['description']}")
        click.echo(f"prompt: {row['prompt']}")
        click.echo(f"answer:\n{row['answer']}")
        mark = lambda word: click.style(word, fg="yellow", bold=True)  # noqa: E731
        click.echo(f"target:\n{highlight_changes(row['answer'], row['target'], mark)}\n")


@rephrase.command("retry-failed")
@click.argument("out_dir", type=click.Path())
def rephrase_retry_failed(out_dir: str) -> None:
    """Regenerate only the requests whose cached result is an error, then validate again."""
    import json

    from alarm.rephrase.run import retry_failed

    try:
        click.echo(json.dumps(retry_failed(out_dir), indent=2))
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))

