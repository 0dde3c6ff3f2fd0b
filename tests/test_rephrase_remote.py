"""Rephrase runs on object storage (a real S3 server, moto): same targets as a local run, resumable
after SIGKILL without generating any request twice, and status/show/validate on the URL.

The deterministic scripted engine of rephrase_fixtures stands in for the LLM, as in test_rephrase_run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

import rephrase_fixtures as rf  # noqa: E402
from scripted_run_fixtures import resetting, run_killed, upload  # noqa: E402

from alarm.pipeline.objects import open_objects  # noqa: E402
from alarm.rephrase.engines import EngineConfig  # noqa: E402
from alarm.rephrase.run import RephraseConfig, run_rephrase  # noqa: E402
from alarm.rephrase.show import run_status, sample_targets  # noqa: E402
from alarm.rephrase.validate import ValidateConfig, validate_run  # noqa: E402

_reset_script = resetting(rf.ScriptedEngine, fail_marker="FAILME")


def _cfg(model: Path) -> RephraseConfig:
    return RephraseConfig(engine=EngineConfig(name="scripted", model=str(model)), chunk_size=2,
                          validate=ValidateConfig(min_tokens=5, max_tokens=612))


def _rows(data: bytes) -> list[dict]:
    return sorted(pq.read_table(pa.BufferReader(data)).to_pylist(), key=lambda r: r["instance_id"])


def test_run_on_s3_gives_the_targets_of_a_local_run(tmp_path, s3_url, tiny_qwen3_dir) -> None:
    manifest = rf.write_manifest(tmp_path / "corpus", n_audio=4, n_instruction=1)
    upload(tmp_path / "corpus", f"{s3_url}/corpus")  # manifest and audio on S3 too
    run_rephrase(manifest, tmp_path / "local", _cfg(tiny_qwen3_dir), progress=False)
    local_calls = len(rf.ScriptedEngine.calls)
    rf.ScriptedEngine.calls.clear()
    run = f"{s3_url}/runs/r1"
    report = run_rephrase(f"{s3_url}/corpus/manifest.jsonl", run, _cfg(tiny_qwen3_dir), progress=False)
    assert len(rf.ScriptedEngine.calls) == local_calls and report["validation"]["kept"] == 5
    objects = open_objects(run)
    keys = {info.key for info in objects.list()}
    assert {"config.yaml", "run.json", "inputs.parquet", "targets.parquet", "rejects.parquet", "stats.json",
            "report.md"} <= keys
    assert any(k.startswith("cache/answer/part-") for k in keys) and not any(k.startswith(".") for k in keys)
    local, remote = _rows((tmp_path / "local" / "targets.parquet").read_bytes()), _rows(objects.get("targets.parquet"))
    assert all(r["audio"].startswith(f"{s3_url}/corpus/audio/") for r in remote)
    for row in local + remote:
        row.pop("audio")  # where the clip lives is the only difference
    assert remote == local
    assert json.loads(objects.get("run.json"))["manifest"] == f"{s3_url}/corpus/manifest.jsonl"

    # Reading the run back from the URL: status, show, validate, and the CLI on it.
    assert run_status(run)["answer"]["pending"] == 0 and run_status(run)["rephrase"]["finished"] == 4
    assert len(sample_targets(run, 2, seed=0)) == 2
    strict = validate_run(run, ValidateConfig(min_tokens=500))
    assert strict["kept"] == 0 and _rows(objects.get("targets.parquet")) == []
    from alarm.cli import main

    runner = CliRunner()
    status = runner.invoke(main, ["rephrase", "status", run])
    assert status.exit_code == 0 and '"pending": 0' in status.output, status.output
    assert runner.invoke(main, ["rephrase", "validate", run]).exit_code == 0
    shown = runner.invoke(main, ["rephrase", "show", run, "-n", "2", "--seed", "1"])
    assert shown.exit_code == 0 and shown.output.count("== ") == 2, shown.output
    assert len(rf.ScriptedEngine.calls) == local_calls  # reading and re-validating generated nothing
    missing = runner.invoke(main, ["rephrase", "status", f"{s3_url}/runs/none"])
    assert missing.exit_code == 2 and "not a rephrase run folder" in missing.output


KILLED_RUN = """
import rephrase_fixtures as rf
from scripted_run_fixtures import dying
from alarm.rephrase.engines import ENGINES, EngineConfig
from alarm.rephrase.run import RephraseConfig, run_rephrase
from alarm.rephrase.validate import ValidateConfig

manifest, out, model, log, kill_at = sys.argv[1:6]
ENGINES["dying"] = dying(rf.ScriptedEngine, log, int(kill_at))
cfg = RephraseConfig(engine=EngineConfig(name="dying", model=model), chunk_size=2,
                     validate=ValidateConfig(min_tokens=5, max_tokens=612))
run_rephrase(manifest, out, cfg, progress=False)
"""


def test_a_killed_run_on_s3_resumes_without_generating_a_request_twice(tmp_path, s3_url, tiny_qwen3_dir) -> None:
    manifest = rf.write_manifest(tmp_path / "corpus", n_audio=4, n_instruction=1)
    run = f"{s3_url}/runs/killed"
    before = run_killed(KILLED_RUN, tmp_path, manifest, run, tiny_qwen3_dir, kill_at=3)
    objects = open_objects(run)
    assert len(before) == 4 and len(objects.list("cache/answer")) == 2  # two chunks of two, on S3
    assert not objects.exists("targets.parquet")

    resumed = run_rephrase(manifest, run, _cfg(tiny_qwen3_dir), progress=False)
    after = list(rf.ScriptedEngine.calls)
    assert resumed["answer"]["cached"] == 4 and resumed["answer"]["generated"] == 1
    assert not set(before) & set(after) and len(after) == len(set(after))  # nothing generated twice
    rf.ScriptedEngine.calls.clear()
    run_rephrase(manifest, tmp_path / "local", _cfg(tiny_qwen3_dir), progress=False)
    assert sorted(before + after) == sorted(rf.ScriptedEngine.calls)  # every request, exactly once
    assert _rows(objects.get("targets.parquet")) == _rows((tmp_path / "local" / "targets.parquet").read_bytes())


def test_clip_keys_and_store_rejects_from_a_store_on_s3(tmp_path, s3_url, tiny_qwen3_dir) -> None:
    manifest = rf.write_manifest(tmp_path, n_audio=2, n_instruction=0)
    store = tmp_path / "store"
    store.mkdir()
    pq.write_table(pa.table({"id": ["a0"], "key": ["k0"]}), store / "instances.parquet")
    pq.write_table(pa.table({"id": ["a1"], "audio": ["x.wav"], "reason": ["truncated: the WAV data chunk is short"]}),
                   store / "rejects.parquet")
    upload(store, s3_url)
    out = tmp_path / "out"
    run_rephrase(manifest, out, _cfg(tiny_qwen3_dir), instances=f"{s3_url}/instances.parquet", progress=False)
    targets = _rows((out / "targets.parquet").read_bytes())
    assert [(t["instance_id"], t["clip_key"]) for t in targets] == [("a0", "k0")]
    rejects = {r["instance_id"]: r["reason"] for r in pq.read_table(out / "rejects.parquet").to_pylist()}
    assert rejects["a1"] == "rejected_by_store: truncated: the WAV data chunk is short"
    assert json.loads((out / "run.json").read_text())["instances"] == f"{s3_url}/instances.parquet"
