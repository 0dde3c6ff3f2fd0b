"""Which checkpoint an evaluation asked: a stable string for a checkpoint, export or run, local or on a URL.

A run folder stands for its latest checkpoint, which moves on while training continues; ``alarm eval``
keys its saved answers by this identity, so answers of an older checkpoint are never reused for a newer
one (``trainer.evaluate.EvalConfig.run_id``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from alarm.trainer.checkpoint import META_FILE, latest_checkpoint
from alarm.trainer.export import INFO_FILE
from alarm.trainer.run_remote import is_remote, open_checked, remote_checkpoints


def checkpoint_identity(checkpoint: str) -> str:
    """The checkpoint actually loaded, as a stable string (a path or a URL, as ``weights_from`` takes).

    A run folder stands for its latest checkpoint, which moves on while training continues, so it is
    resolved to that step's folder; the folder's metadata file (step, config, data fingerprints) is
    hashed in, so a checkpoint rewritten in place is not mistaken for the old one. The same holds for
    a run on object storage: its URL alone would keep naming the first checkpoint an evaluation saw.
    """
    if is_remote(checkpoint):
        return _remote_identity(checkpoint.rstrip("/"))
    path = Path(checkpoint)
    if not path.is_dir():
        return checkpoint
    if not (path / META_FILE).is_file() and not (path / INFO_FILE).is_file():
        path = latest_checkpoint(path) or path
    meta = next((path / name for name in (META_FILE, INFO_FILE) if (path / name).is_file()), None)
    digest = hashlib.sha256(meta.read_bytes()).hexdigest()[:16] if meta else "no-metadata"
    return f"{path.resolve()}@{digest}"


def _remote_identity(url: str) -> str:
    """``checkpoint_identity`` of a URL: a weights object by its etag, a folder by its metadata's hash."""
    if url.endswith(".safetensors"):
        folder, name = url.rsplit("/", 1)
        head = open_checked(folder).head(name)
        return f"{url}@{head.etag if head else 'missing'}"
    objects = open_checked(url)
    for name in (META_FILE, INFO_FILE):  # a checkpoint or an export folder itself
        if objects.exists(name):
            return f"{url}@{hashlib.sha256(objects.get(name)).hexdigest()[:16]}"
    done = remote_checkpoints(objects)
    if not done:
        return url
    meta = objects.get(f"checkpoints/{done[-1]}/{META_FILE}")
    return f"{url}/checkpoints/{done[-1]}@{hashlib.sha256(meta).hexdigest()[:16]}"
