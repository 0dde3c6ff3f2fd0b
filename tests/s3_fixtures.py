"""A real S3 server (moto in server mode) on 127.0.0.1 for the object-storage tests.

The endpoint and credentials are put into the standard AWS variables when this module is imported
(from conftest), before any test starts Ray: Ray's workers inherit the environment of the process
that starts the cluster, and the product reads nothing but those variables. The server itself starts
on first use, once per test session.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import pytest
from local_servers import free_port, start_server, stop_server

PORT = int(os.environ.get("ALARM_TEST_S3_PORT") or free_port())
ENDPOINT = f"http://127.0.0.1:{PORT}"
ENV = {"AWS_ENDPOINT_URL": ENDPOINT, "AWS_ACCESS_KEY_ID": "alarm-test", "AWS_SECRET_ACCESS_KEY": "alarm-test",
       "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true",
       "ALARM_TEST_S3_PORT": str(PORT)}


def install_env() -> None:
    """Point every AWS client of this process and its children at the test server."""
    os.environ.update(ENV)


class S3Server:
    """moto's S3 server in its own process group, stopped by its process id."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self._buckets = itertools.count()

    def start(self) -> None:
        if self.proc is None:
            self.proc = start_server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(PORT)],
                                     ENDPOINT, "moto server")

    def bucket(self) -> str:
        """A new empty bucket; returns its name."""
        self.start()
        name = f"alarm-{next(self._buckets)}-{uuid.uuid4().hex[:8]}"
        request = urllib.request.Request(f"{ENDPOINT}/{name}", method="PUT")
        urllib.request.urlopen(request, timeout=10).close()
        return name

    def stop(self) -> None:
        stop_server(self.proc)
        self.proc = None


_SERVER = S3Server()


@pytest.fixture(scope="session")
def s3_server():
    """The session's S3 server (started on first use)."""
    install_env()
    _SERVER.start()
    yield _SERVER
    _SERVER.stop()


@pytest.fixture
def s3_url(s3_server: S3Server) -> str:
    """``s3://<new bucket>/store``: an empty prefix in a bucket of its own."""
    return f"s3://{s3_server.bucket()}/store"
