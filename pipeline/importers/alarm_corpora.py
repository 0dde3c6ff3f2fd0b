"""``alarm-corpora``: the ALARM authors' published corpus, joined with its per-dataset raw sets.

The corpus (``SRC``: a ``save_to_disk`` folder or the hub's Parquet files) has the splits ``train``,
``validation`` (rows the authors' checker kept) and ``raw_train``, ``raw_validation`` (every row), with
the columns ``dataset_name``, ``context`` (the prompt), ``audio_description``,
``llm_answer_with_context``, ``llm_answer_no_context``, ``unique_id_1``, ``unique_id_2`` and
``dataset_index``. It ships without audio: the audio is in the raw sets, one ``datasets`` folder per
dataset under ``raw/<dataset_name>/`` (columns ``audio``, ``audio_description``, ``unique_id_1``,
``unique_id_2``, ``dataset_index``, ``duration``). Rows join on (``dataset_name``, ``unique_id_1``,
``unique_id_2``); embedded audio is copied once into tar shards (``shards.py``).

Each corpus row becomes one instance, id ``<dataset_name>/<unique_id_1>/<unique_id_2>``, with the
description. Two kinds of published answer exist: ``with-context`` (the default) answers the prompt
(``context``); ``no-context`` was generated without any prompt, so the instance has none. The published
answer becomes the target (``published_targets``): the text the frozen LLM writes after its chat
template's ``<think>`` opener, exactly as the authors trained on it.

Rejected with a reason: a key seen twice (in the corpus, or in a raw set), a row whose raw set or raw
row is missing (``unmatched``), a raw row without audio or with a missing file (``missing``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alarm.pipeline.importers.hf_audio import audio_of
from alarm.pipeline.importers.hf_tables import Split, column_names, find_splits, iter_batches, iter_rows
from alarm.pipeline.importers.rows import Collected, SourceError
from alarm.pipeline.importers.shards import ShardWriter

CORPUS_COLUMNS = ("dataset_name", "context", "audio_description", "llm_answer_with_context",
                  "llm_answer_no_context", "unique_id_1", "unique_id_2", "dataset_index")
ANSWERS = {"with-context": "llm_answer_with_context", "no-context": "llm_answer_no_context"}
DEFAULT_SPLITS = ("train", "validation")
KEY_COLUMNS = ["dataset_name", "unique_id_1", "unique_id_2"]


@dataclass
class CorporaOptions:
    """Where the raw sets are and what to import."""

    raw: Path | None = None
    """Folder holding one raw set per dataset (``<raw>/<dataset_name>/``); default ``<SRC>/../raw``."""
    splits: tuple[str, ...] = DEFAULT_SPLITS
    """Corpus splits to import."""
    answer: str = "with-context"
    """Which published answer is the target: ``with-context`` (prompted) or ``no-context``."""
    shards_dir: Path | None = None
    """Where embedded audio is written as tar shards (default ``<manifest name>-audio/`` beside it)."""

    def __post_init__(self) -> None:
        if self.answer not in ANSWERS:
            raise SourceError(f"answer must be one of {sorted(ANSWERS)}, got {self.answer!r}")


def key_of(row: dict[str, Any]) -> tuple[str, str, str]:
    return str(row.get("dataset_name")), str(row.get("unique_id_1")), str(row.get("unique_id_2"))


def instance_id(key: tuple[str, str, str]) -> str:
    return "/".join(key)


@dataclass
class CorpusRow:
    """What the manifest needs of one corpus row (the long answers are read again, streamed, for targets)."""

    line: int
    split: str
    key: tuple[str, str, str]
    prompt: str
    description: str


def read_corpus(src: Path, splits: tuple[str, ...], collected: Collected) -> list[CorpusRow]:
    """Every corpus row with a unique key, in order; the rest rejected with the reason."""
    rows: list[CorpusRow] = []
    first: dict[tuple, str] = {}
    line = 0
    for split in find_splits(src, splits):
        missing = [c for c in CORPUS_COLUMNS if c not in column_names(split)]
        if missing:
            raise SourceError(f"{src} split '{split.name}' lacks column(s) {missing}")
        columns = [*KEY_COLUMNS, "context", "audio_description"]
        for number, (row, _) in enumerate(iter_rows(split, columns=columns)):
            line += 1
            key = key_of(row)
            if row.get("unique_id_1") is None or not row.get("dataset_name"):
                collected.reject(line, instance_id(key), "missing: no dataset_name or unique_id_1")
            elif key in first:
                collected.reject(line, instance_id(key), f"duplicate key (first at {first[key]})")
            else:
                first[key] = f"{split.name} row {number}"
                rows.append(CorpusRow(line, split.name, key, (row.get("context") or "").strip(),
                                      (row.get("audio_description") or "").strip()))
    return rows


def iter_answers(src: Path, splits: tuple[str, ...], column: str) -> Iterator[tuple[str, Any]]:
    """(instance id, published answer) of every corpus row, streamed (only the key and that column)."""
    for split in find_splits(src, splits):
        for batch, _ in iter_batches(split, columns=[*KEY_COLUMNS, column]):
            names, ids1, ids2, answers = (batch.column(c).to_pylist() for c in (*KEY_COLUMNS, column))
            for key, answer in zip(zip(names, ids1, ids2, strict=True), answers, strict=True):
                yield instance_id(tuple(str(k) for k in key)), answer


def raw_audio(raw: Path, name: str, wanted: set[tuple], shards: ShardWriter, out_dir: Path
              ) -> dict[tuple, tuple[str | None, str, float | None]]:
    """key -> (manifest audio or None, reason, duration) for the wanted keys of one raw set.

    Only the wanted rows are materialised. Audio is written (or its path checked) on the first row of
    a key; a key seen again makes every corpus row that joins on it a reject.
    """
    folder = raw / name
    if not folder.is_dir():
        return {k: (None, f"unmatched: no raw set {folder}", None) for k in wanted}
    try:
        splits: list[Split] = find_splits(folder)
    except SourceError as err:
        return {k: (None, f"unmatched: raw set {folder} unreadable: {err}", None) for k in wanted}
    found: dict[tuple, tuple[str | None, str, float | None]] = {}
    seen_at: dict[tuple, str] = {}
    for split in splits:
        number = -1
        for batch, _ in iter_batches(split, batch_rows=64):
            ids1, ids2 = (batch.column(c).to_pylist() for c in ("unique_id_1", "unique_id_2"))
            for i, (u1, u2) in enumerate(zip(ids1, ids2, strict=True)):
                number += 1
                key = (name, str(u1), str(u2))
                if key not in wanted:
                    continue
                where = f"{split.name} row {number}"
                if key in seen_at:
                    found[key] = (None, f"duplicate key in raw set {name} ({seen_at[key]} and {where})", None)
                    continue
                seen_at[key] = where
                row = batch.slice(i, 1).to_pylist()[0]
                try:
                    audio = audio_of(row.get("audio"), folder, shards, out_dir, "audio")
                    found[key] = (audio, "", row.get("duration"))
                except ValueError as err:
                    found[key] = (None, f"{err} (raw set {name}, {where})", None)
    for key in wanted - set(found):
        found[key] = (None, f"unmatched: no row with this key in raw set {folder}", None)
    return found


def manifest_row(row: CorpusRow, audio: str, answer: str) -> dict[str, Any]:
    """The manifest row of one joined corpus row."""
    out: dict[str, Any] = {"id": instance_id(row.key), "audio": audio, "dataset": row.key[0]}
    if row.prompt and answer == "with-context":
        out["prompt"] = row.prompt
    if row.description:
        out["description"] = row.description
    return out


def import_alarm_corpora(src: Path, out: Path, opts: CorporaOptions) -> Collected:
    """Join the corpus with its raw sets into manifest rows; ``extra['published']`` keeps, per instance
    id, what ``published_targets.write_targets`` needs besides the answers.

    Raises:
        SourceError: The corpus is missing, lacks a column or a split.
    """
    src, out = Path(src), Path(out)
    raw = Path(opts.raw) if opts.raw else src.resolve().parent / "raw"
    out_dir = out.resolve().parent
    collected = Collected()
    rows = read_corpus(src, tuple(opts.splits), collected)
    wanted: dict[str, set[tuple]] = {}
    for row in rows:
        wanted.setdefault(row.key[0], set()).add(row.key)
    shards_dir = opts.shards_dir or out_dir / f"{out.name.split('.', 1)[0]}-audio"
    joined: dict[tuple, tuple[str | None, str, float | None]] = {}
    with ShardWriter(Path(shards_dir), prefix="alarm") as shards:
        for name in sorted(wanted):
            joined.update(raw_audio(raw, name, wanted[name], shards, out_dir))
    published: dict[str, dict[str, Any]] = {}
    for row in rows:
        audio, reason, _ = joined[row.key]
        if audio is None:
            collected.reject(row.line, instance_id(row.key), reason)
            continue
        collected.add(row.line, manifest_row(row, audio, opts.answer))
        published[instance_id(row.key)] = {"split": row.split, "prompt": row.prompt if opts.answer == "with-context"
                                           else "", "description": row.description}
    collected.extra.update(published=published, shards=[str(p) for p in shards.shards],
                           answers=lambda: iter_answers(src, tuple(opts.splits), ANSWERS[opts.answer]))
    return collected
