"""The commands of the feature-cache layer: ``alarm manifest``, ``alarm pipeline`` and ``alarm stats``.

Each command parses its arguments, builds its config with ``build_config`` and calls one library
function; heavy imports stay inside the commands so that ``alarm --help`` answers at once. ``fail``
and ``build_config`` serve the command modules of every layer above too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from alarm.pipeline.configs import ConfigError, merge_config
from alarm.pipeline.encoders import PRESETS
from alarm.pipeline.store_layout import DTYPES as STORE_DTYPES


def fail(message: str) -> None:
    """Print a user-facing error and exit 2 (no traceback for bad input or config)."""
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(2)


def build_config(cls: type, path: Path | None = None, overrides: dict | None = None, **how: object) -> object:
    """``merge_config`` (the YAML file, then the command line's overrides), or exit 2 with its message."""
    try:
        return merge_config(cls, path, overrides, **how)
    except ConfigError as err:
        fail(str(err))


STORE_HELP = "Store folder or object-store URL (s3://bucket/prefix, gs://..., az://...)."

# ---------------------------------------------------------------------------------------- manifest


@click.group()
def manifest() -> None:
    """Read and check manifests (the input format, see manifests/README.md)."""


@manifest.command("check")
@click.argument("path", type=click.Path())
@click.option("--rejects", type=click.Path(), default=None,
              help="Where to write rejected rows (default: PATH.rejects.jsonl).")
def manifest_check(path: str, rejects: str | None) -> None:
    """Validate every row of a manifest (a path or an s3:// URL); write rejected rows with line and reason."""
    from alarm.pipeline.manifest import ManifestError, read_manifest

    try:
        result = read_manifest(path, rejects_path=rejects)
    except (ManifestError, ConfigError) as err:
        fail(str(err))
    from alarm.pipeline.counts import input_counts

    counts = result.summary()
    click.echo(f"{input_counts(result.instances).line()}; {counts['rejected']} rejected rows")
    for dataset, n in sorted(counts["per_dataset"].items()):
        click.echo(f"  {dataset}: {n}")
    if result.rejects:
        click.echo(f"rejects written to {result.rejects_path}")


# ---------------------------------------------------------------------------------------- pipeline


@click.group()
def pipeline() -> None:
    """Feature cache: run the four encoders once into a content-addressed Zarr store."""


def _pipeline_config(manifest: str | None, shards: tuple[str, ...], store: str | None, config: Path | None,
                     need_store: bool = False, **overrides: object) -> object:
    """A PipelineConfig from an optional YAML file plus the command-line values that were given.

    With ``need_store`` (a command that writes), a store must be named: never the current folder by default.
    """
    from alarm.pipeline.job import PipelineConfig

    unset: tuple[str, ...] = ()
    if shards:  # the command line's input replaces the file's, whichever kind it is
        overrides["shards"], unset = list(shards), ("manifest",)
    elif manifest is not None:
        overrides["manifest"], unset = str(manifest), ("shards",)
    overrides["store"] = str(store) if store is not None else None
    cfg = build_config(PipelineConfig, config, overrides, unset=unset,
                       defaults={"store": None if need_store else "."})  # plan reads no store
    if need_store and not cfg.store:
        fail("give --store FOLDER (where the feature store is written), or set store: in --config")
    return cfg


_INPUT = [click.argument("manifest", required=False, type=click.Path()),  # a path or an s3:// URL
          click.option("--shards", multiple=True, help="WebDataset shards instead of a manifest "
                       "(brace patterns such as 'shards/{000..127}.tar'; repeatable).")]


def _with_input(fn):  # noqa: ANN001, ANN202 - click decorator plumbing
    for decorator in reversed(_INPUT):
        fn = decorator(fn)
    return fn


@pipeline.command("run")
@_with_input
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--encoders", default=None, help="Comma-separated encoders (default: all four).")
@click.option("--preset", type=click.Choice(PRESETS), default=None,
              help="Encoder weights: alarm checkpoints (default), tiny, full-size-random.")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="PipelineConfig YAML; command-line options override it.")
