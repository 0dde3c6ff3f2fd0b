"""Decoding: formats, cut, mono mix-down, resampling, content keys, and a reason for every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from store_fixtures import hostile_corpus, tone, write_shard, write_wav

from alarm.pipeline.decode import DecodeConfig, DecodeError, clip_key, decode_clip, resample

CFG = DecodeConfig()


@pytest.mark.parametrize("suffix,fmt,subtype", [(".wav", None, "PCM_16"), (".flac", None, "PCM_16"),
                                                (".ogg", None, "VORBIS"), (".opus", "OGG", "OPUS"),
                                                (".mp3", None, "MPEG_LAYER_III")])
def test_formats_decode_to_mono_at_both_rates(tmp_path: Path, suffix: str, fmt: str | None, subtype: str) -> None:
    rate = 48000 if suffix == ".opus" else 44100
    x = tone(1.0, rate, channels=2)
    path = write_wav(tmp_path / f"a{suffix}", x, rate, subtype=subtype, fmt=fmt)
    clip = decode_clip(str(path), None, None, CFG)
    decoded, _ = sf.read(path, dtype="float32", always_2d=True)
    assert clip.channels == 2 and clip.source_rate == rate
    np.testing.assert_array_equal(clip.mono, decoded.mean(axis=1, dtype=np.float32))
    for target in (16000, 24000):
        wave = clip.at(target)
        assert wave.dtype == np.float32
        np.testing.assert_array_equal(wave, soxr.resample(clip.mono, rate, target, quality="HQ"))
        assert abs(len(wave) - len(clip.mono) * target / rate) <= 1


def test_cut_selects_the_samples(tmp_path: Path) -> None:
    x = tone(2.0, 16000)
    path = write_wav(tmp_path / "a.wav", x, 16000, subtype="FLOAT")
    clip = decode_clip(str(path), 0.5, 1.25, CFG)
    np.testing.assert_array_equal(clip.mono, x[8000:20000, 0])
    assert clip.duration == pytest.approx(0.75)
    # An end past the file keeps what is there.
    assert decode_clip(str(path), 1.5, 9.0, CFG).duration == pytest.approx(0.5)


def test_key_is_content_not_path_or_container(tmp_path: Path) -> None:
    # int16 samples: libsndfile's float->PCM rounding differs between WAV and FLAC writers.
    x = (tone(1.0, 16000, seed=3) * 32767).astype(np.int16)
    a = write_wav(tmp_path / "a.wav", x, 16000)
    b = write_wav(tmp_path / "copy" / "b.flac", x, 16000)
    other = write_wav(tmp_path / "c.wav", tone(1.0, 16000, seed=4), 16000)
    key = decode_clip(str(a), None, None, CFG).key
    assert decode_clip(str(b), None, None, CFG).key == key  # same samples, other path and container
    assert decode_clip(str(other), None, None, CFG).key != key
    assert decode_clip(str(a), 0.0, 0.5, CFG).key != key  # a cut is other content
    # Deterministic and independent of anything but samples, rate and channels.
    samples, _ = sf.read(a, dtype="float32", always_2d=True)
    assert clip_key(samples, 16000) == key
    assert clip_key(samples, 22050) != key


def test_tar_member_decodes_like_the_file(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav", tone(0.7, 22050), 22050)
    shard = write_shard(tmp_path / "s" / "000.tar", [("x1", path, {"dataset": "d"})])
    direct = decode_clip(str(path), None, None, CFG)
    member = decode_clip(f"{shard}#x1.wav", None, None, CFG)
    assert member.key == direct.key
    np.testing.assert_array_equal(member.mono, direct.mono)
    with pytest.raises(DecodeError, match="^missing"):
        decode_clip(f"{shard}#nope.wav", None, None, CFG)


def test_every_hostile_input_gets_its_reason(tmp_path: Path) -> None:
    rows, expected = hostile_corpus(tmp_path)
    for row in rows:
        with pytest.raises(DecodeError) as err:
            decode_clip(row["audio"], row.get("start"), row.get("end"), CFG)
        assert str(err.value).startswith(expected[row["id"]]), (row["id"], str(err.value))


def test_length_limit_is_configurable(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav", tone(2.0, 16000), 16000)
    assert decode_clip(str(path), None, None, DecodeConfig(max_seconds=2.5)).duration == pytest.approx(2.0)
    with pytest.raises(DecodeError, match="too long"):
        decode_clip(str(path), None, None, DecodeConfig(max_seconds=2.0))
    with pytest.raises(ValueError):
        DecodeConfig(max_seconds=0)


def test_resample_same_rate_is_a_copy() -> None:
    x = np.arange(10, dtype=np.float32)
    y = resample(x, 16000, 16000)
    np.testing.assert_array_equal(x, y)
    assert y is not x
