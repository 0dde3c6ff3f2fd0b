"""Wrong credentials against a server that checks them: one line that names the URL and what to fix.

The shared test server (``s3_fixtures``) accepts any key. This module starts its own moto server with
IAM authentication on (``INITIAL_NO_AUTH_ACTION_COUNT``: the first requests, which create the user, its
key, its policy and the bucket, are let through; every later one must be signed with a real key).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from local_servers import free_port, start_server, stop_server

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.objects import open_objects

BUCKET = "alarm-auth-test"


@pytest.fixture(scope="module")
def auth_server() -> Iterator[dict[str, str]]:
    """A moto server that checks signatures, with one user allowed everything on S3; yields its AWS env."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = start_server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], endpoint,
                        "moto server", env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    try:
        admin = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        iam = boto3.client("iam", aws_access_key_id="x", aws_secret_access_key="x", **admin)
        iam.create_user(UserName="alarm")
        key = iam.create_access_key(UserName="alarm")["AccessKey"]
        iam.put_user_policy(UserName="alarm", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        boto3.client("s3", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"],
                     **admin).create_bucket(Bucket=BUCKET)
        yield {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    finally:
        stop_server(proc)


def test_wrong_credentials_are_one_line_naming_what_to_check(auth_server, monkeypatch) -> None:
    for name, value in auth_server.items():
        monkeypatch.setenv(name, value)
    url = f"s3://{BUCKET}/store"
    good = open_objects(url)
    good.check()
    good.put("x", b"1")
    assert good.get("x") == b"1"  # the right key works

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        open_objects(url).check()
    text = str(err.value)
    assert text.startswith(f"cannot reach {url}: 403") and "SignatureDoesNotMatch" in text
    assert "AWS_SECRET_ACCESS_KEY" in text and "\n" not in text and "<?xml" not in text
    assert time.monotonic() - started < 20
    with pytest.raises(ConfigError, match=r"access denied on get of x \(403 Forbidden: SignatureDoesNotMatch"):
        open_objects(url).get("x")

    from alarm.cli import main

    result = CliRunner().invoke(main, ["pipeline", "status", "--store", url])
    assert result.exit_code == 2 and "SignatureDoesNotMatch" in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
