"""Stage 0's config and its run folder: the files it holds and the two passes' specs.

The passes, the results, status, show and the report all read a run folder back through these.
The engine seam, the pass specs and the cache are the rephrase stage's own (``engines``, ``passes``,
``cache``); only the texts and the caps are stage 0's.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alarm.rephrase.engines import EngineConfig, model_sampling
from alarm.rephrase.passes import PassSpec
from alarm.rephrase.prompt_templates import (
    BUDGET_FORCING_CLOSER,
    CHECK_SYSTEM_PROMPT,
    CHECK_USER_TEMPLATE,
    DOMAINS,
    GENERATE_SYSTEM_PROMPTS,
    GENERATE_USER_TEMPLATE,
    generate_system_prompt,
)
from alarm.rephrase.prompts import template_hash

GENERATE, CHECK = "prompt", "check"  # pass names: cache folders and part of every key
CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
CLIPS_FILE = "clips.parquet"
INPUT_REJECTS_FILE = "input_rejects.parquet"
CANDIDATES_FILE = "candidates.parquet"
REJECTS_FILE = "rejects.parquet"
MANIFEST_FILE = "manifest.jsonl"
STATS_FILE = "stats.json"


@dataclass
class PromptsConfig:
    """The prompt-generation job (stage 0).

    Attributes:
        engine: the LLM that writes the candidates (and checks them, unless ``checker`` is set).
        checker: another LLM for the checker pass; None uses ``engine``.
        candidates: prompts the LLM writes per clip (5).
        choose: prompts picked per clip among the usable ones (k, 1); k > 1 makes k instances per
            clip, with ids ``<id>-p1`` ... ``<id>-pk``.
        generate_max_tokens: cap of a generation reply, thinking included.
        check_max_tokens: cap of a checker reply, thinking included.
        think_budget: thinking tokens of either pass before budget forcing closes the thinking (the rephrase
            stage's two-step round, ``execute.forced_chunk``), so a thinking model always gets to write its
            ``<answer>`` block within its cap; None: no forcing.
        temperature: overrides the model's generation config when set (both passes).
        top_p: overrides the model's generation config when set.
        top_k: overrides the model's generation config when set.
        seed: base seed: part of every cache key, and of the choice with each clip's key.
        chunk_size: requests per engine call and per cache part (as in ``RephraseConfig``).
        max_audio_seconds: clips this long or longer are dropped before generation (60, as rephrase).
        max_words: a candidate longer than this many words breaks the ``single`` rule.
        replace_given_prompts: rows that already have a prompt get new ones too; by default they
            keep theirs and pass through unchanged.
        system_prompts: dataset name -> its own generation system prompt (``{n}``: the candidate count).
        domain_prompts: domain (speech, sound, music) -> a system prompt replacing our default.
        dataset_domains: dataset name -> domain, where the automatic rule (``pipeline.stats.domain_of``)
            is wrong for it.
        check_system_prompt: replaces ``prompt_templates.CHECK_SYSTEM_PROMPT`` when set.
        cache_dir: the generation cache (default ``<out>/cache``); may be shared with other runs.
    """

    engine: EngineConfig = field(default_factory=EngineConfig)
    checker: EngineConfig | None = None
    candidates: int = 5
    choose: int = 1
    generate_max_tokens: int = 2048
    check_max_tokens: int = 2048
    think_budget: int | None = 1536
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int = 0
    chunk_size: int = 2048
    max_audio_seconds: float = 60.0
    max_words: int = 40
    replace_given_prompts: bool = False
    system_prompts: dict[str, str] = field(default_factory=dict)
    domain_prompts: dict[str, str] = field(default_factory=dict)
    dataset_domains: dict[str, str] = field(default_factory=dict)
    check_system_prompt: str | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("candidates", "choose", "generate_max_tokens", "check_max_tokens", "chunk_size", "max_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.think_budget is not None and not 1 <= self.think_budget <= min(self.generate_max_tokens,
                                                                              self.check_max_tokens):
            raise ValueError(f"think_budget ({self.think_budget}) must be in 1..min(generate_max_tokens, "
                             "check_max_tokens), or null for no budget forcing")
        if self.choose > self.candidates:
            raise ValueError(f"choose ({self.choose}) must not exceed candidates ({self.candidates})")
        if self.max_audio_seconds <= 0:
            raise ValueError("max_audio_seconds must be > 0")
        for what, given in (("domain_prompts", self.domain_prompts), ("dataset_domains", self.dataset_domains.values())):
            unknown = sorted(set(given) - set(DOMAINS))
            if unknown:
                raise ValueError(f"{what}: unknown domain(s) {', '.join(unknown)}; known: {', '.join(DOMAINS)}")

    @property
    def checker_engine(self) -> EngineConfig:
        """The checker's engine config (the generator's when no other is set)."""
        return self.checker or self.engine

    def system_prompt(self, dataset: str, domain: str) -> str:
        """The generation system prompt of a clip: its dataset's, else its domain's, ``{n}`` filled."""
        text = self.system_prompts.get(dataset) or self.domain_prompts.get(domain) or GENERATE_SYSTEM_PROMPTS[domain]
        return generate_system_prompt(text, self.candidates)


def _caps(cfg: PromptsConfig, max_tokens: int) -> dict[str, int]:
    """A pass's token caps: the total, and the thinking budget when budget forcing is on."""
    return {"max_tokens": max_tokens, **({"think_budget": cfg.think_budget} if cfg.think_budget else {})}


