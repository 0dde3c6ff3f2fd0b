"""Deterministic checks of candidate prompts, in code, beside the LLM checker (pure; no model, no I/O).

The LLM checker can miss a leak; these rules cannot. Each has a name and belongs to one of the
checker's rules (``prompt_templates.CHECK_RULES``), so the report gives one accept rate per rule
whoever applied it:

* ``no_leak``: ``transcript_words`` (a content word of the transcript), ``caption_words`` (a content
  word of the caption), ``label_name`` (a label or metadata value, as a whole phrase; applied to every
  prompt, since a prompt naming a class gives it away whether it asks yes/no or "what is it"),
  ``quotes_description`` (four words in a row of the description), and the rephrase stage's leak
  rules (``leak:source_words``: "transcript", "metadata"; ``leak:according_to_source`` ...);
* ``distinct``: ``duplicate`` (equal to an earlier candidate once case and punctuation are ignored);
* ``single``: ``not_single`` (more than one question mark), ``too_long`` (more than ``max_words``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from alarm.rephrase.rules import LEAK_RULES

# Words that say nothing about a clip's content: function words and the vocabulary of questions
# about audio. A transcript or caption word among them is not a leak.
STOP_WORDS = frozenset("""
a about above after again all also am an and any are around as at be been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here
hers him his how i if in into is it its itself just me more most my no nor not now of off on once only or
other our out over own same she should so some such than that the their them then there these they this
those through to too under until up very was we were what when where which while who whom why will with
would you your yours yes okay oh uh um well one two three first last next
audio clip sound sounds sounding heard hear hearing listen listening speaker speakers speaking speak speaks
said say says saying voice voices speech recording recorded music musical describe description tell
happen happens happening kind type going like many much noise noises piece track song part
""".split())
NGRAM = 4  # a run of this many description words in a prompt quotes it
# Which checker rule each code rule belongs to.
RULE_GROUP = {"transcript_words": "no_leak", "caption_words": "no_leak", "label_name": "no_leak",
              "quotes_description": "no_leak", "duplicate": "distinct", "not_single": "single",
              "too_long": "single", **{f"leak:{name}": "no_leak" for name in LEAK_RULES}}


def words(text: str) -> list[str]:
    """Lower-case words (letters, digits, inner apostrophes)."""
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def content_words(text: str) -> set[str]:
    """The words of ``text`` that carry content: two letters or more and not in ``STOP_WORDS``."""
    return {w for w in words(text) if len(w) >= 2 and w not in STOP_WORDS}


@dataclass(frozen=True)
class LeakSource:
    """What a clip's prompts must not give away: its transcript, caption, labels and description.

    Attributes:
        transcript: what is said (all turns joined).
        caption: the free-text caption.
        labels: class labels and short metadata values (gender, language, genre ...).
        description: the full description the generator saw.
    """

    transcript: str = ""
    caption: str = ""
    labels: tuple[str, ...] = ()
    description: str = ""

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], description: str) -> LeakSource:
        """The leak source of a manifest row's metadata (role keys as in ``describe.py``)."""
        segments = [s for s in metadata.get("segments") or [] if isinstance(s, dict)]
        transcript = " ".join(str(t) for t in [metadata.get("transcript")] + [s.get("text") for s in segments] if t)
        labels = [str(v) for v in metadata.get("labels") or []]
        for item in [metadata, *segments]:
            for key, value in item.items():
                if key in ("transcript", "caption", "labels", "segments", "text", "start", "end", "duration"):
                    continue
                values = value if isinstance(value, list) else [value]
                labels += [str(v) for v in values if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
        kept = tuple(dict.fromkeys(v.strip() for v in labels if len(v.strip()) >= 2 and len(v.split()) <= 4))
        return cls(transcript, str(metadata.get("caption") or ""), kept, description)


def _phrase_in(phrase: str, text: str) -> bool:
    phrase_words = words(phrase)
    if not phrase_words or all(w in STOP_WORDS for w in phrase_words):
        return False
    return re.search(r"\b" + r"\W+".join(map(re.escape, phrase_words)) + r"\b", text.lower()) is not None


def leak_hits(prompt: str, source: LeakSource) -> list[tuple[str, str]]:
    """Every ``no_leak`` rule the prompt breaks, each with what matched."""
    hits: list[tuple[str, str]] = []
    mine = content_words(prompt)
    for rule, text in (("transcript_words", source.transcript), ("caption_words", source.caption)):
        shared = sorted(mine & content_words(text))
        if shared:
            hits.append((rule, ", ".join(shared)))
    named = [label for label in source.labels if _phrase_in(label, prompt)]
    if named:
        hits.append(("label_name", ", ".join(named)))
    said = words(prompt)
    grams = {tuple(said[i:i + NGRAM]) for i in range(len(said) - NGRAM + 1)}
    told = words(source.description)
    quoted = [" ".join(told[i:i + NGRAM]) for i in range(len(told) - NGRAM + 1) if tuple(told[i:i + NGRAM]) in grams]
    if quoted:
        hits.append(("quotes_description", quoted[0]))
    for name, pattern in LEAK_RULES.items():
        found = pattern.search(prompt)
        if found:
            hits.append((f"leak:{name}", found.group(0)))
    return hits


def normalized(prompt: str) -> str:
    """The prompt as compared for duplicates: lower case, words only."""
    return " ".join(words(prompt))


def code_checks(prompts: list[str] | tuple[str, ...], source: LeakSource, max_words: int) -> list[list[tuple[str, str]]]:
    """Per candidate, every code rule it breaks as ``(rule, what matched)``, in rule order."""
    seen: dict[str, int] = {}
    out: list[list[tuple[str, str]]] = []
    for i, prompt in enumerate(prompts, start=1):
        hits = leak_hits(prompt, source)
        key = normalized(prompt)
        if key in seen:
            hits.append(("duplicate", f"same as candidate {seen[key]}"))
        else:
            seen[key] = i
        if prompt.count("?") > 1:
            hits.append(("not_single", f"{prompt.count('?')} question marks"))
        if len(prompt.split()) > max_words:
            hits.append(("too_long", f"{len(prompt.split())} > {max_words} words"))
        out.append(hits)
    return out
