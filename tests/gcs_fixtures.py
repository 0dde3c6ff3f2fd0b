"""A GCS XML-API server on 127.0.0.1 for the gs:// tests: ``gcs_server.py``, a stand-in written from
GCS's documentation (no emulator a registry offers answers object_store's XML-API requests; see there).

object_store's GCS client is pointed at it the way one points it at any emulator, through the standard
environment: ``GOOGLE_SERVICE_ACCOUNT_KEY`` holds a service-account key whose ``gcs_base_url`` is
the server and whose ``disable_oauth`` makes the client send an empty bearer token instead of asking
Google for one. ``install_env`` puts it into the environment before any test starts Ray (its workers
inherit the environment of the process that starts the cluster); it touches nothing but gs:// URLs.
The server starts on first use, once per test session.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from local_servers import free_port, start_server, stop_server

PORT = int(os.environ.get("ALARM_TEST_GCS_PORT") or free_port())
ENDPOINT = f"http://127.0.0.1:{PORT}"
# A key for an emulator: no private key is read when oauth is off.
KEY = {"private_key": "", "private_key_id": "", "client_email": "alarm-test@localhost",
       "gcs_base_url": ENDPOINT, "disable_oauth": True}
ENV = {"GOOGLE_SERVICE_ACCOUNT_KEY": json.dumps(KEY), "GOOGLE_ALLOW_HTTP": "true",
       "ALARM_TEST_GCS_PORT": str(PORT)}


def install_env() -> None:
    """Point every GCS client of this process and its children at the test server."""
    os.environ.update(ENV)


class GCSServer:
    """``gcs_server.py`` in its own process group, stopped by its process id."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self._buckets = itertools.count()

    def start(self) -> None:
        if self.proc is None:
            script = str(Path(__file__).with_name("gcs_server.py"))
            self.proc = start_server([sys.executable, script, "--host", "127.0.0.1", "--port", str(PORT)],
                                     ENDPOINT, "GCS stand-in")

    def bucket(self) -> str:
        """A new empty bucket; returns its name."""
        self.start()
        name = f"alarm-{next(self._buckets)}-{uuid.uuid4().hex[:8]}"
        urllib.request.urlopen(urllib.request.Request(f"{ENDPOINT}/{name}", method="PUT"), timeout=10).close()
        return name

    def stop(self) -> None:
        stop_server(self.proc)
        self.proc = None


_SERVER = GCSServer()


@pytest.fixture(scope="session")
def gcs_server():
    """The session's GCS server (started on first use)."""
    install_env()
    _SERVER.start()
    yield _SERVER
    _SERVER.stop()


@pytest.fixture
def gs_url(gcs_server: GCSServer) -> str:
    """``gs://<new bucket>/store``: an empty prefix in a bucket of its own."""
    return f"gs://{gcs_server.bucket()}/store"
