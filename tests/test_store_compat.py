"""A feature store written before the code moved into the ``alarm`` package still opens unchanged.

``tests/fixtures/store-v1`` was written by the flat layout (top-level ``pipeline``, ``trainer``,
``rephrase`` modules; commit 46022e5) with
``alarm pipeline run manifests/examples/tiny.jsonl --store S --preset tiny --encoders whisper,muq``:
three clips, tiny whisper and tiny MuQ. A spec id hashes what determines the values (checkpoint
identity, layers, preprocessing, windows, dtype, ``ENCODER_CODE_VERSION``), never a module path, so
today's code must find the same groups, read them, and recompute nothing.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "store-v1"
GROUPS = {"whisper": "3f33dd2346062102", "muq": "5702c1808191a209"}


def feature_bytes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "features").rglob("*")) if p.is_file()}


@pytest.mark.slow  # builds the tiny encoders in a fresh cache and starts a local Ray: about 30 s
def test_a_store_written_before_the_move_opens_and_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    from alarm.pipeline.job import PipelineConfig, run_pipeline
    from alarm.pipeline.store import open_features

    # A fresh cache: the encoders' facts are learnt again from the models, not from an earlier run.
    monkeypatch.setenv("ALARM_CACHE", str(tmp_path / "cache"))
    store = shutil.copytree(FIXTURE, tmp_path / "store")
    before = feature_bytes(store)
    keys = pq.read_table(store / "instances.parquet").column("key").to_pylist()
    for encoder in GROUPS:
        reader = open_features(store, encoder)
        for key in set(keys):
            assert reader.read(key).shape[0] > 0

    summary = run_pipeline(PipelineConfig(store=str(store), manifest=str(ROOT / "manifests/examples/tiny.jsonl"),
                                          encoders=list(GROUPS), preset="tiny", progress=False))
    assert summary.spec_ids == GROUPS
    assert summary.encoded == {"whisper": 0, "muq": 0}
    assert summary.skipped == {"whisper": 3, "muq": 3}
    assert feature_bytes(store) == before
