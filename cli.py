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


# train convert (owner: H4, trainer/convert.py); the other train commands follow below.
@train.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--direction", type=click.Choice(["to-ours", "to-original"]), required=True,
              help="to-ours: original ALARM release names -> ours; to-original: the reverse.")
@click.option("--encoder", type=click.Choice(["whisper", "w2vbert", "sslam", "muq"]), default=None,
              help="SRC is one original adapter (get_pretrained_adapters.py's <encoder>.pth) of this encoder.")
def train_convert(src: Path, dst: Path, direction: str, encoder: str | None) -> None:
    """Convert front-end weights between the original ALARM release and ours.

    SRC is a safetensors file, a folder of safetensors shards (an original Hugging Face
    checkpoint: only its adapter, fusion and delimiter tensors are read) or a .pth adapter.
    DST is a safetensors file. Tensors are renamed, never changed.
    """
    from trainer.convert import ConvertError, convert_file

    try:
        summary = convert_file(src, dst, direction, encoder=encoder)
    except (ConvertError, FileNotFoundError) as err:
        fail(str(err))
    click.echo(f"wrote {summary.converted} tensors to {dst} ({summary.skipped} non-audio tensors left out)")


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


@demo.command("corpus")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--seed", type=int, default=1234, show_default=True, help="Seed of every random choice.")
@click.option("--no-speech", is_flag=True, help="Skip espeak-ng speech even where it is installed.")
def demo_corpus(out: Path, seed: int, no_speech: bool) -> None:
    """Write the demo corpus (generated sounds, music, espeak-ng speech) and its manifest to OUT."""
    import json

    from pipeline.demo_corpus import DemoCorpusConfig, write_demo_corpus

    manifest = write_demo_corpus(out, DemoCorpusConfig(seed=seed, speech=0 if no_speech else 6))
    info = json.loads((manifest.parent / "corpus.json").read_text())
    click.echo(f"{info['clips']} clips, {info['instances']} instances ({info['speech']})")
    click.echo(f"manifest: {manifest}")


@demo.command("run")
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True,
              help="Folder for every output of the demo.")
def demo_run(out: Path) -> None:
    """Run the whole job on the demo corpus: every stage that exists, and say what is missing."""
    from pipeline.demo import run_demo

    run_demo(out)


if __name__ == "__main__":
    main()
