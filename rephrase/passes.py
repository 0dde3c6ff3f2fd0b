"""The requests of each pass: chat prompts, cache keys and seeds (pure; no engine, no I/O).

A key hashes everything that determines a generation: the model (name and weights fingerprint), the
pass's template hash, the sampling parameters, the run seed, the token caps and the full prompt text.
Pass 2's prompt is built from pass 1's output, so it changes exactly when pass 1's answer does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alarm.rephrase import prompts
from alarm.rephrase.cache import request_key, seed_from_key
from alarm.rephrase.generation import GenRequest, Sampling
from alarm.rephrase.inputs import InputRow
from alarm.rephrase.parse import PreparedResponse, prepare_for_rephrase

ANSWER, REPHRASE, JUDGE = "answer", "rephrase", "judge"
PASSES = (ANSWER, REPHRASE, JUDGE)


@dataclass(frozen=True)
class PassSpec:
    """What one pass needs to build its requests.

    Attributes:
        name: ``answer``, ``rephrase`` or ``judge``.
        model: the model id as configured (recorded in provenance).
        fingerprint: the weights fingerprint (``engines.weights_fingerprint``).
        system_prompt: the pass's system prompt.
        template_hash: hash of the system prompt and user templates.
        sampling: sampling parameters of every request.
        seed: the run's base seed (part of every key).
        caps: the token caps of the pass (e.g. ``{"max_tokens": 512}``).
    """

    name: str
    model: str
    fingerprint: str
    system_prompt: str | None
    template_hash: str
    sampling: Sampling
    seed: int
    caps: dict[str, int]

    def request(self, prompt: str) -> GenRequest:
        """The request for a fully templated prompt; its key and seed follow from the content."""
        key = request_key(
            pass_name=self.name, model=self.model, fingerprint=self.fingerprint,
            template=self.template_hash, sampling=self.sampling.to_json(), seed=self.seed,
            caps=self.caps, prompt=prompt,
        )
        max_tokens = self.caps.get("think_budget", self.caps["max_tokens"])
        return GenRequest(key=key, prompt=prompt, max_tokens=max_tokens, seed=seed_from_key(key),
                          sampling=self.sampling)


def chat_prompt(tokenizer: Any, system: str | None, user: str) -> str:
    """The model's own chat template around one user turn, ending with the generation prompt."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def template_opens_thinking(tokenizer: Any) -> bool:
    """Whether the chat template's generation prompt already opens the thinking block."""
    return chat_prompt(tokenizer, None, "x").rstrip().endswith(prompts.THINK_OPEN)


def answer_user_message(row: InputRow) -> str:
    """Pass 1's user turn: the description between audio tags, or context + question."""
    if row.kind == "instruction":
        if not row.context:
            return row.prompt
        return prompts.INSTRUCTION_USER_TEMPLATE.format(context=row.context, prompt=row.prompt)
    return prompts.ANSWER_USER_TEMPLATE.format(description=row.description or "", prompt=row.prompt)


def answer_request(spec: PassSpec, tokenizer: Any, row: InputRow) -> GenRequest:
    # Instruction rows are plain questions: no audio-understanding system message.
    system = None if row.kind == "instruction" else spec.system_prompt
    return spec.request(chat_prompt(tokenizer, system, answer_user_message(row)))


def rephrase_request(spec: PassSpec, tokenizer: Any, answer_text: str) -> tuple[GenRequest, PreparedResponse]:
    prepared = prepare_for_rephrase(answer_text)
    user = prompts.REPHRASE_USER_TEMPLATE.format(response=prepared.text)
    return spec.request(chat_prompt(tokenizer, spec.system_prompt, user)), prepared


def judge_request(spec: PassSpec, tokenizer: Any, target: str) -> GenRequest:
    user = prompts.JUDGE_USER_TEMPLATE.format(target=target)
    return spec.request(chat_prompt(tokenizer, spec.system_prompt, user))
