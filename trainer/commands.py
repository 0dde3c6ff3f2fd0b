"""The commands of the trainer layer: ``alarm train``, ``alarm infer`` and ``alarm eval``.

Each command parses its arguments, builds its config with ``build_config`` and calls one library
function; heavy imports stay inside the commands so that ``alarm --help`` answers at once.
"""

from __future__ import annotations

from pathlib import Path

import click

from alarm.pipeline.commands import build_config, fail
from alarm.pipeline.configs import ConfigError
from alarm.pipeline.encoders import ENCODERS
from alarm.pipeline.objects import is_url, join
from alarm.pipeline.store_layout import DTYPES as STORE_DTYPES


@click.group()
def train() -> None:
    """Train the adapters and fusion from cached features and targets."""


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


@train.command("run")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="TrainConfig YAML (see trainer/config.py for every key).")
@click.option("--fresh", is_flag=True,
              help="Start at step 0; earlier checkpoints and logs move to output_dir/previous-<time>/.")
@click.option("--allow-changed-data", is_flag=True,
              help="Resume even if the targets or the feature store changed since the checkpoint.")
@click.option("--init", "init", multiple=True,
              help="Initialise the front end from these checkpoints, paths or URLs (added to the config's init).")
@click.option("--freeze", "freeze", multiple=True, type=click.Choice(["adapters", "fusion", "delimiters"]),
              help="Keep these front-end parts frozen (added to the config's freeze).")
@click.option("--llm", default=None,
              help="Frozen LLM folder (overrides the config's llm; a hub id only when cached or "
                   "ALARM_ALLOW_DOWNLOAD=1).")
def train_run(config_path: Path, fresh: bool, allow_changed_data: bool, init: tuple[str, ...],
              freeze: tuple[str, ...], llm: str | None) -> None:
    """Train from cached features; resumes from the latest checkpoint in output_dir unless --fresh.

    For several GPUs or nodes launch the same config with torchrun (same flags):

    \b
    torchrun --nproc_per_node N -m alarm.trainer.train C.yaml [--fresh] [--allow-changed-data]
    """
    from alarm.trainer.config import TrainConfig
    from alarm.trainer.data import DataError
    from alarm.trainer.train import DataChangedError
    from alarm.trainer.train import train as run_training

    cfg = build_config(TrainConfig, config_path)
    if init or freeze or llm:  # --init and --freeze add to the file's lists; --llm replaces its llm
        cfg = build_config(TrainConfig, config_path, {"init": list(cfg.init) + [str(p) for p in init],
                                                      "freeze": sorted(set(cfg.freeze) | set(freeze)), "llm": llm})
    try:
        result = run_training(cfg, fresh=fresh, allow_changed_data=allow_changed_data)
    except (ConfigError, DataError, DataChangedError, FileNotFoundError) as err:  # FileNotFound: an init path
        fail(str(err))
    checkpoint = result.checkpoint
    if checkpoint is not None and is_url(cfg.output_dir):  # the copy that counts is the one on object storage
        checkpoint = join(cfg.output_dir, "checkpoints", checkpoint.name)
    click.echo(f"step {result.step}; checkpoint {checkpoint}")
    for dataset, loss in sorted(result.eval_losses.items()):
        click.echo(f"  eval loss {dataset}: {loss:.4f}")


@train.command("cache-adapters")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="The fusion-stage TrainConfig (init = adapter checkpoints, freeze adapters).")
@click.option("--out", default=None,
              help="Cache store folder or s3:// URL (default: the config's adapter_cache).")
@click.option("--dtype", type=click.Choice([d for d in STORE_DTYPES if d != "int8"]), default="float32",
              help="Stored value type of the adapter outputs.")
def train_cache_adapters(config_path: Path, out: str | None, dtype: str) -> None:
    """Run the frozen adapters once over every clip of the targets (the second-level cache)."""
    from alarm.trainer.cache_adapters import cache_adapter_outputs
    from alarm.trainer.config import TrainConfig

    cfg = build_config(TrainConfig, config_path)
    target = out or cfg.adapter_cache
    if not target:
        fail("give --out or set adapter_cache in the config")
    try:
        written = cache_adapter_outputs(cfg, target, dtype=dtype)
    except ConfigError as err:
        fail(str(err))
    for name, count in written.items():
        click.echo(f"{name}: {count} clips cached in {target}")


@train.command("export")
@click.argument("source")
@click.argument("out", type=click.Path(path_type=Path))
def train_export(source: str, out: Path) -> None:
    """Export a run (latest checkpoint) or a checkpoint, a folder or an s3:// URL, as a self-contained folder.

    The folder holds every front-end weight, the encoders' store specs, the LLM id and the
    prompt layout.
    """
    from alarm.trainer.export import export_model

    try:
        folder = export_model(source, out)
    except (FileNotFoundError, ConfigError) as err:  # no checkpoint there; a damaged one
        fail(str(err))
    click.echo(f"exported to {folder}")



@click.command("infer")
@click.argument("audio", nargs=-1, required=True)
@click.option("--prompt", required=True, help="The question asked about every AUDIO file.")
@click.option("--checkpoint", required=True,
              help="A training run folder (latest checkpoint), a checkpoint folder or an export folder "
                   "(a path or an s3:// URL).")
@click.option("--store", default=None,
              help="The feature store the adapter was trained on (its encoder specs; a path or an s3:// URL); "
                   "default: the run's.")
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
def infer(audio: tuple[str, ...], prompt: str, checkpoint: str, store: str | None, llm: str | None,
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

    from alarm.trainer.infer import InferConfig, infer_files

    cfg = build_config(InferConfig, None, {
        "checkpoint": checkpoint, "store": store, "llm": llm, "device": device,
        "engine": engine, "think_budget": think_budget, "max_new_tokens": max_new_tokens,
        "temperature": temperature, "batch_size": batch_size})
    try:
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


@click.command("eval")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--checkpoint", required=True,
              help="Trained front-end checkpoint, run or exported folder (a path or an s3:// URL).")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Output folder: predictions.jsonl, report.json, report.md (a rerun resumes here).")
@click.option("--store", default=None,
              help="Feature store whose encoder spec to run, a path or an s3:// URL (default: what the checkpoint "
                   "names).")
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
def eval_command(manifest: Path, checkpoint: str, out: Path, store: str | None, llm: str | None,
                 think_budget: int, max_new_tokens: int, batch_size: int, device: str, limit: int | None,
                 retry_errors: bool, encode_all: bool) -> None:
    """Multiple-choice audio QA: accuracy per category and overall (MMAU/MMSU/MMAR layout).

    MANIFEST is JSONL with id, audio, question, options, answer and category (see
    manifests/README.md). Unparseable answers count as wrong and are counted separately.
    """
    from alarm.pipeline.manifest import ManifestError
    from alarm.trainer.evaluate import EvalConfig, evaluate, markdown_tables

    cfg = build_config(EvalConfig, None, {
        "manifest": str(manifest), "checkpoint": checkpoint, "out": str(out),
        "store": store, "llm": llm, "device": device, "think_budget": think_budget,
        "max_new_tokens": max_new_tokens, "batch_size": batch_size, "limit": limit,
        "retry_errors": retry_errors, "store_features": not encode_all})
    try:
        report = evaluate(cfg)
    except (ManifestError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    click.echo(markdown_tables(report) + "\n")
    click.echo(f"{report.asked} asked, {report.reused} reused from earlier predictions, "
               f"{report.rejected} manifest rows rejected" + (f" ({report.rejects_path})" if report.rejected else ""))
    click.echo(f"report: {report.report_md} and {report.report_json}; predictions: {report.predictions}")

