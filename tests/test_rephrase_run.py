"""The rephrasing job's logic on a deterministic scripted engine: caching, resume, errors, validation.

The scripted engine gives exact text, so these tests can assert what lands in the targets; the
real engines run the same job in test_rephrase_engines.py (transformers) and test_rephrase_vllm.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import rephrase_fixtures as rf  # noqa: E402

from alarm.rephrase.engines import EngineConfig  # noqa: E402
from alarm.rephrase.run import RephraseConfig, retry_failed, run_rephrase  # noqa: E402
from alarm.rephrase.show import run_status  # noqa: E402
from alarm.rephrase.validate import ValidateConfig, validate_run  # noqa: E402


@pytest.fixture(autouse=True)
def _reset_script():
    rf.ScriptedEngine.calls.clear()
    rf.ScriptedEngine.fail_marker = "FAILME"
    yield
    rf.ScriptedEngine.calls.clear()


def _cfg(model: Path, **kw) -> RephraseConfig:
    kw.setdefault("validate", ValidateConfig(min_tokens=5, max_tokens=612))
    return RephraseConfig(engine=EngineConfig(name="scripted", model=str(model)), chunk_size=2, **kw)


def _targets(out: Path) -> list[dict]:
    return pq.read_table(out / "targets.parquet").to_pylist()


def test_run_writes_targets_with_provenance_and_a_rerun_generates_nothing(tmp_path, tiny_qwen3_dir):
    manifest = rf.write_manifest(tmp_path, n_audio=6, n_instruction=1)
    out = tmp_path / "out"
    report = run_rephrase(manifest, out, _cfg(tiny_qwen3_dir), progress=False)
    assert report["answer"]["generated"] == 7 and report["rephrase"]["generated"] == 6
    targets = _targets(out)
    assert len(targets) == 7 and report["validation"]["kept"] == 7
    by_id = {t["instance_id"]: t for t in targets}
    audio = by_id["a0"]
    # the rephraser's edit landed, the tags were mapped back, the opener dropped
    assert audio["target"].startswith("I hear dog barking") and "\n</think>\n\n" in audio["target"]
    assert "description" not in audio["target"] and not audio["incomplete"]
    assert audio["rephrase_template_hash"] and audio["answer_template_hash"]
    assert json.loads(audio["sampling"]) == {"temperature": 0.6, "top_k": 20, "top_p": 0.95}
    assert audio["clip_key"] is None and audio["split"] in ("train", "validation")
    assert by_id["q6"]["rephrase_template_hash"] is None  # instruction rows skip pass 2
    assert "The meeting is at 6" in by_id["q6"]["target"]

    before = (out / "targets.parquet").read_bytes()
    again = run_rephrase(manifest, out, _cfg(tiny_qwen3_dir), progress=False)
    assert len(rf.ScriptedEngine.calls) == 13  # the first run's only
    assert again["answer"]["generated"] == again["rephrase"]["generated"] == 0
    assert again["answer"]["cached"] == 7 and again["rephrase"]["cached"] == 6
    assert _targets(out) == pq.read_table(pa.BufferReader(before)).to_pylist()


def test_a_new_rephrase_template_reruns_pass_two_only(tmp_path, tiny_qwen3_dir):
    manifest = rf.write_manifest(tmp_path, n_audio=4, n_instruction=1)
    out = tmp_path / "out"
    run_rephrase(manifest, out, _cfg(tiny_qwen3_dir), progress=False)
    rf.ScriptedEngine.calls.clear()
    edited = _cfg(tiny_qwen3_dir, rephrase_system_prompt="Edit lightly. Put it in <answer></answer>.")
    report = run_rephrase(manifest, out, edited, progress=False)
    assert report["answer"]["generated"] == 0 and report["rephrase"]["generated"] == 4
    assert len(rf.ScriptedEngine.calls) == 4
    # a new sampling temperature is a new model output: everything reruns
    rf.ScriptedEngine.calls.clear()
    report = run_rephrase(manifest, out, _cfg(tiny_qwen3_dir, temperature=0.3), progress=False)
    assert report["answer"]["generated"] == 5 and report["rephrase"]["generated"] == 4


def test_new_validation_rules_regenerate_nothing(tmp_path, tiny_qwen3_dir):
    manifest = rf.write_manifest(tmp_path, n_audio=4, n_instruction=1)
    out = tmp_path / "out"
    run_rephrase(manifest, out, _cfg(tiny_qwen3_dir), progress=False)
    rf.ScriptedEngine.calls.clear()
    stats = validate_run(out, ValidateConfig(min_tokens=5, max_tokens=20), progress=False)
    assert rf.ScriptedEngine.calls == []
    assert stats["kept"] == 0 and stats["rejected_per_rule"]["too_long"] == 5
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert {r["stage"] for r in rejects} == {"validate"} and all(r["target"] for r in rejects)
    stats = validate_run(out, ValidateConfig(min_tokens=5), progress=False)
    assert stats["kept"] == 5 and rf.ScriptedEngine.calls == []


def test_leaks_and_input_problems_are_rejected_with_reasons(tmp_path, tiny_qwen3_dir):
    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "long.wav", np.zeros(16000 * 3, dtype="float32"), 16000)
    extra = [
        {"id": "missing", "audio": "audio/none.wav", "dataset": "sounds", "prompt": "What is it?"},
        {"id": "long", "audio": "long.wav", "dataset": "sounds", "metadata": {"caption": "x"}, "prompt": "Hm?"},
        {"id": "noprompt", "audio": "audio/clip1.wav", "dataset": "sounds", "metadata": {"caption": "x"}},
        # the scripted rephraser keeps "the metadata" as is: a leak the validator must catch
        {"id": "leaky", "audio": "audio/clip0.wav", "dataset": "sounds",
         "metadata": {"caption": "the metadata lists a bell"}, "prompt": "What rings?"},
    ]
    manifest = rf.write_manifest(tmp_path, n_audio=2, n_instruction=0, extra=extra)
    out = tmp_path / "out"
    report = run_rephrase(manifest, out, _cfg(tiny_qwen3_dir, max_audio_seconds=2.0), progress=False)
    rejects = {r["instance_id"]: r for r in pq.read_table(out / "rejects.parquet").to_pylist()}
    assert rejects["missing"]["rule"] == "unreadable_audio" and rejects["missing"]["stage"] == "input"
    assert rejects["long"]["rule"] == "audio_too_long"
    assert rejects["noprompt"]["rule"] == "no_prompt"
    # the first rule that hits names the reject; the statistics count every hit
    assert rejects["leaky"]["rule"] == "leak:source_says" and rejects["leaky"]["stage"] == "validate"
    assert report["validation"]["rule_hits"] == {"leak:source_says": 1, "leak:source_words": 1}
    assert {t["instance_id"] for t in _targets(out)} == {"a0", "a1"}


def test_errors_become_rows_the_job_goes_on_and_retry_failed_retries_only_them(tmp_path, tiny_qwen3_dir):
    extra = [{"id": "boom", "audio": "audio/clip0.wav", "dataset": "sounds", "metadata": {"caption": "c"},
              "prompt": "FAILME please"}]
    manifest = rf.write_manifest(tmp_path, n_audio=3, n_instruction=0, extra=extra)
    out = tmp_path / "out"
    report = run_rephrase(manifest, out, _cfg(tiny_qwen3_dir), progress=False)
    assert report["answer"]["errors"] == 1 and report["validation"]["kept"] == 3
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert [(r["instance_id"], r["stage"]) for r in rejects] == [("boom", "generate")]
    assert "scripted failure" in rejects[0]["reason"]
    status = run_status(out)
    assert status["answer"]["error"] == 1 and status["answer"]["complete"] == 3 and status["rephrase"]["complete"] == 3

    # a plain rerun does not retry errors; retry-failed retries exactly the failed one
    rf.ScriptedEngine.calls.clear()
    run_rephrase(manifest, out, _cfg(tiny_qwen3_dir), progress=False)
    assert rf.ScriptedEngine.calls == []
    rf.ScriptedEngine.fail_marker = "never-matches"
    report = retry_failed(out, progress=False)
    assert report["answer"]["generated"] == 1 and report["rephrase"]["generated"] == 1
    assert len(rf.ScriptedEngine.calls) == 2
    assert report["validation"]["kept"] == 4 and run_status(out)["answer"]["error"] == 0


def test_budget_forcing_closes_long_thinking_and_the_target_is_parsed(tmp_path, tiny_qwen3_dir):
    from alarm.rephrase.prompts import BUDGET_FORCING_CLOSER

    extra = [{"id": "ponder", "audio": "audio/clip0.wav", "dataset": "sounds",
              "metadata": {"caption": "LONGTHINK bells"}, "prompt": "What is it?"}]
    manifest = rf.write_manifest(tmp_path, n_audio=1, n_instruction=0, extra=extra)
    out = tmp_path / "out"
    run_rephrase(manifest, out, _cfg(tiny_qwen3_dir, think_budget=50, total_max_tokens=400), progress=False)
    rows = {r["key"]: r for p in (out / "cache" / "rephrase").glob("part-*.parquet")
            for r in pq.read_table(p).to_pylist()}
    forced = [r for r in rows.values() if r["forced"]]
    assert len(forced) == 1 and len(rows) == 2
    assert BUDGET_FORCING_CLOSER in forced[0]["text"] and forced[0]["n_tokens"] <= 400
    assert forced[0]["text"].startswith("hmm hmm") and forced[0]["text"].count("hmm") == 50
    ponder = {t["instance_id"]: t for t in _targets(out)}["ponder"]
    assert ponder["budget_forced"] and ponder["target"].startswith("I hear LONGTHINK bells")
    assert run_status(out)["rephrase"]["budget_forced"] == 1


def test_optional_judge_rejects_flagged_targets_and_caches_its_verdicts(tmp_path, tiny_qwen3_dir):
    extra = [{"id": "flagged", "audio": "audio/clip0.wav", "dataset": "sounds",
              "metadata": {"caption": "JUDGEYES bell"}, "prompt": "What is it?"}]
    manifest = rf.write_manifest(tmp_path, n_audio=2, n_instruction=0, extra=extra)
    out = tmp_path / "out"
    report = run_rephrase(manifest, out, _cfg(tiny_qwen3_dir), progress=False)
    assert report["validation"]["kept"] == 3  # the judge is off by default
    rf.ScriptedEngine.calls.clear()
    stats = validate_run(out, ValidateConfig(min_tokens=5, judge=True), progress=False)
    assert stats["kept"] == 2 and stats["rejected_per_rule"] == {"judge": 1}
    assert len(rf.ScriptedEngine.calls) == 3
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert [(r["instance_id"], r["reason"]) for r in rejects] == [("flagged", "judge:text_access")]
    rf.ScriptedEngine.calls.clear()
    assert validate_run(out, ValidateConfig(min_tokens=5, judge=True), progress=False)["kept"] == 2
    assert rf.ScriptedEngine.calls == []


def test_truncated_answers_are_kept_as_incomplete_targets(tmp_path, tiny_qwen3_dir):
    manifest = rf.write_manifest(tmp_path, n_audio=2, n_instruction=1)
    out = tmp_path / "out"
    run_rephrase(manifest, out, _cfg(tiny_qwen3_dir, answer_max_tokens=20), progress=False)
    targets = _targets(out)
    assert len(targets) == 3 and all(t["incomplete"] for t in targets)
    assert all("</think>" not in t["target"] for t in targets)
    assert run_status(out)["answer"]["incomplete"] == 3


@pytest.mark.parametrize("columns", [("instance_id", "clip_key"), ("id", "key")])
def test_clip_keys_come_from_the_feature_store_instances(tmp_path, tiny_qwen3_dir, columns):
    manifest = rf.write_manifest(tmp_path, n_audio=2, n_instruction=0)
    instances = tmp_path / "instances.parquet"
    pq.write_table(pa.table({columns[0]: ["a0", "a1"], columns[1]: ["k0", "k1"], "dataset": ["x", "y"]}),
                   instances)
    run_rephrase(manifest, tmp_path / "out", _cfg(tiny_qwen3_dir), instances=instances, progress=False)
    assert {t["instance_id"]: t["clip_key"] for t in _targets(tmp_path / "out")} == {"a0": "k0", "a1": "k1"}


def test_bad_config_raises_at_once(tiny_qwen3_dir):
    with pytest.raises(ValueError, match="think_budget"):
        RephraseConfig(think_budget=5000)
    with pytest.raises(ValueError, match="unknown engine"):
        EngineConfig(name="nope")
    with pytest.raises(ValueError, match="chunk_size"):
        RephraseConfig(chunk_size=0)


def test_cli_run_status_validate_show_retry(tmp_path, tiny_qwen3_dir):
    import yaml
    from click.testing import CliRunner

    from alarm.cli import main

    manifest = rf.write_manifest(tmp_path, n_audio=3, n_instruction=1)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"chunk_size": 2, "validate": {"min_tokens": 5}}))
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(main, ["rephrase", "run", str(manifest), "--out", str(out), "--config", str(config),
                                  "--engine", "scripted", "--model", str(tiny_qwen3_dir)])
    assert result.exit_code == 0, result.output
    assert (out / "targets.parquet").is_file() and (out / "config.yaml").is_file()
    status = runner.invoke(main, ["rephrase", "status", str(out)])
    assert status.exit_code == 0 and '"pending": 0' in status.output
    shown = runner.invoke(main, ["rephrase", "show", str(out), "-n", "2", "--seed", "1"])
    assert shown.exit_code == 0 and shown.output.count("== ") == 2 and "target:" in shown.output
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump({"min_tokens": 500}))
    validated = runner.invoke(main, ["rephrase", "validate", str(out), "--config", str(strict)])
    assert validated.exit_code == 0 and '"kept": 0' in validated.output
    assert runner.invoke(main, ["rephrase", "retry-failed", str(out)]).exit_code == 0
    bad = runner.invoke(main, ["rephrase", "run", str(manifest), "--out", str(out), "--engine", "nope",
                               "--model", str(tiny_qwen3_dir)])
    assert bad.exit_code == 2 and "unknown engine" in bad.output
    try:
        import vllm  # noqa: F401
    except ImportError:  # the main environment: a clear message instead of a traceback
        novllm = runner.invoke(main, ["rephrase", "run", str(manifest), "--out", str(tmp_path / "v"),
                                      "--engine", "vllm", "--model", str(tiny_qwen3_dir)])
        assert novllm.exit_code == 2 and "needs vLLM" in novllm.output
    missing = runner.invoke(main, ["rephrase", "status", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "not a rephrase run folder" in missing.output


def test_instances_the_feature_store_rejected_get_no_target(tmp_path, tiny_qwen3_dir):
    manifest = rf.write_manifest(tmp_path, n_audio=2, n_instruction=0)
    store = tmp_path / "store"
    store.mkdir()
    pq.write_table(pa.table({"id": ["a0"], "key": ["k0"]}), store / "instances.parquet")
    pq.write_table(pa.table({"id": ["a1"], "audio": ["x.wav"], "reason": ["truncated: the WAV data chunk is short"]}),
                   store / "rejects.parquet")
    out = tmp_path / "out"
    run_rephrase(manifest, out, _cfg(tiny_qwen3_dir), instances=store / "instances.parquet", progress=False)
    assert [t["instance_id"] for t in _targets(out)] == ["a0"]
    rejects = {r["instance_id"]: r["reason"] for r in pq.read_table(out / "rejects.parquet").to_pylist()}
    assert rejects["a1"] == "rejected_by_store: truncated: the WAV data chunk is short"
