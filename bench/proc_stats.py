"""Process figures read from ``/proc`` for the benches: start times, CPU-seconds, a session's processes.

Linux only (as the benches' machines are). Field numbers are proc(5)'s.
"""

from __future__ import annotations

import os
import time


def now() -> float:
    """Seconds on the clock ``/proc`` dates processes by (since boot), the same in every process."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def stat_fields(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` after the command name: field N of proc(5) is item N - 3."""
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()


def process_started(pid: int) -> float:
    """When process ``pid`` began, on ``now()``'s clock (to the kernel's tick, 10 ms)."""
    return int(stat_fields(pid)[19]) / os.sysconf("SC_CLK_TCK")  # start time in ticks since boot


def fields_cpu(fields: list[str]) -> float:
    """User + system CPU-seconds in a process's ``stat_fields``."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU-seconds process ``pid`` has used so far."""
    return fields_cpu(stat_fields(pid))


def session_processes(title: str = "") -> list[int]:
    """Pids of this process session whose title starts with ``title`` (Ray titles an actor ``ray::<Class>``)."""
    sid, pids = os.getsid(0), []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getsid(int(entry)) != sid:
                continue
            with open(f"/proc/{entry}/cmdline") as handle:
                if handle.read().startswith(title):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def session_cpu(before: dict[int, float] | None = None) -> dict[int, float]:
    """CPU-seconds of each live process of this session (the driver and its Ray), less its figure in ``before``."""
    used = {}
    for pid in session_processes():
        try:
            used[pid] = cpu_seconds(pid) - (before or {}).get(pid, 0.0)
        except OSError:
            continue
    return used
