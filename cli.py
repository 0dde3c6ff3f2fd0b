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
    from pipeline.manifest import ManifestError, read_manifest

    try:
        result = read_manifest(path, rejects_path=rejects)
    except ManifestError as err:
        fail(str(err))
    counts = result.summary()
    click.echo(f"{counts['instances']} instances, {counts['clips']} clips, {counts['rejected']} rejected")
    for dataset, n in sorted(counts["per_dataset"].items()):
        click.echo(f"  {dataset}: {n}")
    if result.rejects:
        click.echo(f"rejects written to {result.rejects_path}")


# ---------------------------------------------------------------------------------------- pipeline


@main.group()
def pipeline() -> None:
    """Feature cache: run the four encoders once into a content-addressed Zarr store."""


# ---------------------------------------------------------------------------------------- rephrase


@main.group()
def rephrase() -> None:
    """Self-rephrasing: answer from descriptions, rewrite as heard, validate into targets."""


# ---------------------------------------------------------------------------------------- train


@main.group()
def train() -> None:
    """Train the adapters and fusion from cached features and targets."""


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
    from pipeline.tiny_encoders import build_tiny_w2vbert, build_tiny_whisper
    from rephrase.qwen3 import build_tiny_qwen3

    for name, build in (("qwen3", build_tiny_qwen3), ("whisper", build_tiny_whisper),
                        ("w2vbert", build_tiny_w2vbert)):
        click.echo(f"{name}: {build()}")


# ---------------------------------------------------------------------------------------- demo


@main.group()
def demo() -> None:
    """The bundled demo: a small honest corpus and the whole job on it."""


if __name__ == "__main__":
    main()
