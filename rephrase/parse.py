"""Pure text handling around the two passes: tag renaming, answer extraction, tag mapping back.

No model, no I/O: every function here is unit-tested on strings (docs/method.md §5, post-processing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from alarm.rephrase.prompts import NEUTRAL_CLOSE, NEUTRAL_OPEN, THINK_CLOSE, THINK_OPEN

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass(frozen=True)
class PreparedResponse:
    """A pass-1 response made ready for the rephraser.

    Attributes:
        text: the response with a thinking opener, a closer, and both renamed to neutral tags.
        incomplete: True when the pass-1 response never closed its thinking (it hit the cap).
    """

    text: str
    incomplete: bool


def is_incomplete(response: str) -> bool:
    """A response is incomplete when its thinking was never closed (it ran into the token cap)."""
    return THINK_CLOSE not in response


def prepare_for_rephrase(response: str) -> PreparedResponse:
    """Turn a pass-1 response into the text the rephraser sees.

    Adds ``<think>\\n`` when the chat template had inserted it (so the response lacks it), appends a
    closer when the response is incomplete, then renames both tags to the neutral ones.
    """
    body = response.lstrip()
    if not body.startswith(THINK_OPEN):
        body = f"{THINK_OPEN}\n{body}"
    incomplete = is_incomplete(body)
    if incomplete:
        body = f"{body.rstrip()}\n{THINK_CLOSE}"
    body = body.replace(THINK_OPEN, NEUTRAL_OPEN).replace(THINK_CLOSE, NEUTRAL_CLOSE)
    return PreparedResponse(text=body, incomplete=incomplete)


def extract_last_answer(output: str) -> str | None:
    """The text inside the last complete ``<answer>…</answer>`` of a rephraser output, or None.

    The rephraser's own thinking may quote ``<answer>`` tags while it plans, so only what follows its
    ``</think>`` is searched when it has one.
    """
    tail = output.rsplit(THINK_CLOSE, 1)[-1] if THINK_CLOSE in output else output
    found = _ANSWER_RE.findall(tail)
    if not found:
        return None
    return found[-1].strip("\n")


def restore_tags(rewritten: str, incomplete: bool, template_opens_thinking: bool = True) -> str:
    """Map the neutral tags of a rewrite back to thinking tags, giving the training target.

    Args:
        rewritten: the rephraser's answer text (inside ``<answer>``).
        incomplete: whether the original response was incomplete; its closer was only added for
            the rephraser and is dropped again, so the target stops mid-thought like the original.
        template_opens_thinking: the training prompt ends with ``<think>\\n`` already (Qwen3
            thinking templates), so the target must not repeat the opener.
    """
    text = rewritten.replace(NEUTRAL_OPEN, THINK_OPEN).replace(NEUTRAL_CLOSE, THINK_CLOSE).strip()
    if template_opens_thinking and text.startswith(THINK_OPEN):
        text = text[len(THINK_OPEN):].lstrip("\n")
    if incomplete:
        head, sep, _ = text.rpartition(THINK_CLOSE)
        if sep:
            text = head.rstrip()
    return text


def answer_target(response: str, template_opens_thinking: bool = True) -> str:
    """The training target for a row that skips pass 2 (spoken instructions): the response itself."""
    text = response.strip()
    if template_opens_thinking and text.startswith(THINK_OPEN):
        text = text[len(THINK_OPEN):].lstrip("\n")
    return text
