"""Stage 0's pure parts on strings: candidate and verdict parsing, the code checks, the seeded choice."""

from __future__ import annotations

import pytest

from alarm.rephrase.prompt_check import LeakSource, code_checks, leak_hits
from alarm.rephrase.prompt_choice import choose_prompts, instance_id
from alarm.rephrase.prompt_parse import Verdict, clean_line, parse_candidates, parse_verdicts

# ------------------------------------------------------------------------------------------ candidates


def test_candidates_come_from_the_last_answer_block_after_thinking() -> None:
    reply = ("I could write <answer>draft</answer> here.\n</think>\n\n<answer>\n1. What animal is it?\n"
             "2) How loud is it?\n\n- \"Where was this recorded?\"\n* Describe the scene.\nQ5: Is it indoors?\n"
             "6. One too many?\n</answer>")
    found = parse_candidates(reply, 5)
    assert found.problem is None and found.extra == 1
    assert found.prompts == ("What animal is it?", "How loud is it?", "Where was this recorded?",
                             "Describe the scene.", "Is it indoors?")


@pytest.mark.parametrize(("reply", "problem"), [
    ("no tags at all", "no_answer_block"),
    ("<answer>unclosed", "no_answer_block"),
    ("</think><answer>\n \n - \n</answer>", "empty_answer"),
])
def test_replies_without_candidates_say_why(reply: str, problem: str) -> None:
    found = parse_candidates(reply, 5)
    assert found.prompts == () and found.problem == problem


def test_clean_line_keeps_numbers_that_are_not_markers() -> None:
    assert clean_line("  3. How many beeps, 3 or 4?  ") == "How many beeps, 3 or 4?"
    assert clean_line("12 dogs bark: which is loudest?") == "12 dogs bark: which is loudest?"
    assert clean_line("“Name the instrument.”") == "Name the instrument."


# ------------------------------------------------------------------------------------------ verdicts


def test_verdicts_per_candidate_with_rules_and_reasons() -> None:
    reply = ("</think>\n<answer>\n1: keep\n2: reject no_leak: it names the dog\n3. Reject (distinct) - same as 1\n"
             "5: unusable single: two questions\n2: keep\n9: keep\n6: reject: vague\n</answer>")
    verdicts = parse_verdicts(reply, 6)
    assert verdicts[0] == Verdict(True)
    assert verdicts[1] == Verdict(False, "no_leak", "it names the dog")  # the first verdict for 2 wins
    assert verdicts[2] == Verdict(False, "distinct", "same as 1")
    assert verdicts[3] == Verdict(None)  # no line for 4
    assert verdicts[4] == Verdict(False, "single", "two questions")
    assert verdicts[5] == Verdict(False, None, "vague")  # a rejection without a known rule


def test_a_reply_without_an_answer_block_labels_nothing() -> None:
    assert parse_verdicts("1: keep\n2: keep", 2) == [Verdict(None), Verdict(None)]


# ------------------------------------------------------------------------------------------ code checks

SPEECH = LeakSource.from_metadata({"transcript": "Please close the window before the rain starts.", "gender": "female",
                                   "language": "en"}, "[00:00-00:03] Please close the window before the rain "
                                   "starts. (duration: 3s, gender: female, language: en)")
SOUND = LeakSource.from_metadata({"caption": "a dog barking at a passing truck", "labels": ["Dog", "Truck horn"]},
                                 "[00:00-00:10] |a dog barking at a passing truck| |Dog, Truck horn| (duration: 10s)")


@pytest.mark.parametrize(("prompt", "source", "rule"), [
    ("What does the speaker ask to close?", SPEECH, "transcript_words"),
    ("Is the speaker female?", SPEECH, "label_name"),
    ("Which animal is barking?", SOUND, "caption_words"),
    ("Is there a truck horn in the clip?", SOUND, "label_name"),
    ("According to the description, what is heard?", SOUND, "leak:according_to_source"),
    ("Repeat the transcript word for word.", SPEECH, "leak:source_words"),
    ("Explain [00:00-00:10] in the clip.", SOUND, "leak:copied_timestamp"),
])
def test_each_leak_rule_hits(prompt: str, source: LeakSource, rule: str) -> None:
    assert rule in [name for name, _ in leak_hits(prompt, source)]


def test_near_misses_are_not_leaks() -> None:
    # another form of a transcript word, function words the transcript shares, a label inside a longer word
    assert leak_hits("What should be closed before the weather turns?", SPEECH) == []
    assert leak_hits("Is the dogged rhythm steady?", SOUND) == []


def test_quoting_the_description_is_a_leak_and_question_words_are_not() -> None:
    source = LeakSource(description="[00:00-00:08] |water running into a metal sink| (duration: 8s)")
    assert [n for n, _ in leak_hits("Is water running into a metal sink?", source)] == ["quotes_description"]
    for clean in ("What do you hear in this clip?", "Describe the sound.", "How many speakers are there?"):
        assert leak_hits(clean, SPEECH) == [] and leak_hits(clean, SOUND) == []


def test_duplicates_multiple_questions_and_length_are_caught() -> None:
    hits = code_checks(["What is the tempo?", "what is the TEMPO", "Is it loud? Is it near?", "word " * 41],
                       LeakSource(), max_words=40)
    assert hits[0] == []
    assert hits[1] == [("duplicate", "same as candidate 1")]
    assert hits[2] == [("not_single", "2 question marks")]
    assert [name for name, _ in hits[3]] == ["too_long"]


# ------------------------------------------------------------------------------------------ choice


def test_choice_is_seeded_by_seed_and_clip_key_and_takes_k() -> None:
    accepted = ["a?", "b?", "c?", "d?", "e?"]
    first = choose_prompts(accepted, 1, 0, "clip-1")
    assert first == choose_prompts(accepted, 1, 0, "clip-1")  # reproducible
    picks = {tuple(choose_prompts(accepted, 1, seed, "clip-1")) for seed in range(20)}
    assert len(picks) > 1  # the seed matters
    keys = {tuple(choose_prompts(accepted, 1, 0, f"clip-{i}")) for i in range(20)}
    assert len(keys) > 1  # and so does the clip key
    two = choose_prompts(accepted, 2, 7, "x")
    assert len(two) == 2 and len(set(two)) == 2 and set(two) <= set(accepted)
    assert choose_prompts(["only?", "only?"], 3, 0, "x") == ["only?"]  # fewer than k: all (distinct) ones
    assert choose_prompts([], 1, 0, "x") == []
    assert instance_id("c", 0, 1) == "c" and instance_id("c", 1, 3) == "c-p2"
    with pytest.raises(ValueError, match="k must be"):
        choose_prompts(accepted, 0, 0, "x")
