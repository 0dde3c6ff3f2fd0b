"""The rephrase run folder after a kill while it rewrites its config: `retry` still resumes from it.

Found by killing `alarm rephrase run` at random moments (a scratch chaos run, not part of the
suite); the test reproduces the kill at a chosen point on the scripted engine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import rephrase_fixtures as rf  # noqa: E402

from alarm.pipeline import configs  # noqa: E402
from alarm.rephrase.config import CONFIG_FILE  # noqa: E402
from alarm.rephrase.engines import EngineConfig  # noqa: E402
from alarm.rephrase.run import RephraseConfig, retry_failed, run_rephrase  # noqa: E402


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no ``except Exception`` sees it."""


def test_a_kill_while_the_config_is_rewritten_leaves_the_run_resumable(tmp_path, tiny_qwen3_dir, monkeypatch):
    manifest = rf.write_manifest(tmp_path, n_audio=2, n_instruction=0)
    out = tmp_path / "out"
    cfg = RephraseConfig(engine=EngineConfig(name="scripted", model=str(tiny_qwen3_dir)), chunk_size=2)
    run_rephrase(manifest, out, cfg, progress=False)
    whole = (out / CONFIG_FILE).read_text()

    def torn(config, path):  # noqa: ANN001, ANN202 - save_config's signature
        Path(path).write_text(whole[: len(whole) // 2])
        raise Killed

    monkeypatch.setattr(configs, "save_config", torn)
    with pytest.raises(Killed):
        run_rephrase(manifest, out, cfg, progress=False)
    monkeypatch.undo()
    assert (out / CONFIG_FILE).read_text() == whole  # was half a YAML file, which retry could not load
    rf.ScriptedEngine.calls.clear()
    report = retry_failed(out, progress=False)
    assert report["answer"]["generated"] == 0 and not rf.ScriptedEngine.calls
