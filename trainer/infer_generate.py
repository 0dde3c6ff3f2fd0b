"""Generation with a thinking budget (docs/method.md §6: budget 8192, cap 16384), on any engine backend.

Generate up to the budget; if ``</think>`` has not appeared, append ``FORCED_CLOSER`` and go on to the
cap. Requests are generated in batches of similar prompt length; one that fails becomes a result
with ``error`` set and never sinks the others.
"""

from __future__ import annotations

import logging
from typing import Any

from alarm.pipeline.configs import ConfigError
from alarm.trainer.infer_engines import Generation
from alarm.trainer.infer_records import FORCED_CLOSER, THINK_CLOSE, InferConfig, InferResult, failure_reason

log = logging.getLogger(__name__)


def split_thinking(text: str) -> tuple[str, str]:
    """Split a generation (which starts inside the thinking block) at its first ``</think>``.

    Returns:
        ``(thinking, answer)``; without ``</think>`` everything is thinking and the answer is empty.
    """
    thinking, close, answer = text.partition(THINK_CLOSE)
    thinking = thinking.removeprefix("<think>").strip()
    return thinking, answer.strip() if close else ""


def next_step(gen: Generation, think_close_id: int, budget: int, cap: int, closer_ids: list[int]) -> list[int] | None:
    """What follows the budgeted first call: None (finished) or the ids to append before continuing.

    ``[]`` means continue as is (the thinking closed within the budget and the cap is not reached);
    ``closer_ids`` means budget forcing (the budget ran out inside the thinking).
    """
    if gen.stopped or len(gen.ids) >= cap:
        return None
    if think_close_id in gen.ids:
        return []
    if len(gen.ids) < budget:  # stopped short without an end token (an engine abort): nothing to force
        return None
    if len(gen.ids) + len(closer_ids) >= cap:
        return None
    return list(closer_ids)



class BudgetForcing:
    """Answers prompt embeddings with ``backend``, closing the thinking at the budget (see module doc)."""

    def __init__(self, backend: Any, tokenizer: Any, llm: str) -> None:
        self.backend, self.tokenizer = backend, tokenizer
        self.think_close_id = tokenizer.convert_tokens_to_ids(THINK_CLOSE)
        self.closer_ids = tokenizer.encode(FORCED_CLOSER, add_special_tokens=False)
        if self.think_close_id not in self.closer_ids:
            raise ConfigError(f"the tokenizer of {llm} has no single {THINK_CLOSE} token; this LLM is not "
                              "a thinking model")

    def answer(self, prefixes: dict[int, Any], errors: dict[int, str], n: int,
               cfg: InferConfig) -> list[InferResult]:
        """Results of requests ``0..n-1``: those in ``prefixes`` (their prompt embeddings) are generated,
        those in ``errors`` (or failing now) become failed results."""
        import torch

        cap = cfg.max_new_tokens
        budget = min(cfg.think_budget, cap)
        gens = self._run(prefixes, dict.fromkeys(prefixes, budget), errors, cfg.chunk)
        follow, limits, forced = {}, {}, {}
        for i, gen in gens.items():
            extra = next_step(gen, self.think_close_id, budget, cap, self.closer_ids)
            if extra is None:
                continue
            forced[i] = bool(extra)
            gen.ids += extra
            with torch.inference_mode():
                tail = self.backend.embed(torch.tensor(gen.ids, device=prefixes[i].device))
            follow[i] = torch.cat([prefixes[i], tail.to(prefixes[i].dtype)])
            limits[i] = cap - len(gen.ids)
        for i, more in self._run(follow, limits, errors, cfg.chunk).items():
            gens[i].ids += more.ids
            gens[i].stopped = more.stopped
        return [InferResult.failed(errors[i]) if i in errors else self._result(gens[i], forced.get(i, False))
                for i in range(n)]

    def _run(self, prefixes: dict[int, Any], limits: dict[int, int], errors: dict[int, str],
             chunk: int) -> dict[int, Generation]:
        """Generate for every prefix in batches of similar length; failures go to ``errors``."""
        order = sorted(prefixes, key=lambda i: len(prefixes[i]))
        out: dict[int, Generation] = {}
        for k in range(0, len(order), chunk):
            out.update(self._run_safely(order[k:k + chunk], prefixes, limits, errors))
        return out

    def _run_safely(self, batch: list[int], prefixes: dict[int, Any], limits: dict[int, int],
                    errors: dict[int, str]) -> dict[int, Generation]:
        try:
            gens = self.backend.generate([prefixes[i] for i in batch], [limits[i] for i in batch])
            return dict(zip(batch, gens, strict=True))
        except Exception as err:  # narrow down to the request that fails
            if len(batch) == 1:
                log.warning("request %d failed: %s", batch[0], err)
                errors[batch[0]] = failure_reason(err)
                return {}
            out = {}
            for i in batch:
                out.update(self._run_safely([i], prefixes, limits, errors))
            return out

    def _result(self, gen: Generation, forced: bool) -> InferResult:
        text = self.tokenizer.decode(gen.ids, skip_special_tokens=True)
        thinking, answer = split_thinking(text)
        if self.think_close_id in gen.ids:
            k = gen.ids.index(self.think_close_id)
            n_thinking, n_answer = k, len(gen.ids) - k - 1
        else:
            n_thinking, n_answer = len(gen.ids), 0
        return InferResult(thinking, answer, text, n_thinking, n_answer, forced)
