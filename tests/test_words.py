"""What a user reads: the demo's accuracy against chance, and why `alarm infer` printed no answer."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from test_counts import local_ray  # noqa: F401  (a fixture: an embedded Ray of this module's own)

from alarm.demo.words import accuracy_words, what_you_see
from alarm.trainer.infer_records import THINK_CLOSE, InferResult

PROMPT = "What do you hear?"


def test_accuracy_below_chance_says_why():
    overall = {"questions": 79, "correct": 0, "unparseable": 79, "accuracy": 0.0}
    words = accuracy_words(overall, 0.342)
    assert words.startswith("accuracy 0.0 %, below the 34.2 % chance level: all 79 answers unparseable")
    assert "<answer>i</answer>" in words and "at chance" not in words
    assert accuracy_words({"questions": 10, "unparseable": 2, "accuracy": 0.3}, 0.342).startswith(
        "accuracy 30.0 %, at the 34.2 % chance level; 2 of 10")  # within one question of chance
    assert ", below the" in accuracy_words({"questions": 100, "unparseable": 50, "accuracy": 0.1}, 0.342)
    assert ", above the" in accuracy_words({"questions": 100, "unparseable": 0, "accuracy": 0.9}, 0.342)


def test_demo_report_lines_name_what_and_why():
    facts = {"rephrase": {"kept": 0, "rejected_per_rule": {"unparseable": 53, "rejected_by_store": 7},
                          "accounting": "60 manifest rows = 0 kept + 53 rejected after generation + 7 rejected "
                                        "before generation + 0 pending; 53 rows went to generation"},
             "eval": {"accuracy_words": accuracy_words({"questions": 79, "unparseable": 79, "accuracy": 0.0}, 0.342)},
             "infer": {"answer": "", "thinking_tokens": 19, "forced": True, "error": None,
                       "empty_reason": "empty: budget forcing closed the thinking, then the LLM ended its turn"}}
    lines = what_you_see(facts)
    text = "\n".join(lines)
    assert "60 manifest rows = 0 kept + 53 rejected after generation + 7 rejected before generation" in text
    assert "53 rephrasings have no <answer> block" in text
    assert "below the 34.2 % chance level: all 79 answers unparseable" in text
    assert "gave no answer: empty: budget forcing closed the thinking" in text
    assert "at chance" not in text


def test_empty_answer_reasons():
    closed = InferResult("hmm", "", f"hmm{THINK_CLOSE}", 5, 0, True)
    assert closed.empty_reason().startswith("empty: budget forcing closed the thinking, then the LLM ended its "
                                            "turn right after </think> (5 tokens, 11 characters")
    blank = InferResult("hmm", "", f"hmm{THINK_CLOSE}  \n", 5, 3, False)
    assert "the 3 tokens after </think> are only whitespace or special tokens" in blank.empty_reason()
    assert InferResult("a", "b", f"a{THINK_CLOSE}b", 1, 1, False).empty_reason() is None
    assert InferResult.failed("missing: x.wav").empty_reason() == "no answer: missing: x.wav"


@pytest.fixture(scope="module")
def run(local_ray, trained_run: dict) -> dict:  # noqa: F811
    """The session's tiny trained run (conftest): whisper + muq store, 4 ALARM-CA steps."""
    return trained_run


def test_cli_explains_an_answer_the_tiny_llm_never_reached(run):
    """A budget as large as the cap: no forcing, and the random LLM never closes its thinking."""
    from alarm.cli import main

    out = CliRunner().invoke(main, ["infer", run["rows"][0]["audio"], "--prompt", PROMPT, "--checkpoint",
                                    str(run["run"]), "--think-budget", "12", "--max-new-tokens", "12"])
    assert out.exit_code == 0, out.output
    answer = out.stdout.split("-- answer (0 tokens)\n", 1)[1]
    assert answer.startswith("(empty: the reply never closed its thinking with </think> (12 tokens, ")
    assert "raise --max-new-tokens or lower --think-budget" in answer
