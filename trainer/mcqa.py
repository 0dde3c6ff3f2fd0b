"""Multiple-choice audio QA: the eval manifest, the prompt, and the answer parser.

The pure part of ``trainer.evaluate`` (no model, no files written besides the rejects): an eval
manifest row (MMAU / MMSU / MMAR layout) becomes a ``Question``; ``build_prompt`` lists the
options as ``(Option_i) text`` and asks for ``<answer>i</answer>`` (docs/method.md §6); ``parse_choice``
reads the option number back, or None when the reply names no option (scored as wrong).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alarm.pipeline.manifest import (
    Reject,
    optional_seconds,
    parse_rows,
    resolve_audio,
)

REQUIRED = ("id", "audio", "question", "options", "answer", "category")
KNOWN = set(REQUIRED) | {"dataset", "start", "end"}
INSTRUCTION = (
    "Choose the correct option. End your reply with the number of that option between answer tags, "
    "written as <answer>i</answer> where i is the option number."
)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_OPTION_RE = re.compile(r"^option_?(\d+)$", re.IGNORECASE)


# ------------------------------------------------------------------------------------ eval manifest


@dataclass(frozen=True)
class Question:
    """One multiple-choice question about a clip (or a cut of one).

    ``answer`` is the 1-based number of the correct option, whichever form the manifest used.
    """

    id: str
    audio: str
    question: str
    options: tuple[str, ...]
    answer: int
    category: str
    dataset: str = "eval"
    start: float | None = None
    end: float | None = None
    line: int = 0


def _answer_number(value: Any, options: Sequence[str]) -> int:
    """The manifest's ``answer`` as a 1-based option number: an integer index, or the option text."""
    if isinstance(value, bool):
        raise ValueError(f"'answer' must be an option number or an option text, got {value!r}")
    if isinstance(value, int):
        if not 1 <= value <= len(options):
            raise ValueError(f"'answer' {value} is not an option number (1..{len(options)})")
        return value
    if isinstance(value, str):
        matches = [n for n, text in enumerate(options, start=1) if text.strip() == value.strip()]
        if not matches:
            raise ValueError(f"'answer' {value!r} is none of the options")
        return matches[0]
    raise ValueError(f"'answer' must be an option number or an option text, got {type(value).__name__}")


def parse_question(row: Any, base: Path, line: int) -> Question:
    """Validate one raw eval-manifest row; raises ``ValueError`` with the reason."""
    if not isinstance(row, dict):
        raise ValueError(f"row must be a JSON object, got {type(row).__name__}")
    missing = [k for k in REQUIRED if row.get(k) in (None, "", [])]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")
    unknown = sorted(set(row) - KNOWN)
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")
    for key in ("id", "audio", "question", "category", "dataset"):
        if key in row and not isinstance(row[key], str):
            raise ValueError(f"'{key}' must be a string, got {type(row[key]).__name__}")
    options = row["options"]
    if not isinstance(options, list) or not all(isinstance(o, str) and o.strip() for o in options):
        raise ValueError("'options' must be a list of non-empty strings")
    if len(options) < 2:
        raise ValueError(f"'options' needs at least 2 entries, got {len(options)}")
    if len({o.strip() for o in options}) != len(options):
        raise ValueError("'options' has the same text twice, so an answer given as text is ambiguous")
    start, end = optional_seconds(row, "start"), optional_seconds(row, "end")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"empty cut: end ({end}) must be after start ({start})")
    return Question(
        id=row["id"], audio=resolve_audio(row["audio"], base), question=row["question"].strip(),
        options=tuple(o.strip() for o in options), answer=_answer_number(row["answer"], options),
        category=row["category"], dataset=row.get("dataset") or "eval", start=start, end=end, line=line,
    )


@dataclass
class EvalManifest:
    """The valid questions of an eval manifest, its rejects, and where the rejects went."""

    path: Path
    questions: list[Question]
    rejects: list[Reject]
    rejects_path: Path | None = None


def read_eval_manifest(path: str | Path, rejects_path: str | Path | None = None) -> EvalManifest:
    """Read and validate an eval manifest (JSONL, JSONL.gz or Parquet; see manifests/README.md).

    Bad rows (malformed, missing or mistyped fields, an answer that is no option, duplicate ids)
    become rejects with line and reason, written to ``<name>.rejects.jsonl`` beside it.

    Raises:
        ManifestError: the manifest is missing, unreadable, empty, or has no valid row.
    """
    path = Path(path)
    questions, rejects, written = parse_rows(path, parse_question, rejects_path, "eval manifest")
    return EvalManifest(path, questions, rejects, written)


# ------------------------------------------------------------------------------------ prompt, parser


def build_prompt(question: Question) -> str:
    """The question, one ``(Option_i) text`` line per option, then the answer-format instruction."""
    options = "\n".join(f"(Option_{n}) {text}" for n, text in enumerate(question.options, start=1))
    return f"{question.question}\n\n{options}\n\n{INSTRUCTION}"


def parse_choice(answer: str | None, options: Sequence[str]) -> int | None:
    """The option number in the last ``<answer>…</answer>`` of ``answer``, or None if unparseable.

    Accepted inside the tags (surrounding whitespace ignored): ``i``, ``Option_i``, ``(Option_i)``
    (any case, underscore optional), or the text of one option (any case). A number outside 1..len(options)
    is unparseable, not wrong-but-parsed: the model did not name an option. A bare number is always
    read as an option number, even where some option's text is a number.
    """
    found = _ANSWER_RE.findall(answer or "")
    if not found:
        return None
    inner = found[-1].strip()
    bare = inner[1:-1].strip() if inner.startswith("(") and inner.endswith(")") else inner
    match = _OPTION_RE.match(bare)
    digits = match.group(1) if match else inner if inner.isdecimal() else None
    if digits is not None:
        number = int(digits)
        return number if 1 <= number <= len(options) else None
    folded = inner.casefold()
    hits = [n for n, text in enumerate(options, start=1) if text.strip().casefold() == folded]
    return hits[0] if len(hits) == 1 else None
