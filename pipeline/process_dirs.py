"""Scratch folders named after the process that owns them, removed once that process is gone.

A worker killed with SIGKILL runs no clean-up, so whatever it staged on its node's disk stays there;
on a long-lived cluster node those leftovers add up job after job. A folder per process id lets the
next process that uses the same root tell the dead owners' folders from the live ones.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def pid_of(name: str) -> int | None:
    """The process id a folder is named after, or None when the name is not one."""
    return int(name) if name.isdecimal() else None


def process_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists on this machine (one of another user counts as alive)."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def own_folder(root: Path) -> Path:
    """``root/<this pid>``, created; first removes the folders under ``root`` of processes that are gone.

    A dead owner's id reused by a new process keeps its folder until that process is gone too: never
    a live process's files.
    """
    sweep_dead(root)
    folder = root / str(os.getpid())
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sweep_dead(root: Path) -> int:
    """Remove the folders under ``root`` named after processes that no longer exist; returns how many."""
    removed = 0
    for folder in root.iterdir() if root.is_dir() else []:
        pid = pid_of(folder.name)
        if pid is not None and pid != os.getpid() and not process_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed
