"""The requests of stage 0's two passes, rebuilt the same way by the job, status and the results.

Generation: one request per clip to prompt, under its dataset's or domain's system prompt. Checker:
one request per clip whose generation parsed into candidates, built from those candidates, so a
changed generation changes the checker's key, and a changed checker template changes only it.
Pure apart from the tokenizer's chat template: no engine, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alarm.rephrase.cache import CachedGeneration
from alarm.rephrase.generation import GenRequest
from alarm.rephrase.passes import PassSpec, chat_prompt
from alarm.rephrase.prompt_clips import PROMPT, ClipRow
from alarm.rephrase.prompt_config import PromptsConfig, check_spec, generate_spec
from alarm.rephrase.prompt_parse import Candidates, parse_candidates
from alarm.rephrase.prompt_templates import CHECK_USER_TEMPLATE, GENERATE_USER_TEMPLATE, numbered


@dataclass
class Models:
    """The models' identities and tokenizers a run's requests depend on."""

    generate_fingerprint: str
    check_fingerprint: str
    generate_tokenizer: Any
    check_tokenizer: Any

    @classmethod
    def load(cls, cfg: PromptsConfig) -> Models:
        from alarm.rephrase.config import load_tokenizer
        from alarm.rephrase.engines import weights_fingerprint

        gen, check = cfg.engine.model, cfg.checker_engine.model
        return cls(weights_fingerprint(gen), weights_fingerprint(check), load_tokenizer(gen), load_tokenizer(check))


@dataclass
class Plan:
    """Every request of a run, by clip id, and each clip's parsed candidates.

    Attributes:
        generate: clip id -> generation request (every clip to prompt).
        check: clip id -> checker request (clips whose generation gave candidates).
        candidates: clip id -> the candidates parsed from its cached generation (generated clips only).
        specs: the generation spec of each request key (for provenance).
    """

    generate: dict[str, GenRequest] = field(default_factory=dict)
    check: dict[str, GenRequest] = field(default_factory=dict)
    candidates: dict[str, Candidates] = field(default_factory=dict)
    specs: dict[str, PassSpec] = field(default_factory=dict)


def generation_requests(cfg: PromptsConfig, models: Models, clips: list[ClipRow]) -> Plan:
    """The generation request of every clip to prompt."""
    plan = Plan()
    specs: dict[tuple[str, str], PassSpec] = {}
    for clip in clips:
        if clip.action != PROMPT:
            continue
        group = (clip.dataset, clip.domain)
        if group not in specs:
            specs[group] = generate_spec(cfg, models.generate_fingerprint, *group)
        spec = specs[group]
        user = GENERATE_USER_TEMPLATE.format(description=clip.description or "")
        request = spec.request(chat_prompt(models.generate_tokenizer, spec.system_prompt, user))
        plan.generate[clip.id] = request
        plan.specs[request.key] = spec
    return plan


def check_requests(cfg: PromptsConfig, models: Models, clips: list[ClipRow], plan: Plan,
                   generated: dict[str, CachedGeneration]) -> Plan:
    """Fill ``plan`` with each generated clip's candidates and, where there are any, its checker request."""
    spec = check_spec(cfg, models.check_fingerprint)
    for clip in clips:
        request = plan.generate.get(clip.id)
        done = generated.get(request.key) if request is not None else None
        if done is None or not done.ok:
            continue
        found = parse_candidates(done.text, cfg.candidates)
        plan.candidates[clip.id] = found
        if found.prompts:
            user = CHECK_USER_TEMPLATE.format(description=clip.description or "", candidates=numbered(list(found.prompts)))
            plan.check[clip.id] = spec.request(chat_prompt(models.check_tokenizer, spec.system_prompt, user))
    return plan


def plan_run(cfg: PromptsConfig, models: Models, clips: list[ClipRow],
             generated: dict[str, CachedGeneration]) -> Plan:
    """Both passes' requests given the generation cache's contents."""
    return check_requests(cfg, models, clips, generation_requests(cfg, models, clips), generated)
