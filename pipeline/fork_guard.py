"""A clear error, not a hang, for object storage used in a forked child of a process that used it.

obstore runs its requests on a Rust runtime whose threads start with the first client; a fork copies
the process without them, and any request in the child (even through a new client) then waits
forever. A DataLoader worker forked from a trainer that opened a store on object storage is such a
child: those workers start from a fork server instead (``trainer/data.py``).
"""

from __future__ import annotations

import os

_RUNTIME_PID: list[int] = []  # the process whose first client started the runtime


def runtime_pid(url: str) -> int:
    """This process's id, once it may use object storage; raises in a forked child of one that did.

    Raises:
        RuntimeError: this process was forked after its parent used object storage.
    """
    _RUNTIME_PID[:] = _RUNTIME_PID or [os.getpid()]
    if _RUNTIME_PID[0] != os.getpid():
        raise RuntimeError(f"{url}: object storage used in a process forked after its parent used it "
                           "(obstore does not survive fork); start it with 'spawn' or 'forkserver'")
    return _RUNTIME_PID[0]
