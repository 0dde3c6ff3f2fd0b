"""The transformers engine: batched ``generate`` with left padding, for machines without vLLM.

``generate`` has one random generator for the whole batch, which would make a request's output
depend on its batch mates. We sample per row instead: a logits processor draws each row's token
with that row's own ``torch.Generator`` (seeded from the request) and leaves only that token
standing, so greedy decoding then picks it. A request therefore gives the same text whatever batch
it lands in, which is what lets a killed job resume reproducibly.
"""

from __future__ import annotations

import logging
from typing import Any

from alarm.rephrase.generation import (
    FINISH_LENGTH,
    FINISH_STOP,
    EngineSettings,
    GenRequest,
    GenResult,
    Sampling,
    error_result,
    tokenize_within_limit,
)

log = logging.getLogger(__name__)


class _SeededSampler:
    """Logits processor: temperature, top-k, top-p, then one draw per row from its own generator."""

    def __init__(self, seeds: list[int], sampling: Sampling) -> None:
        import torch

        self.sampling = sampling
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        vocab = scores.shape[-1]
        k = vocab if self.sampling.top_k <= 0 else min(self.sampling.top_k, vocab)
        # top-k first (a sort of the whole vocabulary per step is the slow part), then top-p
        values, index = torch.topk(scores.float(), k, dim=-1)
        probs = torch.softmax(values / self.sampling.temperature, dim=-1)
        if self.sampling.top_p < 1:
            before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
            probs = probs.masked_fill(before >= self.sampling.top_p, 0.0)
        probs = probs.cpu()
        picks = torch.cat([torch.multinomial(probs[row], 1, generator=gen)
                           for row, gen in enumerate(self.generators)])
        chosen = index.gather(-1, picks.to(index.device).unsqueeze(-1)).squeeze(-1)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(chosen), device=scores.device), chosen] = 0.0
        return out


class TransformersEngine:
    """``Engine`` over ``AutoModelForCausalLM.generate``."""

    def __init__(self, cfg: EngineSettings) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self.cfg = cfg
        self.model_id = cfg.model
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, padding_side="left")
        dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype).to(device).eval()
        defaults = GenerationConfig.from_model_config(self.model.config)
        try:
            defaults = GenerationConfig.from_pretrained(cfg.model)
        except OSError:  # no generation_config.json: the model config's ids will do
            pass
        eos = defaults.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.eos_ids.add(self.tokenizer.eos_token_id)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = min(self.eos_ids)
        # Sampling is ours (per request); the model's own sampling defaults must not leak in.
        self.model.generation_config = GenerationConfig(eos_token_id=sorted(self.eos_ids),
                                                        pad_token_id=self.pad_id)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Generate in batches of similar shape; a failing batch is retried request by request."""
        ready, results = tokenize_within_limit(self.tokenizer, requests, self.cfg.max_model_len)
        # Same cap and sampling per batch (one generate call), similar lengths (little padding).
        ready.sort(key=lambda item: (item[0].max_tokens, item[0].sampling.to_json(), len(item[1])))
        batch: list[tuple[GenRequest, list[int]]] = []
        for item in ready:
            if batch and (len(batch) == self.cfg.batch_size or _shape(batch[0][0]) != _shape(item[0])):
                results.update(self._run_safely(batch))
                batch = []
            batch.append(item)
        if batch:
            results.update(self._run_safely(batch))
        return [results[request.key] for request in requests]

    def _run_safely(self, batch: list[tuple[GenRequest, list[int]]]) -> dict[str, GenResult]:
        try:
            return {r.key: r for r in self._run(batch)}
        except Exception as err:  # one bad request must not sink its batch mates
            if len(batch) == 1:
                log.warning("request %s failed: %s", batch[0][0].key, err)
                return {batch[0][0].key: error_result(batch[0][0], f"{type(err).__name__}: {err}",
                                                len(batch[0][1]))}
            out: dict[str, GenResult] = {}
            for item in batch:
                out.update(self._run_safely([item]))
            return out

    def _run(self, batch: list[tuple[GenRequest, list[int]]]) -> list[GenResult]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        first = batch[0][0]
        width = max(len(ids) for _, ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, ids) in enumerate(batch):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            mask[row, width - len(ids):] = 1
        processors = LogitsProcessorList()
        if not first.sampling.greedy:
            processors.append(_SeededSampler([r.seed for r, _ in batch], first.sampling))
        gen_cfg = GenerationConfig(
            do_sample=False, num_beams=1, max_new_tokens=first.max_tokens,
            eos_token_id=sorted(self.eos_ids), pad_token_id=self.pad_id,
        )
        device = self.model.device
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                      generation_config=gen_cfg, logits_processor=processors)
        results = []
        for row, (request, ids) in enumerate(batch):
            new = out[row, width:].tolist()
            stop = next((i for i, t in enumerate(new) if t in self.eos_ids), None)
            kept = new if stop is None else new[:stop]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            # like vLLM, the stop token counts as generated
            n_tokens = len(new) if stop is None else stop + 1
            finish = FINISH_LENGTH if stop is None else FINISH_STOP
            results.append(GenResult(request.key, text, len(ids), n_tokens, finish))
        return results


def _shape(request: GenRequest) -> tuple[int, str]:
    return request.max_tokens, request.sampling.to_json()
