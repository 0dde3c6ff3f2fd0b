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


def test_a_damaged_cache_part_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    # A part overwritten from outside made every later run end in "Could not open Parquet input
    # source '<Buffer>'", naming neither the part nor a way out; what it held is generated again.
    from alarm.rephrase.cache import CachedGeneration, PassCache

    def generation(key: str) -> CachedGeneration:
        return CachedGeneration(key=key, text="t", n_prompt_tokens=1, n_tokens=1, finish_reason="stop", error=None,
                                seed=1, model="m", template_hash="h", sampling="s", forced=False, gen_seconds=0.1,
                                created=1.0)

    cache = PassCache(tmp_path, "answer")
    cache.write([generation("k1")])
    damaged = cache.write([generation("k2")])
    (tmp_path / "answer" / damaged).write_bytes(b"\x00not parquet")
    with caplog.at_level("WARNING"):
        assert set(PassCache(tmp_path, "answer").read()) == {"k1"}
    assert f"{damaged} is unreadable" in caplog.text and "made again" in caplog.text
