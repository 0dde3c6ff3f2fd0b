"""The records of inference: how to load and generate (``InferConfig``), one question about one clip
(``InferRequest``) and what the LLM said (``InferResult``), plus the thinking delimiters they share.
"""

from __future__ import annotations

from dataclasses import dataclass

from alarm.pipeline.configs import ConfigError

ENGINES = ("transformers", "vllm")
DEVICES = ("auto", "cpu", "cuda")
THINK_CLOSE = "</think>"
# Appended when the thinking reaches its budget; the model continues straight into its answer.
# rephrase.prompts.BUDGET_FORCING_CLOSER is the same device with a sentence about editing.
FORCED_CLOSER = f"\n\nI have thought about this enough; now I will give my answer.\n{THINK_CLOSE}\n\n"


@dataclass
class InferConfig:
    """How to load a trained front end and generate with it."""

    checkpoint: str
    """A training run folder (its latest checkpoint), a ``checkpoints/step_*`` folder or an export folder."""
    store: str | None = None
    """Feature store the adapter was trained on: gives the exact encoder specs (required for a run
    or checkpoint unless the store recorded in its config still exists; optional for an export)."""
    llm: str | None = None
    """Override the LLM path recorded in the checkpoint (same model, another location)."""
    device: str = "auto"
    """auto (cuda when available), cpu or cuda."""
    engine: str = "transformers"
    """transformers, or vllm (prompt embeddings; only where vllm is importable)."""
    think_budget: int = 8192
    """Generated tokens allowed before ``</think>``; beyond it budget forcing closes the thinking."""
    max_new_tokens: int = 16384
    """Cap on all generated tokens (thinking, forced closer and answer)."""
    temperature: float = 0.0
    """0 = greedy; otherwise sampling with the model's top-p/top-k from its generation config."""
    seed: int = 0
    """Seed of the sampling generator (outputs then also depend on the batch composition)."""
    batch_size: int = 0
    """Requests encoded and generated together (bounds memory); 0: 8 with transformers, 256 with vllm
    (which schedules its own batches inside a chunk)."""

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ConfigError("checkpoint: give a run folder, a checkpoint folder or an export folder")
        if self.device not in DEVICES:
            raise ConfigError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.engine not in ENGINES:
            raise ConfigError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        for name in ("think_budget", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 0:
            raise ConfigError(f"batch_size must be >= 0 (0: automatic), got {self.batch_size}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")

    @property
    def chunk(self) -> int:
        """Requests handled together: ``batch_size``, or the engine's default when it is 0."""
        return self.batch_size or (256 if self.engine == "vllm" else 8)


@dataclass
class InferRequest:
    """One question about one clip."""

    audio: str
    """Audio file path, or ``/abs/shard.tar#member``."""
    prompt: str
    start: float | None = None
    end: float | None = None
    clip_key: str | None = None
    """When set and the open store holds it for every encoder, features are read from the store."""


@dataclass
class InferResult:
    """What the LLM said; ``error`` is set (and the texts empty) when the request could not run."""

    thinking: str
    answer: str
    text: str
    """The whole decoded generation (thinking, forced closer if any, answer)."""
    thinking_tokens: int
    """Generated tokens before ``</think>`` (all of them when it never came)."""
    answer_tokens: int
    """Generated tokens after ``</think>`` (end-of-turn token excluded)."""
    forced: bool
    """Budget forcing closed the thinking."""
    error: str | None = None

    @classmethod
    def failed(cls, reason: str) -> InferResult:
        """The result row of a request that could not run."""
        return cls("", "", "", 0, 0, False, reason)

    def empty_reason(self) -> str | None:
        """Why ``answer`` is empty, in words a user can act on; None when there is an answer.

        An answer is what follows ``</think>``: a reply that never closes its thinking has none, and
        one that ends its turn right after ``</think>`` has an empty one.
        """
        if self.error:
            return f"no answer: {self.error}"
        if self.answer:
            return None
        size = f"{self.thinking_tokens + self.answer_tokens} tokens, {len(self.text)} characters of raw output"
        if THINK_CLOSE not in self.text:
            return (f"empty: the reply never closed its thinking with {THINK_CLOSE} ({size}, all of it "
                    f"thinking); raise --max-new-tokens or lower --think-budget so budget forcing closes it")
        if self.answer_tokens:
            return (f"empty: the {self.answer_tokens} tokens after {THINK_CLOSE} are only whitespace or "
                    f"special tokens ({size})")
        closed = "budget forcing closed the thinking, then " if self.forced else ""
        return f"empty: {closed}the LLM ended its turn right after {THINK_CLOSE} ({size})"


def failure_reason(err: Exception) -> str:
    """The ``error`` text of a request that failed: a DecodeError's own words, else the exception's type too."""
    from alarm.pipeline.decode import DecodeError

    return str(err) if isinstance(err, DecodeError) else f"{type(err).__name__}: {err}"