def _sampling(cfg: PromptsConfig, model: str):
    return model_sampling(model, {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k})


def generate_spec(cfg: PromptsConfig, fingerprint: str, dataset: str, domain: str) -> PassSpec:
    """The generation pass's spec for one clip's system prompt (each text has its own template hash,
    so editing one domain's prompt reruns only that domain's clips)."""
    system = cfg.system_prompt(dataset, domain)
    return PassSpec(GENERATE, model=cfg.engine.model, fingerprint=fingerprint, system_prompt=system,
                    template_hash=template_hash(system, GENERATE_USER_TEMPLATE, BUDGET_FORCING_CLOSER), sampling=_sampling(cfg, cfg.engine.model),
                    seed=cfg.seed, caps=_caps(cfg, cfg.generate_max_tokens))


def check_spec(cfg: PromptsConfig, fingerprint: str) -> PassSpec:
    """The checker pass's spec."""
    system = cfg.check_system_prompt or CHECK_SYSTEM_PROMPT
    model = cfg.checker_engine.model
    return PassSpec(CHECK, model=model, fingerprint=fingerprint, system_prompt=system,
                    template_hash=template_hash(system, CHECK_USER_TEMPLATE, BUDGET_FORCING_CLOSER), sampling=_sampling(cfg, model),
                    seed=cfg.seed, caps=_caps(cfg, cfg.check_max_tokens))


def cache_root(out: str | Path, cfg: PromptsConfig) -> str:
    """Where the run's pass caches live: ``cfg.cache_dir``, else ``cache`` in the run (on its URL for a URL run)."""
    from alarm.rephrase.run_folder import cache_location

    return cache_location(out, cfg.cache_dir)


def with_local_models(cfg: PromptsConfig) -> PromptsConfig:
    """``cfg`` with each model resolved to its local folder; one ConfigError line when one is not on disk."""
    from alarm.pipeline.configs import local_llm

    engine = dataclasses.replace(cfg.engine, model=local_llm(cfg.engine.model))
    checker = dataclasses.replace(cfg.checker, model=local_llm(cfg.checker.model)) if cfg.checker else None
    return dataclasses.replace(cfg, engine=engine, checker=checker)


def load_prompt_run(out_dir: str | Path) -> tuple[PromptsConfig, dict[str, Any]]:
    """The config and run record saved in a stage-0 run folder (a local one, or the work folder of a URL run)."""
    from alarm.pipeline.configs import load_config
    from alarm.rephrase.run_folder import published_location

    out = Path(out_dir)
    if not (out / CONFIG_FILE).is_file() or not (out / CLIPS_FILE).is_file():
        raise FileNotFoundError(f"{published_location(out)} is not a prompts run folder (no {CONFIG_FILE} or {CLIPS_FILE}); "
                                "start one with `alarm prompts run`")
    return load_config(PromptsConfig, out / CONFIG_FILE), json.loads((out / RUN_FILE).read_text())
