"""Pure parsing of stage 0's two replies: candidate prompts, and the checker's verdict per candidate.

No model, no I/O: each function maps a string to values and is unit-tested on strings. Both replies
put their payload in the last ``<answer>…</answer>`` after any thinking (``parse.extract_last_answer``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from alarm.rephrase.parse import extract_last_answer
from alarm.rephrase.prompt_templates import CHECK_RULES

# A list marker a model may put before a line: "1.", "2)", "(3)", "-", "*", "•", "Q4:".
_MARKER = re.compile(r"^\s*(?:[-*•]\s+|\(?\d{1,2}[.):]\s*|Q\d{1,2}[.:)]\s*)")
_QUOTES = "\"'“”‘’`"
_VERDICT = re.compile(
    r"^\s*\(?(\d{1,2})\)?\s*[:.)\-]\s*(keep|usable|yes|reject|unusable|no)\b[\s:,\-–]*"
    rf"(?:\(?({'|'.join(CHECK_RULES)})\)?)?[\s:,\-–]*(.*?)\s*$", re.I)
_KEEP = ("keep", "usable", "yes")


@dataclass(frozen=True)
class Candidates:
    """The prompts parsed from a generation, or why there are none.

    Attributes:
        prompts: the candidate prompts, in reply order, list markers and quotes stripped.
        problem: None when an answer block was found; else ``no_answer_block`` or ``empty_answer``.
        extra: lines beyond the number asked for (dropped).
    """

    prompts: tuple[str, ...]
    problem: str | None = None
    extra: int = 0


@dataclass(frozen=True)
class Verdict:
    """The checker's label for one candidate.

    Attributes:
        keep: True when the checker called it usable; None when it gave no readable verdict.
        rule: the rule a rejected candidate breaks (one of ``CHECK_RULES``), or None.
        reason: the checker's short reason (may be empty).
    """

    keep: bool | None
    rule: str | None = None
    reason: str = ""


def clean_line(line: str) -> str:
    """One candidate line without its list marker, surrounding quotes and extra spaces."""
    text = _MARKER.sub("", line, count=1).strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return " ".join(text.split())


def parse_candidates(reply: str, n: int) -> Candidates:
    """The candidate prompts of a generation reply: one per non-empty line of its last answer block.

    Args:
        reply: the model's whole output (thinking included).
        n: the number of candidates asked for; lines beyond it are dropped and counted.
    """
    block = extract_last_answer(reply)
    if block is None:
        return Candidates((), "no_answer_block")
    lines = [clean_line(line) for line in block.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return Candidates((), "empty_answer")
    return Candidates(tuple(lines[:n]), None, max(0, len(lines) - n))


def parse_verdicts(reply: str, n: int) -> list[Verdict]:
    """The checker's verdict for candidates 1..n; a candidate it did not label gets ``keep=None``.

    A line ``2: reject no_leak: it names the dog`` rejects candidate 2 under rule ``no_leak``;
    ``2: keep`` keeps it. Synonyms (usable/yes, unusable/no) are read; the first verdict for a
    number wins, numbers outside 1..n are ignored.
    """
    verdicts: dict[int, Verdict] = {}
    block = extract_last_answer(reply)
    for line in (block or "").splitlines():
        match = _VERDICT.match(line)
        if not match:
            continue
        number = int(match.group(1))
        if not 1 <= number <= n or number in verdicts:
            continue
        keep = match.group(2).lower() in _KEEP
        rule = match.group(3).lower() if match.group(3) and not keep else None
        verdicts[number] = Verdict(keep, rule, "" if keep else match.group(4).strip())
    return [verdicts.get(i, Verdict(None)) for i in range(1, n + 1)]
