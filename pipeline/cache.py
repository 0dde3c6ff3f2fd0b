"""Where alarm keeps things it builds once and reuses: tiny offline models, demo corpora."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def alarm_cache_dir() -> Path:
    """``$ALARM_CACHE`` if set, else ``~/.cache/alarm``; created on first use."""
    root = Path(os.environ.get("ALARM_CACHE") or Path.home() / ".cache" / "alarm")
    root.mkdir(parents=True, exist_ok=True)
    return root


def fingerprint(payload: Any) -> str:
    """A short stable hash of a JSON-serialisable value."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def build_once(name: str, payload: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Return ``<cache>/models/<name>-<hash(payload)>``, calling ``build(folder)`` the first time.

    The build writes into a temporary folder that is renamed into place and marked done, so a
    build killed half-way is never mistaken for a finished one, and two processes building at
    once (test workers, Ray actors) both end up with the same complete folder.
    """
    final = alarm_cache_dir() / "models" / f"{name}-{fingerprint(payload)}"
    if (final / ".done").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        build(tmp)
        (tmp / ".done").write_text(json.dumps(payload, sort_keys=True))
        try:
            tmp.rename(final)
        except OSError:  # another process finished first; its folder is identical
            if not (final / ".done").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
