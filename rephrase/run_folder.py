"""A rephrase run folder that may live on object storage (``s3://bucket/runs/r1``).

The generation cache is read and written on the URL itself, part by part (``cache.PassCache``): a
killed run loses at most the chunks in flight, and a rerun anywhere resumes from the parts there.
The run's other files (config, inputs, targets, rejects, statistics, report) are small and written
whole, so they are made in a local work folder and published to the URL at pass boundaries and at
the end; a run starts by copying them down, so ``validate``, ``status`` and ``show`` read a URL run
exactly as they read a local one. The work folder remembers its URL (``.published-to``), so the
cache of a work folder is found on the URL.

Work folders sit under ``<temp dir>/alarm-runs/<pid>/``: a run killed with SIGKILL cannot remove its
own, so the next URL run on the machine removes those of processes that are gone.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from alarm.pipeline.objects import is_url, join, open_objects
from alarm.pipeline.process_dirs import own_folder

MARKER = ".published-to"
CACHE = "cache"


def published_location(out: str | Path) -> str:
    """Where a run folder lives: its URL for a work folder of a URL run, else the folder itself (absolute)."""
    if is_url(out):
        return str(out)
    marker = Path(out) / MARKER
    return marker.read_text().strip() if marker.is_file() else str(Path(out).resolve())


def absolute_location(location: str | Path | None) -> str | None:
    """A location as a run records it: a URL as given, a path made absolute (None stays None)."""
    if location is None or is_url(location):
        return None if location is None else str(location)
    return str(Path(location).resolve())


def cache_location(out: str | Path, cache_dir: str | None) -> str:
    """The generation cache of a run: ``cache_dir`` when set, else ``cache`` inside the run (on its URL)."""
    return str(cache_dir) if cache_dir else join(published_location(out), CACHE)


class WorkFolder:
    """A local copy of a URL run's files, published back with ``publish()`` (new or changed files only)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.objects = open_objects(self.url)
        self.path = Path(tempfile.mkdtemp(prefix="run-", dir=own_folder(Path(tempfile.gettempdir()) / "alarm-runs")))
        self._seen: dict[str, tuple[int, int]] = {}

    def fetch(self) -> None:
        """Copy every object of the run except its cache into the work folder."""
        self.objects.check()  # a wrong endpoint or bad credentials: one line naming the URL, at once
        for info in self.objects.list():
            if info.key.split("/", 1)[0] == CACHE:
                continue
            target = self.path / info.key
            self.objects.get_file(info.key, target)
            self._seen[info.key] = _stamp(target)
        (self.path / MARKER).write_text(self.url + "\n")

    def publish(self) -> int:
        """Upload the files that are new or changed since fetched or last published; returns how many."""
        count = 0
        for path in sorted(self.path.rglob("*")):
            key = path.relative_to(self.path).as_posix()
            if not path.is_file() or any(p.startswith(".") for p in key.split("/")):
                continue
            stamp = _stamp(path)
            if self._seen.get(key) != stamp:
                self.objects.put_file(key, path)
                self._seen[key] = stamp
                count += 1
        return count

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):  # this process's folder, once it holds no other work folder
            self.path.parent.rmdir()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def run_folder(out: str | Path, publish: bool = True) -> Iterator[tuple[Path, WorkFolder | None]]:
    """The local folder to run in, and its ``WorkFolder`` when ``out`` is a URL (else None).

    For a URL, the run's files are fetched first and, with ``publish``, published back at the end,
    also when the body fails (whatever was finished is kept).
    """
    if not is_url(out):
        yield Path(out), None
        return
    work = WorkFolder(str(out))
    try:
        work.fetch()
        try:
            yield work.path, work
        finally:
            if publish:
                work.publish()
    finally:
        work.close()
