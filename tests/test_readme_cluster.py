"""The README's "Run on a cluster with object storage" block runs as written.

Against what the block assumes a user has: an S3 server (moto on 127.0.0.1, reached through the
standard AWS variables conftest set), the demo corpus copied under ``$S3/corpus/``, and a running
two-node Ray cluster named by ``RAY_HEAD``. The block itself is parsed from README.md and run verbatim
in one bash, in a folder holding what a clone provides.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cluster_fixtures import TwoNodeCluster
from s3_fixtures import ENDPOINT
from test_readme import commands, fresh_clone, readme_block, run_script, shell_env  # noqa: F401

from alarm.pipeline.objects import open_objects

pytestmark = pytest.mark.slow  # a cluster, the feature job, training: a few minutes on two busy cores

TITLE = "## Run on a cluster with object storage"


def _bucket_of(block: str) -> tuple[str, str]:
    """The block's ``S3=s3://bucket/prefix`` line: (bucket, prefix)."""
    line = next(c for c in commands(block) if c.startswith("S3="))
    url = line.split("=", 1)[1].split()[0]
    bucket, _, prefix = url[len("s3://"):].partition("/")
    return bucket, prefix


def test_readme_cluster_block_runs_verbatim(tmp_path: Path, shell_env: dict[str, str], s3_server) -> None:  # noqa: F811
    block = readme_block(TITLE)
    bucket, prefix = _bucket_of(block)
    try:
        urllib.request.urlopen(urllib.request.Request(f"{ENDPOINT}/{bucket}", method="PUT"), timeout=10).close()
    except urllib.error.HTTPError as err:  # already made by an earlier run in this session
        assert err.code == 409, err
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, "-m", "alarm.cli", "demo", "corpus", str(corpus)], env=shell_env, check=True,
                   capture_output=True, timeout=600)
    remote = open_objects(f"s3://{bucket}/{prefix}")
    remote.delete_prefix("")
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        remote.put_file(f"corpus/{path.relative_to(corpus).as_posix()}", path)

    cluster = TwoNodeCluster()
    try:
        env = {**shell_env, "RAY_HEAD": cluster.address, "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        result = run_script(commands(block), fresh_clone(tmp_path / "clone"), env, timeout=1500)
        node_ids = set(cluster.node_ids().values())
    finally:
        cluster.stop()
    assert result.returncode == 0, f"{result.stderr[-4000:]}\n--- stdout ---\n{result.stdout[-3000:]}"

    summary = json.loads(remote.get("store/summary.json"))
    assert summary["clips"] > 0 and set(summary["stored"]) == {"whisper"}
    assert set(summary["nodes"]) <= node_ids and summary["nodes"], summary["nodes"]
    keys = [o.key for o in remote.list()]
    assert any(k.startswith("store/features/whisper/") and k.endswith("/_DONE") for k in keys)
    assert "targets.parquet" in keys
    assert any(k.startswith("runs/whisper/checkpoints/step_00000020/") for k in keys), keys[-20:]
    assert "on 8 GPUs:" in result.stdout  # the plan printed its wall time
