"""Fencing: a job's lease on the store carries a token, and a commit carrying any other job's token
is refused and leaves no part (a killed job's workers outlive it by a moment)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from store_fixtures import tone

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.part_writer import PartWriter
from alarm.pipeline.store_fence import current_fence, store_lock
from alarm.pipeline.store_layout import (
    STAGING,
    FencingError,
    StoreConfig,
    committed_parts,
    group_spec,
    init_group,
)

CFG = StoreConfig(chunk_frames=8, shard_frames=32)


def toy_group(root: Path) -> Path:
    return init_group(root, "toy", group_spec({"encoder": "toy"}, CFG), 2, 4, 50.0)


def writer(group: Path, fence: str) -> PartWriter:
    w = PartWriter(group, "p0", 10, 2, 4, CFG, fence=fence)
    w.append("k", np.ones((10, 2, 4), np.float32), 0.2)
    return w


def test_commit_with_a_stale_token_is_refused_and_leaves_no_part(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with store_lock(root) as first:
        assert current_fence(root) == first
        group = toy_group(root)
        stale = writer(group, first)  # a worker of the first job, still encoding when the job dies
    with store_lock(root) as second:  # the next job takes the store
        assert second != first and current_fence(root) == second
        with pytest.raises(FencingError, match=rf"commit of part .*/p0: refused.*fencing token {first[:8]}"):
            stale.commit()
        assert committed_parts(group) == []
        assert not (group / "parts" / "p0").exists()
        assert not any((group / STAGING).iterdir())  # its staged attempt is gone too
        writer(group, second).commit()  # the job that holds the store commits
        assert committed_parts(group) == ["p0"]


def test_a_job_refused_the_lock_leaves_the_holders_token(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with store_lock(root) as token:
        with pytest.raises(ConfigError, match="another job is writing the store"):
            with store_lock(root):
                pass
        assert current_fence(root) == token
        group = toy_group(root)
        writer(group, token).commit()
        assert committed_parts(group) == ["p0"]


def test_encoder_stage_carries_the_jobs_token_to_the_commit(tmp_path: Path, tiny_whisper_dir: Path) -> None:
    from alarm.pipeline.encoders import EncoderConfig, build_encoder
    from alarm.pipeline.extract_stages import write_part

    encoder = build_encoder(EncoderConfig(name="whisper", preset="tiny", batch_size=4))
    root = tmp_path / "store"
    with store_lock(root) as old:
        group = init_group(root, "whisper", group_spec(encoder.spec(), CFG), len(encoder.layers), encoder.dim,
                           encoder.frame_rate)
    unit = {"part": "p0", "keys": ["a", "b"], "durations": [0.5, 0.7], "fence": old}
    waves = [tone(0.5, 16000)[:, 0], tone(0.7, 16000, seed=1)[:, 0]]
    with store_lock(root):
        with pytest.raises(FencingError, match="refused"):
            write_part(encoder, group, CFG, unit, waves, chunk_clips=4)
        assert committed_parts(group) == []
        write_part(encoder, group, CFG, {**unit, "fence": current_fence(root)}, waves, chunk_clips=4)
        assert committed_parts(group) == ["p0"]
