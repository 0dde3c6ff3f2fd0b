"""A messy real-world corpus: every container and sample format libsndfile reads keys and decodes alike,
and every damaged or odd input is rejected with a reason a user can act on, without stopping the job.

``test_decode.py`` covers the common formats (WAV, FLAC, Vorbis, Opus, MP3) and the first hostile inputs
(missing, empty, truncated, text, NaN, empty cut, too long); this file covers what a held-out corpus adds.
All files are built here with soundfile, numpy and the standard library.
"""

from __future__ import annotations

import json
import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from store_fixtures import tone, write_wav

from alarm.pipeline.decode import (
    BLOCK_FRAMES,
    DecodeConfig,
    DecodeError,
    clip_key,
    decode_clip,
    key_audio,
    read_samples,
)
from alarm.pipeline.extract_stages import key_source
from alarm.pipeline.job import PipelineConfig, run_pipeline
from alarm.pipeline.manifest import ManifestError, read_manifest
from alarm.pipeline.probe import AudioUnreadable, probe_duration
from alarm.pipeline.sources import key_sources
from alarm.pipeline.store import open_features

CFG = DecodeConfig()

# (file name, format, subtype, rate, channels): sample formats, containers and rates of real corpora.
FORMATS = [
    ("u8.wav", "WAV", "PCM_U8", 16000, 2), ("s24.wav", "WAV", "PCM_24", 16000, 2),
    ("s32.wav", "WAV", "PCM_32", 16000, 1), ("f64.wav", "WAV", "DOUBLE", 16000, 1),
    ("ulaw.wav", "WAV", "ULAW", 8000, 1), ("alaw.wav", "WAV", "ALAW", 8000, 1),
    ("ima.wav", "WAV", "IMA_ADPCM", 16000, 2), ("ms.wav", "WAV", "MS_ADPCM", 16000, 1),
    ("gsm.wav", "WAV", "GSM610", 8000, 1), ("ext.wav", "WAVEX", "PCM_16", 16000, 2),
    ("rf64.wav", "RF64", "PCM_16", 16000, 1), ("a.w64", "W64", "PCM_16", 16000, 1),
    ("a.aiff", "AIFF", "PCM_16", 22050, 1), ("f.aifc", "AIFF", "FLOAT", 16000, 1),
    ("a.caf", "CAF", "PCM_16", 16000, 1), ("a.au", "AU", "PCM_16", 16000, 1),
    ("hi.flac", "FLAC", "PCM_24", 96000, 2), ("odd.wav", "WAV", "PCM_16", 7999, 1),
    ("11k.wav", "WAV", "PCM_16", 11025, 1), ("100hz.wav", "WAV", "PCM_16", 100, 1),
    ("ch6.wav", "WAV", "PCM_16", 16000, 6), ("ch12.wav", "WAV", "PCM_16", 16000, 12),
    ("UPPER.WAV", "WAV", "PCM_16", 16000, 1), ("no-extension", "WAV", "PCM_16", 16000, 1),
    ("flac-named.wav", "FLAC", "PCM_16", 16000, 1), ("é 中 'q\" s.wav", "WAV", "PCM_16", 16000, 1),
]


