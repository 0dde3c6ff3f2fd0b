"""Fixtures for the rephrase tests: tiny manifests with real audio files, and a scripted engine.

The scripted engine is a deterministic stand-in used only where a test needs exact text (parsing,
caching, validation); the real engines are tested on the tiny Qwen3 in test_rephrase_engines.py
and test_rephrase_vllm.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from scripted_run_fixtures import scripted_results, user_turn, write_jsonl, write_noise

from alarm.rephrase.engines import ENGINES, EngineConfig
from alarm.rephrase.generation import GenRequest, GenResult

CAPTIONS = ["dog barking", "rain on a roof", "a church bell", "a car horn", "birds singing", "a door slam"]


def write_manifest(folder: Path, n_audio: int = 6, n_instruction: int = 1, extra: list[dict] | None = None,
                   seconds: float = 1.0) -> Path:
    """Short WAV files and a JSONL manifest: sound rows, instruction rows, plus ``extra`` rows."""
    audio = folder / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for i in range(n_audio + n_instruction):
        name = f"clip{i}.wav"
        write_noise(audio / name, rng, seconds)
        if i < n_audio:
            rows.append({"id": f"a{i}", "audio": f"audio/{name}", "dataset": "sounds" if i % 2 else "other",
                         "metadata": {"caption": CAPTIONS[i % len(CAPTIONS)]},
                         "prompt": f"What do you hear? (question {i})"})
        else:
            rows.append({"id": f"q{i}", "audio": f"audio/{name}", "dataset": "instructions",
                         "kind": "instruction", "context": f"The meeting is at {i} o'clock.",
                         "prompt": "When is the meeting?"})
    rows += extra or []
    return write_jsonl(folder / "manifest.jsonl", rows)


class ScriptedEngine:
    """A deterministic engine: its output is a function of the prompt; "tokens" are words.

    * pass-1 prompts get a reasoning trace that reads from the description, then an answer;
    * rephrase prompts get a short thinking block, then the response with reading words swapped
      for hearing words inside ``<answer>`` tags;
    * a prompt containing ``LONGTHINK`` thinks past any budget (to exercise budget forcing);
    * a prompt containing ``FAILME`` fails with an error (to exercise error rows);
    * the judge says yes exactly for targets containing ``JUDGEYES``.
    """

    calls: list[str] = []  # keys generated, across instances (tests reset it)
    fail_marker = "FAILME"  # tests change it to let a retry succeed

    def __init__(self, cfg: EngineConfig) -> None:
        self.model_id = cfg.model

    def _script(self, prompt: str) -> str:
        user = user_turn(prompt)
        generated = prompt.split("<|im_start|>assistant\n", 1)[-1]
        if generated.startswith("<think>\n"):
            generated = generated[len("<think>\n"):]
        if "You check training texts" in prompt:  # the judge
            verdict = "yes" if "JUDGEYES" in user else "no"
            text = f"Checking.\n</think>\n\n<answer>{verdict}</answer>"
        elif "<text_llm_reasoning>" in user:
            if "LONGTHINK" in user and "</think>" not in generated:
                text = "hmm " * 10_000
            else:
                body = user.replace("The description says", "I hear").replace("|", "")
                body = re.sub(r"\[\d\d:\d\d-\d\d:\d\d\] ", "", body)
                text = "I will swap the reading words.\n</think>\n\n<answer>" + body + "</answer>"
        else:
            content = user.split("<start_audio>")[-1].split("<end_audio>")[0]
            opening = "The description says" if "<start_audio>" in user else "The question is about"
            reasoning = f"{opening} {content}. " + "Let me think about what it means. " * 12
            text = reasoning + "\n</think>\n\nIt sounds like " + content + "."
        # a continuation only produces what follows what was generated already
        return text[len(generated):] if text.startswith(generated) else text

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return scripted_results(requests, self._script, ScriptedEngine.calls, self.fail_marker)


ENGINES.setdefault("scripted", ScriptedEngine)
