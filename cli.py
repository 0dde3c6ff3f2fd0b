"""alarm: cache audio-encoder features once, self-rephrase targets, train ALARM adapters.

The CLI stays thin: each command parses its arguments, loads a config and calls one library
function. Heavy imports (torch, ray, transformers, vllm) happen inside the commands so that
``alarm --help`` answers at once.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import click

from alarm.pipeline.encoders import ENCODERS, PRESETS
from alarm.pipeline.store_layout import DTYPES as STORE_DTYPES


def _version() -> str:
    try:
        return version("alarm")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0+local"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), prog_name="alarm")
def main() -> None:
    """alarm: Audio-Language Alignment for Reasoning Models, the training side.

    Cache the four encoders' features once (pipeline), self-rephrase training
    targets with the frozen LLM (rephrase), and train the adapters and fusion
    from the cache (train).
    """


def fail(message: str) -> None:
    """Print a user-facing error and exit 2 (no traceback for bad input or config)."""
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(2)


# ---------------------------------------------------------------------------------------- manifest


@main.group()
def manifest() -> None:
    """Read and check manifests (the input format, see manifests/README.md)."""


@manifest.command("check")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--rejects", type=click.Path(path_type=Path), default=None,
              help="Where to write rejected rows (default: PATH.rejects.jsonl).")
def manifest_check(path: Path, rejects: Path | None) -> None:
    """Validate every row of a manifest; write rejected rows with line and reason."""
    from alarm.pipeline.manifest import ManifestError, read_manifest

    try:
        result = read_manifest(path, rejects_path=rejects)
    except ManifestError as err:
        fail(str(err))
    from alarm.pipeline.counts import input_counts

    counts = result.summary()
    click.echo(f"{input_counts(result.instances).line()}; {counts['rejected']} rejected rows")
    for dataset, n in sorted(counts["per_dataset"].items()):
        click.echo(f"  {dataset}: {n}")
    if result.rejects:
        click.echo(f"rejects written to {result.rejects_path}")


# ---------------------------------------------------------------------------------------- pipeline


@main.group()
def pipeline() -> None:
    """Feature cache: run the four encoders once into a content-addressed Zarr store."""


def _pipeline_config(manifest: Path | None, shards: tuple[str, ...], store: Path | None, config: Path | None,
                     need_store: bool = False, **overrides: object) -> object:
    """A PipelineConfig from an optional YAML file plus the command-line values that were given.

    With ``need_store`` (a command that writes), a store must be named: never the current folder by default.
    """
    import yaml

    from alarm.pipeline.configs import ConfigError, from_dict
    from alarm.pipeline.job import PipelineConfig

    data: dict = {}
    if config is not None:
        if not config.is_file():
            fail(f"config file {config} does not exist")
        data = yaml.safe_load(config.read_text()) or {}
    if manifest is not None:
        data["manifest"], data["shards"] = str(manifest), None
    if shards:
        data["shards"], data["manifest"] = list(shards), None
    if store is not None:
        data["store"] = str(store)
    if need_store and not data.get("store"):
        fail("give --store FOLDER (where the feature store is written), or set store: in --config")
    data.setdefault("store", ".")  # plan reads no store
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return from_dict(PipelineConfig, data)
    except ConfigError as err:
        fail(str(err))


_INPUT = [click.argument("manifest", required=False, type=click.Path(path_type=Path)),
          click.option("--shards", multiple=True, help="WebDataset shards instead of a manifest "
                       "(brace patterns such as 'shards/{000..127}.tar'; repeatable).")]


def _with_input(fn):  # noqa: ANN001, ANN202 - click decorator plumbing
    for decorator in reversed(_INPUT):
        fn = decorator(fn)
    return fn


@pipeline.command("run")
@_with_input
@click.option("--store", type=click.Path(path_type=Path), default=None, help="Store folder.")
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
def pipeline_run(manifest: Path | None, shards: tuple[str, ...], store: Path | None, encoders: str | None,
                 preset: str | None, config: Path | None, address: str | None, num_cpus: int | None,
                 device: str | None, gpus_per_actor: float | None, pools: str | None, shared_actors: int | None,
                 no_progress: bool, force: bool, no_verify: bool,
                 as_json: bool) -> None:
    """Compute every missing feature of MANIFEST (or --shards) into the store; resumable.

    Prints a short summary (clips stored and rejected, audio hours, bytes, time); the full one is
    written to STORE/summary.json and printed by --json.
    """
    import json

    from alarm.pipeline.configs import ConfigError
    from alarm.pipeline.job import run_pipeline
    from alarm.pipeline.manifest import ManifestError
    from alarm.pipeline.plan import NotEnoughSpace
    from alarm.pipeline.store_summary import summary_lines

    cfg = _pipeline_config(manifest, shards, store, config, need_store=True, encoders=encoders, preset=preset,
                           address=address, num_cpus=num_cpus, device=device, gpus_per_actor=gpus_per_actor,
                           pools=pools, shared_actors=shared_actors, progress=False if no_progress else None,
                           force=force or None, verify_checksums=False if no_verify else None)
    try:
        summary = run_pipeline(cfg)
    except (ConfigError, ManifestError, FileNotFoundError, NotEnoughSpace) as err:
        fail(str(err))
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        click.echo("\n".join(summary_lines(summary.to_dict())))
    click.echo(f"summary: {Path(summary.store) / 'summary.json'}; report: {Path(summary.store) / 'report.md'}",
               err=as_json)


@pipeline.command("status")
@click.option("--store", type=click.Path(path_type=Path), required=True, help="Store folder.")
def pipeline_status(store: Path) -> None:
    """Done / pending / rejected clips per encoder group of a store."""
    from alarm.pipeline.counts import store_counts
    from alarm.pipeline.verify import store_status

    if not store.is_dir():
        fail(f"store {store} does not exist")
    status = store_status(store)
    click.echo(f"{store_counts(store).line()}; {status['rejected_total']} rejected instances")
    for kind, n in status["rejected"].items():
        click.echo(f"  rejected ({kind}): {n}")
    for label, g in sorted(status["groups"].items()):
        extra = f", {g['incomplete_parts']} incomplete parts" if g["incomplete_parts"] else ""
        click.echo(f"{label}: {g['done']} done, {g['pending']} pending, {g['parts']} parts{extra}")


@pipeline.command("verify")
@click.option("--store", type=click.Path(path_type=Path), required=True, help="Store folder.")
@click.option("--quick", is_flag=True, help="Skip recomputing file checksums.")
def pipeline_verify(store: Path, quick: bool) -> None:
    """Check every part (completeness, index agreement, checksums); exit 1 naming what is wrong."""
    from alarm.pipeline.verify import verify_store

    report = verify_store(store, checksums=not quick)
    for label, g in sorted(report.groups.items()):
        click.echo(f"{label}: {g['parts']} parts, {g['clips']} clips, {g['missing']} missing")
    for warning in report.warnings:
        click.echo(f"warning: {warning}")
    for problem in report.problems:
        click.secho(f"problem: {problem}", fg="red")
    if not report.ok:
        sys.exit(1)
    click.echo("ok")


@pipeline.command("repair")
@_with_input
@click.option("--store", type=click.Path(path_type=Path), required=True, help="Store folder.")
@click.option("--encoders", default=None, help="Comma-separated encoders (default: all four).")
@click.option("--preset", type=click.Choice(PRESETS), default=None,
              help="Encoder weights, as the job that wrote the store used them.")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="PipelineConfig YAML of the job that wrote the store; command-line options override it.")
@click.option("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def pipeline_repair(manifest: Path | None, shards: tuple[str, ...], store: Path, encoders: str | None,
                    preset: str | None, config: Path | None, num_cpus: int | None, no_progress: bool) -> None:
    """Recompute the parts `verify` rejects, then verify again; exit 1 naming what is still wrong.

    Give the input and config of the job that wrote the store: the damaged parts are planned again
    from the same clips, so the store ends byte-identical to an undamaged run.
    """
    from alarm.pipeline.configs import ConfigError
    from alarm.pipeline.job import run_pipeline
    from alarm.pipeline.manifest import ManifestError
    from alarm.pipeline.verify import verify_store

    if not store.is_dir():
        fail(f"store {store} does not exist")
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
    except (ConfigError, ManifestError, FileNotFoundError) as err:
        fail(str(err))
    for encoder, parts in sorted(summary.repaired.items()):
        click.echo(f"{encoder}: recomputed {len(parts)} part(s): {', '.join(parts)}")
    after = verify_store(store)
    for problem in after.problems:
        click.secho(f"problem: {problem}", fg="red")
    if not after.ok:
        sys.exit(1)
    click.echo("ok")


@pipeline.command("plan")
@_with_input
@click.option("--encoders", default=None, help="Comma-separated encoders (default: all four).")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None, help="PipelineConfig YAML.")
@click.option("--dtype", type=click.Choice(STORE_DTYPES), default=None,
              help="Stored value type (default float16).")
@click.option("--gpu-tflops", type=float, default=989.0, help="GPU dense bf16 peak (H100: 989).")
@click.option("--mfu", type=float, default=0.35, help="Fraction of peak the encoders sustain.")
def pipeline_plan(manifest: Path | None, shards: tuple[str, ...], encoders: str | None, config: Path | None,
                  dtype: str | None, gpu_tflops: float, mfu: float) -> None:
    """Clips, hours, predicted store bytes per encoder and GPU time, from file headers only."""
    from alarm.pipeline.manifest import ManifestError
    from alarm.pipeline.plan import plan_job

    cfg = _pipeline_config(manifest, shards, None, config, encoders=encoders)
    if dtype is not None:
        cfg.storage.dtype = dtype
    try:
        report = plan_job(cfg, gpu_peak_tflops=gpu_tflops, mfu=mfu)
    except ManifestError as err:
        fail(str(err))
    click.echo(report.headline())
    for e, size in report.bytes_per_encoder.items():
        click.echo(f"  {e}: {size / 1e9:.3f} GB, ~{report.gpu_hours_per_encoder[e]:.3f} GPU-hours")
    click.echo(f"total: {report.bytes_total / 1e9:.3f} GB ({report.bytes_per_audio_second / 1e6:.3f} MB per "
               f"audio-second), ~{report.gpu_hours_total:.3f} GPU-hours at {mfu:.0%} of {gpu_tflops:g} TFLOP/s")


# ---------------------------------------------------------------------------------------- rephrase


@main.group()
def rephrase() -> None:
    """Self-rephrasing: answer from descriptions, rewrite as heard, validate into targets."""


def _rephrase_config(config: Path | None, overrides: dict):
    """The rephrase job config: YAML file (or defaults), then command-line overrides."""
    from alarm.pipeline.configs import ConfigError, from_dict, load_config, to_dict
    from alarm.rephrase.run import RephraseConfig

    try:
        cfg = load_config(RephraseConfig, config) if config else RephraseConfig()
        engine = {k: v for k, v in overrides.items() if v is not None}
        if engine:
            data = to_dict(cfg)
            data["engine"].update(engine)
            cfg = from_dict(RephraseConfig, data)
        return cfg
    except (ConfigError, ValueError) as err:
        fail(str(err))


@rephrase.command("run")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Run folder: config, cache, targets.parquet, rejects.parquet, stats.json.")
@click.option("--config", type=click.Path(path_type=Path), default=None,
              help="RephraseConfig YAML (defaults: ALARM.md section 5).")
@click.option("--engine", default=None, help="LLM engine: vllm or transformers (overrides the config).")
@click.option("--model", default=None, help="Model folder or id (overrides the config).")
@click.option("--workers", type=int, default=None,
              help="Engine replicas as Ray actors, each with its GPU share (0: in this process).")
@click.option("--instances", type=click.Path(path_type=Path), default=None,
              help="The feature store's instances.parquet, to fill clip_key (null without it).")
def rephrase_run(manifest: Path, out_dir: Path, config: Path | None, engine: str | None,
                 model: str | None, workers: int | None, instances: Path | None) -> None:
    """Answer (pass 1), rephrase (pass 2) and validate into targets; cached and resumable."""
    import json

    from alarm.pipeline.manifest import ManifestError
    from alarm.rephrase.run import run_rephrase

    cfg = _rephrase_config(config, {"name": engine, "model": model, "workers": workers})
    try:
        report = run_rephrase(manifest, out_dir, cfg, instances=instances)
    except (ManifestError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    click.echo(json.dumps(report, indent=2))


@rephrase.command("status")
@click.argument("out_dir", type=click.Path(path_type=Path))
def rephrase_status(out_dir: Path) -> None:
    """Counts per pass and state (ok, incomplete, error, pending), tokens and throughput."""
    import json

    from alarm.rephrase.show import run_status

    try:
        click.echo(json.dumps(run_status(out_dir), indent=2))
    except FileNotFoundError as err:
        fail(str(err))


@rephrase.command("validate")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--config", type=click.Path(path_type=Path), default=None,
              help="ValidateConfig YAML (default: the run's own validate settings).")
def rephrase_validate(out_dir: Path, config: Path | None) -> None:
    """Re-filter cached generations into targets (never generates, unless the judge is on)."""
    import json

    from alarm.pipeline.configs import ConfigError, load_config
    from alarm.rephrase.validate import ValidateConfig, validate_run

    try:
        cfg = load_config(ValidateConfig, config) if config else None
        click.echo(json.dumps(validate_run(out_dir, cfg), indent=2))
    except (ConfigError, FileNotFoundError, ValueError) as err:
        fail(str(err))


@rephrase.command("show")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("-n", "count", type=int, default=3, help="How many random targets.")
@click.option("--seed", type=int, default=None, help="Seed of the random choice.")
def rephrase_show(out_dir: Path, count: int, seed: int | None) -> None:
    """N random targets: description, prompt, answer, and the target with the edits highlighted."""
    from alarm.rephrase.show import highlight_changes, sample_targets

    try:
        rows = sample_targets(out_dir, count, seed)
    except FileNotFoundError as err:
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
@click.argument("out_dir", type=click.Path(path_type=Path))
def rephrase_retry_failed(out_dir: Path) -> None:
    """Regenerate only the requests whose cached result is an error, then validate again."""
    import json

    from alarm.rephrase.run import retry_failed

    try:
        click.echo(json.dumps(retry_failed(out_dir), indent=2))
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))


# ---------------------------------------------------------------------------------------- train


@main.group()
def train() -> None:
    """Train the adapters and fusion from cached features and targets."""


# train convert (owner: H4, trainer/convert.py); the other train commands follow below.
@train.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--direction", type=click.Choice(["to-ours", "to-original"]), required=True,
              help="to-ours: original ALARM release names -> ours; to-original: the reverse.")
@click.option("--encoder", type=click.Choice(list(ENCODERS)), default=None,
              help="SRC is one original adapter (get_pretrained_adapters.py's <encoder>.pth) of this encoder.")
def train_convert(src: Path, dst: Path, direction: str, encoder: str | None) -> None:
    """Convert front-end weights between the original ALARM release and ours.

    SRC is a safetensors file, a folder of safetensors shards (an original Hugging Face
    checkpoint: only its adapter, fusion and delimiter tensors are read) or a .pth adapter.
    DST is a safetensors file. Tensors are renamed, never changed. From a checkpoint folder
    with config.json, the matching front-end config is written beside DST.
    """
    from alarm.pipeline.configs import ConfigError
    from alarm.trainer.convert import ConvertError, convert_file

    try:
        summary = convert_file(src, dst, direction, encoder=encoder)
    except (ConvertError, ConfigError, FileNotFoundError) as err:
        fail(str(err))
    click.echo(f"wrote {summary.converted} tensors to {dst} ({summary.skipped} non-audio tensors left out)")
    if summary.config_path is not None:
        click.echo(f"front-end config: {summary.config_path}")
        for name, layers in summary.layers.items():
            click.echo(f"  {name}: the release averages hidden states {layers}; the feature store must keep these")


# train run / cache-adapters / export (owner: H5, trainer/train.py, cache_adapters.py, export.py).
@train.command("run")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="TrainConfig YAML (see trainer/config.py for every key).")
@click.option("--fresh", is_flag=True,
              help="Start at step 0; earlier checkpoints and logs move to output_dir/previous-<time>/.")
@click.option("--allow-changed-data", is_flag=True,
              help="Resume even if the targets or the feature store changed since the checkpoint.")
@click.option("--init", "init", multiple=True, type=click.Path(path_type=Path),
              help="Initialise the front end from these checkpoints (added to the config's init).")
@click.option("--freeze", "freeze", multiple=True, type=click.Choice(["adapters", "fusion", "delimiters"]),
              help="Keep these front-end parts frozen (added to the config's freeze).")
@click.option("--llm", default=None,
              help="Frozen LLM folder (overrides the config's llm; a hub id only when cached or "
                   "ALARM_ALLOW_DOWNLOAD=1).")
def train_run(config_path: Path, fresh: bool, allow_changed_data: bool, init: tuple[Path, ...],
              freeze: tuple[str, ...], llm: str | None) -> None:
    """Train from cached features; resumes from the latest checkpoint in output_dir unless --fresh.

    For several GPUs or nodes launch the same config with torchrun (same flags):

    \b
    torchrun --nproc_per_node N -m alarm.trainer.train C.yaml [--fresh] [--allow-changed-data]
    """
    from alarm.pipeline.configs import ConfigError, from_dict, load_config, to_dict
    from alarm.trainer.config import TrainConfig
    from alarm.trainer.data import DataError
    from alarm.trainer.train import DataChangedError
    from alarm.trainer.train import train as run_training

    try:
        cfg = load_config(TrainConfig, config_path)
        if init or freeze or llm:
            data = to_dict(cfg)
            data["init"] = list(cfg.init) + [str(p) for p in init]
            data["freeze"] = sorted(set(cfg.freeze) | set(freeze))
            data["llm"] = llm or cfg.llm
            cfg = from_dict(TrainConfig, data)
        result = run_training(cfg, fresh=fresh, allow_changed_data=allow_changed_data)
    except (ConfigError, DataError, DataChangedError) as err:
        fail(str(err))
    click.echo(f"step {result.step}; checkpoint {result.checkpoint}")
    for dataset, loss in sorted(result.eval_losses.items()):
        click.echo(f"  eval loss {dataset}: {loss:.4f}")


@train.command("cache-adapters")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="The fusion-stage TrainConfig (init = adapter checkpoints, freeze adapters).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Cache store folder (default: the config's adapter_cache).")
@click.option("--dtype", type=click.Choice([d for d in STORE_DTYPES if d != "int8"]), default="float32",
              help="Stored value type of the adapter outputs.")
def train_cache_adapters(config_path: Path, out: Path | None, dtype: str) -> None:
    """Run the frozen adapters once over every clip of the targets (the second-level cache)."""
    from alarm.pipeline.configs import ConfigError, load_config
    from alarm.trainer.cache_adapters import cache_adapter_outputs
    from alarm.trainer.config import TrainConfig

    try:
        cfg = load_config(TrainConfig, config_path)
        target = out or (Path(cfg.adapter_cache) if cfg.adapter_cache else None)
        if target is None:
            fail("give --out or set adapter_cache in the config")
        written = cache_adapter_outputs(cfg, target, dtype=dtype)
    except ConfigError as err:
        fail(str(err))
    for name, count in written.items():
        click.echo(f"{name}: {count} clips cached in {target}")


@train.command("export")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
def train_export(source: Path, out: Path) -> None:
    """Export a run (latest checkpoint) or a checkpoint as a self-contained folder.

    The folder holds every front-end weight, the encoders' store specs, the LLM id and the
    prompt layout.
    """
    from alarm.trainer.export import export_model

    try:
        folder = export_model(source, out)
    except FileNotFoundError as err:
        fail(str(err))
    click.echo(f"exported to {folder}")


# ---------------------------------------------------------------------------------------- models


@main.group()
def models() -> None:
    """Offline models: build the tiny random-weight models used by tests and the demo."""


@models.command("build-tiny")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Cache folder (default: $ALARM_CACHE or ~/.cache/alarm).")
def models_build_tiny(out: Path | None) -> None:
    """Build (or reuse) the tiny Qwen3, Whisper and W2V-BERT models and print their folders."""
    import os

    if out is not None:
        os.environ["ALARM_CACHE"] = str(out)
    from alarm.pipeline.encoders.tiny import build_tiny_w2vbert, build_tiny_whisper
    from alarm.rephrase.qwen3 import build_tiny_qwen3

    for name, build in (("qwen3", build_tiny_qwen3), ("whisper", build_tiny_whisper),
                        ("w2vbert", build_tiny_w2vbert)):
        click.echo(f"{name}: {build()}")


# ---------------------------------------------------------------------------------------- infer


# infer (owner: H6, trainer/infer.py).
@main.command("infer")
@click.argument("audio", nargs=-1, required=True)
@click.option("--prompt", required=True, help="The question asked about every AUDIO file.")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="A training run folder (latest checkpoint), a checkpoint folder or an export folder.")
@click.option("--store", type=click.Path(path_type=Path), default=None,
              help="The feature store the adapter was trained on (its encoder specs); default: the run's.")
@click.option("--llm", default=None, help="Path of the frozen LLM, if it moved since training.")
@click.option("--think-budget", type=int, default=8192, show_default=True,
              help="Thinking tokens before budget forcing closes the thinking.")
@click.option("--max-new-tokens", type=int, default=16384, show_default=True, help="Cap on generated tokens.")
@click.option("--temperature", type=float, default=0.0, show_default=True,
              help="0: greedy; otherwise sampling with the model's top-p/top-k.")
@click.option("--engine", type=click.Choice(["transformers", "vllm"]), default="transformers", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", type=int, default=0, show_default=True,
              help="Files encoded and generated together; 0: 8 with transformers, 256 with vllm.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (audio, thinking, answer, ...).")
def infer(audio: tuple[str, ...], prompt: str, checkpoint: Path, store: Path | None, llm: str | None,
          think_budget: int, max_new_tokens: int, temperature: float, engine: str, device: str,
          batch_size: int, as_json: bool) -> None:
    """Ask a trained adapter's frozen LLM PROMPT about each AUDIO file.

    The encoders run on the fly with exactly the feature store's spec, the adapters and fusion
    build the audio span, and the LLM thinks (up to --think-budget tokens, then budget forcing)
    and answers. Thinking and answer are printed separately; a file that cannot be read gets
    its reason and the others are still answered.
    """
    import json
    from dataclasses import asdict

    from alarm.pipeline.configs import ConfigError
    from alarm.trainer.infer import InferConfig, infer_files

    try:
        cfg = InferConfig(checkpoint=str(checkpoint), store=str(store) if store else None, llm=llm,
                          device=device, engine=engine, think_budget=think_budget,
                          max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size)
        results = infer_files(cfg, list(audio), prompt)
    except (ConfigError, FileNotFoundError) as err:
        fail(str(err))
    for path, result in zip(audio, results, strict=True):
        if as_json:
            click.echo(json.dumps({"audio": path, **asdict(result)}, ensure_ascii=False))
            continue
        click.secho(f"== {path}", bold=True)
        if result.error:
            click.secho(f"error: {result.error}", fg="red")
            continue
        forced = ", budget forced" if result.forced else ""
        click.secho(f"-- thinking ({result.thinking_tokens} tokens{forced})", fg="cyan")
        click.echo(result.thinking)
        click.secho(f"-- answer ({result.answer_tokens} tokens)", fg="green")
        click.echo(result.answer or f"({result.empty_reason()})")


# ---------------------------------------------------------------------------------------- eval


@main.command("eval")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True,
              help="Trained front-end checkpoint (or exported folder).")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Output folder: predictions.jsonl, report.json, report.md (a rerun resumes here).")
@click.option("--store", type=click.Path(path_type=Path), default=None,
              help="Feature store whose encoder spec to run (default: what the checkpoint names).")
@click.option("--llm", default=None, help="Frozen LLM folder or id (default: what the checkpoint names).")
@click.option("--think-budget", type=int, default=8192, show_default=True,
              help="Thinking tokens before budget forcing.")
@click.option("--max-new-tokens", type=int, default=16384, show_default=True,
              help="Output cap, thinking included.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Questions per generate call.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the encoders, front end and LLM run.")
@click.option("--limit", type=int, default=None, help="Only the first N questions.")
@click.option("--retry-errors", is_flag=True, help="Ask again the questions whose answer was an error.")
@click.option("--encode-all", is_flag=True,
              help="Run the encoders on every clip, even those the feature store already holds.")
def eval_command(manifest: Path, checkpoint: Path, out: Path, store: Path | None, llm: str | None,
                 think_budget: int, max_new_tokens: int, batch_size: int, device: str, limit: int | None,
                 retry_errors: bool, encode_all: bool) -> None:
    """Multiple-choice audio QA: accuracy per category and overall (MMAU/MMSU/MMAR layout).

    MANIFEST is JSONL with id, audio, question, options, answer and category (see
    manifests/README.md). Unparseable answers count as wrong and are counted separately.
    """
    from alarm.pipeline.manifest import ManifestError
    from alarm.trainer.evaluate import EvalConfig, evaluate, markdown_tables

    try:
        cfg = EvalConfig(manifest=str(manifest), checkpoint=str(checkpoint), out=str(out),
                         store=str(store) if store else None, llm=llm, device=device,
                         think_budget=think_budget, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         limit=limit, retry_errors=retry_errors, store_features=not encode_all)
        report = evaluate(cfg)
    except (ManifestError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    click.echo(markdown_tables(report) + "\n")
    click.echo(f"{report.asked} asked, {report.reused} reused from earlier predictions, "
               f"{report.rejected} manifest rows rejected" + (f" ({report.rejects_path})" if report.rejected else ""))
    click.echo(f"report: {report.report_md} and {report.report_json}; predictions: {report.predictions}")


# ---------------------------------------------------------------------------------------- stats


@main.command("stats")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Also write report.json, report.md and durations.png into this folder.")
@click.option("--workers", type=click.IntRange(min=1), default=8, show_default=True,
              help="Threads probing file headers.")
def stats_command(manifest: Path, as_json: bool, out: Path | None, workers: int) -> None:
    """Hours, clips and instances per dataset and domain of a manifest, with a totals row.

    Durations come from file headers (cuts count only their part); unreadable audio is counted,
    not fatal. Domain: instruction (kind), else speech (a transcript), else music (music labels or
    a music dataset name), else sound.
    """
    from alarm.pipeline.manifest import ManifestError
    from alarm.pipeline.stats import format_stats, manifest_stats, stats_json, write_stats_report

    try:
        result = manifest_stats(manifest, workers=workers)
    except ManifestError as err:
        fail(str(err))
    click.echo(stats_json(result) if as_json else format_stats(result))
    if out is not None:
        _, md_path = write_stats_report(result, out)
        click.echo(f"report: {md_path}", err=as_json)


@main.command("report")
@click.argument("folder", type=click.Path(path_type=Path))
def report_command(folder: Path) -> None:
    """(Re)write report.json and report.md of an output folder, detected by its contents.

    FOLDER is a feature store, a rephrase run, a training run, an evaluation (`alarm eval --out`)
    or a statistics folder (`alarm stats --out`); any other folder (a demo output, say) gets a
    report in each subfolder of those kinds. Nothing is computed again but the statistics.
    """
    from alarm.demo.report import write_any_report

    if not folder.is_dir():
        fail(f"{folder} is not a folder")
    try:
        written = write_any_report(folder)
    except FileNotFoundError as err:
        fail(str(err))
    if not written:
        fail(f"{folder} is not a feature store, rephrase run, training run, evaluation or statistics folder, "
             "and has no such subfolder")
    for kind, md_path in written:
        click.echo(f"{kind}: {md_path}")


# ---------------------------------------------------------------------------------------- demo


@main.group()
def demo() -> None:
    """The bundled demo: a small honest corpus and the whole job on it."""


@demo.command("corpus")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--seed", type=int, default=1234, show_default=True, help="Seed of every random choice.")
@click.option("--no-speech", is_flag=True, help="Skip espeak-ng speech even where it is installed.")
def demo_corpus(out: Path, seed: int, no_speech: bool) -> None:
    """Write the demo corpus (generated sounds, music, espeak-ng speech) and its manifest to OUT."""
    import json

    from alarm.pipeline.demo_corpus import DemoCorpusConfig, write_demo_corpus

    manifest = write_demo_corpus(out, DemoCorpusConfig(seed=seed, speech=0 if no_speech else 6))
    info = json.loads((manifest.parent / "corpus.json").read_text())
    click.echo(f"{info['counts_line']} (speech: {info['speech']})")
    click.echo(f"manifest: {manifest}")


@demo.command("targets")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--store", type=click.Path(path_type=Path), required=True,
              help="The feature store of MANIFEST (its instances.parquet gives each clip key).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Targets Parquet file to write.")
def demo_targets(manifest: Path, store: Path, out: Path) -> None:
    """Write reference targets from the demo corpus's labels, one per instance the store accepted.

    They are true by construction, so the trainer has something to learn where a tiny random LLM
    keeps no rephrased target; with a real LLM, train on the rephrase run's targets.parquet.
    """
    from alarm.demo.targets import write_reference_targets
    from alarm.pipeline.manifest import ManifestError

    if not (store / "instances.parquet").is_file():
        fail(f"{store} is not a feature store (no instances.parquet); run `alarm pipeline run` first")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        count = write_reference_targets(manifest, store, out)
    except ManifestError as err:
        fail(str(err))
    if not count:
        fail(f"no instance of {manifest} with a prompt is in the store {store}: nothing to write")
    click.echo(f"{count} reference targets written to {out}")


@demo.command("run")
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True,
              help="Folder for every output of the demo.")
@click.option("--train-steps", type=int, default=200, show_default=True, help="Optimiser steps of the fusion model.")
def demo_run(out: Path, train_steps: int) -> None:
    """Run the whole job on the demo corpus: corpus, feature cache, rephrasing, training, eval, infer, report.

    A second run reuses every cache and finishes in a fraction of the time.
    """
    from alarm.demo.run import DemoConfig, run_demo

    run_demo(out, DemoConfig(train_steps=train_steps))


if __name__ == "__main__":
    main()
