"""Local test servers (moto, azurite) as processes of their own, started until they answer, stopped by pid."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(argv: list[str], endpoint: str, name: str, env: dict[str, str] | None = None,
                 timeout: float = 60.0) -> subprocess.Popen:
    """Start ``argv`` in its own process group and wait until ``endpoint`` answers HTTP (any status).

    Raises:
        RuntimeError: the server exited, or did not answer within ``timeout`` seconds (it is stopped).
    """
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            return proc
        except urllib.error.HTTPError:
            return proc  # it answers
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited at start ({proc.returncode})") from None
            time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"{name} did not answer on {endpoint} within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen | None) -> None:
    """Terminate a server started by ``start_server`` (killed if it does not exit within 10 s)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
