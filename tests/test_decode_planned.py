"""The actors' decode of planned sources: the mix-down, keying without it, and the unchanged-file check."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from store_fixtures import hostile_corpus, tone, write_wav

from alarm.pipeline import decode
from alarm.pipeline.audio_source import audio_stat
from alarm.pipeline.decode import DecodeConfig, DecodeError, decode_clip, key_audio, mix_down
from alarm.pipeline.encode_pools import unit_cost
from alarm.pipeline.extract_stages import decode_planned, key_source
from alarm.pipeline.work_units import WorkUnit


@pytest.mark.parametrize("channels", range(1, 11))
def test_mix_down_is_numpys_mean_to_the_bit(channels: int) -> None:
    rng = np.random.default_rng(channels)
    scale = rng.uniform(1e-3, 10, size=channels).astype(np.float32)
    samples = rng.standard_normal((50_001, channels)).astype(np.float32) * scale
    mono = mix_down(samples)
    assert mono.dtype == np.float32 and mono.flags.c_contiguous
    np.testing.assert_array_equal(mono.view(np.int32), samples.mean(axis=1, dtype=np.float32).view(np.int32))


def test_keying_gives_the_decode_key_and_reasons(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "a.wav", tone(1.3, 22050, channels=2, seed=3), 22050)
    clip = decode_clip(str(wav), 0.1, 1.0, DecodeConfig())
    assert key_audio(str(wav), 0.1, 1.0) == (clip.key, pytest.approx(clip.duration))
    rows, expected = hostile_corpus(tmp_path / "bad")
    for row in rows:
        if expected[row["id"]].startswith("too long"):  # the length limit is applied when planning
            assert key_source(row["audio"], None, None)[2] == ""
            continue
        key, duration, reason = key_source(row["audio"], row.get("start"), row.get("end"))
        assert (key, duration) == ("", 0.0) and reason.startswith(expected[row["id"]]), (row["id"], reason)
        with pytest.raises(DecodeError):
            key_audio(row["audio"], row.get("start"), row.get("end"))


def planned(path: Path, stat: bool = True) -> tuple[dict, str]:
    """A planned source for ``path`` as the job plans it, and its key."""
    key, _, _ = key_source(str(path), None, None)
    return {"audio": str(path), "start": None, "end": None, "stat": list(audio_stat(str(path))) if stat else None}, key


def test_an_unchanged_file_is_not_hashed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wav = write_wav(tmp_path / "a.wav", tone(0.8, 16000, channels=2), 16000)
    src, key = planned(wav)
    direct = decode_clip(str(wav), None, None, DecodeConfig())
    hashed = []
    monkeypatch.setattr(decode, "clip_key", lambda *a: hashed.append(1) or "x")
    clip = decode_planned(src, key)
    assert hashed == [] and clip.key == key and clip.source_rate == 16000
    np.testing.assert_array_equal(clip.mono, direct.mono)
    # No recorded stat (a unit planned by an older job): hashed, as before.
    with pytest.raises(RuntimeError, match="changed while the job ran"):
        decode_planned({**src, "stat": None}, key)  # clip_key is patched to answer "x"
    assert hashed == [1]


def test_a_changed_file_is_refused_and_a_touched_one_kept(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "a.wav", tone(0.8, 16000, seed=1), 16000)
    src, key = planned(wav)
    st = os.stat(wav)
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # same bytes, newer time: hashed, same key
    assert decode_planned(src, key).key == key
    write_wav(wav, tone(0.8, 16000, seed=2), 16000)  # same size, other samples
    with pytest.raises(RuntimeError, match="changed while the job ran"):
        decode_planned(src, key)


def test_unit_cost_puts_long_clip_parts_after_many_short_ones() -> None:
    def unit(durations: list[float]) -> WorkUnit:
        return WorkUnit(part="p", keys=[str(i) for i in range(len(durations))], encoders=["whisper"], fence="",
                        durations=durations, sources=[])

    # Measured on the tiny encoders (CPU): 10 clips of 27.7 s took 3.0 s, 35 of 8.3 s 2.4 s, 177 of 1.7 s 6.3 s.
    long, medium, short = unit([27.7] * 10), unit([8.3] * 35), unit([1.7] * 177)
    assert unit_cost(short) > unit_cost(long) > unit_cost(medium)
