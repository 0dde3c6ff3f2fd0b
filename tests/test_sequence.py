"""Input assembly (docs/method.md §4): the layout from the chat template, labels and masks position by position."""

from __future__ import annotations

import pytest
import torch

from alarm.trainer.sequence import (
    IGNORE_INDEX,
    LayoutError,
    PromptLayout,
    SequenceTooLong,
    assemble_batch,
    fit_target,
    prompt_embeds,
)


@pytest.fixture(scope="module")
def layout(qwen3_tokenizer) -> PromptLayout:
    return PromptLayout.from_tokenizer(qwen3_tokenizer)


def test_layout_is_split_from_the_chat_template(layout, qwen3_tokenizer):
    assert layout.head == "<|im_start|>user\n"  # no system prompt in training
    assert layout.middle == "\n\n"
    assert layout.tail == "<|im_end|>\n<|im_start|>assistant\n<think>\n"
    assert list(layout.head_ids) == qwen3_tokenizer.encode("<|im_start|>user\n", add_special_tokens=False)
    assert layout.head_ids[0] == qwen3_tokenizer.convert_tokens_to_ids("<|im_start|>")
    # The whole text of a row equals the chat template with the audio span removed.
    rendered = qwen3_tokenizer.apply_chat_template(
        [{"role": "user", "content": "\n\nWhat is it?"}], tokenize=False, add_generation_prompt=True)
    assert layout.head + layout.middle + "What is it?" + layout.tail == rendered
    ids = layout.prompt_ids(qwen3_tokenizer, "What is it?")
    assert ids[-1] == qwen3_tokenizer.encode("\n", add_special_tokens=False)[0]
    assert ids[-2] == qwen3_tokenizer.convert_tokens_to_ids("<think>")


class _Tok:
    """A tokenizer stand-in with a configurable chat template output (one char per token)."""

    def __init__(self, render):
        self.render = render

    def apply_chat_template(self, messages, **kwargs):
        return self.render(messages[0]["content"])

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]


def test_hybrid_template_gets_the_thinking_opener_and_bad_templates_fail():
    hybrid = _Tok(lambda c: f"<|im_start|>user\n{c}<|im_end|>\n<|im_start|>assistant\n")
    assert PromptLayout.from_tokenizer(hybrid).tail == "<|im_end|>\n<|im_start|>assistant\n<think>\n"
    with pytest.raises(LayoutError):
        PromptLayout.from_tokenizer(_Tok(lambda c: "<|im_start|>user\nhello<|im_end|>\n"))
    with pytest.raises(LayoutError):
        PromptLayout.from_tokenizer(_Tok(lambda c: f"{c}<think>\n\n</think>\n\n"))


def test_target_ids_drop_a_leading_opener_and_add_no_eos(layout, qwen3_tokenizer):
    plain = layout.target_ids(qwen3_tokenizer, "I hear a dog.</think>\n\nA dog.")
    assert layout.target_ids(qwen3_tokenizer, "<think>\nI hear a dog.</think>\n\nA dog.") == plain
    assert qwen3_tokenizer.decode(plain) == "I hear a dog.</think>\n\nA dog."
    assert qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>") not in plain


def test_assembled_batch_position_by_position(layout, qwen3_tokenizer):
    torch.manual_seed(0)
    embed = torch.nn.Embedding(151936, 6)
    audio = torch.randn(2, 7, 6)
    audio_lengths = torch.tensor([7, 4])
    audio[1, 4:] = 0
    head = torch.tensor(layout.head_ids)
    prompts = [torch.tensor(layout.prompt_ids(qwen3_tokenizer, p)) for p in ("Describe it.", "Who speaks?")]
    targets = [torch.tensor(layout.target_ids(qwen3_tokenizer, t)) for t in ("I hear rain.", "A man.</think>\n\nA man")]
    out = assemble_batch(audio, audio_lengths, head, prompts, targets, embed, max_seq_len=4096)
    h = len(head)
    for i in range(2):
        n, p, t = int(audio_lengths[i]), len(prompts[i]), len(targets[i])
        total = h + n + p + t
        assert int(out.lengths[i]) == total
        row, labels, mask = out.inputs_embeds[i], out.labels[i], out.attention_mask[i]
        with torch.no_grad():
            assert torch.equal(row[:h], embed(head))  # <|im_start|>user\n
            assert torch.equal(row[h:h + n], audio[i, :n])  # [start] audio [end] from the front end
            assert torch.equal(row[h + n:h + n + p], embed(prompts[i]))  # prompt, assistant header, <think>\n
            assert torch.equal(row[h + n + p:total], embed(targets[i]))
            assert torch.equal(row[total:], torch.zeros_like(row[total:]))  # right padding
        assert (labels[:h + n + p] == IGNORE_INDEX).all()
        assert torch.equal(labels[h + n + p:total], targets[i])  # the model shifts them itself
        assert (labels[total:] == IGNORE_INDEX).all()
        assert (mask[:total] == 1).all() and (mask[total:] == 0).all()
        assert int(labels[total - 1]) == int(targets[i][-1])  # no EOS appended


def test_truncation_policy_cuts_the_target_tail_and_refuses_full_rows(layout, qwen3_tokenizer):
    assert fit_target(10, list(range(8)), 14) == [0, 1, 2, 3]
    assert fit_target(10, list(range(3)), 14) == [0, 1, 2]
    with pytest.raises(SequenceTooLong):
        fit_target(14, [1, 2], 14)
    embed = torch.nn.Embedding(151936, 4)
    head = torch.tensor(layout.head_ids)
    prompt = torch.tensor(layout.prompt_ids(qwen3_tokenizer, "Q?"))
    target = torch.arange(100, 130)
    audio = torch.randn(1, 5, 4)
    cap = len(head) + 5 + len(prompt) + 7
    out = assemble_batch(audio, torch.tensor([5]), head, [prompt], [target], embed, max_seq_len=cap)
    assert int(out.lengths[0]) == cap
    assert torch.equal(out.labels[0][-7:], target[:7])  # the head of the target is kept
    with pytest.raises(SequenceTooLong):
        assemble_batch(audio, torch.tensor([5]), head, [prompt], [target], embed, max_seq_len=cap - 7)


def test_prompt_embeds_match_the_training_prefix(layout, qwen3_tokenizer):
    embed = torch.nn.Embedding(151936, 4)
    head = torch.tensor(layout.head_ids)
    prompt = torch.tensor(layout.prompt_ids(qwen3_tokenizer, "Q?"))
    audio = torch.randn(1, 6, 4)
    full = assemble_batch(audio, torch.tensor([5]), head, [prompt], [torch.tensor([42, 43])], embed, 4096)
    gen = prompt_embeds(audio[0], 5, head, prompt, embed)
    assert torch.equal(gen[0], full.inputs_embeds[0, : gen.shape[1]])
    assert gen.shape[1] == int(full.lengths[0]) - 2
