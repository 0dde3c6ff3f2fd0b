"""Every command names its clip counts the same way, and the same name gives the same number.

Demo corpus, ``manifest check``, ``stats``, ``pipeline plan``, ``pipeline status`` and the store's
report on one small demo corpus (a cut, a no-prompt row, a 60 s clip and four broken files), with a
real feature job (local Ray, one tiny encoder, a real Zarr store). Then the rephrase run's rows add
up and its status and report agree on the pass states.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from alarm.pipeline.demo_corpus import DemoCorpusConfig, write_demo_corpus  # noqa: E402

SMALL = DemoCorpusConfig(sound_events=3, music=2, speech=0, long_clips=1, broken=True)
NAMES = {"manifest rows": "manifest_rows", "audio files": "audio_files", "sources (audio+cut)": "sources",
         "readable": "readable", "under 60 s": "under_limit", "stored clips": "stored"}
COUNT_RE = re.compile(r"(\d+) (manifest rows|audio files|sources \(audio\+cut\)|readable|under 60 s|stored clips)")


def counts_in(text: str) -> dict[str, int]:
    """The named counts of the first line of ``text`` that has any."""
    for line in text.splitlines():
        found = {NAMES[name]: int(n) for n, name in COUNT_RE.findall(line)}
        if found:
            return found
    raise AssertionError(f"no named count in {text!r}")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """An embedded Ray of this test's own (never a cluster another process started)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    tmp = tmp_path_factory.mktemp("ray")
    os.environ.setdefault("RAY_TMPDIR", str(tmp))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _temp_dir=str(tmp))
    yield ray
    ray.shutdown()


def test_the_same_named_count_everywhere(local_ray, tmp_path):
    from alarm.cli import main

    manifest = write_demo_corpus(tmp_path / "corpus", SMALL)
    corpus = json.loads((tmp_path / "corpus" / "corpus.json").read_text())
    # 6 good files (one of them 60 s or longer) + 4 broken; every clip asked 1-3 questions, one cut
    # of the first clip and one row without a prompt.
    expected = {"manifest_rows": 15, "audio_files": 10, "sources": 11}
    assert corpus["counts"] == expected and corpus["good_files"] == 6
    assert counts_in(corpus["counts_line"]) == expected

    runner = CliRunner()
    checked = runner.invoke(main, ["manifest", "check", str(manifest)])
    assert checked.exit_code == 0, checked.output
    assert counts_in(checked.output) == expected

    stats = runner.invoke(main, ["stats", str(manifest)])
    assert stats.exit_code == 0, stats.output
    # three broken files have no header; the truncated one has one (only decoding finds it broken)
    assert counts_in(stats.output.split("-\n")[-1]) == {**expected, "readable": 8}

    plan = runner.invoke(main, ["pipeline", "plan", str(manifest)])
    assert plan.exit_code == 0, plan.output
    assert counts_in(plan.output) == {**expected, "readable": 8, "under_limit": 7}
    assert "(3 unreadable, 1 too long)" in plan.output

    store = tmp_path / "store"
    ran = runner.invoke(main, ["pipeline", "run", str(manifest), "--store", str(store), "--encoders", "muq",
                               "--preset", "tiny", "--no-progress"])
    assert ran.exit_code == 0, ran.output
    status = runner.invoke(main, ["pipeline", "status", "--store", str(store)])
    assert status.exit_code == 0, status.output
    stored = {**expected, "stored": 6}  # the truncated file fails to decode
    assert counts_in(status.output) == stored
    assert "muq/" in status.output and "6 done, 0 pending" in status.output
    keys = pq.read_table(store / "instances.parquet").column("key").to_pylist()
    assert len(set(keys)) == 6

    report = json.loads((store / "report.json").read_text())["data"]
    assert report["counts"] == stored and report["clips"] == 6
    md = (store / "report.md").read_text()
    for name, field in NAMES.items():
        if field in stored:
            assert f"**{name}**: {stored[field]}" in md, name
    assert "stored clips: distinct clips in the store after every reject" in md


def test_rephrase_rows_add_up_and_status_agrees_with_report(tmp_path, tiny_qwen3_dir):
    import pyarrow as pa
    import rephrase_fixtures as rf

    from alarm.cli import main
    from alarm.rephrase.engines import EngineConfig
    from alarm.rephrase.run import RephraseConfig, run_rephrase
    from alarm.rephrase.validate import ValidateConfig

    # 4 audio rows and an instruction; the store rejected a1, and a3 asks for a failure.
    manifest = rf.write_manifest(tmp_path, n_audio=4, n_instruction=1)
    lines = manifest.read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    rows[3]["prompt"] = "FAILME " + rows[3]["prompt"]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    store = tmp_path / "store"
    store.mkdir()
    kept_ids = [r["id"] for r in rows if r["id"] != "a1"]
    pq.write_table(pa.table({"id": kept_ids, "key": [f"k{i}" for i in range(len(kept_ids))]}),
                   store / "instances.parquet")
    pq.write_table(pa.table({"id": ["a1"], "audio": ["x.wav"], "reason": ["truncated: short"]}),
                   store / "rejects.parquet")
    out = tmp_path / "out"
    cfg = RephraseConfig(engine=EngineConfig(name="scripted", model=str(tiny_qwen3_dir)), chunk_size=2,
                         validate=ValidateConfig(min_tokens=5, max_tokens=612))
    report = run_rephrase(manifest, out, cfg, instances=store / "instances.parquet", progress=False)
    stats = report["validation"]

    # Every valid manifest row ends in exactly one bucket; the broken line is counted on its own.
    assert stats["manifest_rows"] == 5 and stats["inputs"] == 4
    assert stats["rejected_before_generation"] == 1 and stats["rejected_after_generation"] == 1
    assert stats["kept"] + stats["pending"] + stats["rejected_after_generation"] == stats["inputs"]
    assert stats["inputs"] + stats["rejected_before_generation"] == stats["manifest_rows"]
    assert stats["rejected"] == (stats["rejected_before_generation"] + stats["rejected_after_generation"]
                                 + stats["rejected_manifest_lines"]) == 3
    assert stats["accounting"].startswith("5 manifest rows = 3 kept + 1 rejected after generation "
                                          "+ 1 rejected before generation + 0 pending")
    # --instances was given: the note says so, and how many rows found a key.
    assert stats["clip_keys"] == f"from {(store / 'instances.parquet').resolve()}: 4 of 4 generation inputs have a clip key"

    runner = CliRunner()
    status = json.loads(runner.invoke(main, ["rephrase", "status", str(out)]).output)
    answer = status["answer"]
    assert answer["complete"] + answer["incomplete"] + answer["error"] + answer["pending"] == answer["requests"]
    assert answer["finished"] == answer["complete"] + answer["incomplete"]
    assert (answer["complete"], answer["error"]) == (3, 1)
    data = json.loads((out / "report.json").read_text())["data"]
    for name in ("answer", "rephrase"):
        assert data["passes"][name]["states"] == status[name]
    md = (out / "report.md").read_text()
    st = status["answer"]
    assert (f"| answer | {st['requests']} | {st['complete']} | {st['incomplete']} | {st['error']} | "
            f"{st['pending']} |") in md
    assert "5 manifest rows = 3 kept + 1 rejected after generation + 1 rejected before generation" in md
    assert "**manifest rows**: 5" in md and "**rows sent to generation**: 4" in md

    # Without --instances the note says that instead of blaming a missing match.
    plain = run_rephrase(manifest, tmp_path / "plain", cfg, progress=False)["validation"]
    assert plain["clip_keys"].startswith("null: no --instances given")
