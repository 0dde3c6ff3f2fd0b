"""Pure text handling: tag renaming, answer extraction, tag mapping, leak/refusal rules, split."""

from __future__ import annotations

import pytest

from alarm.rephrase import prompts
from alarm.rephrase.judge import parse_verdict
from alarm.rephrase.parse import (
    answer_target,
    extract_last_answer,
    is_incomplete,
    prepare_for_rephrase,
    restore_tags,
)
from alarm.rephrase.rules import LEAK_RULES, REFUSAL_RULES, ValidateConfig, rule_hits, split_for
from alarm.rephrase.show import highlight_changes


def test_prepare_adds_opener_and_renames_tags():
    prepared = prepare_for_rephrase("The caption says rain.\n</think>\n\nIt is raining.")
    assert not prepared.incomplete
    assert prepared.text == ("<text_llm_reasoning>\nThe caption says rain.\n</text_llm_reasoning>\n\n"
                             "It is raining.")
    assert "<think>" not in prepared.text and "</think>" not in prepared.text


def test_prepare_marks_incomplete_and_closes_it():
    prepared = prepare_for_rephrase("<think>\nThe transcript reads hello and")
    assert prepared.incomplete and is_incomplete("<think>\nabc")
    assert prepared.text.endswith("hello and\n</text_llm_reasoning>")
    assert prepared.text.count("<text_llm_reasoning>") == 1


def test_extract_last_answer_ignores_the_rephrasers_own_thinking():
    output = "I could write <answer>draft</answer> here.\n</think>\n\n<answer>one</answer> x <answer>two</answer>"
    assert extract_last_answer(output) == "two"
    assert extract_last_answer("no tags at all") is None
    assert extract_last_answer("</think>\n<answer>cut off before the clos") is None
    assert extract_last_answer("<answer>\nkept\n</answer>") == "kept"


def test_restore_tags_drops_opener_and_closer_of_incomplete():
    rewritten = "<text_llm_reasoning>\nI hear rain and\n</text_llm_reasoning>"
    assert restore_tags(rewritten, incomplete=True) == "I hear rain and"
    full = "<text_llm_reasoning>\nI hear rain.\n</text_llm_reasoning>\n\nIt rains."
    assert restore_tags(full, incomplete=False) == "I hear rain.\n</think>\n\nIt rains."
    assert restore_tags(full, incomplete=False, template_opens_thinking=False).startswith("<think>\nI hear")


def test_answer_target_strips_only_the_opener():
    assert answer_target("<think>\nabc\n</think>\n\nok") == "abc\n</think>\n\nok"
    assert answer_target("abc\n</think>\n\nok") == "abc\n</think>\n\nok"


def test_round_trip_keeps_the_response_when_the_rephraser_changes_nothing():
    original = "The sound is a bell.\n</think>\n\nA bell."
    prepared = prepare_for_rephrase(original)
    assert restore_tags(prepared.text, prepared.incomplete) == original


def test_template_hashes_differ_per_pass_and_prompt_has_rules_and_examples():
    assert len({prompts.ANSWER_TEMPLATE_HASH, prompts.REPHRASE_TEMPLATE_HASH, prompts.JUDGE_TEMPLATE_HASH}) == 3
    for needle in ("1. ", "8. ", "Example 1", "Example 3", "<answer>", prompts.NEUTRAL_OPEN):
        assert needle in prompts.REPHRASE_SYSTEM_PROMPT
    assert prompts.AUDIO_OPEN in prompts.ANSWER_SYSTEM_PROMPT