@click.option("--address", default=None,
              help="Ray cluster to join: 'auto' (the one `ray start` runs here) or host:port. Default: the job "
                   "starts its own embedded Ray, even where a cluster runs.")
@click.option("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray.")
@click.option("--device", default=None, help="Torch device of the encoder actors (cpu, cuda).")
@click.option("--gpus-per-actor", type=float, default=None, help="GPUs per encoder actor.")
@click.option("--pools", type=click.Choice(["auto", "shared", "per-encoder"]), default=None,
              help="shared: actors that each hold every encoder (CPU machines); per-encoder: one Ray Data "
                   "actor pool per encoder (GPU clusters); auto (default) picks by device.")
@click.option("--shared-actors", type=int, default=None, help="Actors of the shared pool (0: automatic).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--force", is_flag=True, help="Start even when the store's disk has less free space than the "
                                             "job's estimate.")
@click.option("--no-verify", is_flag=True,
              help="Do not reread the committed parts' checksums before planning (at 96 TB that read takes "
                   "hours); damaged parts are then left to readers, which refuse them, and `pipeline repair`.")
@click.option("--json", "as_json", is_flag=True, help="Print the job's full summary as JSON (also in STORE/summary.json).")
def pipeline_run(manifest: str | None, shards: tuple[str, ...], store: str | None, encoders: str | None,
                 preset: str | None, config: Path | None, address: str | None, num_cpus: int | None,
                 device: str | None, gpus_per_actor: float | None, pools: str | None, shared_actors: int | None,
                 no_progress: bool, force: bool, no_verify: bool,
                 as_json: bool) -> None:
    """Compute every missing feature of MANIFEST (or --shards) into the store; resumable.

    Prints a short summary (clips stored and rejected, audio hours, bytes, time); the full one is
    written to STORE/summary.json and printed by --json.
    """
    import json

    from alarm.pipeline.job import run_pipeline
    from alarm.pipeline.manifest import ManifestError
    from alarm.pipeline.plan import NotEnoughSpace
    from alarm.pipeline.store_layout import StoreError, at
    from alarm.pipeline.store_summary import summary_lines

    cfg = _pipeline_config(manifest, shards, store, config, need_store=True, encoders=encoders, preset=preset,
                           address=address, num_cpus=num_cpus, device=device, gpus_per_actor=gpus_per_actor,
                           pools=pools, shared_actors=shared_actors, progress=False if no_progress else None,
                           force=force or None, verify_checksums=False if no_verify else None)
    try:
        summary = run_pipeline(cfg)
    except (ConfigError, ManifestError, FileNotFoundError, NotEnoughSpace, StoreError) as err:
        fail(str(err))
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        click.echo("\n".join(summary_lines(summary.to_dict())))
    click.echo(f"summary: {at(summary.store, 'summary.json')}; report: {at(summary.store, 'report.md')}",
               err=as_json)


@pipeline.command("status")
@click.option("--store", required=True, help=STORE_HELP)
def pipeline_status(store: str) -> None:
    """Done / pending / rejected clips per encoder group of a store."""
    from alarm.pipeline.counts import store_counts
    from alarm.pipeline.store_layout import StoreError
    from alarm.pipeline.verify import store_status

    store = _need_store(store)
    try:
        status, counts = store_status(store), store_counts(store)
    except StoreError as err:  # an unreadable done marker or table: one line, not a traceback
        fail(str(err))
    click.echo(f"{counts.line()}; {status['rejected_total']} rejected instances")
    for kind, n in status["rejected"].items():
        click.echo(f"  rejected ({kind}): {n}")
    for label, g in sorted(status["groups"].items()):
        extra = f", {g['incomplete_parts']} incomplete parts" if g["incomplete_parts"] else ""
        click.echo(f"{label}: {g['done']} done, {g['pending']} pending, {g['parts']} parts{extra}")