@pytest.mark.parametrize("name,fmt,subtype,rate,channels", FORMATS)
def test_every_format_keys_block_by_block_as_a_whole_read(tmp_path: Path, name: str, fmt: str, subtype: str,
                                                          rate: int, channels: int) -> None:
    path = tmp_path / name
    sf.write(path, tone(0.3, rate, channels), rate, format=fmt, subtype=subtype)
    samples, got_rate = read_samples(str(path), None, None)
    direct, _ = sf.read(path, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(samples, direct)
    assert got_rate == rate and samples.shape[1] == channels
    assert key_audio(str(path), None, None) == (clip_key(samples, rate), pytest.approx(len(samples) / rate))
    assert probe_duration(str(path)) == pytest.approx(len(samples) / rate)
    wave = decode_clip(str(path), None, None, CFG).at(16000)
    assert np.isfinite(wave).all() and abs(len(wave) - len(samples) * 16000 / rate) <= 1


def test_a_long_recording_is_keyed_in_blocks(tmp_path: Path) -> None:
    """Keying (done for every source, however long, to learn its duration) holds a block, not the file."""
    frames = 10 * BLOCK_FRAMES + 123  # 5 MiB of 16-bit samples, 10 MiB as float32
    path = write_wav(tmp_path / "long.wav", tone(frames / 8000, 8000), 8000)
    whole, _ = read_samples(str(path), None, None)
    expected = clip_key(whole, 8000)
    del whole
    tracemalloc.start()
    key, seconds = key_audio(str(path), None, None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (key, seconds) == (expected, frames / 8000)
    assert peak < 3 * BLOCK_FRAMES * 4, f"keying took {peak} bytes"
    # Decoding it for an encoder (infer, eval) refuses it as too long from its header, before reading it.
    tracemalloc.start()
    with pytest.raises(DecodeError, match=r"^too long: 327\.70 s >= the 60 s limit$"):
        decode_clip(str(path), None, None, CFG)
    assert tracemalloc.get_traced_memory()[1] < BLOCK_FRAMES
    tracemalloc.stop()
    # A cut across block boundaries keys like the same samples read whole.
    cut, _ = read_samples(str(path), 30.0, 100.0)
    assert len(cut) == 70 * 8000 and key_audio(str(path), 30.0, 100.0)[0] == clip_key(cut, 8000)


def test_an_id3v2_tag_and_a_streamed_wav_header_change_nothing(tmp_path: Path) -> None:
    mp3 = write_wav(tmp_path / "a.mp3", tone(0.5, 44100, 2), 44100, subtype="MPEG_LAYER_III")
    frame = b"TIT2" + struct.pack(">I", 6) + b"\x00\x00\x00title"
    tag = b"ID3\x03\x00\x00" + bytes([0, 0, 0, len(frame) + 100]) + frame + bytes(100)  # syncsafe size < 128
    (tmp_path / "tagged.mp3").write_bytes(tag + mp3.read_bytes())
    assert key_audio(str(tmp_path / "tagged.mp3"), None, None) == key_audio(str(mp3), None, None)
    # A WAV written to a pipe cannot go back to fill in its sizes: 0xFFFFFFFF means "up to the end".
    wav = write_wav(tmp_path / "a.wav", tone(0.5, 16000), 16000)
    data = bytearray(wav.read_bytes())
    at = data.find(b"data")
    data[4:8] = data[at + 4:at + 8] = struct.pack("<I", 0xFFFFFFFF)
    (tmp_path / "streamed.wav").write_bytes(bytes(data))
    assert key_audio(str(tmp_path / "streamed.wav"), None, None) == key_audio(str(wav), None, None)


def hostile_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (audio path, the start of its reject reason)."""
    good = write_wav(folder / "good.wav", tone(1.0, 16000), 16000)
    cases: dict[str, tuple[Path, str]] = {}
    (folder / "folder.wav").mkdir()
    cases["folder"] = (folder / "folder.wav", f"not a file: {folder / 'folder.wav'} is a folder")
    os.mkfifo(folder / "pipe.wav")  # opening it would wait for a writer forever
    cases["pipe"] = (folder / "pipe.wav", "not a file: ")
    os.symlink(folder / "gone.wav", folder / "link.wav")
    cases["dangling link"] = (folder / "link.wav", f"missing: {folder / 'link.wav'} is a link to ")
    cases["under a file"] = (good / "x.wav", "unreadable: ")
    cases["name too long"] = (folder / ("x" * 300 + ".wav"), "unreadable: ")  # an OSError that once ended the job
    os.symlink("loop.wav", folder / "loop.wav")
    cases["link loop"] = (folder / "loop.wav", "unreadable: ")
    # Finite samples that overflow: the mix-down of two channels at 3e38 is inf, 1e30 squared is inf.
    sf.write(folder / "huge.wav", np.full((8000, 2), 3e38, np.float32), 16000, subtype="FLOAT")
    cases["huge"] = (folder / "huge.wav", "out of range: a sample of magnitude 3e+38")
    sf.write(folder / "e30.wav", np.full(8000, 1e30, np.float32), 16000, subtype="FLOAT")
    cases["1e30"] = (folder / "e30.wav", "out of range: ")
    stereo = tone(0.5, 16000, 2)
    stereo[100, 1] = -np.inf
    sf.write(folder / "inf.wav", stereo, 16000, subtype="FLOAT")
    cases["inf in one channel"] = (folder / "inf.wav", "non-finite: ")
    mp3 = write_wav(folder / "full.mp3", tone(1.0, 44100, 2), 44100, subtype="MPEG_LAYER_III").read_bytes()
    (folder / "cut.mp3").write_bytes(mp3[: len(mp3) // 2])  # decodes without an error, half as long
    cases["truncated mp3"] = (folder / "cut.mp3", "truncated: ")
    (folder / "stub.mp3").write_bytes(mp3[: len(mp3) // 20])  # libsndfile says "does not exist"
    cases["mp3 stub"] = (folder / "stub.mp3", "undecodable: no audio stream found (a damaged or cut-short file)")
    for name, fmt in (("cut.aiff", "AIFF"), ("cut.rf64", "RF64")):  # libsndfile reads what is there
        sf.write(folder / name, tone(1.0, 16000), 16000, format=fmt, subtype="PCM_16")
        whole = (folder / name).read_bytes()
        (folder / name).write_bytes(whole[: len(whole) * 2 // 3])
        cases[f"truncated {fmt}"] = (folder / name, f"truncated: the {'AIFF' if fmt == 'AIFF' else 'WAV'} data chunk")
    data = bytearray(good.read_bytes())
    at = data.find(b"data")
    data[at + 4:at + 8] = bytes(4)  # a recorder killed before it wrote the sizes
    (folder / "unfinished.wav").write_bytes(bytes(data))
    cases["unfinished header"] = (folder / "unfinished.wav", "truncated: the WAV header says its data chunk is empty")
    empty = write_wav(folder / "none.wav", np.zeros(0, np.float32), 16000).read_bytes()
    (folder / "none-list.wav").write_bytes(empty + b"LIST" + struct.pack("<I", 4) + b"INFO")
    cases["no samples, then a LIST chunk"] = (folder / "none-list.wav", "empty: the audio has no samples")
    data = bytearray(good.read_bytes())
    at = data.find(b"fmt ")
    data[at + 10:at + 12] = bytes(2)
    (folder / "ch0.wav").write_bytes(bytes(data))
    cases["zero channels"] = (folder / "ch0.wav", "undecodable: Channel count is zero")
    return cases


def test_hostile_files_are_rejected_with_a_clear_reason(tmp_path: Path) -> None:
    cases = hostile_files(tmp_path)
    for name, (path, reason) in cases.items():
        key, seconds, got = key_source(str(path), None, None)
        assert (key, seconds) == ("", 0.0) and got.startswith(reason), (name, got)
        with pytest.raises(DecodeError, match="^" + got.split(":")[0]):
            decode_clip(str(path), None, None, CFG)
    # The header probe (plan, stats) names a folder, a pipe and a dangling link the same way.
    for name in ("folder", "pipe", "dangling link"):
        with pytest.raises(AudioUnreadable, match="is a folder|not a regular file|is a link to"):
            probe_duration(str(cases[name][0]))


def test_int16_values_in_a_float_file_still_decode(tmp_path: Path) -> None:
    """Unscaled 16-bit values in a float WAV (a common export mistake) are odd but usable, not garbage."""
    path = write_wav(tmp_path / "loud.wav", tone(0.5, 16000) * 32767, 16000, subtype="FLOAT")
    wave = decode_clip(str(path), None, None, CFG).at(16000)
    assert np.isfinite(wave).all() and np.abs(wave).max() > 1000


def test_blank_ids_and_control_characters_are_manifest_rejects(tmp_path: Path) -> None:
    good = write_wav(tmp_path / "a.wav", tone(0.2, 16000), 16000)
    rows = [{"id": "ok", "audio": "a.wav", "dataset": "d"}, {"id": "  ", "audio": str(good), "dataset": "d"},
            {"id": "b", "audio": " ", "dataset": "d"}, {"id": "c", "audio": str(good), "dataset": "\t"},
            {"id": "two\nlines", "audio": str(good), "dataset": "d"}, {"id": "nul\x00", "audio": str(good), "dataset": "d"}]
    manifest = tmp_path / "m.jsonl"
    # Windows line ends and a blank line are fine.
    manifest.write_bytes(("\r\n".join(json.dumps(r) for r in rows[:3]) + "\r\n\r\n"
                          + "\r\n".join(json.dumps(r) for r in rows[3:]) + "\r\n").encode())
    result = read_manifest(manifest)
    assert [i.id for i in result.instances] == ["ok"] and result.instances[0].audio == str(good)
    reasons = {r.line: r.reason for r in result.rejects}
    assert reasons == {2: "missing field(s): id", 3: "missing field(s): audio", 5: "missing field(s): dataset",
                       6: "'id' holds a control character (newline, tab, NUL, ...): 'two\\nlines'",
                       7: "'id' holds a control character (newline, tab, NUL, ...): 'nul\\x00'"}


def test_a_manifest_nothing_can_be_read_from_says_why_at_once(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("id,audio,dataset\na,a.wav,d\n")
    with pytest.raises(ManifestError, match=r"is a CSV/TSV table; manifests are JSONL or Parquet \(`alarm manifest"):
        read_manifest(tmp_path / "m.csv")
    assert not (tmp_path / "m.csv.rejects.jsonl").exists()
    # A JSON array (one line, or pretty-printed) instead of one object per line: the first reason tells.
    (tmp_path / "a.jsonl").write_text(json.dumps([{"id": "a", "audio": "a.wav", "dataset": "d"}]) + "\n")
    with pytest.raises(ManifestError, match="the first on line 1: row must be a JSON object, got list; every reason in"):
        read_manifest(tmp_path / "a.jsonl")


def test_a_rerun_decodes_unreadable_sources_again(tmp_path: Path) -> None:
    """A permission fixed with chmod changes neither size nor time: a cached "unreadable" is not trusted."""
    path = write_wav(tmp_path / "a.wav", tone(0.5, 16000), 16000)
    store = tmp_path / "store"
    store.mkdir()
    st = os.stat(path)
    src = (str(path), None, None)
    cached = {"audio": str(path), "start": None, "end": None, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
              "duration": 0.0}
    cfg = PipelineConfig(store=str(store), manifest=str(tmp_path / "m.jsonl"), num_cpus=1)
    started: list[int] = []
    for reason, rekeyed in (("unreadable: a.wav: Permission denied", True), ("undecodable: Format", False)):
        pq.write_table(pa.Table.from_pylist([{**cached, "key": None, "reason": reason}]), store / "sources.parquet")
        row = key_sources(store, [src], cfg, on_new_audio=lambda: started.append(1))[src]
        assert (row["reason"], bool(row["key"])) == ((None, True) if rekeyed else (reason, False))
        # Trying an unreadable file again does not start the actors by itself (most likely it fails
        # again, and a rerun with nothing new starts nothing); the job starts them if there is work.
        assert started == []


def test_a_job_over_a_hostile_corpus_keeps_every_good_clip(tmp_path: Path) -> None:
    """The real job (embedded Ray, tiny whisper): no bad file stops it or reaches the store as NaN."""
    cases = hostile_files(tmp_path / "bad")
    rows = [{"id": name, "audio": str(path), "dataset": "bad"} for name, (path, _) in cases.items()]
    good = {f"g{i}": write_wav(tmp_path / f"ok {i} é.wav", tone(0.4 + 0.1 * i, 16000, seed=i), 16000)
            for i in range(3)}
    rows += [{"id": rid, "audio": str(path), "dataset": "good"} for rid, path in good.items()]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = tmp_path / "store"
    summary = run_pipeline(PipelineConfig(store=str(store), manifest=str(manifest), encoders=["whisper"],
                                          preset="tiny", progress=False, num_cpus=2))
    rejects = {r["id"]: r["reason"] for r in pq.read_table(store / "rejects.parquet").to_pylist()}
    assert {name: rejects.get(name, "").startswith(reason) for name, (_, reason) in cases.items()} == {
        name: True for name in cases}
    kept = {r["id"]: r["key"] for r in pq.read_table(store / "instances.parquet").to_pylist()}
    assert set(kept) == set(good) and summary.clips == 3
    reader = open_features(store, "whisper")
    assert all(np.isfinite(reader.read(key)).all() for key in kept.values())
