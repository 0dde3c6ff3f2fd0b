"""What validation drops: the leak and refusal rules, the config that picks them, and the split.

Each rule has a name; a rejected row records the first rule that hit, and the statistics count
every hit. The rules are data, so the run's config, the validator and the target writer share them
without importing one another.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# Words and shapes that reveal the target was written from text (docs/method.md §5). Keep each narrow:
# the unit tests hold a hit and a near-miss for every rule.
_SOURCE = r"(?:description|transcript|transcription|metadata|caption|captions|labels?|tags?|text)"
LEAK_RULES: dict[str, re.Pattern[str]] = {
    # "the description says", "the transcript mentions", "the metadata indicates"
    "source_says": re.compile(
        rf"\b(?:the|this|that|its)\s+(?:audio\s+|given\s+|provided\s+)?{_SOURCE}\s+"
        r"(?:says|said|states|stated|mentions|mentioned|indicates|indicated|notes|lists|listed|reads|"
        r"describes|described|shows|specifies|provides|gives|suggests)\b", re.I),
    # "the provided transcript", "given description", "the information provided"
    "provided_source": re.compile(
        r"\b(?:provided|given|supplied|attached)\s+(?:audio\s+)?(?:description|transcript|transcription|"
        r"metadata|caption|text|information|details|labels?|tags?|data)\b"
        r"|\b(?:description|transcript|metadata|caption|information|details|text)\s+(?:provided|given|supplied)\b",
        re.I),
    # "mentioned in the text", "as stated in the description", "listed in the metadata"
    "mentioned_in_source": re.compile(
        r"\b(?:mentioned|stated|written|listed|noted|described|specified|labell?ed|tagged|given)\s+"
        rf"(?:in|by)\s+(?:the\s+)?(?:audio\s+)?(?:{_SOURCE}|prompt|input)\b", re.I),
    # "according to the description"
    "according_to_source": re.compile(rf"\baccording\s+to\s+(?:the\s+)?(?:audio\s+)?{_SOURCE}\b", re.I),
    # the words themselves never describe listening
    "source_words": re.compile(r"\b(?:transcript|metadata)s?\b", re.I),
    # a copied `[00:00-00:05]` time span
    "copied_timestamp": re.compile(r"\[\s*\d{1,2}:\d{2}(?::\d{2})?\s*-\s*\d{1,2}:\d{2}(?::\d{2})?\s*\]"),
    # a `|dog barking|` caption: pipes hugging words, on a line that is not a Markdown table row
    "caption_pipes": re.compile(r"^(?!\s*\|).*?(?<![|\w])\|[^\s|][^|\n]{0,80}(?<=[^\s|])\|(?![|\w])", re.M),
    # the audio span's tags, or our neutral reasoning tags left behind
    "audio_tags": re.compile(r"<\s*/?\s*(?:start|end)_audio\s*>|\b(?:start|end)_audio\b", re.I),
    "leftover_tags": re.compile(r"</?\s*(?:text_llm_reasoning|answer)\s*>", re.I),
}
REFUSAL_RULES: dict[str, re.Pattern[str]] = {
    # "I can't listen to audio", "I am unable to hear", "I cannot process audio files"
    "cannot_hear": re.compile(
        r"\b(?:I|we)\s+(?:can(?:no|['’])t|cannot|am\s+unable\s+to|['’]m\s+unable\s+to|am\s+not\s+able\s+to|"
        r"do(?:n['’]t| not)\s+have\s+the\s+ability\s+to)\s+(?:directly\s+)?(?:listen|hear|play|process|access)"
        r"\b[^.\n]{0,40}\b(?:audio|sound|clip|recording|file)", re.I),
    # "no audio was attached", "there is no audio file"
    "no_audio": re.compile(
        r"\b(?:no|without\s+(?:an?|the))\s+(?:actual\s+)?(?:audio|sound)\s+(?:file\s+|clip\s+)?"
        r"(?:was\s+|is\s+|has\s+been\s+)?(?:attached|included|uploaded|available|shared)\b", re.I),
    # "as an AI (language model), I ..."
    "as_an_ai": re.compile(r"\bas\s+an?\s+(?:AI|text[- ]based|language\s+model)\b", re.I),
}


@dataclass
class ValidateConfig:
    """Filters from generations to targets.

    Attributes:
        min_tokens: shortest target kept, in the model's tokens (docs/method.md §5: 100).
        max_tokens: longest target kept (612).
        leak_rules: names from ``LEAK_RULES`` to apply; None applies all.
        refusal_rules: names from ``REFUSAL_RULES`` to apply; None applies all.
        judge: ask the model whether each target still reveals text access (off, as published).
        val_fraction: share of each dataset put in the validation split, by a hash of the id.
    """

    min_tokens: int = 100
    max_tokens: int = 612
    leak_rules: list[str] | None = None
    refusal_rules: list[str] | None = None
    judge: bool = False
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"need 0 <= min_tokens <= max_tokens, got {self.min_tokens}, {self.max_tokens}")
        for given, known, what in ((self.leak_rules, LEAK_RULES, "leak"),
                                   (self.refusal_rules, REFUSAL_RULES, "refusal")):
            unknown = sorted(set(given or ()) - set(known))
            if unknown:
                raise ValueError(f"unknown {what} rule(s) {', '.join(unknown)}; known: {', '.join(known)}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def rules(self) -> dict[str, re.Pattern[str]]:
        """The active rules, named ``leak:<name>`` and ``refusal:<name>``."""
        leak = self.leak_rules if self.leak_rules is not None else list(LEAK_RULES)
        refusal = self.refusal_rules if self.refusal_rules is not None else list(REFUSAL_RULES)
        return {**{f"leak:{n}": LEAK_RULES[n] for n in leak},
                **{f"refusal:{n}": REFUSAL_RULES[n] for n in refusal}}


def rule_hits(text: str, rules: dict[str, re.Pattern[str]]) -> list[str]:
    """Names of every rule that matches ``text``, in rule order."""
    return [name for name, pattern in rules.items() if pattern.search(text)]


def split_for(dataset: str, key: str, val_fraction: float) -> str:
    """``validation`` for about ``val_fraction`` of each dataset's keys, else ``train``; stable.

    ``key`` names what must not straddle the splits: the rephrase job gives the clip (its store key, else
    its audio file's name), so the k prompts of one clip all land in one split and validation is audio never trained on.
    """
    digest = hashlib.sha256(f"{dataset}\x1f{key}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"
