"""Input assembly (docs/method.md §4): where the audio goes in the chat-templated prompt, and the labels.

One training row is

    embed(<|im_start|>user\\n) | audio-start | audio | audio-end |
    embed(<separator><prompt><|im_end|>\\n<|im_start|>assistant\\n<think>\\n) | embed(target)

The text pieces are not hard-coded: ``PromptLayout`` renders the tokenizer's own chat template once
with two placeholders (audio, prompt) and splits the text at them, so another LLM's template gives
its own layout. Labels are -100 everywhere except on the target tokens; no EOS is appended (targets
may be cut on purpose).

Truncation policy for the ``max_seq_len`` cap (default 4096): the target's *tail* is cut so the row
fits, because the head of an answer (the start of the reasoning) is what the audio must explain. A
row whose head + audio + prompt alone leave no room for a single target token cannot teach
anything: ``fit_target`` raises ``SequenceTooLong`` and the data stage drops that row into the
rejects table with the reason (trainer.data), before training starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

AUDIO_PLACEHOLDER = "<<ALARM_AUDIO_SPAN>>"
PROMPT_PLACEHOLDER = "<<ALARM_PROMPT_TEXT>>"
THINK_OPEN = "<think>\n"
IGNORE_INDEX = -100


class SequenceTooLong(ValueError):
    """Audio and prompt alone fill the cap: no target token fits."""


class LayoutError(ValueError):
    """The tokenizer's chat template cannot be split around the audio and the prompt."""


@dataclass(frozen=True)
class PromptLayout:
    """The text around the audio span, derived from a tokenizer's chat template.

    Attributes:
        head: Text before the audio (``<|im_start|>user\\n`` for Qwen3, no system prompt).
        middle: Text between the audio span and the prompt (the separator).
        tail: Text after the prompt up to and including the thinking opener.
        head_ids: Token ids of ``head``.
    """

    head: str
    middle: str
    tail: str
    head_ids: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, separator: str = "\n\n") -> PromptLayout:
        """Render the chat template with placeholders and split it at them.

        Args:
            tokenizer: A Hugging Face tokenizer with a chat template.
            separator: Text between the audio span and the prompt inside the user turn.

        Raises:
            LayoutError: The template drops, repeats or reorders the placeholders.
        """
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": AUDIO_PLACEHOLDER + separator + PROMPT_PLACEHOLDER}],
            tokenize=False, add_generation_prompt=True, enable_thinking=True,
        )
        if rendered.count(AUDIO_PLACEHOLDER) != 1 or rendered.count(PROMPT_PLACEHOLDER) != 1:
            raise LayoutError("the chat template does not render the user content verbatim once")
        head, rest = rendered.split(AUDIO_PLACEHOLDER)
        middle, tail = rest.split(PROMPT_PLACEHOLDER)
        # Thinking-only templates (Qwen3-Thinking-2507) open <think> themselves; hybrid ones do not,
        # and the targets always start inside the thinking block.
        if not tail.endswith(THINK_OPEN):
            if "<think>" in tail:
                raise LayoutError(f"the generation prompt has <think> but not at its end: {tail!r}")
            tail += THINK_OPEN
        head_ids = tuple(tokenizer.encode(head, add_special_tokens=False))
        return cls(head=head, middle=middle, tail=tail, head_ids=head_ids)

    def prompt_ids(self, tokenizer: Any, prompt: str) -> list[int]:
        """Token ids from after the audio span to the thinking opener, for one prompt."""
        return tokenizer.encode(self.middle + prompt + self.tail, add_special_tokens=False)

    @staticmethod
    def target_text(target: str) -> str:
        """A target without a leading thinking opener (the layout already ends with it)."""
        if target.startswith("<think>"):
            target = target[len("<think>"):].removeprefix("\n")
        return target

    def target_ids(self, tokenizer: Any, target: str) -> list[int]:
        """Token ids of a target (see ``target_text``); no EOS is added."""
        return tokenizer.encode(self.target_text(target), add_special_tokens=False)


