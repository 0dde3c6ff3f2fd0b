"""What a killed or damaged job on object storage leaves for the next command, each case made deterministic.

Found by killing `alarm pipeline run`, `alarm train run` and rephrase runs on an S3 server at chosen
events and damaging their objects (a scratch chaos run, not part of the suite); each test here
reproduces one finding at a chosen point.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from alarm.rephrase.run_folder import run_folder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_url_runs_work_folder_goes_with_the_next_url_run(tmp_path: Path, s3_url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A rephrase or prompts run on a URL works in a local copy of its files made by mkdtemp; killed
    # with SIGKILL it never removed it, and each killed run left one more copy in the temp dir.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / "alarm-runs" / str(_dead_pid()) / "run-abc"
    dead.mkdir(parents=True)
    (dead / "inputs.parquet").write_bytes(b"x" * 1000)
    with run_folder(f"{s3_url}/runs/r1") as (out, work):
        assert work is not None and out.is_dir()
        (out / "stats.json").write_text("{}")
        assert not dead.parent.exists()  # the dead process's folder went when this one was made
    assert list((tmp_path / "alarm-runs").iterdir()) == []  # and this one's, at its end
