"""Stage-0 runs on object storage (a real S3 server, moto): the manifest and statistics of a local run,
resumable after SIGKILL without generating any request twice, status/show/retry-failed on the URL, and
the written manifest readable from the URL.

The deterministic scripted engine of prompt_fixtures stands in for the LLM, as in test_prompts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

import prompt_fixtures as pf  # noqa: E402
from scripted_run_fixtures import resetting, run_killed, upload  # noqa: E402

from alarm.pipeline.manifest import read_manifest  # noqa: E402
from alarm.pipeline.objects import open_objects  # noqa: E402
from alarm.rephrase.engines import EngineConfig  # noqa: E402
from alarm.rephrase.prompt_config import PromptsConfig  # noqa: E402
from alarm.rephrase.prompt_job import retry_failed, run_prompts  # noqa: E402
from alarm.rephrase.prompt_show import prompt_status, sample_clips  # noqa: E402

_reset_script = resetting(pf.PromptScriptedEngine, fail_marker="FAILME", replies={})


def _cfg(model: Path) -> PromptsConfig:
    return PromptsConfig(engine=EngineConfig(name="scripted-prompts", model=str(model)), chunk_size=2)


def _manifest_rows(text: str, corpus: str) -> list[dict]:
    """The rows of a written manifest, with where the clips live (the one difference) taken out."""
    rows = [json.loads(line) for line in text.splitlines()]
    for row in rows:
        assert row["audio"].startswith(corpus), row["audio"]
        row["audio"] = row["audio"][len(corpus):].lstrip("/")
    return sorted(rows, key=lambda r: (r["id"], r.get("prompt") or ""))


def test_run_on_s3_gives_the_manifest_and_stats_of_a_local_run(tmp_path, s3_url, tiny_qwen3_dir) -> None:
    rows = pf.sound_rows(4) + [{"id": "given", "audio": "audio/given.wav", "dataset": "sounds",
                                "prompt": "What is the loudest sound?", "metadata": {"caption": "a door"}}]
    manifest = pf.write_clips(tmp_path / "corpus", rows)
    upload(tmp_path / "corpus", f"{s3_url}/corpus")  # manifest and audio on S3 too
    local = tmp_path / "local"
    run_prompts(manifest, local, _cfg(tiny_qwen3_dir), progress=False)
    local_calls = len(pf.PromptScriptedEngine.calls)
    pf.PromptScriptedEngine.calls.clear()

    run = f"{s3_url}/runs/p1"
    report = run_prompts(f"{s3_url}/corpus/manifest.jsonl", run, _cfg(tiny_qwen3_dir), progress=False)
    assert len(pf.PromptScriptedEngine.calls) == local_calls == 8  # 4 generations, 4 checks
    assert report["results"]["clips_prompted"] == 4
    objects = open_objects(run)
    keys = {info.key for info in objects.list()}
    assert {"config.yaml", "run.json", "clips.parquet", "candidates.parquet", "rejects.parquet", "manifest.jsonl",
            "stats.json", "report.md", "report.json"} <= keys, keys
    assert any(k.startswith("cache/prompt/part-") for k in keys) and any(k.startswith("cache/check/part-") for k in keys)
    assert not any(k.startswith(".") for k in keys)
    assert json.loads(objects.get("run.json"))["manifest"] == f"{s3_url}/corpus/manifest.jsonl"
    assert json.loads(objects.get("report.json"))["data"]["out_dir"] == run
    remote_rows = _manifest_rows(objects.get("manifest.jsonl").decode(), f"{s3_url}/corpus")
    assert remote_rows == _manifest_rows((local / "manifest.jsonl").read_text(), str(tmp_path / "corpus"))
    assert len(remote_rows) == 5 and {r["id"] for r in remote_rows} == {"s0", "s1", "s2", "s3", "given"}
    assert json.loads(objects.get("stats.json")) == json.loads((local / "stats.json").read_text())

    # The written manifest is read straight from the URL, its clips on S3.
    written = read_manifest(f"{run}/manifest.jsonl")
    assert not written.rejects and len(written.instances) == 5
    assert all(i.prompt and i.audio.startswith(f"{s3_url}/corpus/audio/") for i in written.instances)

    # A rerun on the URL generates nothing; retry-failed on the URL has nothing to retry.
    again = run_prompts(f"{s3_url}/corpus/manifest.jsonl", run, _cfg(tiny_qwen3_dir), progress=False)
    assert again["prompt"]["generated"] == 0 and again["prompt"]["cached"] == 4
    assert retry_failed(run, progress=False)["check"]["generated"] == 0
    assert len(pf.PromptScriptedEngine.calls) == 8


def test_status_show_and_cli_on_the_url(tmp_path, s3_url, tiny_qwen3_dir) -> None:
    import yaml

    from alarm.cli import main

    manifest = pf.write_clips(tmp_path, pf.sound_rows(3))
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"chunk_size": 2}))
    run = f"{s3_url}/runs/cli"
    runner = CliRunner()
    result = runner.invoke(main, ["prompts", "run", str(manifest), "--out", run, "--config", str(config),
                                  "--engine", "scripted-prompts", "--model", str(tiny_qwen3_dir), "--choose", "2"])
    assert result.exit_code == 0, result.output
    assert "instances written: 6" in result.output and f"manifest: {run}/manifest.jsonl" in result.output
    status = prompt_status(run)
    assert status["prompt"]["finished"] == 3 and status["check"]["pending"] == 0
    assert status["outputs"]["instances_written"] == 6
    clips = sample_clips(run, 5, seed=0)
    assert len(clips) == 3 and all(sum(c["chosen"] for c in clip["candidates"]) == 2 for clip in clips)

    shown = runner.invoke(main, ["prompts", "status", run])
    assert shown.exit_code == 0 and json.loads(shown.output)["check"]["finished"] == 3, shown.output
    shown = runner.invoke(main, ["prompts", "show", run, "-n", "2", "--seed", "1"])
    assert shown.exit_code == 0 and shown.output.count("== ") == 2 and shown.output.count("chosen") == 4
    retried = runner.invoke(main, ["prompts", "retry-failed", run])
    assert retried.exit_code == 0 and "instances written: 6" in retried.output, retried.output
    assert len(pf.PromptScriptedEngine.calls) == 6  # reading and retrying generated nothing more

    missing = runner.invoke(main, ["prompts", "status", f"{s3_url}/runs/none"])
    assert missing.exit_code == 2 and f"{s3_url}/runs/none is not a prompts run folder" in missing.output
    nowhere = "s3://no-such-bucket-prompturl/runs/x"
    for args in (["status", nowhere], ["run", str(manifest), "--out", nowhere, "--engine", "scripted-prompts",
                                        "--model", str(tiny_qwen3_dir)]):
        failed = runner.invoke(main, ["prompts", *args])
        assert failed.exit_code == 2 and nowhere in failed.output, failed.output
        assert len(failed.output.strip().splitlines()) == 1, failed.output
    assert len(pf.PromptScriptedEngine.calls) == 6


KILLED_RUN = """
import prompt_fixtures as pf
from scripted_run_fixtures import dying
from alarm.rephrase.engines import ENGINES, EngineConfig
from alarm.rephrase.prompt_config import PromptsConfig
from alarm.rephrase.prompt_job import run_prompts

manifest, out, model, log, kill_at = sys.argv[1:6]
ENGINES["dying-prompts"] = dying(pf.PromptScriptedEngine, log, int(kill_at))
run_prompts(manifest, out, PromptsConfig(engine=EngineConfig(name="dying-prompts", model=model), chunk_size=2),
            progress=False)
"""


def test_a_killed_run_on_s3_resumes_without_generating_a_request_twice(tmp_path, s3_url, tiny_qwen3_dir) -> None:
    manifest = pf.write_clips(tmp_path / "corpus", pf.sound_rows(6))
    run = f"{s3_url}/runs/killed"
    before = run_killed(KILLED_RUN, tmp_path, manifest, run, tiny_qwen3_dir, kill_at=3)
    objects = open_objects(run)
    assert len(before) == 4 and len(objects.list("cache/prompt")) == 2  # two chunks of two, on S3
    assert objects.exists("clips.parquet") and not objects.exists("manifest.jsonl")  # inputs published, no output

    resumed = run_prompts(manifest, run, _cfg(tiny_qwen3_dir), progress=False)
    after = list(pf.PromptScriptedEngine.calls)
    assert resumed["prompt"]["cached"] == 4 and resumed["prompt"]["generated"] == 2
    assert not set(before) & set(after) and len(after) == len(set(after))  # nothing generated twice
    pf.PromptScriptedEngine.calls.clear()
    run_prompts(manifest, tmp_path / "local", _cfg(tiny_qwen3_dir), progress=False)
    assert sorted(before + after) == sorted(pf.PromptScriptedEngine.calls)  # every request, exactly once
    assert objects.get("manifest.jsonl").decode() == (tmp_path / "local" / "manifest.jsonl").read_text()
    assert prompt_status(run)["prompt"]["pending"] == 0
