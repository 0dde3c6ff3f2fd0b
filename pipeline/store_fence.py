"""One job per store: the job lock and its fencing token.

A job writes a new fencing token into ``.lock`` when it takes the store, and its writers refuse to
commit once the token is another job's: the workers of a killed job that outlive it by a moment
cannot commit into the next.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.store_layout import FencingError

LOCK = ".lock"


def current_fence(root: Path | str) -> str:
    """The fencing token of the job that last took the store (written into ``.lock``); "" if none."""
    try:
        return (Path(root) / LOCK).read_text().strip()
    except FileNotFoundError:
        return ""


def check_fence(root: Path | str, token: str, what: str) -> None:
    """Raise ``FencingError`` unless ``token`` is still the store's fencing token."""
    current = current_fence(root)
    if current != token:
        raise FencingError(f"{what}: refused, the job that started it no longer holds the store {root} "
                           f"(fencing token {token[:8]}, the store's is {current[:8] or 'none'})")


@contextmanager
def store_lock(root: Path) -> Iterator[str]:
    """One job per store at a time (the OS drops the lock when a job is killed); yields the job's fencing token.

    The token is written into the lock file once the lock is held; part commits carry it and are
    refused once another job has replaced it (``check_fence``).
    """
    root.mkdir(parents=True, exist_ok=True)
    # Opened without truncating: a job that fails to get the lock must not erase the holder's token.
    with os.fdopen(os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644), "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another job is writing the store {root}; wait for it to finish") from None
        token = uuid.uuid4().hex
        handle.truncate(0)
        handle.write(token + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        yield token
