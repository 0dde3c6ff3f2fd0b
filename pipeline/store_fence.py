"""One job per store: a lease object, renewed while the job runs, and the fencing token every commit checks.

Object storage has no lock, so a job takes the store by creating ``.lease`` at its root with a
conditional create (S3 ``If-None-Match: *``; a hard link on a local disk)::

    {"token": "<fencing token>", "holder": {"host": ..., "pid": ...}, "seconds": 60.0,
     "taken": <epoch s>, "expires": <epoch s>}

A thread renews it (a conditional replace on the lease's entity tag) every third of its duration.
A second job finds the lease and is refused with one line naming the holder and the expiry; a lease
past its expiry, or held by a process of this host that no longer runs (a killed job), is taken over
with a conditional replace, so two jobs racing for it cannot both win. Before every done marker a
writer checks that its job's token is still the lease's and the lease has not expired
(``check_fence``): a job that lost its lease (paused, cut off, taken over) cannot commit, and its
parts stay uncommitted until a rerun finishes them.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.objects import Objects, PreconditionFailed, open_objects
from alarm.pipeline.store_layout import FencingError, Location

LEASE = ".lease"
LEASE_SECONDS = 60.0


def read_lease(objects: Objects) -> tuple[dict[str, Any] | None, str]:
    """The store's lease and its entity tag, or (None, "") when no job holds it."""
    for _ in range(5):  # the tag and the bytes must belong to the same version
        info = objects.head(LEASE)
        if info is None:
            return None, ""
        try:
            data = objects.get(LEASE)
        except FileNotFoundError:
            continue
        after = objects.head(LEASE)
        if after is not None and after.etag == info.etag:
            try:
                return json.loads(data), info.etag
            except ValueError:  # a torn or foreign object: treat as expired
                return {"token": "", "expires": 0.0}, info.etag
    raise ConfigError(f"{objects.url}/{LEASE} changes faster than it can be read")


def _until(lease: dict[str, Any]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(lease.get("expires", 0.0))))


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def lapsed(lease: dict[str, Any], now: float | None = None) -> bool:
    """True when the lease may be taken over: past its expiry, or its holder, a process of this host, is gone."""
    now = time.time() if now is None else now
    if float(lease.get("expires", 0.0)) < now:
        return True
    holder = lease.get("holder") or {}
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class Lease:
    """A job's hold on a store: its fencing token, renewed by a background thread until ``release``."""

    def __init__(self, objects: Objects, token: str, etag: str, seconds: float) -> None:
        self.objects, self.token, self.etag, self.seconds = objects, token, etag, seconds
        self.lost: str | None = None  # why renewing stopped, if it did
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        now = time.time()
        return (json.dumps({"token": self.token, "holder": _holder(), "seconds": self.seconds,
                            "taken": now, "expires": now + self.seconds}, sort_keys=True) + "\n").encode()

    def renew(self) -> None:
        """Push the expiry one lease duration ahead; raises ``FencingError`` if another job holds the store."""
        try:
            self.etag = self.objects.put_replace(LEASE, self._body(), self.etag)
        except (PreconditionFailed, FileNotFoundError):
            lease, _ = read_lease(self.objects)
            self.lost = f"the lease of {self.objects.url} is now {'held by another job' if lease else 'gone'}"
            raise FencingError(self.lost) from None

    def start_renewing(self) -> None:
        """Renew every third of the lease's duration in a daemon thread (a failed request is retried next time)."""
        def loop() -> None:
            while not self._stop.wait(self.seconds / 3):
                try:
                    self.renew()
                except FencingError:
                    return
                except Exception:  # a network error: the next round retries, the expiry bounds the damage
                    continue

        self._thread = threading.Thread(target=loop, name="store-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still this job's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        lease, _ = read_lease(self.objects)
        if lease is not None and lease.get("token") == self.token:
            self.objects.delete(LEASE)


def take_lease(root: Location, seconds: float = LEASE_SECONDS, renew: bool = True) -> Lease:
    """Take the store at ``root`` for this job, or raise ``ConfigError`` naming the job that holds it.

    Args:
        root: the store (a local folder or an object-store URL).
        seconds: the lease's duration; a killed job's lease lapses after it (at once on this host).
        renew: renew in a background thread until ``release``.
    """
    objects = open_objects(root)
    lease = Lease(objects, uuid.uuid4().hex, "", seconds)
    etag = objects.put_new(LEASE, lease._body())
    if etag is None:
        current, old_tag = read_lease(objects)
        if current is not None and not lapsed(current):
            holder = current.get("holder") or {}
            raise ConfigError(f"another job is writing the store {objects.url}: {holder.get('host')} pid "
                              f"{holder.get('pid')} holds its lease until {_until(current)}; wait for it to "
                              "finish (a killed job's lease lapses then)")
        try:  # conditional: of two jobs taking over a lapsed lease, one wins
            etag = objects.put_replace(LEASE, lease._body(), old_tag) if current is not None else \
                objects.put_new(LEASE, lease._body())
        except (PreconditionFailed, FileNotFoundError):
            etag = None
        if etag is None:
            raise ConfigError(f"another job is writing the store {objects.url}: it took the lapsed lease "
                              "first; wait for it to finish")
    lease.etag = etag
    if renew:
        lease.start_renewing()
    return lease


def current_fence(root: Location) -> str:
    """The fencing token of the job that holds the store's lease; "" if none."""
    lease, _ = read_lease(open_objects(root))
    return str(lease.get("token", "")) if lease else ""


def check_fence(root: Location, token: str, what: str) -> None:
    """Raise ``FencingError`` unless ``token`` is the store's lease token and the lease has not expired."""
    lease, _ = read_lease(open_objects(root))
    current = str(lease.get("token", "")) if lease else ""
    if current != token:
        raise FencingError(f"{what}: refused, the job that started it no longer holds the store {root} "
                           f"(fencing token {token[:8]}, the store's is {current[:8] or 'none'})")
    if float(lease.get("expires", 0.0)) < time.time():
        raise FencingError(f"{what}: refused, the lease of fencing token {token[:8]} on {root} expired at "
                           f"{_until(lease)} (the job stopped renewing it)")


@contextmanager
def store_lock(root: Location, seconds: float = LEASE_SECONDS) -> Iterator[str]:
    """Hold the store's lease for the block (renewed meanwhile); yields the job's fencing token."""
    lease = take_lease(root, seconds)
    try:
        yield lease.token
    finally:
        lease.release()
