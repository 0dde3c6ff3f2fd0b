"""What the tests of LLM runs with a scripted engine share (stage 0's prompts and the rephrase run,
on local disk or on S3): noise clips and their JSONL manifest, the mechanics every scripted engine
replies with, the reset of its class-level script between tests, uploading a corpus to a URL, and a
run SIGKILLed part-way through.

``prompt_fixtures`` and ``rephrase_fixtures`` keep what differs: their rows and their engine's script.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alarm.pipeline.objects import open_objects
from alarm.rephrase.generation import FINISH_ERROR, FINISH_LENGTH, FINISH_STOP, GenRequest, GenResult

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def write_noise(path: Path, rng: np.random.Generator, seconds: float) -> None:
    """A 16 kHz mono WAV of quiet noise drawn from ``rng`` (one rng per corpus: its clips differ)."""
    import soundfile as sf

    sf.write(path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype("float32"), 16000)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """``rows`` as a JSONL manifest at ``path``."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def user_turn(prompt: str) -> str:
    """The last user turn of a chat-formatted prompt (what a scripted engine reads its markers from)."""
    return prompt.rsplit("<|im_start|>user\n", 1)[-1].split("<|im_end|>", 1)[0]


def scripted_results(requests: list[GenRequest], script: Callable[[str], str], calls: list[str],
                     fail_marker: str, delay: float = 0.0) -> list[GenResult]:
    """A scripted engine's replies: ``script(prompt)`` cut to the request's ``max_tokens`` words (a
    word is a "token"), or an error for a prompt holding ``fail_marker``.

    Each request's key is appended to ``calls`` (what the tests count), after ``delay`` seconds.
    """
    results = []
    for request in requests:
        if delay:
            time.sleep(delay)
        calls.append(request.key)
        n_prompt = len(request.prompt.split())
        if fail_marker in request.prompt:
            results.append(GenResult(request.key, "", n_prompt, 0, FINISH_ERROR, "scripted failure"))
            continue
        words = re.findall(r"\S+\s*", script(request.prompt))
        finish = FINISH_STOP if len(words) <= request.max_tokens else FINISH_LENGTH
        text = "".join(words[:request.max_tokens])
        results.append(GenResult(request.key, text, n_prompt, min(len(words), request.max_tokens), finish))
    return results


def resetting(engine: type, **script: Any) -> Any:
    """An autouse fixture that gives each test a fresh ``engine``: no calls recorded, and each
    class attribute in ``script`` set to (a copy of) its value, before the test and again after.

    Use in a test module as ``_reset_script = resetting(pf.PromptScriptedEngine, replies={})``.
    """

    def reset() -> None:
        engine.calls.clear()
        for name, value in script.items():
            setattr(engine, name, copy.copy(value))

    @pytest.fixture(autouse=True)
    def _reset_script() -> Iterator[None]:
        reset()
        yield
        reset()

    return _reset_script


def upload(folder: Path, url: str) -> None:
    """Put every file under ``folder`` at the same relative key under ``url``."""
    objects = open_objects(url)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            objects.put_file(path.relative_to(folder).as_posix(), path)


def dying(engine: type, log: str, kill_at: int) -> type:
    """``engine`` that SIGKILLs its process at the start of its ``kill_at``-th generate call (the
    chunks before it are generated and cached) and appends the key of each request it answered to
    the file ``log``, one a line."""

    class Dying(engine):
        n = 0

        def generate(self, requests: list[GenRequest]) -> list[GenResult]:
            Dying.n += 1
            if Dying.n == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            results = super().generate(requests)
            with open(log, "a") as handle:
                handle.write("".join(r.key + "\n" for r in results))
            return results

    return Dying


def run_killed(script: str, tmp_path: Path, manifest: Path, run: str, model: Path, kill_at: int = 3) -> list[str]:
    """Run ``script`` (Python reading ``manifest out model log kill_at`` from its arguments, with the
    tests folder importable) in a child process that must die of SIGKILL; the keys it generated first.
    """
    log, path = tmp_path / "generated.txt", tmp_path / "killed_run.py"
    path.write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n" + script)
    killed = subprocess.run([sys.executable, str(path), str(manifest), run, str(model), str(log), str(kill_at)],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert killed.returncode == -9, killed.stderr[-2000:]
    return log.read_text().split()
