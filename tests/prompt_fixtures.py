"""Fixtures for the stage-0 tests: a manifest of clips without prompts, and a scripted engine.

The scripted engine is a deterministic stand-in used where a test needs exact text (parsing,
checking, choice, caching); the real engines run the same job on the tiny Qwen3 in test_prompts.py
(transformers) and test_prompts_vllm.py (vLLM).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from alarm.rephrase.engines import ENGINES, EngineConfig
from alarm.rephrase.generation import FINISH_ERROR, FINISH_LENGTH, FINISH_STOP, GenRequest, GenResult

# The five candidates written for a clip whose description holds no scripted marker.
DEFAULT_CANDIDATES = [
    "What do you hear in this clip?",
    "How many distinct sound events occur?",
    "Describe how the sound changes over time.",
    "Where could this recording have been made?",
    "Is the sound near or far away?",
]


def write_clips(folder: Path, rows: list[dict[str, Any]], seconds: float = 1.0) -> Path:
    """One short WAV per row (``audio`` names it) and a JSONL manifest of the rows."""
    import soundfile as sf

    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for row in rows:
        path = folder / row["audio"]
        if not path.exists() and not row.get("missing"):
            sf.write(path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype("float32"), 16000)
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "missing"}) + "\n" for r in rows))
    return path


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

    @staticmethod
    def _user(prompt: str) -> str:
        return prompt.rsplit("<|im_start|>user\n", 1)[-1].split("<|im_end|>", 1)[0]

    def _script(self, prompt: str) -> str:
        user = self._user(prompt)
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
        results = []
        for request in requests:
            time.sleep(self.delay)
            PromptScriptedEngine.calls.append(request.key)
            n_prompt = len(request.prompt.split())
            if self.fail_marker in request.prompt:
                results.append(GenResult(request.key, "", n_prompt, 0, FINISH_ERROR, "scripted failure"))
                continue
            words = re.findall(r"\S+\s*", self._script(request.prompt))
            finish = FINISH_STOP if len(words) <= request.max_tokens else FINISH_LENGTH
            text = "".join(words[:request.max_tokens])
            results.append(GenResult(request.key, text, n_prompt, min(len(words), request.max_tokens), finish))
        return results


ENGINES.setdefault("scripted-prompts", PromptScriptedEngine)
