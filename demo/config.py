"""What the demo runs: its config and the small model sizes it trains on a 2-core CPU."""

from __future__ import annotations

from dataclasses import dataclass, field

from alarm.pipeline.demo_corpus import DemoCorpusConfig
from alarm.pipeline.encoders import ENCODERS

ALL_ENCODERS = list(ENCODERS)
# Small enough for a 2-core CPU; the ALARM defaults are in each stage's config.
DEMO_FRONTEND = {"adapter_dim": 64, "conv_hidden_dim": 128, "ca_dim": 64, "ca_heads": 2, "ca_ffn_dim": 128}


@dataclass
class DemoConfig:
    """What ``run_demo`` runs; the defaults are the README's demo, tests shrink them."""

    corpus: DemoCorpusConfig = field(default_factory=DemoCorpusConfig)
    encoders: list[str] = field(default_factory=lambda: list(ALL_ENCODERS))
    train_steps: int = 200
    """Optimiser steps of the fusion model."""
    eval_per_clip: int = 2
    """Label questions per clip in the eval set, besides "sound, music or speech?"."""
    eval_think_budget: int = 16
    """A tiny random LLM never closes its thinking by itself: budget forcing closes it here."""
    eval_max_new_tokens: int = 48
    rephrase_max_tokens: int = 64
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.encoders) - set(ALL_ENCODERS))
        if unknown or not self.encoders:
            raise ValueError(f"encoders must be a non-empty subset of {ALL_ENCODERS}, got {self.encoders}")
        if self.train_steps < 1:
            raise ValueError(f"train_steps must be >= 1, got {self.train_steps}")
        if self.eval_think_budget >= self.eval_max_new_tokens:
            raise ValueError("eval_think_budget must be below eval_max_new_tokens (room for the answer)")
