"""Prompt text of stage 0: the generation pass (one system prompt per domain) and the checker pass.

Everything a cache key depends on is a module constant here or a config value, so editing a text
changes the request keys of exactly the pass that uses it: a new checker template reruns only the
checker. The text is ours; the shape (candidates from a description, checked against stated rules,
then a seeded choice) follows the ALARM corpus (docs/method.md §5).
"""

from __future__ import annotations

DOMAINS = ("speech", "sound", "music")

_WRITER = (
    "You write the prompts of a training set for an audio model: questions and instructions a user "
    "could give about one audio clip. You cannot hear the clip; the user turn gives a text description "
    "of it in its place. "
)
_FOCUS = {
    "speech": ("The clip is speech. Ask about what is said and what it means, the speaker's intent, "
               "emotion, tone, pace, gender or accent, the language, how many people speak and how "
               "they interact, or ask for a transcription or a summary."),
    "sound": ("The clip holds sounds. Ask which sources are heard, how many events there are and in "
              "what order, how they change over time, where the scene could be, how near or loud "
              "things are, or ask for a description of the scene."),
    "music": ("The clip is music. Ask about the genre, the instruments, the tempo and rhythm, the key "
              "or mode, the mood, the melody and how the piece develops, or ask for a description."),
}
_RULES = (
    "\n\nRules for every prompt:\n"
    "- Someone who only hears the audio can answer it.\n"
    "- It never contains its own answer and never quotes the description: no words of the "
    "transcript, no label or caption words, no mention of a description, transcript, caption, "
    "labels or metadata.\n"
    "- It is a single question or a single instruction, on one line.\n"
    "- The prompts differ from one another in what they ask, not only in wording.\n\n"
    "Write exactly {n} prompts, one per line, between <answer> and </answer>, and nothing else "
    "between the tags."
)
GENERATE_SYSTEM_PROMPTS: dict[str, str] = {domain: _WRITER + _FOCUS[domain] + _RULES for domain in DOMAINS}
"""Our default system prompt per domain; ``{n}`` is the number of candidates asked for."""

GENERATE_USER_TEMPLATE = "Description of the clip:\n{description}"

# The checker's rules, by name: a rejected candidate names the rule it breaks.
CHECK_RULES: dict[str, str] = {
    "answerable": "it can be answered from the audio alone",
    "no_leak": ("it does not reveal its answer and does not quote the description: no transcript "
                "words, no label or caption words"),
    "distinct": "it is not a repetition of an earlier candidate in other words",
    "single": "it is one question or one instruction",
}

CHECK_SYSTEM_PROMPT = (
    "You check prompts written for an audio model's training set. The user turn gives the text "
    "description of an audio clip and numbered candidate prompts about it. A candidate is usable only "
    "if it keeps every rule:\n"
    + "".join(f"- {name}: {text}.\n" for name, text in CHECK_RULES.items())
    + "\nBetween <answer> and </answer>, write one line per candidate, in order, either "
    "`<number>: keep` or `<number>: reject <rule>: <short reason>`, where <rule> is one of "
    + ", ".join(CHECK_RULES) + ".\n\nExample:\n<answer>\n1: keep\n2: reject no_leak: it names the "
    "dog it asks about\n3: reject distinct: same question as 1\n</answer>"
)
CHECK_USER_TEMPLATE = "Description of the clip:\n{description}\n\nCandidates:\n{candidates}"


# Budget forcing: appended when a reply's thinking reaches its budget, so the model goes on to its answer.
BUDGET_FORCING_CLOSER = "\n\nI have thought about this enough; now I will write my answer.\n</think>\n\n"


def generate_system_prompt(template: str, n: int) -> str:
    """A generation system prompt with its candidate count filled in (a template without ``{n}`` as is)."""
    return template.replace("{n}", str(n))


def numbered(candidates: list[str]) -> str:
    """The candidates as the checker sees them: ``1. ...`` one per line."""
    return "\n".join(f"{i}. {text}" for i, text in enumerate(candidates, start=1))
