"""obstore clients for object-store URLs: which cloud a URL names, its client, and a one-shot probe.

Credentials, region and endpoint come from each cloud's standard environment, read by object_store
itself: ``AWS_*`` for ``s3://``; ``GOOGLE_APPLICATION_CREDENTIALS`` (or ``GOOGLE_SERVICE_ACCOUNT``,
a key file, and ``GOOGLE_SERVICE_ACCOUNT_KEY``, its JSON) for ``gs://``, where a key file's
``gcs_base_url`` and ``disable_oauth`` point the client at an emulator; ``AZURE_STORAGE_*`` for
``az://``. Requests are retried with backoff a bounded number of times.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.fork_guard import runtime_pid
from alarm.pipeline.object_errors import CREDENTIALS_HINT, denied, one_line

SCHEMES = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure",
           "azure": "azure"}
# Bounded retries with exponential backoff for every request on a URL (throttling, 5xx, resets):
# about 30 s at most, then the caller's operation fails and its part stays uncommitted.
RETRY = {"max_retries": 6, "retry_timeout": timedelta(seconds=60),
         "backoff": {"init_backoff": timedelta(seconds=0.2), "max_backoff": timedelta(seconds=8), "base": 2.0}}


def cloud(url: str) -> str:
    """``s3``, ``gcs`` or ``azure``: the service an object-store URL names (by its scheme)."""
    scheme = url.split("://", 1)[0].lower()
    return SCHEMES.get(scheme, scheme)


def client_options() -> dict:
    """Options every client gets: plain http where the environment allows it."""
    # object_store reads AWS_ALLOW_HTTP for S3 only; honour it for every scheme (S3-compatible
    # servers on premises are often plain http).
    allow = os.environ.get("AWS_ALLOW_HTTP", os.environ.get("ALLOW_HTTP", "")).lower() in ("1", "true", "yes")
    return {"allow_http": True} if allow else {}


def _native(url: str) -> str:
    # object_store knows GCS only as gs://; gcs:// is a common spelling of the same (gsutil, fsspec).
    return "gs://" + url.split("://", 1)[1] if url.split("://", 1)[0].lower() == "gcs" else url


def connect(url: str, retry: dict) -> Any:
    """The obstore client for ``url``; ``ConfigError`` naming the URL if it cannot be built."""
    from obstore.store import from_url

    try:
        return from_url(_native(url), retry_config=retry, client_options=client_options())
    except Exception as err:  # unknown scheme, malformed bucket, bad config keys, unreadable key file
        raise ConfigError(f"{url}: {one_line(err)}") from None


def probe(url: str) -> None:
    """List ``url`` once with no retries: an unreachable endpoint, a missing bucket or bad credentials
    raise ``ConfigError`` naming the URL within seconds."""
    import obstore
    from obstore.store import from_url

    runtime_pid(url)
    client = from_url(_native(url), retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=5)},
                      client_options={**client_options(), "connect_timeout": "3s", "timeout": "10s"})
    try:
        obstore.list_with_delimiter(client)
    except Exception as err:  # any failure here is the user's URL, endpoint or credentials
        line = one_line(err)
        hint = f"; {CREDENTIALS_HINT}" if denied(err, line) else ""
        raise ConfigError(f"cannot reach {url}: {line}{hint}") from None
