"""alarm: cache audio-encoder features once, self-rephrase targets, train ALARM adapters.

The CLI stays thin: each command parses its arguments, loads a config and calls one library
function. Heavy imports (torch, ray, transformers, vllm) happen inside the commands so that
``alarm --help`` answers at once. Each stage's commands live in its own layer
(``alarm.pipeline.commands``, ``alarm.rephrase.commands``, ``alarm.trainer.commands``); this module
assembles them and keeps the commands that span stages: models, report and demo.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import click

from alarm.pipeline.commands import build_config, fail, manifest, pipeline, stats_command
from alarm.pipeline.importers.commands import import_command
from alarm.rephrase.commands import rephrase
from alarm.rephrase.prompt_commands import prompts
from alarm.trainer.commands import eval_command, infer, train

DISTRIBUTION = "alarm-audio-lm"
"""The name ``pip`` knows this project by (the import package is ``alarm``)."""


def _version() -> str:
    try:
        return version(DISTRIBUTION)
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


for _command in (manifest, pipeline, prompts, rephrase, train, infer, eval_command, stats_command):
    main.add_command(_command)
manifest.add_command(import_command)  # `alarm manifest import FORMAT SRC OUT`


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


# ---------------------------------------------------------------------------------------- report


@main.command("report")
@click.argument("folder", type=click.Path(path_type=Path))
def report_command(folder: Path) -> None:
    """(Re)write report.json and report.md of an output folder, detected by its contents.

    FOLDER is a feature store, a prompts run (stage 0), a rephrase run, a training run, an evaluation
    (`alarm eval --out`) or a statistics folder (`alarm stats --out`); any other folder (a demo
    output, say) gets a report in each subfolder of those kinds. Nothing is computed again but the
    statistics.
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

    manifest = write_demo_corpus(out, build_config(DemoCorpusConfig, None,
                                                   {"seed": seed, "speech": 0 if no_speech else 6}))
    info = json.loads((manifest.parent / "corpus.json").read_text())
    click.echo(f"{info['counts_line']} (speech: {info['speech']})")
    click.echo(f"manifest: {manifest}")


@demo.command("targets")
@click.argument("manifest")
@click.option("--store", required=True,
              help="The feature store of MANIFEST, a folder or URL (its instances.parquet gives each clip key).")
@click.option("--out", required=True, help="Targets Parquet file to write (a path or URL).")
def demo_targets(manifest: str, store: str, out: str) -> None:
    """Write reference targets from the demo corpus's labels, one per instance the store accepted.

    They are true by construction, so the trainer has something to learn where a tiny random LLM
    keeps no rephrased target; with a real LLM, train on the rephrase run's targets.parquet.
    """
    from alarm.demo.targets import write_reference_targets
    from alarm.pipeline.configs import ConfigError
    from alarm.pipeline.manifest import ManifestError

    try:
        count = write_reference_targets(manifest, store, out)
    except (ManifestError, ConfigError) as err:
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

    run_demo(out, build_config(DemoConfig, None, {"train_steps": train_steps}))


def run() -> None:
    """The ``alarm`` console script: ``main``, then Python's own shutdown, then exit.

    pyarrow's global thread pool can abort a process in the C++ destructors that run after Python
    has finished ("terminate called without an active exception", apache/arrow#34314): the command's
    work done and printed, its exit status lost to SIGABRT. So Python's shutdown runs here, in order
    (non-daemon threads joined, then the atexit handlers: Ray's shutdown, logging's flush), and the
    process exits with the command's status without the native destructors.
    """
    import atexit
    import threading

    code: int = 0
    try:
        main()
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
            code = 1
        else:
            code = stop.code or 0
    threading._shutdown()  # what the interpreter does first at exit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
