"""The demo end to end at reduced size: every stage's outputs exist and say what they should,
and a second run reuses every cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alarm.demo.run import DemoConfig, run_demo
from alarm.pipeline.demo_corpus import DemoCorpusConfig

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_demo_small_end_to_end_and_cached_rerun(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = DemoConfig(corpus=DemoCorpusConfig(sound_events=3, music=2, speech=0, long_clips=1, broken=True),
                     encoders=["whisper", "muq"], train_steps=4, eval_per_clip=1, rephrase_max_tokens=16,
                     eval_think_budget=4, eval_max_new_tokens=24, progress=False)
    out = tmp_path / "demo"
    first = run_demo(out, cfg)

    assert [s["stage"].split(" (")[0] for s in first["stages"]][:2] == ["demo corpus and eval set",
                                                                         "offline tiny models"]
    assert len(first["stages"]) == 7
    # feature cache: the broken files and the long clip are rejected with reasons, the rest cached
    features = first["features"]
    clips = features["clips"]
    assert clips >= 5 and features["encoded_now"] == {"whisper": clips, "muq": clips}
    assert set(features["rejected"]) == {"empty", "missing", "too long", "truncated", "undecodable"}
    # every stage wrote its report; the PNGs are real PNGs
    for rel in ("report.md", "report.json", "store/report.md", "store/durations.png", "rephrase/report.md",
                "train/report.md", "train/loss.png", "eval/report.md", "eval/report.json"):
        assert (out / rel).is_file(), rel
    for png in ("store/durations.png", "train/loss.png"):
        assert (out / png).read_bytes()[:8] == PNG
    # training ran its steps from the cache and logged losses
    assert first["train"]["step"] == 4 and first["train"]["steps_now"] == 4
    assert first["train"]["first_loss"] > 0
    # evaluation asked every question of the eval set and scored each category
    eval_data = first["eval"]
    questions = sum(1 for line in (out / "corpus" / "mcqa.jsonl").read_text().splitlines() if line.strip())
    assert eval_data["overall"]["questions"] == questions == eval_data["asked"]
    assert set(eval_data["per_category"]) == {"sound", "music"}
    assert "| **overall** |" in (out / "eval" / "report.md").read_text()
    # inference answered on the fly, thinking closed by budget forcing at this tiny budget
    assert first["infer"]["error"] is None and first["infer"]["forced"]
    report_md = (out / "report.md").read_text()
    for link in ("store/report.md", "train/loss.png", "eval/report.md"):
        assert link in report_md
    # The same named counts in the corpus and store stages; the wording says below chance, and why.
    assert "15 manifest rows · 10 audio files · 11 sources (audio+cut)" in first["stages"][0]["result"]
    assert first["features"]["counts"]["stored"] == clips
    terminal = capsys.readouterr().out
    for text in (report_md, terminal):
        assert f"all {questions} answers unparseable" in text and "below the" in text and "at chance" not in text
        assert "15 manifest rows = 0 kept + " in text

    second = run_demo(out, cfg)
    assert second["features"]["encoded_now"] == {"whisper": 0, "muq": 0}
    assert second["rephrase"]["generated_now"] == 0
    assert second["train"]["steps_now"] == 0 and second["train"]["step"] == 4
    assert second["eval"]["asked"] == 0 and second["eval"]["overall"] == eval_data["overall"]
    assert json.loads((out / "report.json").read_text())["data"]["wall_seconds"] == second["wall_seconds"]
