"""Which checkpoint ``alarm eval`` asked: a run folder, local or on S3, stands for its latest checkpoint.

The evaluation keys saved answers by ``EvalConfig.run_id``, which hashes this identity in: a newer or
rewritten checkpoint must not reuse the answers of the one before.
"""

from __future__ import annotations

import json
from pathlib import Path

from alarm.trainer.evaluate import EvalConfig


def test_run_folder_predictions_follow_its_latest_checkpoint(tmp_path: Path) -> None:
    """A run folder keeps training: its answers must not be reused once a later step exists."""
    from alarm.trainer.checkpoint import META_FILE

    def save_step(step: int) -> None:
        folder = tmp_path / "run" / "checkpoints" / f"step_{step:08d}"
        folder.mkdir(parents=True)
        (folder / META_FILE).write_text(json.dumps({"step": step}))

    def run_id() -> str:
        return EvalConfig(manifest="m.jsonl", checkpoint=str(tmp_path / "run"), out="o").run_id()

    save_step(100)
    first = run_id()
    assert run_id() == first
    save_step(200)
    assert run_id() != first
    assert EvalConfig(manifest="m.jsonl", checkpoint=str(tmp_path / "run"), out="o", think_budget=5).run_id() \
        != run_id()


def test_run_id_follows_a_run_on_s3_to_its_latest_checkpoint(s3_url: str) -> None:
    from alarm.pipeline.objects import open_objects
    from alarm.trainer.checkpoint import META_FILE

    run = open_objects(s3_url)

    def run_id() -> str:
        return EvalConfig(manifest="m.jsonl", checkpoint=s3_url, out="o").run_id()

    run.put(f"checkpoints/step_00000100/{META_FILE}", json.dumps({"step": 100}).encode())
    first = run_id()
    assert run_id() == first
    run.put(f"checkpoints/step_00000200/{META_FILE}", json.dumps({"step": 200}).encode())
    second = run_id()
    assert second != first
    run.put(f"checkpoints/step_00000200/{META_FILE}", json.dumps({"step": 200, "rewritten": True}).encode())
    assert run_id() not in (first, second)  # a checkpoint rewritten in place is another checkpoint
    step = f"{s3_url}/checkpoints/step_00000100"  # a checkpoint folder named directly stays itself
    assert EvalConfig(manifest="m.jsonl", checkpoint=step, out="o").run_id() == \
        EvalConfig(manifest="m.jsonl", checkpoint=step + "/", out="o").run_id()
