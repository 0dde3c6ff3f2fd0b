"""Per-process scratch folders: a dead worker's leftovers go, a live process's files stay."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from alarm.pipeline import part_writer
from alarm.pipeline.process_dirs import own_folder, process_alive


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_own_folder_sweeps_only_dead_owners(tmp_path: Path) -> None:
    gone = dead_pid()
    assert not process_alive(gone) and process_alive(os.getppid())
    (tmp_path / str(gone) / "part.abc").mkdir(parents=True)
    (tmp_path / str(gone) / "part.abc" / "c0").write_bytes(b"x" * 100)
    (tmp_path / str(os.getppid())).mkdir()  # a live process (our parent): kept
    (tmp_path / "notes").mkdir()  # not a process folder: kept
    mine = own_folder(tmp_path)
    assert mine == tmp_path / str(os.getpid()) and mine.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([str(os.getpid()), str(os.getppid()), "notes"])


def test_a_url_store_stages_under_the_worker_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(part_writer, "_url_staging", None)
    leftover = tmp_path / "alarm-staging" / str(dead_pid()) / "p1.0123456789abcdef"
    leftover.mkdir(parents=True)  # what a SIGKILLed worker left
    staging = part_writer.url_staging()
    assert staging == tmp_path / "alarm-staging" / str(os.getpid())
    assert not leftover.parent.exists()
    assert part_writer.url_staging() is staging  # swept once per process, not per part