@pipeline.command("verify")
@click.option("--store", required=True, help=STORE_HELP)
@click.option("--quick", is_flag=True, help="Skip recomputing file checksums.")
def pipeline_verify(store: str, quick: bool) -> None:
    """Check every part (completeness, index agreement, checksums); exit 1 naming what is wrong."""
    from alarm.pipeline.verify import verify_store

    store = _need_store(store)
    report = verify_store(store, checksums=not quick)
    for label, g in sorted(report.groups.items()):
        click.echo(f"{label}: {g['parts']} parts, {g['clips']} clips, {g['missing']} missing")
    for warning in report.warnings:
        click.echo(f"warning: {warning}")
    _end_with(report)


def _need_store(store: str) -> object:
    """The store's location; exit 2 with one line if it cannot be reached or holds no store."""
    from alarm.pipeline.store_layout import location, objects_at, store_exists

    root = location(store)
    try:
        objects_at(root).check()
        exists = store_exists(root)
    except ConfigError as err:
        fail(str(err))
    if not exists:
        fail(f"store {store} does not exist")
    return root


def _end_with(report: object) -> None:
    """Print a verify report's problems, then exit 1 if there are any, else print ok."""
    for problem in report.problems:
        click.secho(f"problem: {problem}", fg="red")
    if not report.ok:
        sys.exit(1)
    click.echo("ok")


@pipeline.command("repair")
@_with_input
@click.option("--store", required=True, help=STORE_HELP)
@click.option("--encoders", default=None, help="Comma-separated encoders (default: all four).")
@click.option("--preset", type=click.Choice(PRESETS), default=None,
              help="Encoder weights, as the job that wrote the store used them.")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="PipelineConfig YAML of the job that wrote the store; command-line options override it.")
@click.option("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def pipeline_repair(manifest: str | None, shards: tuple[str, ...], store: str, encoders: str | None,
                    preset: str | None, config: Path | None, num_cpus: int | None, no_progress: bool) -> None:
    """Recompute the parts `verify` rejects, then verify again; exit 1 naming what is still wrong.

    Give the input and config of the job that wrote the store: the damaged parts are planned again
    from the same clips, so the store ends byte-identical to an undamaged run.
    """
    from alarm.pipeline.job import run_pipeline
    from alarm.pipeline.manifest import ManifestError
    from alarm.pipeline.store_layout import StoreError
    from alarm.pipeline.verify import verify_store

    store = _need_store(store)
    cfg = _pipeline_config(manifest, shards, store, config, encoders=encoders, preset=preset, num_cpus=num_cpus,
                           progress=False if no_progress else None)
    before = verify_store(store)
    if before.ok:
        click.echo("ok: nothing to repair")
        return
    for label, parts in sorted(before.damaged.items()):
        click.echo(f"{label}: {len(parts)} damaged part(s): {', '.join(parts)}")
    try:
        summary = run_pipeline(cfg)
    except (ConfigError, ManifestError, FileNotFoundError, StoreError) as err:
        fail(str(err))
    for encoder, parts in sorted(summary.repaired.items()):
        click.echo(f"{encoder}: recomputed {len(parts)} part(s): {', '.join(parts)}")
    _end_with(verify_store(store))


@pipeline.command("gc")
@click.argument("store")
@click.option("--grace", default="1h", show_default=True,
              help="Keep abandoned attempts younger than this (s, m, h, d): a running writer may still be uploading.")
@click.option("--dry-run", is_flag=True, help="Only print what would be removed (takes no lease).")
def pipeline_gc(store: str, grace: str, dry_run: bool) -> None:
    """Delete the abandoned part attempts of STORE (folder or URL) older than --grace; never a committed part.

    An attempt is abandoned when no done marker names it: a writer killed before its marker, a commit
    refused by fencing, a twin that lost the race. Refused while a job holds the store's lease.
    """
    from alarm.pipeline.formatting import human_bytes
    from alarm.pipeline.store_gc import parse_seconds, run_gc
    from alarm.pipeline.store_layout import StoreError

    root = _need_store(store)
    try:
        report = run_gc(root, parse_seconds(grace), dry_run=dry_run)
    except (ConfigError, StoreError) as err:  # StoreError: a done marker it cannot read (repair first)
        fail(str(err))
    for name in report.removed:
        click.echo(f"{'would remove' if dry_run else 'removed'} {name}")
    click.echo(f"{'would remove' if dry_run else 'removed'}: {len(report.removed)} abandoned attempt(s), "
               f"{report.objects} objects, {human_bytes(report.bytes)}; kept {report.young} younger than {grace}")


