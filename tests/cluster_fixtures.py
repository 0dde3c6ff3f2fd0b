"""A real two-node Ray cluster on this machine, for the cluster tests.

Two ``ray start --block`` processes, a head and a worker node, each in its own session (one process
group), its own temp dir and its own free ports: nothing is shared with another cluster or test on
the machine, and both are ended by their process groups, never by ``ray stop``.

The head has the machine's address, the one Ray gives a driver here (it turns 127.0.0.1 into it);
the worker node listens on 127.0.0.2 (all of 127/8 is loopback). A driver on this machine therefore
attaches to the head's raylet, and killing the worker node never takes the driver with it. Token
authentication is off (``RAY_AUTH_MODE=disabled`` in ``env``, which the job's process must get too):
a cluster started by ``ray start`` would otherwise take whatever token ``~/.ray`` holds.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

WORKER_IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
"""One per worker node started (a node's ip tells it apart from the others on this machine)."""
START_SECONDS = 240
"""How long a node may take to come up on a loaded two-core machine."""

_NODES = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
print("NODES", json.dumps([{"id": n["NodeID"], "ip": n["NodeManagerAddress"], "alive": n["Alive"]} for n in ray.nodes()]))
"""


def _ephemeral_floor() -> int:
    """The first port of the kernel's ephemeral range, where outgoing connections take their ports."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class PortPicker:
    """Free ports for the nodes of one cluster, never the same port twice (a worker range that no
    process listens on yet is still taken).

    Ports are drawn at random below the ephemeral range. Inside it, every outgoing connection (Ray's
    gRPC ones, the test servers') takes a port and leaves it in TIME_WAIT after closing, so 40
    consecutive free ports there can't be counted on: CI once found none in 500 tries. Random draws
    keep two clusters started at once on this machine apart, and the bind check sees any listener.
    """

    def __init__(self) -> None:
        self.taken: set[int] = set()
        self.high = _ephemeral_floor()
        self.low = max(1024, self.high - 20000)
        self.rng = random.Random()  # seeded by the OS: parallel test processes must not draw alike

    def _bindable(self, ports: range) -> bool:
        held = []
        try:
            for p in ports:
                s = socket.socket()
                held.append(s)
                # As Ray's gRPC servers do: a port left in TIME_WAIT by an ended cluster is free to them.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", p))
            return True
        except OSError:
            return False
        finally:
            for s in held:
                s.close()

    def take(self, count: int = 1) -> int:
        """The first of ``count`` consecutive free ports, now taken."""
        for _ in range(2000):
            base = self.rng.randrange(self.low, self.high - count)
            ports = range(base, base + count)
            if not self.taken.intersection(ports) and self._bindable(ports):
                self.taken.update(ports)
                return base
        raise RuntimeError(f"no {count} consecutive free ports in {self.low}-{self.high}")

    def node_flags(self) -> list[str]:
        """``ray start`` flags giving a node its own ports: its services and a range for its workers."""
        low = self.take(40)
        # No ray-client-server-port: the client server needs ray[client], which is not installed.
        flags = [f"--{flag}={self.take()}" for flag in ("node-manager-port", "object-manager-port",
                                                          "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                          "runtime-env-agent-port", "metrics-export-port")]
        return [*flags, f"--min-worker-port={low}", f"--max-worker-port={low + 39}"]


class RayNode:
    """One ``ray start --block`` process and the Ray processes it starts, all in one process group."""

    def __init__(self, name: str, root: Path, args: list[str], env: dict[str, str]) -> None:
        self.name, self.root, self.ip = name, root, ""
        self.tmp = root / name
        self.tmp.mkdir()
        self.log_path = self.tmp / "start.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--block", f"--temp-dir={self.tmp / 'ray'}",
               "--num-cpus=1", "--disable-usage-stats", *args]
        self.proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def pids(self) -> list[int]:
        """Every live process of this node: its ``ray start`` and all it started (raylet, workers, agents).

        The raylet starts workers in sessions of their own, so they are found by parent, not by group.
        """
        parent: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":  # zombies are dead already
                parent[int(entry.name)] = int(fields[1])
        ours = {self.proc.pid} if self.proc.pid in parent else set()
        grew = True
        while grew:
            more = {pid for pid, ppid in parent.items() if ppid in ours and pid not in ours}
            ours |= more
            grew = bool(more)
        return sorted(ours)

    def raylet_pid(self) -> int:
        """The pid of this node's raylet."""
        for pid in self.pids():
            try:
                exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if exe.endswith(b"/raylet"):
                return pid
        raise RuntimeError(f"{self.name}: no raylet among {self.pids()}")

    def tail(self) -> str:
        return self.log_path.read_text()[-2000:] if self.log_path.is_file() else ""

    def stop(self) -> None:
        """End the node: SIGTERM to its process group and every process it started, then SIGKILL what is left."""
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 30.0)):
            pids = self.pids()
            if not pids:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()


