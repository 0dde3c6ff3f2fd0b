"""A resumed run's logs.jsonl holds every step once and in order, whatever a kill left past the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from test_train import data, make_cfg, read_logs  # noqa: F401  (data is a fixture)

from alarm.trainer.run_log import truncate_log
from alarm.trainer.train import train


def test_resume_truncates_log_to_checkpoint_step(data, tiny_qwen3_dir, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    common = dict(batch_tokens=250, seed=3, save_every=2, eval_every=2)
    first = train(make_cfg(data, run, tiny_qwen3_dir, max_steps=2, **common))
    assert first.step == 2 and first.checkpoint.name == "step_00000002"

    # What a run killed after logging steps 3 and 4 (twice: killed again on the way) but before
    # checkpointing step 4 leaves: records past the checkpoint and a line torn mid-write.
    with open(run / "logs.jsonl", "a") as handle:
        for step in (3, 4, 3, 4):
            handle.write(json.dumps({"step": step, "epoch": 0, "loss": 999.0, "lr": 0.0}) + "\n")
        handle.write(json.dumps({"step": 4, "eval_loss": 999.0})[:9])

    resumed = train(make_cfg(data, run, tiny_qwen3_dir, max_steps=5, **common))
    assert resumed.step == 5
    logs = read_logs(run)
    assert [r["step"] for r in logs if "loss" in r] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in logs if "eval_loss" in r] == [2, 4, 5]
    assert all(r.get("loss") != 999.0 and r.get("eval_loss") != 999.0 for r in logs)
    assert [r["step"] for r in logs] == sorted(r["step"] for r in logs)

    # Rerunning the finished run trains nothing and logs nothing twice.
    before = (run / "logs.jsonl").read_text()
    again = train(make_cfg(data, run, tiny_qwen3_dir, max_steps=5, **common))
    assert again.step == 5 and again.checkpoint == resumed.checkpoint
    assert again.eval_losses == resumed.eval_losses
    assert (run / "logs.jsonl").read_text() == before


def test_truncate_log_keeps_records_up_to_step(tmp_path: Path):
    log = tmp_path / "logs.jsonl"
    assert truncate_log(log, 3) == 0  # no log yet
    log.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4, 3)) + '{"step": 5')
    assert truncate_log(log, 2) == 4
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]
    assert truncate_log(log, 0) == 2 and log.read_text() == ""  # no checkpoint: the run starts over


def test_rerun_of_a_finished_run_builds_no_model(data, tiny_qwen3_dir, tmp_path, monkeypatch):  # noqa: F811
    import alarm.trainer.train as train_module

    run = tmp_path / "run"
    common = dict(batch_tokens=250, seed=3, save_every=2, eval_every=2)
    done = train(make_cfg(data, run, tiny_qwen3_dir, max_steps=3, **common))
    assert done.step == 3

    built = []
    real_build = train_module.build_model
    monkeypatch.setattr(train_module, "build_model", lambda *a: built.append(1) or real_build(*a))
    again = train(make_cfg(data, run, tiny_qwen3_dir, max_steps=3, **common))
    assert built == []  # the finished checkpoint answered: no LLM, no front end
    assert (again.step, again.checkpoint, again.eval_losses) == (3, done.checkpoint, done.eval_losses)

    longer = train(make_cfg(data, run, tiny_qwen3_dir, max_steps=4, **common))  # another config: it trains on
    assert built == [1] and longer.step == 4
