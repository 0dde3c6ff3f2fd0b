"""A real Azure Blob service (azurite, Microsoft's emulator) on 127.0.0.1 for the az:// tests.

azurite is an npm package; ``make test`` installs it into ``.cache/azurite`` (see the Makefile). Where
it is missing (no node on the machine), the tests that use it are skipped with the reason.

As with the S3 server, the emulator's variables are put into the environment when conftest imports
this module, before any test starts Ray (its workers inherit the environment of the process that starts
the cluster): ``AZURE_STORAGE_USE_EMULATOR`` makes object_store use the well-known emulator account
(``devstoreaccount1`` and its published key) over plain http, at ``AZURITE_BLOB_STORAGE_URL``. They
touch nothing but az:// URLs. The service itself starts on first use, once per test session.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import itertools
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from local_servers import free_port, start_server, stop_server

REPO = Path(__file__).resolve().parents[1]
ACCOUNT = "devstoreaccount1"
# azurite's documented account key (public, the same in every emulator): not a secret.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
PORT = int(os.environ.get("ALARM_TEST_AZURE_PORT") or free_port())
ENDPOINT = f"http://127.0.0.1:{PORT}"
ENV = {"AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": ENDPOINT,
       "ALARM_TEST_AZURE_PORT": str(PORT)}


def install_env() -> None:
    """Point every Azure client of this process and its children at the test emulator."""
    os.environ.update(ENV)


def azurite_binary() -> str | None:
    """``azurite-blob`` as ``make test`` installs it (``.cache/azurite``), else on PATH, else None."""
    local = REPO / ".cache" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    if local.is_file() and shutil.which("node"):
        return str(local)
    return shutil.which("azurite-blob")


def _signed(method: str, path: str, query: dict[str, str]) -> urllib.request.Request:
    """A request with Shared Key authorisation: the stdlib's way to create a container (obstore has no
    such call, and the Azure SDK is not worth a test dependency for one request)."""
    headers = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
    canonical = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
    # Path-style emulator URLs carry the account in the path, so the resource names it twice.
    resource = f"/{ACCOUNT}/{ACCOUNT}/{path}" + "".join(f"\n{k}:{v}" for k, v in sorted(query.items()))
    text = f"{method}\n" + "\n" * 11 + canonical + resource  # 11 standard headers, all empty here
    sig = base64.b64encode(hmac.new(base64.b64decode(KEY), text.encode(), hashlib.sha256).digest()).decode()
    url = f"{ENDPOINT}/{ACCOUNT}/{path}?" + "&".join(f"{k}={v}" for k, v in query.items())
    return urllib.request.Request(url, method=method, headers={**headers, "Content-Length": "0",
                                                                "Authorization": f"SharedKey {ACCOUNT}:{sig}"})


class Azurite:
    """azurite's blob service in its own process group and temporary folder, stopped by its process id."""

    def __init__(self) -> None:
        self.env = dict(ENV)  # what a client needs (already in os.environ, see install_env)
        self.proc: subprocess.Popen | None = None
        self.folder: str | None = None
        self._containers = itertools.count()

    def start(self) -> None:
        if self.proc is not None:
            return
        binary = azurite_binary()
        if binary is None:
            # CI installs it (``make test``): there a missing emulator is a failure, not a reason to skip.
            (pytest.fail if os.environ.get("CI") else pytest.skip)(
                "azurite is not installed (`make test` installs it with npm into .cache/azurite)")
        self.folder = tempfile.mkdtemp(prefix="azurite-")
        # --loose and --skipApiVersionCheck: object_store sends an API version and headers newer
        # releases of azurite may not know yet; the semantics under test do not depend on them.
        try:
            self.proc = start_server([binary, "--blobHost", "127.0.0.1", "--blobPort", str(PORT), "--location",
                                      self.folder, "--silent", "--loose", "--skipApiVersionCheck",
                                      "--disableTelemetry"], ENDPOINT, "azurite")
        except RuntimeError:
            self.stop()
            raise

    def container(self) -> str:
        """A new empty container; returns its name (3 to 63 characters, lower case)."""
        self.start()
        name = f"alarm-{next(self._containers)}-{uuid.uuid4().hex[:8]}"
        urllib.request.urlopen(_signed("PUT", name, {"restype": "container"}), timeout=10).close()
        return name

    def stop(self) -> None:
        stop_server(self.proc)
        self.proc = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


_SERVER = Azurite()


@pytest.fixture(scope="session")
def azurite():
    """The session's azurite blob service (started on first use; skips the test where not installed)."""
    install_env()
    _SERVER.start()
    yield _SERVER
    _SERVER.stop()


@pytest.fixture
def az_url(azurite: Azurite) -> str:
    """``az://<new container>/store``: an empty prefix in a container of its own."""
    return f"az://{azurite.container()}/store"
