"""What a killed or damaged job on object storage leaves for the next command, each case made deterministic.

Found by killing `alarm pipeline run`, `alarm train run` and rephrase runs on an S3 server at chosen
events and damaging their objects (a scratch chaos run, not part of the suite); each test here
reproduces one finding at a chosen point.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from alarm.rephrase.run_folder import run_folder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_url_runs_work_folder_goes_with_the_next_url_run(tmp_path: Path, s3_url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A rephrase or prompts run on a URL works in a local copy of its files made by mkdtemp; killed
    # with SIGKILL it never removed it, and each killed run left one more copy in the temp dir.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / "alarm-runs" / str(_dead_pid()) / "run-abc"
    dead.mkdir(parents=True)
    (dead / "inputs.parquet").write_bytes(b"x" * 1000)
    with run_folder(f"{s3_url}/runs/r1") as (out, work):
        assert work is not None and out.is_dir()
        (out / "stats.json").write_text("{}")
        assert not dead.parent.exists()  # the dead process's folder went when this one was made
    assert list((tmp_path / "alarm-runs").iterdir()) == []  # and this one's, at its end


class Killed(Exception):
    """Stands in for SIGKILL at a chosen request."""


def test_a_checkpoint_half_pruned_on_the_url_goes_with_the_next_publish(tmp_path: Path, s3_url: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Pruning a remote checkpoint deletes its meta.json, then its files; killed in between, the step
    # folder stayed on the URL without meta.json, which no later prune looked at (only complete ones).
    import torch

    from alarm.pipeline.objects import RemoteObjects, open_objects
    from alarm.trainer import checkpoint as ck
    from alarm.trainer.run_remote import publish_checkpoint, remote_checkpoints

    run, local = f"{s3_url}/runs/r1", tmp_path / "run"

    def save(step: int) -> Path:
        weights = {"w": torch.full((4,), float(step))}
        return ck.save_checkpoint(local, step, weights, {"w::exp_avg": torch.zeros(4)}, {"config": {}}, keep=1)

    publish_checkpoint(run, local, save(2))
    real = RemoteObjects.delete_prefix

    def killed_after_the_marker(self, prefix: str) -> int:  # noqa: ANN001
        raise Killed(prefix)

    monkeypatch.setattr(RemoteObjects, "delete_prefix", killed_after_the_marker)
    with pytest.raises(Killed):
        publish_checkpoint(run, local, save(4))  # prunes step 2: meta.json gone, then killed
    objects = open_objects(run)
    assert remote_checkpoints(objects) == ["step_00000004"]
    assert objects.exists("checkpoints/step_00000002/trainable.safetensors")  # what the kill left
    monkeypatch.setattr(RemoteObjects, "delete_prefix", real)
    publish_checkpoint(run, local, save(6))
    assert {i.key.split("/")[1] for i in objects.list("checkpoints")} == {"step_00000006"}


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_a_damaged_file_in_the_local_part_cache_is_downloaded_again(tmp_path: Path, s3_url: str, dtype: str) -> None:
    # A part's files are checked as they are downloaded into the cache, not after: a cached file
    # damaged on the local disk since failed every later read as "part of store s3://... is
    # damaged; run `alarm pipeline repair`", which found nothing to repair on the store.
    import numpy as np
    from remote_store_fixtures import upload_tree, write_parts

    from alarm.pipeline.part_cache import PartCache
    from alarm.pipeline.store import open_features

    data = write_parts(tmp_path / "store", parts=2, dtype=dtype)
    upload_tree(tmp_path / "store", s3_url)
    cache = PartCache(tmp_path / "cache", 10**9)
    first = open_features(s3_url, "toy", cache=cache)
    for key in first.keys():
        first.read(key)
    for _, _, path in cache.files():  # every cached file: markers, metadata, clip tables, shards
        body = bytearray(path.read_bytes())
        body[min(40, len(body) - 1)] ^= 0xFF
        path.write_bytes(bytes(body))
    again = open_features(s3_url, "toy", cache=PartCache(tmp_path / "cache", 10**9))
    for key, value in data.items():
        np.testing.assert_allclose(again.read(key), value, atol=0.05)
    # The object itself damaged: refused as before, after one fresh download.
    from alarm.pipeline.objects import open_objects
    from alarm.pipeline.store import DamagedPartError

    objects = open_objects(s3_url)
    shard = next(i.key for i in objects.list("features") if "/parts/part-000/" in i.key and "/features/c/" in i.key)
    body = bytearray(objects.get(shard))
    body[40] ^= 0xFF
    objects.put(shard, bytes(body))
    fresh = open_features(s3_url, "toy", cache=PartCache(tmp_path / "other", 10**9))
    part0 = [k for k in fresh.keys() if fresh.part_of(k).endswith("/part-000")]
    with pytest.raises(DamagedPartError, match="part-000 of store s3://"):
        fresh.read(part0[0])
