"""Step checkpoints after a kill inside a save, and a damaged checkpoint on resume.

Found by killing `alarm train run` at random moments and damaging its checkpoints (a scratch chaos
run, not part of the suite); each test reproduces one finding at a chosen point.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from alarm.pipeline.configs import ConfigError
from alarm.trainer import checkpoint as ck


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no ``except Exception`` sees it."""


def _save(run: Path, step: int, value: float, keep: int = 0) -> Path:
    weights = {"w": torch.full((4,), value)}
    return ck.save_checkpoint(run, step, weights, {"w::exp_avg": torch.zeros(4)}, {"config": {}}, keep=keep)


def _kill_inside_rmtree(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next rmtree of a checkpoint deletes its weights, then the process dies."""
    real = shutil.rmtree

    def rmtree(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - shutil's signature
        weights = next(Path(path).rglob(ck.WEIGHTS_FILE), None)
        if weights is None:
            return real(path, *args, **kwargs)
        weights.unlink()
        monkeypatch.setattr(shutil, "rmtree", real)
        raise Killed

    monkeypatch.setattr(shutil, "rmtree", rmtree)


def test_kill_while_replacing_a_step_leaves_a_loadable_latest(tmp_path: Path, monkeypatch) -> None:
    # Saving a step that exists (a rerun) deleted the old folder in place: killed inside that delete,
    # the folder kept its meta.json without its tensors, and the next resume picked it and crashed.
    _save(tmp_path, 4, 1.0)
    _save(tmp_path, 8, 2.0)
    _kill_inside_rmtree(monkeypatch)
    with pytest.raises(Killed):
        _save(tmp_path, 8, 3.0)
    latest = ck.latest_checkpoint(tmp_path)
    loaded = ck.load_checkpoint(latest)  # complete, whichever step it is
    assert latest.name == "step_00000004" and torch.equal(loaded.weights["w"], torch.full((4,), 1.0))
    _save(tmp_path, 8, 3.0)  # the next save clears what the killed one left
    assert sorted(p.name for p in ck.checkpoints_dir(tmp_path).iterdir()) == ["step_00000004", "step_00000008"]


def test_kill_while_pruning_keeps_every_visible_checkpoint_whole(tmp_path: Path, monkeypatch) -> None:
    _save(tmp_path, 1, 1.0, keep=2)
    _save(tmp_path, 2, 2.0, keep=2)
    _kill_inside_rmtree(monkeypatch)
    with pytest.raises(Killed):
        _save(tmp_path, 3, 3.0, keep=2)  # prunes step 1
    for path in ck.checkpoints_dir(tmp_path).glob("step_*"):
        ck.load_checkpoint(path)
    assert ck.latest_checkpoint(tmp_path).name == "step_00000003"


@pytest.mark.parametrize("damage", ["truncate", "meta"])
def test_a_damaged_latest_checkpoint_is_named_with_the_one_to_resume_from(tmp_path: Path, damage: str) -> None:
    _save(tmp_path, 4, 1.0)
    latest = _save(tmp_path, 8, 2.0)
    if damage == "truncate":
        data = (latest / ck.WEIGHTS_FILE).read_bytes()
        (latest / ck.WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    else:
        (latest / ck.META_FILE).write_text("{torn")
    with pytest.raises(ConfigError, match=r"step_00000008 is damaged .*resume from step_00000004"):
        ck.load_checkpoint(latest)


def test_export_of_a_damaged_checkpoint_is_one_line(tmp_path: Path) -> None:
    # `alarm train export` caught only "no checkpoint": a damaged one ended in a traceback.
    from click.testing import CliRunner

    from alarm.cli import main

    _save(tmp_path, 4, 1.0)
    latest = _save(tmp_path, 8, 2.0)
    (latest / ck.META_FILE).write_text("{torn")
    result = CliRunner().invoke(main, ["train", "export", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    assert "step_00000008 is damaged" in result.output and "Traceback" not in result.output


def test_two_fresh_starts_in_one_second_set_aside_two_folders(tmp_path: Path, monkeypatch) -> None:
    # A kill during a --fresh start, then an immediate rerun: the second set-aside named the same
    # previous-<time> folder and ended in FileExistsError.
    import time

    from alarm.trainer.run_log import set_aside

    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "previous-20261130-120000")
    for n in range(2):
        (tmp_path / "logs.jsonl").write_text(f"{n}\n")
        set_aside(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous-20261130-120000", "previous-20261130-120000-2"]
    assert (tmp_path / "previous-20261130-120000-2" / "logs.jsonl").read_text() == "1\n"


def test_a_log_with_bytes_that_are_not_utf8_is_truncated_not_a_traceback(tmp_path: Path) -> None:
    from alarm.trainer.run_log import truncate_log

    log = tmp_path / "logs.jsonl"
    log.write_bytes(b'{"step": 1}\n{"step": 2, "lo\xff\xfe": 1}\n\xff\xfe garbage\n{"step": 3}\n')
    assert truncate_log(log, 2) == 2
    assert [line for line in log.read_text().splitlines()] == ['{"step": 1}', '{"step": 2, "lo\ufffd\ufffd": 1}']