@pipeline.command("plan")
@_with_input
@click.option("--encoders", default=None, help="Comma-separated encoders (default: all four).")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None, help="PipelineConfig YAML.")
@click.option("--dtype", type=click.Choice(STORE_DTYPES), default=None,
              help="Stored value type (default float16).")
@click.option("--part-seconds", type=float, default=None, help="Audio-seconds per part (storage.part_seconds).")
@click.option("--shard-frames", type=int, default=None,
              help="Frames per shard file, i.e. per object (storage.shard_frames; default 4096).")
@click.option("--hours", type=float, default=None,
              help="Plan for this many hours of audio instead of a manifest (clips of --clip-seconds).")
@click.option("--clip-seconds", type=float, default=10.0, show_default=True, help="Clip length with --hours.")
@click.option("--gpus", type=int, default=1, show_default=True, help="GPUs the job runs on: the wall time.")
@click.option("--bench", type=click.Path(path_type=Path), default=None,
              help="JSON-lines results of bench/gpu_extract.py: GPU time from its measured throughput.")
@click.option("--gpu-tflops", type=float, default=989.0, help="GPU dense bf16 peak (H100: 989), without --bench.")
@click.option("--mfu", type=float, default=0.35, help="Fraction of peak the encoders sustain, without --bench.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def pipeline_plan(manifest: str | None, shards: tuple[str, ...], encoders: str | None, config: Path | None,
                  dtype: str | None, part_seconds: float | None, shard_frames: int | None, hours: float | None,
                  clip_seconds: float, gpus: int, bench: Path | None, gpu_tflops: float, mfu: float,
                  as_json: bool) -> None:
    """Clips, hours, store bytes and objects per encoder, GPU-hours and the wall time on --gpus GPUs.

    Reads file headers only. With --hours, plans a corpus not yet at hand. GPU time comes from
    --bench (measured) when given, else from a FLOP estimate, and says which.
    """
    import json

    from alarm.pipeline.manifest import ManifestError
    from alarm.pipeline.plan import plan_hours, plan_job, plan_lines

    if hours is not None and not (manifest or shards):
        manifest = "(--hours)"  # a config needs an input; plan_hours reads none
    cfg = _pipeline_config(manifest, shards, None, config, encoders=encoders,
                           **{"storage.dtype": dtype, "storage.part_seconds": part_seconds,
                              "storage.shard_frames": shard_frames})
    how = {"gpu_peak_tflops": gpu_tflops, "mfu": mfu, "gpus": gpus, "bench": str(bench) if bench else None}
    try:
        report = plan_hours(cfg, hours, clip_seconds, **how) if hours is not None else plan_job(cfg, **how)
    except (ManifestError, ConfigError) as err:
        fail(str(err))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    click.echo("\n".join(plan_lines(report)))


# ---------------------------------------------------------------------------------------- stats


@click.command("stats")
@click.argument("manifest", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Also write report.json, report.md and durations.png into this folder.")
@click.option("--workers", type=click.IntRange(min=1), default=8, show_default=True,
              help="Threads probing file headers.")
def stats_command(manifest: str, as_json: bool, out: Path | None, workers: int) -> None:
    """Hours, clips and instances per dataset and domain of a manifest, with a totals row.

    Durations come from file headers (cuts count only their part); unreadable audio is counted,
    not fatal. Domain: instruction (kind), else speech (a transcript), else music (music labels or
    a music dataset name), else sound.
    """
    from alarm.pipeline.manifest import ManifestError
    from alarm.pipeline.stats import format_stats, manifest_stats, stats_json, write_stats_report

    try:
        result = manifest_stats(manifest, workers=workers)
    except (ManifestError, ConfigError) as err:
        fail(str(err))
    click.echo(stats_json(result) if as_json else format_stats(result))
    if out is not None:
        _, md_path = write_stats_report(result, out)
        click.echo(f"report: {md_path}", err=as_json)

