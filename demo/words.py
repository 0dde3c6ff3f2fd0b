"""What the demo's numbers mean, in words: the terminal and report.md say the same."""

from __future__ import annotations

from typing import Any


def accuracy_words(overall: dict[str, Any], chance: float) -> str:
    """The evaluation's accuracy against the chance level, with the reason when it falls below it.

    A reply without a parseable ``<answer>i</answer>`` is scored wrong, so a model that never writes
    that format scores 0 %: below chance, not at it.
    """
    questions = int(overall.get("questions") or 0)
    unparseable = int(overall.get("unparseable") or 0)
    accuracy = float(overall.get("accuracy") or 0.0)
    head, level = f"accuracy {100 * accuracy:.1f} %", f"the {100 * chance:.1f} % chance level"
    if questions and unparseable == questions:
        return (f"{head}, below {level}: all {questions} answers unparseable (a random tiny LLM never writes "
                f"<answer>i</answer>, and an answer without it is scored wrong)")
    if questions and abs(accuracy - chance) <= 1 / questions:  # within one question of chance
        where = "at"
    else:
        where = "below" if accuracy < chance else "above"
    return f"{head}, {where} {level}; {unparseable} of {questions} answers unparseable (scored wrong)"


def what_you_see(facts: dict[str, Any]) -> list[str]:
    """What a user sees in the demo's numbers, and why (terminal and report.md say the same)."""
    lines = ["The LLM is a tiny *random* Qwen3 (the real tokenizer, random weights): it writes random text."]
    rephrase = facts.get("rephrase") or {}
    if rephrase:
        rules = ", ".join(f"{n} {rule}" for rule, n in (rephrase.get("rejected_per_rule") or {}).items())
        unparseable = (rephrase.get("rejected_per_rule") or {}).get("unparseable", 0)
        why = (f" {unparseable} rephrasings have no <answer> block: a random LLM never writes the format the "
               f"rephrase pass asks for." if unparseable else "")
        lines.append(f"Rephrasing: {rephrase.get('accounting')} (rejects by rule: {rules or 'none'}).{why} "
                     f"Training uses reference targets written from the corpus labels, true by construction.")
    evaluation = facts.get("eval") or {}
    if evaluation.get("accuracy_words"):
        lines.append(f"Evaluation: {evaluation['accuracy_words']}.")
    infer = facts.get("infer") or {}
    if infer and not infer.get("error"):
        said = (f"answered {infer['answer'][:40]!r} (random text)" if infer.get("answer")
                else f"gave no answer: {infer.get('empty_reason')}")
        lines.append(f"`alarm infer` thought for {infer.get('thinking_tokens')} tokens"
                     f"{', closed by budget forcing' if infer.get('forced') else ''}, then {said}.")
    lines.append("Every stage runs for real on real components; swap in the real checkpoints for real numbers.")
    return lines
