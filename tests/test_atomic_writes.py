"""One way to publish a local file: ``atomic_path``, and every module that writes through it.

A write that fails half-way (a full disk, a value that does not serialise) must leave the old file
as it was and no temporary beside it. Each writer below runs for real into a folder that already
holds an old version of its file; where a real failure is hard to provoke, its underlying writer is
replaced by one that puts half a file down and then fails as a full disk does.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from alarm.pipeline.store_layout import atomic_path

OLD = b"the old version\n"


def disk_full(path_arg: int) -> Callable[..., None]:
    """A stand-in writer that writes part of its file (argument ``path_arg``), then runs out of space."""

    def write(*args, **kwargs) -> None:
        with open(args[path_arg], "wb") as handle:
            handle.write(b"half a fi")
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def old_file(path: Path, old: bytes = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(old)
    return path


def record_fsyncs(monkeypatch: pytest.MonkeyPatch,
                  watch: Path | None = None) -> list[tuple[str, bytes | None]]:
    """(name of the file synced, bytes of ``watch`` at that moment) for each ``os.fsync`` from now on."""
    synced: list[tuple[str, bytes | None]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append((Path(os.readlink(f"/proc/self/fd/{fd}")).name, watch.read_bytes() if watch else None))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return synced


def assert_untouched(path: Path, old: bytes = OLD) -> None:
    """The old version is still there, whole, and nothing else is in its folder."""
    assert path.read_bytes() == old
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


# --- atomic_path itself ---


def test_atomic_path_publishes_whole_file_and_keeps_old_one_on_failure(tmp_path):
    target = old_file(tmp_path / "out" / "data.bin")
    with pytest.raises(RuntimeError, match="mid-write"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        assert tmp.parent == target.parent and tmp.name.startswith(".data.bin.") and tmp.suffix == ".tmp"
        assert target.read_bytes() == OLD  # readers see the old version while the new one is written
        raise RuntimeError("mid-write")
    assert_untouched(target)

    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["data.bin"]

    fresh = tmp_path / "new" / "folder" / "file.txt"  # parents are made
    with atomic_path(fresh) as tmp:
        tmp.write_text("x")
    assert fresh.read_text() == "x"


@pytest.mark.parametrize("fsync", [False, True])
def test_atomic_path_fsyncs_the_temporary_before_the_rename_only_when_asked(tmp_path, monkeypatch, fsync):
    target = old_file(tmp_path / "part.parquet")
    synced = record_fsyncs(monkeypatch, watch=target)
    with atomic_path(target, fsync=fsync) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    if fsync:
        assert synced == [(tmp.name, OLD)]  # the temporary, before it took the name
    else:
        assert synced == []


# --- pipeline ---


def test_encoder_facts_that_fail_to_serialise_leave_the_old_entry(tmp_path, monkeypatch):
    from alarm.pipeline.encoders import facts

    target = old_file(tmp_path / "encoder-facts" / "tiny.json")
    monkeypatch.setattr(facts, "_facts_path", lambda cfg: target)
    # json.dump streams: "dim" is written before it reaches the value it cannot encode.
    with pytest.raises(TypeError, match="not JSON serializable"):
        facts.save_facts(None, {"dim": 8, "spec": object()})
    assert_untouched(target)

    facts.save_facts(None, {"dim": 8, "spec": {"name": "tiny"}})
    assert json.loads(target.read_text()) == {"dim": 8, "spec": {"name": "tiny"}}


def test_shard_table_on_a_full_cache_disk_is_skipped_and_leaves_no_temporary(tmp_path, monkeypatch):
    from alarm.pipeline import remote_audio

    monkeypatch.setenv("ALARM_CACHE", str(tmp_path))
    url, table = "s3://bucket/shard-000.tar", {"a.wav": (512, 100)}
    target = old_file(remote_audio._table_path(url, "v1"))
    with monkeypatch.context() as patched:
        patched.setattr(Path, "write_text", disk_full(0))
        remote_audio.remember_table(url, "v1", table)  # a cache that cannot be written only costs a rebuild
    assert_untouched(target)

    remote_audio.remember_table(url, "v1", table)
    assert json.loads(target.read_text()) == {"a.wav": [512, 100]}


# --- rephrase ---


def _generation(key: str):
    from alarm.rephrase.cache import CachedGeneration

    return CachedGeneration(key=key, text="t", n_prompt_tokens=1, n_tokens=1, finish_reason="stop",
                            error=None, seed=1, model="m", template_hash="h", sampling="s", forced=False,
                            gen_seconds=0.1, created=1.0)


def test_cache_part_is_fsynced_and_a_failed_one_leaves_no_temporary(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from alarm.rephrase.cache import PassCache

    cache = PassCache(tmp_path, "answer")
    first = cache.write([_generation("k1")])
    with monkeypatch.context() as patched:
        patched.setattr(pq, "write_table", disk_full(1))
        with pytest.raises(OSError, match="No space"):
            cache.write([_generation("k2")])
    assert sorted(p.name for p in (tmp_path / "answer").iterdir()) == [first]

    synced = record_fsyncs(monkeypatch)
    second = cache.write([_generation("k2")])
    assert [name.startswith(f".{second}.") for name, _ in synced] == [True]  # a power loss keeps it whole
    assert set(PassCache(tmp_path, "answer").read()) == {"k1", "k2"}


def _rephrase_writers() -> dict[str, Callable[[Path], None]]:
    from alarm.rephrase import prompt_clips, run, targets

    target_schema, _ = targets._schemas()
    return {
        "prompt_clips.write_rows": lambda path: prompt_clips.write_rows([{"id": "a"}], path),
        "targets._write": lambda path: targets._write([], target_schema, path),
        "run._write_table": lambda path: run._write_table([], path),
    }


@pytest.mark.parametrize("writer", ["prompt_clips.write_rows", "targets._write", "run._write_table"])
def test_rephrase_parquet_writers_keep_the_old_file_when_the_disk_fills(tmp_path, monkeypatch, writer):
    import pyarrow.parquet as pq

    write = _rephrase_writers()[writer]
    target = old_file(tmp_path / "table.parquet")
    with monkeypatch.context() as patched:
        patched.setattr(pq, "write_table", disk_full(1))
        with pytest.raises(OSError, match="No space"):
            write(target)
    assert_untouched(target)

    write(target)
    pq.read_table(target)  # the new file is whole


# --- trainer ---


def _trainer_writers(path: Path) -> dict[str, tuple[str, Callable[[], object]]]:
    """writer -> (the ``Path`` method it writes through, a call that rewrites ``path``)."""
    from alarm.trainer import data, evaluate, run_log

    rejects = [{"instance_id": "a", "reason": "r"}]
    return {
        "data.write_rejects": ("write_text", lambda: data.write_rejects(rejects, path)),
        "run_log.truncate_log": ("write_text", lambda: run_log.truncate_log(path, 0)),
        "evaluate._drop_keys": ("write_text", lambda: evaluate._drop_keys(path, {"gone"})),
        "evaluate.load_predictions": ("write_bytes", lambda: evaluate.load_predictions(path)),
    }


@pytest.mark.parametrize("writer", ["data.write_rejects", "run_log.truncate_log", "evaluate._drop_keys",
                                    "evaluate.load_predictions"])
def test_trainer_rewrites_keep_the_old_file_when_the_disk_fills(tmp_path, monkeypatch, writer):
    # An old file that each rewrite changes: a step past 0, a key to drop, a torn last line.
    old = b'{"step": 0, "key": "kept"}\n{"step": 5, "key": "gone"}\n{"ke'
    target = old_file(tmp_path / "rows.jsonl", old)
    method, call = _trainer_writers(target)[writer]
    with monkeypatch.context() as patched:
        patched.setattr(Path, method, disk_full(0))
        with pytest.raises(OSError, match="No space"):
            call()
    assert_untouched(target, old)

    call()
    assert target.read_bytes() != old
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def test_convert_that_fails_to_save_keeps_the_old_destination(tmp_path, monkeypatch):
    import safetensors.torch
    import torch

    from alarm.trainer.convert import convert_file

    src = tmp_path / "src" / "original.safetensors"
    src.parent.mkdir()
    safetensors.torch.save_file({"model.audio_start_emb": torch.ones(1, 4)}, str(src))
    dst = old_file(tmp_path / "dst" / "ours.safetensors")
    with monkeypatch.context() as patched:
        patched.setattr(safetensors.torch, "save_file", disk_full(1))
        with pytest.raises(OSError, match="No space"):
            convert_file(src, dst, "to-ours")
    assert_untouched(dst)

    assert convert_file(src, dst, "to-ours").converted == 1
    assert list(safetensors.torch.load_file(str(dst)).values())[0].tolist() == [1.0] * 4
