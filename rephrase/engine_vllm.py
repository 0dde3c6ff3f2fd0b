"""The vLLM engine: offline ``vllm.LLM`` with prefix caching and large batches.

The only module that imports vllm. The system prompt is shared by every request of a pass, so
prefix caching computes it once per replica. Prompts arrive already templated; per-request seeds
and caps go into one ``SamplingParams`` each. Scripts that start it need a ``__main__`` guard
(vLLM starts worker processes with spawn).

``EmbedsEngine`` is the second use of vLLM here: ``alarm infer`` / ``alarm eval`` feed it prompt
embeddings (the audio span spliced between text embeddings) instead of token ids.
"""

from __future__ import annotations

import logging
from typing import Any

from alarm.rephrase.generation import (
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    EngineSettings,
    GenRequest,
    GenResult,
    error_result,
    tokenize_within_limit,
)

log = logging.getLogger(__name__)


def sampling_params(request: GenRequest) -> Any:
    """vLLM ``SamplingParams`` for one request."""
    from vllm import SamplingParams

    s = request.sampling
    return SamplingParams(
        n=1, temperature=s.temperature, top_p=s.top_p if not s.greedy else 1.0,
        top_k=s.top_k if s.top_k > 0 and not s.greedy else -1, seed=request.seed,
        max_tokens=request.max_tokens, skip_special_tokens=True,
    )


def _platform_defaults(max_model_len: int) -> dict[str, Any]:
    """Engine arguments this platform needs (an ``EngineConfig.extra`` still overrides them).

    vLLM's CPU backend cannot rewind a seeded request's generator after a partial (chunked)
    prefill ("CPU Generator does not use offset") and the engine dies; whole-prompt prefill
    avoids it, as vLLM itself does for MLA models on CPU.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return {}
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 8192)}


def _shutdown(llm: Any) -> None:
    """Stop a ``vllm.LLM``'s engine-core process now rather than at interpreter exit."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


class VllmEngine:
    """``Engine`` over ``vllm.LLM.generate``."""

    def __init__(self, cfg: EngineSettings) -> None:
        from vllm import LLM

        self.cfg = cfg
        self.model_id = cfg.model
        self.llm = LLM(
            model=cfg.model, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
            enable_prefix_caching=cfg.enable_prefix_caching, max_num_seqs=cfg.max_num_seqs,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            tensor_parallel_size=cfg.tensor_parallel_size, seed=0,
            **{**_platform_defaults(cfg.max_model_len), **cfg.extra},
        )
        self.tokenizer = self.llm.get_tokenizer()

    def close(self) -> None:
        """Stop vLLM's engine-core process now rather than at interpreter exit."""
        _shutdown(self.llm)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """One ``LLM.generate`` call for the whole list; a failure is narrowed down by halving."""
        ready, results = tokenize_within_limit(self.tokenizer, requests, self.cfg.max_model_len)
        self._run(ready, results)
        return [results[request.key] for request in requests]

    def _run(self, batch: list[tuple[GenRequest, list[int]]], results: dict[str, GenResult]) -> None:
        if not batch:
            return
        try:
            outputs = self.llm.generate(
                [{"prompt_token_ids": ids} for _, ids in batch],
                [sampling_params(request) for request, _ in batch], use_tqdm=False,
            )
        except Exception as err:  # one bad request must not sink the others
            if len(batch) == 1:
                request, ids = batch[0]
                log.warning("request %s failed: %s", request.key, err)
                results[request.key] = error_result(request, f"{type(err).__name__}: {err}", len(ids))
                return
            half = len(batch) // 2
            self._run(batch[:half], results)
            self._run(batch[half:], results)
            return
        for (request, ids), output in zip(batch, outputs, strict=True):
            completion = output.outputs[0]
            finish = FINISH_LENGTH if completion.finish_reason == "length" else FINISH_STOP
            if completion.finish_reason not in ("length", "stop"):
                results[request.key] = GenResult(request.key, "", len(ids), len(completion.token_ids),
                                                 FINISH_ERROR, f"finish_reason {completion.finish_reason}")
                continue
            results[request.key] = GenResult(request.key, completion.text, len(ids),
                                             len(completion.token_ids), finish)


class EmbedsEngine:
    """Offline ``vllm.LLM`` generating from prompt embeddings (``enable_prompt_embeds``).

    Returns raw token ids: the caller (``trainer.infer_engines.VllmBackend``) cuts them at its own
    end-of-turn ids and limits, exactly as it does for transformers, so both engines agree.
    """

    def __init__(self, model: str, dtype: str, seed: int, max_model_len: int, device_type: str) -> None:
        """Start the engine.

        Args:
            model: LLM folder or id.
            dtype: ``bfloat16`` or ``float32`` (the dtype of the embeddings it will be given).
            seed: Engine seed.
            max_model_len: Prompt plus generation, in tokens.
            device_type: ``cpu`` or ``cuda``: where the engine runs.

        Raises:
            ConfigError: vLLM is not installed here (engine ``vllm`` was asked for).
        """
        import os

        try:
            from vllm import LLM
        except ImportError as err:
            from alarm.pipeline.configs import ConfigError

            raise ConfigError("engine vllm: vllm is not installed here; use engine transformers") from err
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if device_type == "cpu":
            extra: dict[str, Any] = {**_platform_defaults(max_model_len), "enforce_eager": True}
        else:  # the encoders and the front end share the GPU with vLLM
            extra = {"gpu_memory_utilization": 0.8}
        self.llm = LLM(model=model, dtype=dtype, enable_prompt_embeds=True, seed=seed,
                       max_model_len=max_model_len, **extra)

    def generate(self, prompts: list[Any], max_tokens: list[int], *, temperature: float, top_p: float,
                 top_k: int, seed: int | None, stop_token_ids: list[int]) -> list[list[int]]:
        """One ``LLM.generate`` call: each ``(L, D)`` embedding tensor continued by its own token cap.

        ``temperature`` 0 is greedy; ``top_k`` -1 and ``top_p`` 1.0 switch those filters off; ``seed``
        None leaves sampling unseeded. Stop tokens are kept in the output (the caller cuts there).
        """
        from vllm import SamplingParams

        params = [SamplingParams(max_tokens=limit, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                                 stop_token_ids=list(stop_token_ids), skip_special_tokens=False)
                  for limit in max_tokens]
        requests = [{"prompt_embeds": p.detach().to("cpu")} for p in prompts]  # vLLM moves them itself
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outputs]

    def close(self) -> None:
        """Stop vLLM's engine-core process now rather than at interpreter exit."""
        _shutdown(self.llm)
