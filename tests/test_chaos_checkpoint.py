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
