"""``alarm manifest import FORMAT SRC OUT.jsonl``: one subcommand per importer of the registry.

Each parses its options into the importer's options dataclass, runs it, writes the manifest and
``<name>.rejects.jsonl`` beside it, and prints one summary line. A source that cannot be imported at
all is one ``error:`` line (exit 2); bad rows are rejects, never a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from alarm.pipeline.commands import fail
from alarm.pipeline.importers.registry import IMPORTERS
from alarm.pipeline.importers.rows import SourceError

PATH = click.Path(path_type=Path)


@click.group("import")
def import_command() -> None:
    """Write our manifest from a corpus in a layout you already have (manifests/README.md).

    Bad rows go to OUT's <name>.rejects.jsonl with their reason; the output passes `alarm manifest check`.
    """


def _run(fmt: str, src: Path, out: Path, opts: Any, targets: Any = None) -> None:
    """Run one importer, write its outputs and print the summary.

    ``targets(collected)``, when given, runs before the manifest is written (it may reject rows) and
    returns ``write(summary) -> note``, run after it.
    """
    from alarm.pipeline.importers.rows import write_import

    importer, _ = IMPORTERS[fmt]
    note = None
    try:
        collected = importer(src, out, opts)
        write_targets = targets(collected) if targets else None
        summary = write_import(collected, out)
        if write_targets:
            note = write_targets(summary)
    except SourceError as err:
        fail(str(err))
    click.echo(summary.line(fmt, str(src)))
    for reason, n in sorted(summary.reasons.items(), key=lambda kv: -kv[1]):
        click.echo(f"  rejected ({reason}): {n}")
    if note:
        click.echo(note)


_DATASET = click.option("--dataset", default=None, help="The dataset name of every row (default: SRC's name).")
_ROOT = click.option("--audio-root", type=PATH, default=None, help="Folder relative audio paths are relative to.")


@import_command.command("lhotse")
@click.argument("src", type=PATH)
@click.argument("out", type=PATH)
@click.option("--supervisions", type=PATH, default=None, help="SupervisionSet JSONL(.gz) when SRC is a RecordingSet.")
@click.option("--per-supervision", is_flag=True, help="One instance per supervision instead of per cut.")
@_DATASET
@click.option("--audio-root", type=PATH, default=None,
              help="Folder relative source paths are relative to (default: the current folder, as in lhotse).")
def import_lhotse(src: Path, out: Path, supervisions: Path | None, per_supervision: bool, dataset: str | None,
                  audio_root: Path | None) -> None:
    """A lhotse CutSet (SRC), or a RecordingSet (SRC) with --supervisions, to the manifest OUT."""
    from alarm.pipeline.importers.lhotse_cuts import LhotseOptions

    _run("lhotse", src, out, LhotseOptions(supervisions=supervisions, dataset=dataset, audio_root=audio_root,
                                           per_supervision=per_supervision))


@import_command.command("hf-audio")
@click.argument("src", type=PATH)
@click.argument("out", type=PATH)
@click.option("--audio", "audio_col", default="audio", show_default=True, help="Audio column (paths or bytes).")
@click.option("--transcript", default=None, help="Column of what is said.")
@click.option("--caption", default=None, help="Column of a free-text description of the sound.")
@click.option("--labels", default=None, help="Column of class labels (text, list, or ClassLabel).")
@click.option("--prompt", default=None, help="Column of the question or instruction.")
@click.option("--id-column", default=None, help="Column of a unique row id (default: dataset/split/row).")
@click.option("--meta", multiple=True, help="Another column to keep as metadata (repeatable).")
@click.option("--split", "splits", multiple=True, help="Split to import (repeatable; default: all).")
@click.option("--label-sep", default=None, help="Split text labels on this separator.")
@click.option("--shards-dir", type=PATH, default=None,
              help="Where embedded audio is written as tar shards (default: OUT-name-audio/ beside OUT).")
@_DATASET
@_ROOT
def import_hf_audio(src: Path, out: Path, audio_col: str, transcript: str | None, caption: str | None,
                    labels: str | None, prompt: str | None, id_column: str | None, meta: tuple[str, ...],
                    splits: tuple[str, ...], label_sep: str | None, shards_dir: Path | None, dataset: str | None,
                    audio_root: Path | None) -> None:
    """A Hugging Face datasets folder (save_to_disk) or its Parquet/Arrow files (SRC) to the manifest OUT.

    Embedded audio bytes are copied unchanged into tar shards and addressed as shard.tar#member.
    """
    from alarm.pipeline.importers.hf_audio import HfAudioOptions

    _run("hf-audio", src, out, HfAudioOptions(
        audio=audio_col, transcript=transcript, caption=caption, labels=labels, prompt=prompt,
        id_column=id_column, dataset=dataset, splits=splits, meta=meta, audio_root=audio_root,
        shards_dir=shards_dir, label_sep=label_sep))


@import_command.command("alarm-corpora")
@click.argument("src", type=PATH)
@click.argument("out", type=PATH)
@click.option("--raw", type=PATH, default=None,
              help="Folder of the per-dataset raw sets, RAW/<dataset_name>/ (default: SRC/../raw).")
@click.option("--split", "splits", multiple=True, help="Corpus split to import (repeatable; default: train, "
                                                        "validation; also raw_train, raw_validation).")
@click.option("--answer", type=click.Choice(["with-context", "no-context"]), default="with-context",
              show_default=True, help="Which published answer is the target (no-context rows have no prompt).")
@click.option("--targets", type=PATH, default=None,
              help="Also write the published answers as a targets Parquet that `alarm train run` reads.")
@click.option("--instances", type=PATH, default=None,
              help="With --targets: take clip keys from this store's instances.parquet instead of decoding.")
@click.option("--shards-dir", type=PATH, default=None,
              help="Where embedded audio is written as tar shards (default: OUT-name-audio/ beside OUT).")
def import_alarm_corpora(src: Path, out: Path, raw: Path | None, splits: tuple[str, ...], answer: str,
                         targets: Path | None, instances: Path | None, shards_dir: Path | None) -> None:
    """The ALARM authors' corpus (SRC) joined with its raw sets' audio, to the manifest OUT."""
    from alarm.pipeline.importers.alarm_corpora import ANSWERS, DEFAULT_SPLITS, CorporaOptions
    from alarm.pipeline.importers.published_targets import key_clips, write_targets

    if instances is not None and targets is None:
        fail("--instances only applies with --targets")

    def key_then_write(collected: Any) -> Any:
        """Key every clip first (a clip that does not decode is rejected), write the targets after."""
        keyed = key_clips(collected, out, instances)

        def write(summary: Any) -> str:
            n = write_targets(targets, summary.rows, collected.extra["published"], collected.extra["answers"](),
                              keyed, ANSWERS[answer], Path(out).resolve().parent)
            return f"targets: {n} published answers ({ANSWERS[answer]}) written to {targets}"
        return write

    opts = CorporaOptions(raw=raw, splits=splits or DEFAULT_SPLITS, answer=answer, shards_dir=shards_dir)
    _run("alarm-corpora", src, out, opts, targets=key_then_write if targets is not None else None)


@import_command.command("csv")
@click.argument("src", type=PATH)
@click.argument("out", type=PATH)
@click.option("--map", "maps", multiple=True, required=True,
              help="FIELD=COLUMN or FIELD={template}; FIELD is a manifest field or a metadata key (repeatable).")
@click.option("--delimiter", default=None, help="Column separator (default: tab for .tsv, else comma).")
@click.option("--label-sep", default=None, help="Split the labels cell on this separator.")
@_DATASET
@_ROOT
def import_csv(src: Path, out: Path, maps: tuple[str, ...], delimiter: str | None, label_sep: str | None,
               dataset: str | None, audio_root: Path | None) -> None:
    """A CSV or TSV (SRC) with a column mapping, to the manifest OUT (examples: manifests/README.md)."""
    from alarm.pipeline.importers.csv_table import CsvOptions, parse_mapping

    try:
        mapping = parse_mapping(maps)
    except SourceError as err:
        fail(str(err))
    _run("csv", src, out, CsvOptions(mapping=mapping, dataset=dataset, audio_root=audio_root, delimiter=delimiter,
                                     label_sep=label_sep))
