"""Run reports (pipeline, training, rephrasing), `alarm report` and `alarm stats`, on tiny real inputs.

The pipeline report reads files written by the job's own table writer (``write_instance_tables``) and
a real one-encoder store; the rephrase report reads a real ``run_rephrase`` folder (scripted engine);
the training report reads a ``logs.jsonl`` with known losses. Values in report.json are checked
against the inputs, tables in report.md by their rows, figures by their PNG header.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from alarm.pipeline import report as rp  # noqa: E402
from alarm.pipeline.manifest import Instance, Reject  # noqa: E402
from alarm.pipeline.stats import domain_of, manifest_stats  # noqa: E402
from alarm.rephrase.report import write_rephrase_report  # noqa: E402
from alarm.trainer.report import write_train_report  # noqa: E402


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature and that it holds a real image."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert len(data) > 5000  # axes, labels and lines, not an empty canvas
    return struct.unpack(">II", data[16:24])


def load(folder: Path) -> dict:
    doc = json.loads((folder / "report.json").read_text())
    assert set(doc) == {"title", "created", "missing", "data"}
    return doc


# ------------------------------------------------------------------------------------------ formatting


def test_formatting_helpers():
    assert rp.format_number(1234567) == "1,234,567" and rp.format_number(0.012345) == "0.01235"
    assert rp.format_number(12345.6) == "12,346" and rp.format_number(None) == "–"
    assert rp.human_bytes(512) == "512 B" and rp.human_bytes(1536) == "1.5 KiB"
    assert rp.human_bytes(3 * 1024**3) == "3.0 GiB"
    assert rp.human_duration(0.25) == "250 ms" and rp.human_duration(75) == "1 min 15 s"
    assert rp.human_duration(7500) == "2 h 05 min"
    table = rp.markdown_table(["name", "n"], [["a|b", 1000], ["c", 2]]).splitlines()
    assert table[1] == "|---|---:|" and table[2] == "| a\\|b | 1,000 |"
    assert rp.truncate("x " * 500, 20).endswith("…") and len(rp.truncate("x " * 500, 20)) == 20


# ------------------------------------------------------------------------------------------ pipeline


def _write_store(root: Path) -> dict:
    """What a job leaves beside a store, written by the job's own writers, plus one real encoder group."""
    from train_fixtures import write_feature_store

    from alarm.pipeline.instance_tables import write_instance_tables
    from alarm.pipeline.job import PipelineSummary

    root.mkdir(parents=True)
    durations = {"k1": 2.0, "k2": 4.0, "k3": 10.0}
    rows = [("a1", "/x/1.wav", "speech", "k1"), ("a2", "/x/1.wav", "speech", "k1"),  # one clip, two prompts
            ("a3", "/x/2.wav", "speech", "k2"), ("b1", "/x/3.wav", "birds", "k3"),
            ("bad1", "/x/gone.wav", "birds", None), ("bad2", "/x/gone2.wav", "birds", None),
            ("bad3", "/x/empty.wav", "speech", None), ("long", "/x/long.wav", "birds", "k9")]
    instances, keyed = [], {}
    for iid, audio, ds, key in rows:
        instances.append(Instance(id=iid, audio=audio, dataset=ds))
        reason = {"bad1": "missing: audio file not found", "bad2": "missing: audio file not found",
                  "bad3": "empty: the audio file has no bytes"}.get(iid)
        keyed[(audio, None, None)] = {"key": key, "duration": durations.get(key, 90.0), "reason": reason}
    write_instance_tables(root, instances, [Reject(7, None, "malformed JSON")], keyed, max_seconds=60.0)
    write_feature_store(root, {"k1": 100, "k2": 200, "k3": 500}, encoder="whisper")
    summary = PipelineSummary(
        store=str(root), instances=len(rows) + 1, clips=3, audio_hours=16 / 3600,
        rejected={"manifest": 1, "missing": 2, "empty": 1, "too long": 1}, encoded={"whisper": 3},
        skipped={"whisper": 0}, stored={"whisper": 3}, bytes_written={"whisper": 123456},
        stage_seconds={"key": 0.5, "decode": 0.25, "whisper": 2.0, "index": 0.01},
        throughput={"key": 32.0, "decode": 64.0, "whisper": 8.0}, wall_seconds=5.5,
        spec_ids={"whisper": "x"})
    (root / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary.to_dict()


def test_pipeline_report_tables_values_and_histogram(tmp_path):
    store = tmp_path / "store"
    _write_store(store)
    json_path, md_path = rp.write_pipeline_report(store)
    doc = load(store)
    data = doc["data"]
    assert data["kind"] == "pipeline" and data["instances"] == 4 and data["clips"] == 3
    assert data["audio_hours"] == pytest.approx(16 / 3600)
    assert data["per_dataset"]["speech"] == {
        "instances": 3, "clips": 2, "audio_hours": pytest.approx(6 / 3600),
        "duration_s": {"min": 2.0, "median": 3.0, "mean": 3.0, "max": 4.0}}
    assert data["per_dataset"]["birds"]["clips"] == 1
    rejected = {r["reason"]: r for r in data["rejected"]}
    assert {k: r["count"] for k, r in rejected.items()} == {"missing": 2, "empty": 1, "too long": 1, "manifest": 1}
    assert rejected["missing"]["examples"] == ["bad1", "bad2"] and rejected["missing"]["clips"] == 2
    assert [r["reason"] for r in data["rejected"]][0] == "missing"  # most frequent first
    (group,) = data["encoders"].values()
    assert group["done"] == 3 and group["pending"] == 0 and group["bytes_written_last_run"] == 123456
    assert group["bytes_on_disk"] > 0
    assert data["stages"]["whisper"] == {"seconds": 2.0, "audio_x_realtime": 8.0}
    assert doc["missing"] == []
    md = md_path.read_text()
    assert "| missing | 2 | 2 | bad1, bad2 | missing: audio file not found |" in md
    assert "| speech | 3 | 2 |" in md and "![clip durations per dataset](durations.png)" in md
    assert "| whisper | 2 | 8 |" in md and "120.6 KiB" in md
    assert png_size(store / "durations.png") == (700, 400)
    assert json_path == store / "report.json"
    assert not list(store.glob(".*.tmp"))  # atomic writes leave no temporary behind


# ------------------------------------------------------------------------------------------ training


def _write_logs(run: Path) -> None:
    records = [{"step": s, "epoch": 0, "loss": 5.0 - 0.1 * s, "lr": 1e-3, "tokens_per_s": 100.0 + s}
               for s in range(1, 21)]
    records.insert(10, {"step": 10, "eval_loss": 3.0, "eval_loss_per_dataset": {"dsA": 2.5, "dsB": 3.5},
                        "samples": []})
    # a resumed run logs steps 16..20 again after its checkpoint at 15: the later records win
    records += [{"step": s, "epoch": 0, "loss": 4.0 - 0.1 * s, "lr": 1e-3, "tokens_per_s": 50.0}
                for s in range(16, 21)]
    records.append({"step": 20, "eval_loss": 2.0, "eval_loss_per_dataset": {"dsA": 2.75, "dsB": 1.25},
                    "samples": [{"instance_id": "i1", "generated": "word " * 200}]})
    run.mkdir(parents=True)
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"step": 21, "loss'  # killed mid-line
    (run / "logs.jsonl").write_text(text)
    for step in (15, 20):
        ck = run / "checkpoints" / f"step_{step:08d}"
        ck.mkdir(parents=True)
        (ck / "meta.json").write_text("{}")
    (run / "config.yaml").write_text("llm: /models/tiny\nencoders: [whisper, muq]\nfusion: ca\nmax_steps: 20\n")


def test_train_report_losses_per_dataset_and_loss_curves(tmp_path):
    run = tmp_path / "run"
    _write_logs(run)
    write_train_report(run)
    doc = load(run)
    data = doc["data"]
    assert data["step"] == 20 and data["train"]["records"] == 20
    assert data["train"]["final_loss"] == pytest.approx(2.0) and data["train"]["first_loss"] == pytest.approx(4.9)
    assert data["train"]["tokens_per_s"] == 50.0
    assert data["eval"]["steps"] == [10, 20] and data["eval"]["best"] == 2.0 and data["eval"]["best_step"] == 20
    assert data["eval"]["per_dataset"]["dsA"] == {"first": 2.5, "best": 2.5, "best_step": 10, "final": 2.75,
                                                  "final_step": 20}
    assert data["eval"]["per_dataset"]["dsB"]["final"] == 1.25
    assert data["checkpoint"].endswith("step_00000020")
    assert data["config"]["encoders"] == ["whisper", "muq"]
    assert doc["missing"] == ["logs.jsonl: 1 unreadable line(s) skipped"]
    md = (run / "report.md").read_text()
    assert "| step | all | dsA | dsB |" in md and "| 20 | 2 | 2.75 | 1.25 |" in md
    assert "| dsA | 2.5 | 2.5 | 10 | 2.75 |" in md and "**best validation loss**: 2 at step 20" in md
    sample_row = next(line for line in md.splitlines() if line.startswith("| i1 |"))
    assert "…" in sample_row and len(sample_row) < 400
    assert png_size(run / "loss.png") == (800, 450)


def test_smoothing_follows_the_trend_and_starts_unbiased():
    values = [10.0] + [0.0] * 99
    smoothed = rp.smooth(values)
    assert smoothed[0] == 10.0 and smoothed[-1] < 0.01 and all(a >= b for a, b in zip(smoothed, smoothed[1:], strict=False))


# ------------------------------------------------------------------------------------------ rephrase


def test_rephrase_report_of_a_real_run(tmp_path, tiny_qwen3_dir):
    import rephrase_fixtures as rf

    from alarm.rephrase.engines import EngineConfig
    from alarm.rephrase.run import RephraseConfig, run_rephrase
    from alarm.rephrase.validate import ValidateConfig

    rf.ScriptedEngine.fail_marker = "FAILME"
    extra = [
        {"id": "boom", "audio": "audio/clip0.wav", "dataset": "sounds", "metadata": {"caption": "c"},
         "prompt": "FAILME please"},
        {"id": "missing", "audio": "audio/none.wav", "dataset": "sounds", "prompt": "What is it?"},
        {"id": "leaky", "audio": "audio/clip0.wav", "dataset": "sounds",
         "metadata": {"caption": "the metadata lists a bell"}, "prompt": "What rings?"},
        {"id": "ponder", "audio": "audio/clip1.wav", "dataset": "sounds",
         "metadata": {"caption": "LONGTHINK bells"}, "prompt": "What is it?"},
    ]
    manifest = rf.write_manifest(tmp_path, n_audio=3, n_instruction=0, extra=extra)
    out = tmp_path / "out"
    cfg = RephraseConfig(engine=EngineConfig(name="scripted", model=str(tiny_qwen3_dir)), chunk_size=4,
                         think_budget=50, total_max_tokens=400,
                         validate=ValidateConfig(min_tokens=5, max_tokens=612))
    run = run_rephrase(manifest, out, cfg, progress=False)
    write_rephrase_report(out)
    data = load(out)["data"]
    targets = pq.read_table(out / "targets.parquet").to_pylist()
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert data["kind"] == "rephrase" and data["kept"] == len(targets) == 4  # a0-a2 and ponder
    assert data["passes"]["answer"]["run"]["errors"] == 1 and data["passes"]["answer"]["cache"]["errors"] == 1
    assert data["passes"]["rephrase"]["cache"]["forced"] == 1
    per_rule = {r["reason"]: r["count"] for r in data["rejected_per_rule"]}
    assert per_rule == {"unreadable_audio": 1, "generation_error": 1, "leak:source_says": 1}
    assert sum(per_rule.values()) == len(rejects) == data["rejected"]
    assert data["rule_hits"] == {"leak:source_says": 1, "leak:source_words": 1}
    assert data["target_tokens"]["kept"]["max"] == max(t["n_tokens"] for t in targets)
    assert len(data["examples"]) == 2 and data["run"] == run
    md = (out / "report.md").read_text()
    assert "| leak:source_says | validate | 1 | 1 | leaky |" in md
    # requests, complete, incomplete, error, pending (as `rephrase status`), cached, generated, budget-forced
    assert "| answer | 6 | 5 | 0 | 1 | 0 | 0 | 6 | 0 |" in md and "| rephrase | 5 | 5 | 0 | 0 | 0 | 0 | 5 | 1 |" in md
    assert png_size(out / "target_lengths.png") == (700, 400)
    # `alarm report` again: report.json is now ours, and the run's statistics survive the rewrite
    result = CliRunner().invoke(_cli(), ["report", str(out)])
    assert result.exit_code == 0 and "rephrase:" in result.output
    assert load(out)["data"]["run"] == run and load(out)["data"]["passes"]["answer"]["run"]["errors"] == 1


# ------------------------------------------------------------------------------------------ partial folders


def test_empty_and_partial_folders_write_what_exists_and_say_what_is_missing(tmp_path):
    for writer in (rp.write_pipeline_report, write_train_report, write_rephrase_report):
        folder = tmp_path / writer.__name__
        folder.mkdir()
        writer(folder)
        doc = load(folder)
        assert doc["missing"] and (folder / "report.md").read_text().startswith("# ")
    # a store with a truncated instances table and no summary
    store = tmp_path / "partial"
    _write_store(store)
    (store / "summary.json").unlink()
    (store / "instances.parquet").write_bytes(b"PAR1 not really")
    rp.write_pipeline_report(store)
    doc = load(store)
    assert any(m.startswith("summary.json: not found") for m in doc["missing"])
    assert any(m.startswith("instances.parquet: unreadable") for m in doc["missing"])
    assert {r["reason"] for r in doc["data"]["rejected"]} == {"missing", "empty", "too long", "manifest"}
    assert not (store / "durations.png").exists()


# ------------------------------------------------------------------------------------------ stats


def _cli():
    from alarm.cli import main

    return main


def test_domain_rule():
    def inst(dataset="d", kind="audio", **meta):
        return Instance(id="i", audio="/a.wav", dataset=dataset, metadata=meta, kind=kind)

    assert domain_of(inst(kind="instruction", transcript="hi")) == "instruction"
    assert domain_of(inst(transcript="hello there")) == "speech"
    assert domain_of(inst(segments=[{"speaker": "A", "transcript": "yes"}])) == "speech"
    assert domain_of(inst(transcript="  ", notes=["A4"])) == "music"
    assert domain_of(inst(tempo_bpm=120)) == "music" and domain_of(inst(key="C major")) == "music"
    assert domain_of(inst(dataset="MusicCaps", caption="calm")) == "music"
    assert domain_of(inst(keywords=["dog"], caption="a dog")) == "sound"


def test_stats_per_dataset_and_domain_with_cuts_and_unreadable_audio(tmp_path):
    from store_fixtures import write_shard

    audio = tmp_path / "audio"
    audio.mkdir()
    for name, seconds in (("speech.wav", 2.0), ("long.wav", 3.0), ("tune.wav", 1.0), ("beep.wav", 0.5)):
        sf.write(audio / name, np.zeros(int(16000 * seconds), dtype="float32"), 16000)
    (audio / "text.wav").write_text("not audio\n" * 50)
    rows = [
        {"id": "s1", "audio": "audio/speech.wav", "dataset": "talk", "metadata": {"transcript": "hi"}},
        {"id": "s2", "audio": "audio/long.wav", "dataset": "talk", "metadata": {"transcript": "a"},
         "start": 0.5, "end": 2.0},  # 1.5 s cut
        {"id": "s3", "audio": "audio/long.wav", "dataset": "talk", "metadata": {"transcript": "b"},
         "start": 1.0, "end": 10.0},  # the cut runs past the end: 2 s
        {"id": "m1", "audio": "audio/tune.wav", "dataset": "talk", "metadata": {"notes": ["A4"]}},
        {"id": "b1", "audio": "audio/beep.wav", "dataset": "fx", "metadata": {"caption": "beep"}},
        {"id": "b2", "audio": "audio/beep.wav", "dataset": "fx", "metadata": {"caption": "beep"},
         "prompt": "again"},  # same clip, second instance
        {"id": "q1", "audio": "audio/speech.wav", "dataset": "instr", "kind": "instruction", "context": "c",
         "prompt": "When?"},
        {"id": "x1", "audio": "audio/text.wav", "dataset": "fx", "metadata": {"caption": "?"}},
        {"id": "x2", "audio": "audio/gone.wav", "dataset": "fx", "metadata": {"caption": "?"}},
        # WebDataset members: one readable (0.5 s), one the shard lacks
        {"id": "t1", "audio": "shard.tar#b.wav", "dataset": "tars", "metadata": {"caption": "beep"}},
        {"id": "t2", "audio": "shard.tar#nope.wav", "dataset": "tars", "metadata": {"caption": "?"}},
    ]
    write_shard(tmp_path / "shard.tar", [("b", audio / "beep.wav", {})])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    stats = manifest_stats(manifest, workers=2, progress=False)
    got = {(g.dataset, g.domain): (g.instances, g.clips, round(g.hours * 3600, 6), g.unreadable)
           for g in stats.groups}
    assert got == {("talk", "speech"): (3, 3, 5.5, 0), ("talk", "music"): (1, 1, 1.0, 0),
                   ("fx", "sound"): (4, 1, 0.5, 2), ("instr", "instruction"): (1, 1, 2.0, 0),
                   ("tars", "sound"): (2, 1, 0.5, 1)}
    total = stats.total
    # speech.wav counts once in the totals although two groups use it
    assert (total.instances, total.clips, round(total.hours * 3600, 6), total.unreadable) == (11, 6, 7.5, 3)
    assert stats.rejected_rows == 1

    result = CliRunner().invoke(_cli(), ["stats", str(manifest), "--json", "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["total"]["clips"] == 6 and len(printed["groups"]) == 5
    doc = load(tmp_path / "rep")
    assert doc["data"]["total"]["instances"] == 11 and doc["data"]["figures"] == {"durations": "durations.png"}
    assert "| talk | speech | 0.001528 | 3 | 3 | 0 |" in (tmp_path / "rep" / "report.md").read_text()
    assert png_size(tmp_path / "rep" / "durations.png") == (700, 400)
    table = CliRunner().invoke(_cli(), ["stats", str(manifest)]).output
    assert "total" in table and "unreadable:" in table
    assert CliRunner().invoke(_cli(), ["stats", str(tmp_path / "none.jsonl")]).exit_code == 2


def test_alarm_report_detects_each_kind_in_an_output_folder(tmp_path):
    out = tmp_path / "demo"
    _write_store(out / "store")
    _write_logs(out / "train")
    (out / "corpus").mkdir()
    result = CliRunner().invoke(_cli(), ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(line.split(":")[0] for line in result.output.splitlines()) == ["pipeline", "train"]
    assert (out / "store" / "report.md").is_file() and (out / "train" / "loss.png").is_file()
    assert CliRunner().invoke(_cli(), ["report", str(out / "corpus")]).exit_code == 2
