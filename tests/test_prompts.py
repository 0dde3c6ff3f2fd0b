"""Stage 0 (`alarm prompts`) end to end: on the tiny Qwen3 (transformers), and on a scripted engine.

The scripted engine gives exact replies, so these tests can assert on what the checks, the choice and
the caches do; the tiny random model shows what a model that writes no answer block leaves behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import prompt_fixtures as pf  # noqa: E402

from alarm.pipeline.manifest import read_manifest  # noqa: E402
from alarm.rephrase.engines import EngineConfig  # noqa: E402
from alarm.rephrase.prompt_config import PromptsConfig  # noqa: E402
from alarm.rephrase.prompt_job import retry_failed, run_prompts  # noqa: E402
from alarm.rephrase.prompt_show import prompt_status, sample_clips  # noqa: E402


@pytest.fixture(autouse=True)
def _reset_script():
    pf.PromptScriptedEngine.calls.clear()
    pf.PromptScriptedEngine.fail_marker = "FAILME"
    pf.PromptScriptedEngine.replies = {}
    yield
    pf.PromptScriptedEngine.calls.clear()
    pf.PromptScriptedEngine.replies = {}


def _cfg(model: Path, **kw) -> PromptsConfig:
    return PromptsConfig(engine=EngineConfig(name="scripted-prompts", model=str(model)), chunk_size=2, **kw)


def _candidates(out: Path) -> list[dict]:
    return pq.read_table(out / "candidates.parquet").to_pylist()


def _rejects(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in pq.read_table(out / "rejects.parquet").to_pylist()}


def test_tiny_random_llm_keeps_nothing_and_the_report_says_why(tmp_path, tiny_qwen3_dir):
    manifest = pf.write_clips(tmp_path, pf.sound_rows(3))
    cfg = PromptsConfig(engine=EngineConfig(name="transformers", model=str(tiny_qwen3_dir), dtype="float32",
                                            max_model_len=2048, batch_size=4),
                        generate_max_tokens=24, check_max_tokens=24, think_budget=12, chunk_size=8)
    out = tmp_path / "out"
    report = run_prompts(manifest, out, cfg, progress=False)
    assert report["prompt"]["generated"] == 3 and report["prompt"]["errors"] == 0
    forced = [r for p in (out / "cache" / "prompt").glob("part-*.parquet") for r in pq.read_table(p).to_pylist()]
    assert all(r["forced"] and r["n_tokens"] <= 24 for r in forced)  # never closed its thinking: forced
    assert report["check"]["requested"] == 0  # no candidates: nothing to check
    stats = report["results"]
    assert stats["clips_prompted"] == 0 and stats["instances_written"] == 0
    assert stats["rejected_clips_per_rule"] == {"no_candidates": 3}
    assert {r["reason"] for r in _rejects(out).values()} == {"no_candidates: no_answer_block"}
    assert (out / "manifest.jsonl").read_text() == ""
    status = prompt_status(out)
    assert status["prompt"]["finished"] == 3 and status["prompt"]["clips_without_candidates"] == {"no_answer_block": 3}
    assert status["check"]["requests"] == 0
    md = (out / "report.md").read_text()
    assert "| prompt | 3 | 3 | 0 | 0 |" in md and "no_answer_block 3" in md
    assert "| no_candidates | 3 |" in md  # the rejected clips, by reason
    doc = json.loads((out / "report.json").read_text())["data"]
    assert doc["statistics"]["candidates"] == 0 and doc["states"]["check"]["requests"] == 0


def test_run_writes_a_manifest_with_prompts_and_a_rerun_generates_nothing(tmp_path, tiny_qwen3_dir):
    rows = pf.sound_rows(4) + [
        {"id": "given", "audio": "audio/s0.wav", "dataset": "sounds", "prompt": "Keep this one?"},
        {"id": "inst", "audio": "audio/s1.wav", "dataset": "talk", "kind": "instruction", "context": "At 3.",
         "prompt": "When?"},
        {"id": "gone", "audio": "audio/none.wav", "dataset": "sounds", "missing": True},
    ]
    manifest = pf.write_clips(tmp_path, rows)
    out = tmp_path / "out"
    report = run_prompts(manifest, out, _cfg(tiny_qwen3_dir), progress=False)
    assert report["prompt"]["generated"] == 4 and report["check"]["generated"] == 4
    result = read_manifest(out / "manifest.jsonl")  # readable by the manifest reader, ready for rephrase
    assert result.rejects == [] and len(result.instances) == 6
    by_id = {i.id: i for i in result.instances}
    assert by_id["given"].prompt == "Keep this one?" and by_id["inst"].kind == "instruction"
    for i in range(4):
        assert by_id[f"s{i}"].prompt in pf.DEFAULT_CANDIDATES
        assert by_id[f"s{i}"].metadata == {"caption": f"ambience number {i}"}
    assert _rejects(out)["gone"]["reason"].startswith("unreadable_audio")
    chosen = [c for c in _candidates(out) if c["chosen"]]
    assert len(chosen) == 4 and all(c["instance_id"] == c["clip_id"] for c in chosen)
    assert (out / "report.md").is_file() and (out / "prompt_lengths.png").stat().st_size > 1000

    before = (out / "manifest.jsonl").read_text()
    pf.PromptScriptedEngine.calls.clear()
    again = run_prompts(manifest, out, _cfg(tiny_qwen3_dir), progress=False)
    assert pf.PromptScriptedEngine.calls == []
    assert again["prompt"]["cached"] == 4 and again["check"]["cached"] == 4
    assert (out / "manifest.jsonl").read_text() == before


def test_checks_by_code_and_by_the_checker_with_reasons(tmp_path, tiny_qwen3_dir):
    rows = [{"id": "sp", "audio": "audio/sp.wav", "dataset": "speech",
             "metadata": {"transcript": "Turn left at the bakery.", "gender": "female"}},
            {"id": "dog", "audio": "audio/dog.wav", "dataset": "sounds", "metadata": {"labels": ["dog", "siren"]}}]
    pf.PromptScriptedEngine.replies = {
        "bakery": "</think><answer>\nWhere should the listener turn?\nWhat is the speaker's tone?\n"
                  "what is the speaker's TONE\nIs the speaker female?\nBADQ What colour is the shop?\n</answer>",
        "siren": "</think><answer>\nIs a siren audible?\nNOVERDICT How many barks?\nAccording to the labels, what is "
                 "it?\nIs it loud? Is it near?\n</answer>",
    }
    manifest = pf.write_clips(tmp_path, rows)
    out = tmp_path / "out"
    report = run_prompts(manifest, out, _cfg(tiny_qwen3_dir), progress=False)
    rules = {(c["clip_id"], c["index"]): (c["rule"], c["reason"]) for c in _candidates(out)}
    assert rules[("sp", 0)] == ("code:transcript_words", "turn")
    assert rules[("sp", 1)] == (None, "")
    assert rules[("sp", 2)] == ("code:duplicate", "same as candidate 2")
    assert rules[("sp", 3)] == ("code:label_name", "female")
    assert rules[("sp", 4)] == ("checker:answerable", "needs a picture")
    assert rules[("dog", 0)] == ("code:label_name", "siren")
    assert rules[("dog", 1)][0] == "checker:no_verdict"
    assert rules[("dog", 2)][0] == "code:leak:according_to_source"
    assert rules[("dog", 3)] == ("code:not_single", "2 question marks")
    stats = report["results"]
    assert stats["clips_prompted"] == 1 and stats["accepted_candidates"] == 1
    assert _rejects(out)["dog"]["reason"].startswith("no_usable_prompt: 4 candidates: ")
    assert stats["rules"]["no_leak"]["rejected_by_code"] == 4 and stats["rules"]["answerable"]["rejected"] == 1
    assert stats["rules"]["distinct"]["rejected"] == 1 and stats["rules"]["single"]["accept_rate"] == 8 / 9
    assert stats["leaks"]["label_name"]["hits"] == 2
    assert {e["matched"] for e in stats["leaks"]["label_name"]["examples"]} == {"female", "siren"}
    assert read_manifest(out / "manifest.jsonl").instances[0].prompt == "What is the speaker's tone?"
    md = (out / "report.md").read_text()
    assert "| no_leak | 9 | 4 | 0 | 4 |" in md and "Is the speaker female? → female" in md


def test_choose_k_makes_k_instances_per_clip_reproducibly(tmp_path, tiny_qwen3_dir):
    manifest = pf.write_clips(tmp_path, pf.sound_rows(3))
    run_prompts(manifest, tmp_path / "a", _cfg(tiny_qwen3_dir, choose=3), progress=False)
    instances = read_manifest(tmp_path / "a" / "manifest.jsonl").instances
    assert [i.id for i in instances[:3]] == ["s0-p1", "s0-p2", "s0-p3"] and len(instances) == 9
    assert len({i.prompt for i in instances[:3]}) == 3
    # another folder, the same seed: the same choice (the cache is not what makes it reproducible)
    run_prompts(manifest, tmp_path / "b", _cfg(tiny_qwen3_dir, choose=3), progress=False)
    assert [i.prompt for i in read_manifest(tmp_path / "b" / "manifest.jsonl").instances] == [i.prompt for i in instances]
    run_prompts(manifest, tmp_path / "c", _cfg(tiny_qwen3_dir, choose=3, seed=5), progress=False)
    assert [i.prompt for i in read_manifest(tmp_path / "c" / "manifest.jsonl").instances] != [i.prompt for i in instances]


def test_a_changed_checker_template_reruns_only_the_checker(tmp_path, tiny_qwen3_dir):
    rows = pf.sound_rows(3) + [{"id": "m", "audio": "audio/m.wav", "dataset": "songs",
                                "metadata": {"genre": "jazz"}}]
    manifest = pf.write_clips(tmp_path, rows)
    out = tmp_path / "out"
    run_prompts(manifest, out, _cfg(tiny_qwen3_dir), progress=False)
    pf.PromptScriptedEngine.calls.clear()
    report = run_prompts(manifest, out, _cfg(tiny_qwen3_dir, check_system_prompt="You check prompts. Be strict."),
                         progress=False)
    assert report["prompt"]["generated"] == 0 and report["check"]["generated"] == 4
    assert len(pf.PromptScriptedEngine.calls) == 4
    # a new music prompt reruns the music clip's generation only; its reply is unchanged, so its check is cached
    pf.PromptScriptedEngine.calls.clear()
    report = run_prompts(manifest, out, _cfg(tiny_qwen3_dir, check_system_prompt="You check prompts. Be strict.",
                                             domain_prompts={"music": "Ask about music. Write {n} prompts."}),
                         progress=False)
    assert report["prompt"]["generated"] == 1 and report["check"]["generated"] == 0


def test_errors_become_rows_and_retry_failed_retries_only_them(tmp_path, tiny_qwen3_dir):
    rows = pf.sound_rows(2) + [{"id": "boom", "audio": "audio/b.wav", "dataset": "sounds",
                                "metadata": {"caption": "FAILME please"}}]
    manifest = pf.write_clips(tmp_path, rows)
    out = tmp_path / "out"
    report = run_prompts(manifest, out, _cfg(tiny_qwen3_dir), progress=False)
    assert report["prompt"]["errors"] == 1 and report["results"]["clips_prompted"] == 2
    assert _rejects(out)["boom"]["reason"] == "generation_error: prompt: scripted failure"
    assert prompt_status(out)["prompt"]["error"] == 1
    pf.PromptScriptedEngine.calls.clear()
    run_prompts(manifest, out, _cfg(tiny_qwen3_dir), progress=False)
    assert pf.PromptScriptedEngine.calls == []  # a plain rerun does not retry errors
    pf.PromptScriptedEngine.fail_marker = "never-matches"
    report = retry_failed(out, progress=False)
    assert report["prompt"]["generated"] == 1 and report["check"]["generated"] == 1
    assert len(pf.PromptScriptedEngine.calls) == 2
    assert report["results"]["clips_prompted"] == 3 and prompt_status(out)["prompt"]["error"] == 0


def test_budget_forcing_lets_a_long_thinker_answer(tmp_path, tiny_qwen3_dir):
    from alarm.rephrase.prompt_templates import BUDGET_FORCING_CLOSER

    rows = pf.sound_rows(1) + [{"id": "ponder", "audio": "audio/p.wav", "dataset": "sounds",
                                "metadata": {"caption": "PONDER bells"}}]
    manifest = pf.write_clips(tmp_path, rows)
    out = tmp_path / "out"
    report = run_prompts(manifest, out, _cfg(tiny_qwen3_dir, think_budget=20, generate_max_tokens=200), progress=False)
    rows = {r["text"][:4]: r for p in (out / "cache" / "prompt").glob("part-*.parquet")
            for r in pq.read_table(p).to_pylist()}
    assert rows["hmm "]["forced"] and BUDGET_FORCING_CLOSER in rows["hmm "]["text"]
    assert rows["hmm "]["n_tokens"] <= 200 and rows["hmm "]["text"].count("hmm") == 20
    assert report["results"]["clips_prompted"] == 2
    ponder = read_manifest(out / "manifest.jsonl").instances[1]
    assert ponder.id == "ponder" and ponder.prompt in ("What do you hear?", "How long does it last?")


_KILLED_RUN = """
import sys
sys.path.insert(0, {tests!r})
import prompt_fixtures
from alarm.rephrase.engines import EngineConfig
from alarm.rephrase.prompt_config import PromptsConfig
from alarm.rephrase.prompt_job import run_prompts
cfg = PromptsConfig(engine=EngineConfig(name="scripted-prompts", model={model!r}), chunk_size=1)
run_prompts({manifest!r}, {out!r}, cfg, progress=False)
"""


def _cached_keys(folder: Path) -> list[str]:
    return [k for p in folder.glob("part-*.parquet") for k in pq.read_table(p).column("key").to_pylist()]


def test_a_killed_run_resumes_without_regenerating(tmp_path, tiny_qwen3_dir):
    manifest = pf.write_clips(tmp_path, pf.sound_rows(6))
    out = tmp_path / "out"
    script = _KILLED_RUN.format(tests=str(Path(__file__).parent), model=str(tiny_qwen3_dir), manifest=str(manifest),
                                out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PROMPT_SCRIPT_DELAY": "0.5"})
    try:
        deadline = time.time() + 180
        while len(_cached_keys(out / "cache" / "prompt")) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)  # mid-pass: some parts written, the rest not
    finally:
        proc.wait()
    done_before = _cached_keys(out / "cache" / "prompt")
    assert 2 <= len(done_before) < 6, len(done_before)
    report = run_prompts(manifest, out, _cfg(tiny_qwen3_dir), progress=False)
    assert report["prompt"]["cached"] == len(done_before)
    assert not set(pf.PromptScriptedEngine.calls) & set(done_before)  # nothing generated twice
    keys = _cached_keys(out / "cache" / "prompt")
    assert len(keys) == len(set(keys)) == 6
    assert report["results"]["clips_prompted"] == 6


def test_cli_run_status_show_retry(tmp_path, tiny_qwen3_dir):
    import yaml
    from click.testing import CliRunner

    from alarm.cli import main

    manifest = pf.write_clips(tmp_path, pf.sound_rows(3))
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"chunk_size": 2, "candidates": 4}))
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(main, ["prompts", "run", str(manifest), "--out", str(out), "--config", str(config),
                                  "--engine", "scripted-prompts", "--model", str(tiny_qwen3_dir), "--choose", "2"])
    assert result.exit_code == 0, result.output
    assert "3 prompted" in result.output and "instances written: 6" in result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["candidates"] == 4
    status = runner.invoke(main, ["prompts", "status", str(out)])
    assert status.exit_code == 0 and json.loads(status.output)["check"]["finished"] == 3
    shown = runner.invoke(main, ["prompts", "show", str(out), "-n", "2", "--seed", "1"])
    assert shown.exit_code == 0 and shown.output.count("== ") == 2 and shown.output.count("chosen") == 4
    assert len(sample_clips(out, 5)) == 3
    assert runner.invoke(main, ["prompts", "retry-failed", str(out)]).exit_code == 0
    reported = runner.invoke(main, ["report", str(tmp_path)])  # `alarm report` knows a prompts run
    assert reported.exit_code == 0 and reported.output.startswith("prompts: "), reported.output
    bad = runner.invoke(main, ["prompts", "run", str(manifest), "--out", str(out), "--choose", "9",
                               "--model", str(tiny_qwen3_dir)])
    assert bad.exit_code == 2 and "choose (9) must not exceed candidates (5)" in bad.output
    missing = runner.invoke(main, ["prompts", "status", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "not a prompts run folder" in missing.output
