"""Which Ray a job runs on: its own embedded instance unless the user names a cluster.

``ray.init(address=None)`` does not mean "embedded": it joins whatever cluster Ray's
``ray_current_cluster`` file names, i.e. any cluster started with ``ray start`` on this machine, or
a stale file a killed one left behind. A job could then hang on, or run inside, someone else's
cluster. So every job here passes ``address="local"`` unless it was given ``auto`` or an address.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from alarm.pipeline.configs import ConfigError

LOCAL = "local"
PROBE_SECONDS = 5.0
"""How long a named cluster's address may take to accept a connection before the job gives up."""


def joins_cluster(address: str | None) -> bool:
    """Whether ``address`` names a cluster to join (``auto`` or host:port) rather than an embedded Ray."""
    return address not in (None, "", LOCAL)


class _HideTokenNotice(logging.Filter):
    """Drops Ray's "Token authentication is enabled" notice, printed on every embedded start.

    It tells the user nothing they can act on (the embedded instance is theirs and ends with the
    job); Ray's other warnings, such as auth being *disabled* on a joined cluster, still show.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


def _hide_token_notice() -> None:
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _HideTokenNotice) for f in log.filters):
        log.addFilter(_HideTokenNotice())


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs: Any) -> None:
    """Start an embedded local Ray (``address`` None or ``local``) or join a cluster (``auto``, host:port).

    Args:
        address: None/``local``: a new instance owned by this process; ``auto``: the cluster
            ``ray start`` runs on this machine; ``host:port``: that cluster.
        num_cpus: CPUs of an embedded instance (None: all); ignored when joining, as Ray requires.
        kwargs: passed to ``ray.init`` (the dashboard is off unless given).
    """
    import ray

    _hide_token_notice()
    kwargs.setdefault("include_dashboard", False)
    if joins_cluster(address):
        _check_reachable(address)
        ray.init(address=address, **kwargs)
    else:
        ray.init(address=LOCAL, num_cpus=num_cpus, **kwargs)


def _check_reachable(address: str) -> None:
    """Refuse at once a ``host:port`` nobody listens on: ``ray.init`` would retry it for minutes, silently.

    ``auto`` and ``ray://`` addresses are left to Ray (it answers those quickly, or through its client).
    """
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: expected host:port, auto, or ray://host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_SECONDS):
            pass
    except OSError as err:
        raise ConfigError(f"no Ray cluster answers at {address} ({err.strerror or err}): start one there with "
                          "`ray start --head`, pass --address auto for this machine's cluster, or leave "
                          "--address out for an embedded Ray") from None


class NodeLossWatch:
    """Warns, once, when a job has made no progress for a while since a node of its cluster died.

    Ray restarts a lost node's actors elsewhere only where there is room for them: on a fixed
    cluster without it, the job waits (for an autoscaler's new node, or a node that rejoins) and
    says nothing. This tells the user what it waits for and what to do. Ray's node table is read
    from a daemon thread every few seconds, and only once the job has stalled.
    """

    def __init__(self, stall_seconds: float) -> None:
        import threading

        import ray

        self.stall_seconds = stall_seconds
        self.last = time.monotonic()
        self.warned = ""
        self.started = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="node-loss-watch", daemon=True)
        self._thread.start()

    def progress(self) -> None:
        """A unit finished."""
        self.last = time.monotonic()

    def _watch(self) -> None:
        import ray

        while not self._stop.wait(min(10.0, self.stall_seconds / 4)):
            stalled = time.monotonic() - self.last
            if stalled < self.stall_seconds:
                continue
            dead = sorted(n["NodeID"] for n in ray.nodes() if n["NodeID"] in self.started and not n["Alive"])
            if dead:
                self.warned = (f"no part finished for {stalled:.0f} s since node(s) {', '.join(d[:8] for d in dead)} "
                               "died: their actors wait for room on the cluster (add a node), or stop the job and "
                               "run it again on the nodes left (it resumes from the committed parts)")
                logging.getLogger(__name__).warning(self.warned)
                return

    def close(self) -> None:
        """Stop watching."""
        self._stop.set()
