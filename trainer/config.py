"""The training configuration: one dataclass, saved as YAML in the run folder and in every checkpoint.

Defaults follow docs/method.md §4 (AdamW 0.9/0.999, eps 1e-8, no weight decay, LR 1e-4 with cosine decay
and 1500 warm-up steps, clipping 1.0, 2 epochs, seed 42, 4096-token cap, bf16 autocast on GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alarm.pipeline.configs import ALLOW_DOWNLOAD, ConfigError, local_llm  # noqa: F401 - re-exported

FUSIONS = ("none", "ca", "perceiver")
FREEZABLE = ("adapters", "fusion", "delimiters")
DEFAULT_LLM = "Qwen/Qwen3-4B-Thinking-2507"


@dataclass
class TrainConfig:
    """Everything `train(cfg)` needs; YAML is only its saved form (unknown keys fail loudly)."""

    targets: str = ""
    """Targets Parquet file (instance_id, clip_key, dataset, prompt, target, incomplete, split); a path
    or an object-store URL."""
    store: str = ""
    """Feature store root (pipeline.store), a folder or an object-store URL (``s3://bucket/prefix``,
    read through the part cache, see ``cache_dir``); only cached features are read, encoders are
    never built."""
    output_dir: str = ""
    """Run folder: config.yaml, logs.jsonl, rejects.jsonl, checkpoints/step_XXXXXXXX/. A URL
    (``s3://bucket/runs/r1``) keeps the run on object storage: training works in a local copy under
    ``<alarm cache>/runs/`` and puts each checkpoint there as it is written; a rerun resumes from it."""
    cache_dir: str = ""
    """Local folder of the read-through cache of a feature store on object storage (default
    ``$ALARM_PART_CACHE``, else ``<alarm cache>/parts``); a local store is read in place. DataLoader
    workers share it."""
    cache_gb: float = 0.0
    """Size limit of that cache in GB; least recently used files go first (0: ``$ALARM_PART_CACHE_GB``,
    else 8). Room for the whole store means every epoch after the first reads local disk."""
    encoders: list[str] = field(default_factory=lambda: ["whisper"])
    """Encoders to read, in front-end order (whisper first when fusion is not "none")."""
    store_specs: dict[str, str] = field(default_factory=dict)
    """Optional pinned spec id per encoder; a store group with another spec is refused."""
    fusion: str = "none"
    """"none" (one encoder), "ca" (ALARM-CA) or "perceiver" (ALARM-P)."""
    frontend: dict[str, Any] = field(default_factory=dict)
    """Extra FrontEndConfig fields (adapter_dim, fusion sizes...); llm_dim comes from the LLM."""
    llm: str = DEFAULT_LLM
    """Causal LM folder, or a hub id already in the local Hugging Face cache (``local_llm``), loaded with
    AutoModelForCausalLM.from_pretrained and frozen; a hub download only with ALARM_ALLOW_DOWNLOAD=1."""
    init: list[str] = field(default_factory=list)
    """Checkpoint folders, run folders (their latest checkpoint) or .safetensors files, paths or URLs,
    whose weights initialise the front end (later wins)."""
    freeze: list[str] = field(default_factory=list)
    """Front-end parts kept frozen: any of "adapters", "fusion", "delimiters"."""
    adapter_cache: str = ""
    """Second-level cache (trainer.cache_adapters) to train the fusion from; needs freeze adapters."""

    audio_prompt_separator: str = "\n\n"
    """Text between the audio span and the prompt in the user turn (as in the pass-1 layout)."""
    max_seq_len: int = 4096
    """Cap on the whole sequence; the target's tail is cut to fit, rows whose audio+prompt fill it are
    rejected (see trainer.sequence)."""
    batch_tokens: int = 16384
    """Token budget of one micro-batch: longest row x rows (padded tokens), not a row count."""
    grad_accum: int = 1
    """Micro-batches per optimiser step (per process)."""
    bucket_size: int = 64
    """Batches' worth of rows shuffled, then sorted by length, per bucket of the sampler."""
    num_workers: int = 2
    """DataLoader worker processes (each opens the store lazily)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 1500
    epochs: int = 2
    max_steps: int = 0
    """Stop after this many optimiser steps (0: run `epochs` epochs). The cosine schedule spans
    `schedule_steps` if set, else the whole planned run."""
    schedule_steps: int = 0
    """Length of the cosine schedule in optimiser steps (0: epochs x steps per epoch)."""
    grad_clip: float = 1.0
    seed: int = 42
    gradient_checkpointing: bool = False
    """Recompute the LLM's activations in the backward pass (long sequences on a GPU)."""
    precision: str = "auto"
    """"auto" (bf16 autocast on GPU, float32 on CPU), "bf16" or "fp32"."""
    device: str = "auto"
    """"auto", "cpu" or "cuda"."""

    log_every: int = 10
    eval_every: int = 500
    """Optimiser steps between evaluations (0: only at the end)."""
    eval_max_batches: int = 0
    """Cap on validation batches per evaluation (0: the whole validation split)."""
    save_every: int = 500
    """Optimiser steps between checkpoints (a final one is always written)."""
    keep_checkpoints: int = 3
    """How many step checkpoints to keep (older ones are deleted; 0 keeps all)."""
    sample_generations: int = 2
    """Validation rows answered greedily at each evaluation and logged."""
    sample_max_new_tokens: int = 32
    progress: bool = True
    """Show a tqdm bar with tokens/s (rank 0 only)."""

    def __post_init__(self) -> None:
        if isinstance(self.encoders, str):
            self.encoders = [e.strip() for e in self.encoders.split(",") if e.strip()]
        self.betas = tuple(self.betas)  # YAML gives a list
        if not self.encoders:
            raise ConfigError("encoders: name at least one encoder (e.g. [whisper])")
        if len(set(self.encoders)) != len(self.encoders):
            raise ConfigError(f"encoders: duplicates in {self.encoders}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion: {self.fusion!r} is not one of {', '.join(FUSIONS)}")
        if self.fusion == "none" and len(self.encoders) != 1:
            raise ConfigError(f"fusion 'none' trains one encoder's adapter; got {self.encoders}; "
                              "set fusion: ca or perceiver for several")
        if self.fusion != "none" and self.encoders[0] != "whisper":
            raise ConfigError("fusion ca/perceiver use whisper as the query stream: list it first")
        # `adapters.<encoder>` freezes one adapter: the ALARM-P recipe freezes only whisper's.
        bad = sorted(p for p in self.freeze
                     if p not in FREEZABLE and not (p.startswith("adapters.") and p[9:] in self.encoders))
        if bad:
            raise ConfigError(f"freeze: unknown part(s) {bad}; choose from {', '.join(FREEZABLE)} "
                              f"or adapters.<encoder> with an encoder of this run")
        if self.adapter_cache and "adapters" not in self.freeze:
            raise ConfigError("adapter_cache holds frozen adapter outputs: add 'adapters' to freeze")
        if self.adapter_cache and self.fusion == "none":
            raise ConfigError("adapter_cache only serves a fusion stage (fusion ca or perceiver)")
        if "llm_dim" in self.frontend or "encoders" in self.frontend or "fusion" in self.frontend:
            raise ConfigError("frontend: llm_dim, encoders and fusion are set by the trainer, not here")
        if not isinstance(self.frontend, dict):  # TrainConfig(...) in code skips from_dict's type check
            raise ConfigError(f"frontend: expected a mapping, got {self.frontend!r}")
        # Checked now, not when the model is built after the LLM and the data have loaded: a typo or a
        # wrong type in frontend fails at once, in one line, like every other key.
        from alarm.pipeline.configs import from_dict
        from alarm.trainer.frontend import FrontEndConfig

        from_dict(FrontEndConfig, dict(self.frontend), "frontend")
        for name in ("max_seq_len", "batch_tokens", "grad_accum", "bucket_size", "epochs", "log_every",
                     "save_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_workers", "warmup_steps", "max_steps", "schedule_steps", "eval_every",
                     "eval_max_batches", "keep_checkpoints", "sample_generations"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.cache_gb < 0:
            raise ConfigError(f"cache_gb must be >= 0 (0: the default size), got {self.cache_gb}")
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ConfigError("lr and grad_clip must be positive")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision: {self.precision!r} is not auto, bf16 or fp32")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device: {self.device!r} is not auto, cpu or cuda")
        if self.batch_tokens < self.max_seq_len:
            raise ConfigError(f"batch_tokens ({self.batch_tokens}) must hold one full sequence "
                              f"(max_seq_len {self.max_seq_len})")

    def check_paths(self) -> None:
        """Raise at once when a path that training needs is not set or cannot be one (called by train())."""
        from pathlib import Path

        from alarm.pipeline.objects import is_url

        for name in ("targets", "store", "output_dir"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is required")
        if not is_url(self.output_dir) and Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise ConfigError(f"output_dir {self.output_dir} is a file, not a folder")
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("device: cuda, but torch sees no CUDA device here (use auto or cpu)")
