"""What an LLM engine takes and returns: requests, results, sampling, and the ``Engine`` seam.

The engines (``engine_hf``, ``engine_vllm``) and their callers share these types; the registry that
loads an engine by name (``engines.py``) sits above them, so no engine module imports the registry.
Requests carry an already chat-templated prompt, so both engines see identical text and a
continuation (budget forcing) is just a longer prompt. Each request carries its own seed, derived
from its cache key, so a rerun reproduces it whatever batch it lands in.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ERROR = "error"


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters shared by every request of a pass.

    Attributes:
        temperature: 0 means greedy.
        top_p: nucleus mass kept.
        top_k: most likely tokens kept (0 or less: all).
    """

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class GenRequest:
    """One generation: a templated prompt, a token cap, a seed."""

    key: str
    prompt: str
    max_tokens: int
    seed: int
    sampling: Sampling = field(default_factory=Sampling)


@dataclass(frozen=True)
class GenResult:
    """What an engine returns for one request; ``error`` is set (and text empty) when it failed."""

    key: str
    text: str
    n_prompt_tokens: int
    n_tokens: int
    finish_reason: str
    error: str | None = None


def error_result(request: GenRequest, reason: str, n_prompt: int = 0) -> GenResult:
    """The result of a request that could not be generated: empty text, the reason kept."""
    return GenResult(request.key, "", n_prompt, 0, FINISH_ERROR, reason)


def tokenize_within_limit(tokenizer: Any, requests: list[GenRequest], max_model_len: int,
                          ) -> tuple[list[tuple[GenRequest, list[int]]], dict[str, GenResult]]:
    """Tokenise prompts; a prompt whose cap does not fit ``max_model_len`` becomes an error row.

    Both engines refuse such requests up front, so one over-long prompt never fails a batch.
    """
    ready: list[tuple[GenRequest, list[int]]] = []
    refused: dict[str, GenResult] = {}
    for request in requests:
        ids = tokenizer(request.prompt, add_special_tokens=False).input_ids
        if len(ids) + request.max_tokens > max_model_len:
            refused[request.key] = error_result(
                request, f"prompt of {len(ids)} tokens + cap {request.max_tokens} exceeds "
                f"max_model_len {max_model_len}", len(ids))
        else:
            ready.append((request, ids))
    return ready, refused


class Engine(Protocol):
    """An LLM that turns templated prompts into completions."""

    model_id: str

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Generate every request; a failing request becomes a result with ``error`` set."""
        ...



class EngineSettings(Protocol):
    """The fields of ``engines.EngineConfig`` that an engine reads when it loads.

    A Protocol, so an engine module needs only this module and never the registry that loads it
    (the registry checks config names against itself, so the config lives beside it).
    """

    model: str
    dtype: str
    max_model_len: int
    batch_size: int
    max_num_seqs: int
    gpu_memory_utilization: float
    enable_prefix_caching: bool
    tensor_parallel_size: int
    extra: dict[str, Any]
