"""Prompt text for the two generation passes and the optional judge (docs/method.md §5).

The text is ours; the layout and the eight rewrite rules follow the method. Everything the cache
keys on is a module constant here, so editing a prompt changes its template hash and reruns only
the pass that uses it (``template_hash``).
"""

from __future__ import annotations

import hashlib

AUDIO_OPEN = "<start_audio>"
AUDIO_CLOSE = "<end_audio>"
# The rephraser must not mistake the pass-1 reasoning for its own thinking, so it sees it between
# neutral tags; parse.py maps them back.
NEUTRAL_OPEN = "<text_llm_reasoning>"
NEUTRAL_CLOSE = "</text_llm_reasoning>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

ANSWER_SYSTEM_PROMPT = (
    "You are an audio understanding assistant. Each user turn carries one audio clip, placed "
    f"between {AUDIO_OPEN} and {AUDIO_CLOSE}, followed by a request about it. Listen to the clip "
    "and answer the request as helpfully and accurately as you can."
)
ANSWER_USER_TEMPLATE = AUDIO_OPEN + "{description}" + AUDIO_CLOSE + "\n\n{prompt}"

# Spoken-instruction rows: the question is answered from its context directly; no pass 2.
INSTRUCTION_USER_TEMPLATE = "{context}\n\n{prompt}"

_EXAMPLE_1_IN = (
    f"{NEUTRAL_OPEN}\nThe description gives the transcript \"Could you close the window, "
    "please?\" and lists the speaker as female. The user asks about the speaker's intent. From the "
    "transcript provided, she is making a polite request.\n"
    f"{NEUTRAL_CLOSE}\n\nThe speaker politely asks someone to close the window."
)
_EXAMPLE_1_OUT = (
    f"{NEUTRAL_OPEN}\nI hear a female voice saying \"Could you close the window, please?\". "
    "The user asks about the speaker's intent. From what she says, she is making a polite "
    f"request.\n{NEUTRAL_CLOSE}\n\nThe speaker politely asks someone to close the window."
)
_EXAMPLE_2_IN = (
    f"{NEUTRAL_OPEN}\nThe clip is tagged |rain, thunder| and the metadata says it lasts 9 "
    "seconds. Let me think about which environment this could be. Heavy rain with thunder "
    "mentioned in the text suggests a storm outside, maybe heard through"
)
_EXAMPLE_2_OUT = (
    f"{NEUTRAL_OPEN}\nThe clip sounds like rain with rolls of thunder, and it lasts about 9 "
    "seconds. Let me think about which environment this could be. Heavy rain with the thunder I "
    "can hear suggests a storm outside, maybe heard through"
)
_EXAMPLE_3_IN = (
    f"{NEUTRAL_OPEN}\nAt [00:02-00:05] the second speaker says \"yes\". Between the "
    f"{AUDIO_OPEN} and {AUDIO_CLOSE} tags there are two turns, so this is a dialogue.\n"
    f"{NEUTRAL_CLOSE}\n\n**Answer:** two people are talking."
)
_EXAMPLE_3_OUT = (
    f"{NEUTRAL_OPEN}\nA few seconds in, the second speaker says \"yes\". From the beginning to the "
    "end of the audio there are two turns, so this is a dialogue.\n"
    f"{NEUTRAL_CLOSE}\n\n**Answer:** two people are talking."
)

REPHRASE_SYSTEM_PROMPT = f"""You edit responses written by another model. That model answered a question \
about an audio clip, but it only read a text stand-in for the clip. Your job is to edit its response \
lightly so that it reads as if the model had listened to the audio itself.

The response arrives in the user turn. Its reasoning sits between {NEUTRAL_OPEN} and {NEUTRAL_CLOSE}; \
anything after the closing tag is its final answer.

Rules:
1. Keep the same structure, paragraphs and formatting, and nearly the same length.
2. Change only a few words or phrases. Do not rewrite, shorten or extend anything.
3. Where words about reading concern the audio (mentioned, provided, description, listed, given, \
transcript, tagged, metadata), use words about hearing instead (I hear, the speaker sounds, it sounds \
like, listening to the clip). Leave the model's own knowledge and intentions ("I think", "let me \
check") as they are.
4. Never imply access to text, transcripts, tags, labels, metadata or a description.
5. Keep the meaning. Never correct the answer, and never complete a response that stops early.
6. Edit both the reasoning and the final answer, and only what is there.
7. Keep the tone and the style.
8. Never mention the audio tags or timestamps in brackets; say "the beginning of the audio" or \
"the end of the audio" instead.

Write the edited response, tags included, between <answer> and </answer>.

Example 1, original:
{_EXAMPLE_1_IN}
Edited:
<answer>{_EXAMPLE_1_OUT}</answer>

Example 2 (the response stops early, and so does the edit), original:
{_EXAMPLE_2_IN}
Edited:
<answer>{_EXAMPLE_2_OUT}</answer>

Example 3, original:
{_EXAMPLE_3_IN}
Edited:
<answer>{_EXAMPLE_3_OUT}</answer>"""
REPHRASE_USER_TEMPLATE = "{response}"

# Budget forcing: when the rephraser's thinking reaches its budget, this is appended and the model
# continues straight into its answer.
BUDGET_FORCING_CLOSER = (
    "\n\nI have thought about this enough; now I will write the edited response.\n"
    f"{THINK_CLOSE}\n\n"
)

JUDGE_SYSTEM_PROMPT = (
    "You check training texts. A text should read as if its author listened to an audio clip. "
    "Decide whether the text reveals that its author instead read a transcript, caption, tags, "
    "metadata or some other written description of the audio. Reply with <answer>yes</answer> if "
    "it does and <answer>no</answer> if it does not."
)
JUDGE_USER_TEMPLATE = "{target}"


def template_hash(*parts: str) -> str:
    """A short, stable hash of the prompt text a pass uses (its system prompt and templates)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:16]


ANSWER_TEMPLATE_HASH = template_hash(ANSWER_SYSTEM_PROMPT, ANSWER_USER_TEMPLATE, INSTRUCTION_USER_TEMPLATE)
REPHRASE_TEMPLATE_HASH = template_hash(REPHRASE_SYSTEM_PROMPT, REPHRASE_USER_TEMPLATE, BUDGET_FORCING_CLOSER)
JUDGE_TEMPLATE_HASH = template_hash(JUDGE_SYSTEM_PROMPT, JUDGE_USER_TEMPLATE)
