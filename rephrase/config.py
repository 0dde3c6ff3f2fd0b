"""The rephrasing job's config and its run folder: the files it holds and the pass specs they imply.

Every later step (the passes, validation, the judge, ``show``, the report) reads a run folder back
through these, so they sit below all of them.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alarm.rephrase import prompts
from alarm.rephrase.engines import EngineConfig, model_sampling
from alarm.rephrase.passes import ANSWER, JUDGE, REPHRASE, PassSpec
from alarm.rephrase.rules import ValidateConfig

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
INPUTS_FILE = "inputs.parquet"
INPUT_REJECTS_FILE = "input_rejects.parquet"


@dataclass
class RephraseConfig:
    """The whole rephrasing job.

    Attributes:
        engine: which LLM engine and model, and how it is replicated.
        answer_max_tokens: pass 1 cap, thinking included (docs/method.md §5: 512).
        think_budget: pass 2 thinking budget before budget forcing (1536).
        total_max_tokens: pass 2 cap over thinking and answer (4096).
        judge_max_tokens: cap of the optional judge pass.
        temperature: overrides the model's generation config when set.
        top_p: overrides the model's generation config when set.
        top_k: overrides the model's generation config when set.
        seed: base seed, part of every cache key; each request's seed derives from its key.
        chunk_size: requests per engine call and per cache part. vLLM batches only within one
            call, so keep it at least ``engine.max_num_seqs`` on GPUs; a killed job loses at most
            the chunk each replica had in flight.
        max_audio_seconds: clips this long or longer are dropped before generation (60).
        answer_system_prompt: replaces ``prompts.ANSWER_SYSTEM_PROMPT`` when set.
        rephrase_system_prompt: replaces ``prompts.REPHRASE_SYSTEM_PROMPT`` when set.
        judge_system_prompt: replaces ``prompts.JUDGE_SYSTEM_PROMPT`` when set.
        cache_dir: the generation cache (default: ``<out>/cache``); share it between runs.
        validate: the filters that turn generations into targets.
    """

    engine: EngineConfig = field(default_factory=EngineConfig)
    answer_max_tokens: int = 512
    think_budget: int = 1536
    total_max_tokens: int = 4096
    judge_max_tokens: int = 1024
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int = 0
    chunk_size: int = 2048
    max_audio_seconds: float = 60.0
    answer_system_prompt: str | None = None
    rephrase_system_prompt: str | None = None
    judge_system_prompt: str | None = None
    cache_dir: str | None = None
    validate: ValidateConfig = field(default_factory=ValidateConfig)

    def __post_init__(self) -> None:
        for name in ("answer_max_tokens", "think_budget", "total_max_tokens", "judge_max_tokens",
                     "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.think_budget > self.total_max_tokens:
            raise ValueError(f"think_budget ({self.think_budget}) must not exceed total_max_tokens "
                             f"({self.total_max_tokens})")
        if self.max_audio_seconds <= 0:
            raise ValueError("max_audio_seconds must be > 0")


# --------------------------------------------------------------------------- pass specifications


def pass_specs(cfg: RephraseConfig, fingerprint: str) -> dict[str, PassSpec]:
    """The three passes' specs for this config (templates, sampling, caps)."""
    sampling = model_sampling(cfg.engine.model, {"temperature": cfg.temperature, "top_p": cfg.top_p,
                                                 "top_k": cfg.top_k})
    answer_system = cfg.answer_system_prompt or prompts.ANSWER_SYSTEM_PROMPT
    rephrase_system = cfg.rephrase_system_prompt or prompts.REPHRASE_SYSTEM_PROMPT
    judge_system = cfg.judge_system_prompt or prompts.JUDGE_SYSTEM_PROMPT
    common = {"model": cfg.engine.model, "fingerprint": fingerprint, "sampling": sampling, "seed": cfg.seed}
    return {
        ANSWER: PassSpec(
            ANSWER, system_prompt=answer_system,
            template_hash=prompts.template_hash(answer_system, prompts.ANSWER_USER_TEMPLATE,
                                                prompts.INSTRUCTION_USER_TEMPLATE),
            caps={"max_tokens": cfg.answer_max_tokens}, **common),
        REPHRASE: PassSpec(
            REPHRASE, system_prompt=rephrase_system,
            template_hash=prompts.template_hash(rephrase_system, prompts.REPHRASE_USER_TEMPLATE,
                                                prompts.BUDGET_FORCING_CLOSER),
            caps={"max_tokens": cfg.total_max_tokens, "think_budget": cfg.think_budget}, **common),
        JUDGE: PassSpec(
            JUDGE, system_prompt=judge_system,
            template_hash=prompts.template_hash(judge_system, prompts.JUDGE_USER_TEMPLATE),
            caps={"max_tokens": cfg.judge_max_tokens}, **common),
    }


@functools.lru_cache(maxsize=4)
def load_tokenizer(model: str) -> Any:
    """The model's tokenizer, loaded once per process (it is only read from)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def load_run(out_dir: str | Path) -> tuple[RephraseConfig, dict[str, Any]]:
    """The config and run record saved in a run folder (a folder or an object-store URL)."""
    import yaml

    from alarm.pipeline.configs import from_dict, load_config
    from alarm.pipeline.objects import is_url, open_objects, text_of

    missing = FileNotFoundError(f"{out_dir} is not a rephrase run folder (no {CONFIG_FILE}); "
                                f"start one with `alarm rephrase run`")
    if is_url(out_dir):
        objects = open_objects(out_dir)
        objects.check()
        config, record = text_of(objects, CONFIG_FILE), text_of(objects, RUN_FILE)
        if config is None or record is None:
            raise missing
        return from_dict(RephraseConfig, yaml.safe_load(config) or {}), json.loads(record)
    out = Path(out_dir)
    if not (out / CONFIG_FILE).is_file():
        raise missing
    return load_config(RephraseConfig, out / CONFIG_FILE), json.loads((out / RUN_FILE).read_text())