# every rule: texts it must catch, and near-misses it must leave alone
RULE_CASES = {
    "source_says": (["The description says a dog barks.", "the transcript mentions a train",
                     "This caption indicates rain."],
                    ["The speaker says hello.", "The dog barks, says nothing."]),
    "provided_source": (["Based on the provided transcript, yes.", "From the given description it is rain.",
                         "the information provided suggests"],
                        ["I have provided an answer.", "Given the loud noise, it is a truck."]),
    "mentioned_in_source": (["The bell is mentioned in the text.", "as stated in the description",
                             "it is listed in the metadata"],
                            ["The bell is mentioned twice by the speaker.", "stated in a calm voice"]),
    "according_to_source": (["According to the caption, it rains.", "according to the transcript"],
                            ["According to the speaker, it rains.", "according to my knowledge"]),
    "source_words": (["The transcript is short.", "Checking the metadata."],
                     ["Let me transcribe what I hear.", "The transcription task is easy."]),
    "copied_timestamp": (["At [00:00-00:05] a dog barks.", "[01:02 - 01:10] speech"],
                         ["At 00:05 a dog barks.", "a list [1, 2] of numbers"]),
    "caption_pipes": (["I hear |dog barking| in the clip.", "It sounds like |rain, thunder|."],
                      ["| col | value |\n|---|---|\n| a | b |", "x || y means or", "a | b"]),
    "audio_tags": (["Between <start_audio> and <end_audio> there is rain.", "the end_audio marker"],
                   ["At the start of the audio there is rain.", "the audio ends"]),
    "leftover_tags": (["<answer>I hear rain</answer>", "</text_llm_reasoning>"],
                      ["My answer is rain.", "The reasoning is simple."]),
}
REFUSAL_CASES = {
    "cannot_hear": (["I can't listen to audio files.", "I am unable to hear the recording.",
                     "I cannot directly process audio"],
                    ["I can't tell which bird it is, but the audio has chirps.", "I can hear rain."]),
    "no_audio": (["No audio was attached to the message.", "Without an audio file attached I guess."],
                 ["No audio artefacts are present, the sound is clean.", "The audio was clear."]),
    "as_an_ai": (["As an AI language model, I think", "As a text-based model I can only read."],
                 ["As a musician would say, the chord is minor.", "an AI voice speaks"]),
}


@pytest.mark.parametrize("name", sorted(RULE_CASES))
def test_leak_rule_hits_and_near_misses(name):
    hits, misses = RULE_CASES[name]
    for text in hits:
        assert LEAK_RULES[name].search(text), f"{name} should catch: {text!r}"
    for text in misses:
        assert not LEAK_RULES[name].search(text), f"{name} should not catch: {text!r}"


@pytest.mark.parametrize("name", sorted(REFUSAL_CASES))
def test_refusal_rule_hits_and_near_misses(name):
    hits, misses = REFUSAL_CASES[name]
    for text in hits:
        assert REFUSAL_RULES[name].search(text), f"{name} should catch: {text!r}"
    for text in misses:
        assert not REFUSAL_RULES[name].search(text), f"{name} should not catch: {text!r}"


def test_every_rule_has_cases():
    assert set(RULE_CASES) == set(LEAK_RULES) and set(REFUSAL_CASES) == set(REFUSAL_RULES)


def test_listening_style_target_passes_every_rule():
    text = ("I hear a dog barking twice near the beginning of the audio, then a car passes.\n</think>\n\n"
            "A dog barks and a car drives by; the speaker sounds calm.")
    assert rule_hits(text, ValidateConfig().rules()) == []


def test_validate_config_checks():
    with pytest.raises(ValueError, match="unknown leak rule"):
        ValidateConfig(leak_rules=["nope"])
    with pytest.raises(ValueError, match="min_tokens"):
        ValidateConfig(min_tokens=700)
    assert set(ValidateConfig(leak_rules=["audio_tags"], refusal_rules=[]).rules()) == {"leak:audio_tags"}


def test_split_is_stable_and_about_ten_percent_per_dataset():
    ids = [f"id{i}" for i in range(4000)]
    for dataset in ("a", "b"):
        splits = [split_for(dataset, i, 0.1) for i in ids]
        assert splits == [split_for(dataset, i, 0.1) for i in ids]
        share = splits.count("validation") / len(ids)
        assert 0.08 < share < 0.12
    assert all(split_for("a", i, 0.0) == "train" for i in ids[:50])


def test_judge_verdict_and_highlight():
    assert parse_verdict("hmm <answer>no</answer>\n</think>\n<answer>Yes</answer>") is True
    assert parse_verdict("<answer>no</answer>") is False
    assert parse_verdict("maybe") is None
    assert highlight_changes("the caption says rain", "I hear rain") == "[[I]] [[hear]] rain"
