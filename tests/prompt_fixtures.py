"""Fixtures for the stage-0 tests: a manifest of clips without prompts, and a scripted engine.

The scripted engine is a deterministic stand-in used where a test needs exact text (parsing,
checking, choice, caching); the real engines run the same job on the tiny Qwen3 in test_prompts.py
(transformers) and test_prompts_vllm.py (vLLM).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from scripted_run_fixtures import scripted_results, user_turn, write_jsonl, write_noise

from alarm.rephrase.engines import ENGINES, EngineConfig
from alarm.rephrase.generation import GenRequest, GenResult

# The five candidates written for a clip whose description holds no scripted marker.
DEFAULT_CANDIDATES = [
    "What do you hear in this clip?",
    "How many distinct sound events occur?",
    "Describe how the sound changes over time.",
    "Where could this recording have been made?",
    "Is the sound near or far away?",
]


def write_clips(folder: Path, rows: list[dict[str, Any]], seconds: float = 1.0) -> Path:
    """One short WAV per row (``audio`` names it; none for a row with ``missing``) and a JSONL manifest
    of the rows."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for row in rows:
        path = folder / row["audio"]
        if not path.exists() and not row.get("missing"):
            write_noise(path, rng, seconds)
    return write_jsonl(folder / "manifest.jsonl", [{k: v for k, v in r.items() if k != "missing"} for r in rows])


def sound_rows(n: int) -> list[dict[str, Any]]:
    """``n`` sound clips without prompts, each with its own caption."""
    return [{"id": f"s{i}", "audio": f"audio/s{i}.wav", "dataset": "sounds",
             "metadata": {"caption": f"ambience number {i}"}} for i in range(n)]


class PromptScriptedEngine:
    """A deterministic engine for stage 0; its reply is a function of the prompt.

    * a generation request gets ``replies[marker]`` for the first marker its description holds,
      else ``<answer>`` with ``DEFAULT_CANDIDATES`` (numbered, to exercise marker stripping);
    * a checker request keeps every candidate, except that one containing ``BADQ`` is rejected
      under ``answerable`` and one containing ``NOVERDICT`` gets no line;
    * a generation whose description holds ``PONDER`` thinks past any budget until budget forcing
      closes its thinking, then answers;
    * a prompt containing ``fail_marker`` fails with an error;
    * ``delay`` seconds of sleep per request (the kill test needs a slow job).
    """

    calls: list[str] = []
    fail_marker = "FAILME"
    replies: dict[str, str] = {}
    delay = float(os.environ.get("PROMPT_SCRIPT_DELAY", "0"))

    def __init__(self, cfg: EngineConfig) -> None:
        self.model_id = cfg.model

    def _script(self, prompt: str) -> str:
        user = user_turn(prompt)
        generated = prompt.split("<|im_start|>assistant\n", 1)[-1]
        if "PONDER" in user and "You check prompts" not in prompt:  # thinks past any budget until forced
            if "</think>" not in generated:
                return "hmm " * 5000
            return "<answer>\nWhat do you hear?\nHow long does it last?\n</answer>"
        if "You check prompts" in prompt:
            lines = []
            for number, text in re.findall(r"^(\d+)\. (.*)$", user.split("Candidates:\n", 1)[1], re.M):
                if "NOVERDICT" in text:
                    continue
                lines.append(f"{number}: reject answerable: needs a picture" if "BADQ" in text else f"{number}: keep")
            return "Checking each one.\n</think>\n\n<answer>\n" + "\n".join(lines) + "\n</answer>"
        for marker, reply in self.replies.items():
            if marker in user:
                return reply
        body = "\n".join(f"{i}. {q}" for i, q in enumerate(DEFAULT_CANDIDATES, start=1))
        return f"Let me think of questions.\n</think>\n\n<answer>\n{body}\n</answer>"

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return scripted_results(requests, self._script, PromptScriptedEngine.calls, self.fail_marker, self.delay)


ENGINES.setdefault("scripted-prompts", PromptScriptedEngine)
