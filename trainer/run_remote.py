"""A run folder on object storage: trained in a local working copy, published after every checkpoint.

When ``output_dir`` is a URL (``s3://bucket/runs/r1``), the trainer works in a local copy of the run
(``<alarm cache>/runs/<hash of the URL>/rank<r>``; only rank 0 writes) exactly as in a local run
folder, and this module keeps the URL up to date:

- at the start, the copy is emptied and filled from the URL: the logs, the rejects, the report and
  the latest complete checkpoint (the one to resume from); older checkpoints stay remote;
- after each checkpoint, its files are put with ``meta.json`` last (a checkpoint whose ``meta.json``
  exists is complete, on object storage as on disk), then the logs; checkpoints the local pruning
  dropped are deleted remotely;
- at the end, every other file of the run (report, loss curve, TensorBoard events).

A run killed between two checkpoints resumes from the URL's latest complete one; what it logged
past it is dropped by the resumed run (``run_log.truncate_log``) as in a local run.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

from alarm.trainer.checkpoint import META_FILE, STEP_PREFIX, WEIGHTS_FILE, load_weights


def is_remote(output_dir: str) -> bool:
    """Whether a run folder is on object storage."""
    from alarm.pipeline.objects import is_url

    return is_url(output_dir)


def working_copy(url: str, rank: int) -> Path:
    """The local folder a process of the run at ``url`` works in."""
    from alarm.pipeline.cache import alarm_cache_dir

    name = hashlib.blake2b(url.rstrip("/").encode(), digest_size=8).hexdigest()
    return alarm_cache_dir() / "runs" / name / f"rank{rank}"


def open_checked(url: str) -> Any:
    """The objects under ``url``, probed once (a wrong URL or bad credentials: one line, at once)."""
    from alarm.pipeline.objects import open_objects

    objects = open_objects(url)
    objects.check()  # a wrong URL or bad credentials: one line, at once
    return objects


def remote_checkpoints(objects: Any) -> list[str]:
    """Complete checkpoints (with ``meta.json``) under the run's ``checkpoints/``, oldest first."""
    steps = {info.key.split("/")[1] for info in objects.list("checkpoints")
             if info.key.count("/") == 2 and info.key.endswith("/" + META_FILE)
             and info.key.split("/")[1].startswith(STEP_PREFIX)}
    return sorted(steps)


def pull(url: str, local: Path, everything: bool) -> None:
    """Empty ``local`` and fill it from the run at ``url``: its latest complete checkpoint, and
    (``everything``: the main process) the run's other files except older checkpoints and set-aside runs."""
    objects = open_checked(url)
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    done = remote_checkpoints(objects)
    if done:
        for info in objects.list(f"checkpoints/{done[-1]}"):
            objects.get_file(info.key, local / info.key)
    if everything:
        for info in objects.list():
            top = info.key.split("/", 1)[0]
            if top != "checkpoints" and not top.startswith("previous-"):
                objects.get_file(info.key, local / info.key)


def publish_checkpoint(url: str, local: Path, checkpoint: Path) -> None:
    """Put a checkpoint (``meta.json`` last), then the logs; delete remote checkpoints pruned locally."""
    objects = open_checked(url)
    files = sorted(p for p in checkpoint.rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.name == META_FILE):
        objects.put_file(path.relative_to(local).as_posix(), path)
    _publish_logs(objects, local)
    kept = {p.name for p in (local / "checkpoints").glob(f"{STEP_PREFIX}*")}
    oldest_kept = min(kept)
    complete = set(remote_checkpoints(objects))
    for step in _remote_steps(objects):
        if step < oldest_kept:  # pruned by keep_checkpoints; never one this run has not seen
            if step in complete:
                objects.delete(f"checkpoints/{step}/{META_FILE}")  # incomplete first, then gone
            # An incomplete one is what a kill left inside this loop or inside a publish: it goes too.
            objects.delete_prefix(f"checkpoints/{step}")


def _remote_steps(objects: Any) -> list[str]:
    """Every step folder under the run's ``checkpoints/``, complete or not."""
    return sorted({info.key.split("/")[1] for info in objects.list("checkpoints")
                   if info.key.count("/") >= 2 and info.key.split("/")[1].startswith(STEP_PREFIX)})


def _publish_logs(objects: Any, local: Path) -> None:
    for name in ("logs.jsonl", "rejects.jsonl", "config.yaml"):
        if (local / name).is_file():
            objects.put_file(name, local / name)


def publish_run(url: str, local: Path) -> None:
    """Put every file of the run except checkpoints (published one by one) and set-aside runs."""
    objects = open_checked(url)
    for path in sorted(local.rglob("*")):
        rel = path.relative_to(local).as_posix()
        top = rel.split("/", 1)[0]
        if path.is_file() and top != "checkpoints" and not top.startswith("previous-"):
            objects.put_file(rel, path)


def set_aside_remote(url: str) -> None:
    """Move an earlier run's checkpoints and logs at ``url`` to ``previous-<time>/`` (copy, then delete)."""
    objects = open_checked(url)
    aside = time.strftime("previous-%Y%m%d-%H%M%S")
    scratch = working_copy(url, 0).parent / "aside"
    for info in objects.list():
        top = info.key.split("/", 1)[0]
        if top in ("checkpoints", "logs.jsonl", "rejects.jsonl", "tensorboard"):
            objects.get_file(info.key, scratch)
            objects.put_file(f"{aside}/{info.key}", scratch)
            objects.delete(info.key)
    scratch.unlink(missing_ok=True)


def weights_from(source: str | Path) -> dict[str, Any]:
    """Front-end weights as ``checkpoint.load_weights`` reads them, from a path or a URL: a
    .safetensors object, a checkpoint folder, or a run folder (its latest complete checkpoint)."""
    if not is_remote(str(source)):
        return load_weights(source)
    from safetensors.torch import load

    url = str(source).rstrip("/")
    if url.endswith(".safetensors"):
        folder, name = url.rsplit("/", 1)
        return load(open_checked(folder).get(name))
    objects = open_checked(url)
    if objects.exists(WEIGHTS_FILE):
        return load(objects.get(WEIGHTS_FILE))
    done = remote_checkpoints(objects)
    if not done:
        raise FileNotFoundError(f"no weights at {url}: expected a .safetensors object, a checkpoint folder "
                                "or a run folder with checkpoints")
    return load(objects.get(f"checkpoints/{done[-1]}/{WEIGHTS_FILE}"))


def fetch_folder(url: str) -> Path:
    """A local copy of a checkpoint or export folder at ``url``, or of a run's latest complete checkpoint."""
    objects = open_checked(url)
    done = remote_checkpoints(objects)
    prefix = f"checkpoints/{done[-1]}" if done else ""
    local = working_copy(url, 0).parent / "fetched" / (done[-1] if done else "folder")
    shutil.rmtree(local, ignore_errors=True)
    for info in objects.list(prefix):
        objects.get_file(info.key, local / info.key[len(prefix):].lstrip("/"))
    if not local.is_dir():
        raise FileNotFoundError(f"{url} holds no checkpoint, export or run")
    return local