class TwoNodeCluster:
    """A head and a worker node of one CPU each; ``address`` is the head's GCS (host:port)."""

    def __init__(self) -> None:
        # Short: Ray's unix socket paths live under it and must stay under ~107 characters.
        self.root = Path(tempfile.mkdtemp(prefix="rayc", dir="/tmp"))
        self.env = dict(os.environ, RAY_TMPDIR=str(self.root), RAY_AUTH_MODE="disabled")
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[RayNode] = []
        self.ports = PortPicker()
        self.address = ""
        self.workers = 0
        try:
            self.head = self._start("head", lambda: ["--head", f"--port={self.ports.take()}",
                                                     "--include-dashboard=false", *self.ports.node_flags()], 1)
            self.worker = self.add_worker()
        except BaseException:
            self.stop()
            raise

    def add_worker(self) -> RayNode:
        """Start another worker node (after one was lost); it becomes ``worker``."""
        ip = WORKER_IPS[self.workers]
        self.workers += 1
        alive = sum(n["alive"] for n in self.node_table())
        self.worker = self._start(f"worker{self.workers}", lambda: [f"--address={self.address}",
                                                                   f"--node-ip-address={ip}",
                                                                   *self.ports.node_flags()], alive + 1)
        self.worker.ip = ip
        return self.worker

    def _start(self, name: str, args: Callable[[], list[str]], nodes: int) -> RayNode:
        """Start a node, then wait until the head counts ``nodes`` alive. A ``ray start`` that exits at
        once (a port taken meanwhile by another process on the machine) is tried again with new ports."""
        for attempt in range(3):
            node = RayNode(f"{name}.{attempt}" if attempt else name, self.root, args(), self.env)
            self.nodes.append(node)
            deadline = time.monotonic() + START_SECONDS
            while node.proc.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ray start ({name}) not up after {START_SECONDS} s: {node.tail()}")
                current = node.tmp / "ray" / "ray_current_cluster"
                if not self.address and current.is_file():
                    self.address = current.read_text().strip()
                if self.address and "Ray runtime started" in node.tail() and \
                        sum(n["alive"] for n in self.node_table()) >= nodes:
                    return node
                time.sleep(1.0)
            node.stop()
        raise RuntimeError(f"ray start ({name}) exited three times; the last: {node.tail()}")

    def node_table(self) -> list[dict]:
        """Every node the head's GCS knows: id, ip, alive (asked by a short driver process)."""
        out = subprocess.run([sys.executable, "-c", _NODES, self.address], capture_output=True, text=True,
                             timeout=180, env=self.env)
        if out.returncode != 0:
            raise RuntimeError(f"asking the cluster for its nodes failed: {out.stderr[-2000:]}")
        # Ray prints notices of its own to a driver's stdout (a dead node's, for one): take our line.
        line = next(x for x in reversed(out.stdout.splitlines()) if x.startswith("NODES "))
        return json.loads(line.removeprefix("NODES "))

    def node_ids(self) -> dict[str, str]:
        """``head`` and ``worker`` (the latest) -> Ray node id (by each node's ip)."""
        by_ip = {n["ip"]: n["id"] for n in self.node_table()}
        return {"head": by_ip[self.address.rsplit(":", 1)[0]], "worker": by_ip[self.worker.ip]}

    def stop(self) -> None:
        """Stop the worker node, then the head; then any process left with this cluster's ``RAY_TMPDIR``
        (a killed node's workers, which lost their parent); remove the temp dir."""
        for node in reversed(self.nodes):
            node.stop()
        marker = f"RAY_TMPDIR={self.root}".encode()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = []
            for entry in Path("/proc").iterdir():
                try:
                    if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                        left.append(int(entry.name))
                except OSError:  # gone meanwhile, or not ours to read
                    continue
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        shutil.rmtree(self.root, ignore_errors=True)