def fit_target(n_fixed: int, target_ids: Sequence[int], max_seq_len: int) -> Sequence[int]:
    """Apply the truncation policy: keep the target's head so the row fits in ``max_seq_len``.

    Args:
        n_fixed: Tokens before the target (head + audio vectors incl. delimiters + prompt).
        target_ids: The full target (a list or a 1-D tensor; the same type comes back).
        max_seq_len: The cap on the whole row.

    Raises:
        SequenceTooLong: Not even one target token fits.
    """
    room = max_seq_len - n_fixed
    if room < 1:
        raise SequenceTooLong(f"audio and prompt take {n_fixed} tokens, cap is {max_seq_len}")
    return target_ids[:room]


@dataclass
class AssembledBatch:
    """One padded batch ready for the LLM (right padding)."""

    inputs_embeds: torch.Tensor  # (B, L, D)
    attention_mask: torch.Tensor  # (B, L) 1 on real positions
    labels: torch.Tensor  # (B, L) target ids on target positions, IGNORE_INDEX elsewhere
    lengths: torch.Tensor  # (B,) real positions per row


def assemble_batch(audio_embeds: torch.Tensor, audio_lengths: torch.Tensor, head_ids: torch.Tensor,
                   prompt_ids: list[torch.Tensor], target_ids: list[torch.Tensor],
                   embed: torch.nn.Module, max_seq_len: int) -> AssembledBatch:
    """Build inputs_embeds / attention_mask / labels for a batch.

    Args:
        audio_embeds: (B, N, D) front-end output, each row left-aligned [start] + audio + [end].
        audio_lengths: (B,) valid vectors per row.
        head_ids: (h,) ids of the layout head.
        prompt_ids: Per row, ids from after the audio to the thinking opener.
        target_ids: Per row, the target ids (already fitted; cut again here if needed).
        embed: The LLM's input embedding module (frozen).
        max_seq_len: The cap; rows are cut by ``fit_target``.

    Raises:
        SequenceTooLong: A row's audio and prompt fill the cap.
    """
    import torch

    rows, labels = [], []
    device = audio_embeds.device
    for i in range(audio_embeds.shape[0]):
        n_audio = int(audio_lengths[i])
        fixed = len(head_ids) + n_audio + len(prompt_ids[i])
        target = fit_target(fixed, target_ids[i], max_seq_len)
        text = torch.cat([head_ids, prompt_ids[i], target]).to(device)
        text_embeds = embed(text)
        h = len(head_ids)
        audio = audio_embeds[i, :n_audio].to(text_embeds.dtype)
        rows.append(torch.cat([text_embeds[:h], audio, text_embeds[h:]]))
        ignore = torch.full((fixed,), IGNORE_INDEX, dtype=torch.long)
        labels.append(torch.cat([ignore, target.long().cpu()]))
    lengths = torch.tensor([len(r) for r in rows])
    width = int(lengths.max())
    dim = rows[0].shape[-1]
    inputs = rows[0].new_zeros((len(rows), width, dim))
    label_t = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, lab) in enumerate(zip(rows, labels, strict=True)):
        inputs[i, : len(row)] = row
        label_t[i, : len(lab)] = lab
        mask[i, : len(row)] = 1
    return AssembledBatch(inputs_embeds=inputs, attention_mask=mask.to(device),
                          labels=label_t.to(device), lengths=lengths)


def prompt_embeds(audio_embeds: torch.Tensor, n_audio: int, head_ids: torch.Tensor,
                  prompt_ids: torch.Tensor, embed: torch.nn.Module) -> torch.Tensor:
    """(1, L, D) embeddings of one row without its target, to generate an answer from."""
    import torch

    text_embeds = embed(torch.cat([head_ids, prompt_ids]).to(audio_embeds.device))
    h = len(head_ids)
    audio = audio_embeds[:n_audio].to(text_embeds.dtype)
    return torch.cat([text_embeds[:h], audio, text_embeds[h:]]).unsqueeze(0)
