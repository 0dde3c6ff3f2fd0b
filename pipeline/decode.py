"""Decode one clip: read, cut, hash, mix down, resample; every failure becomes a reason.

A clip is identified by a content key: a hash of its decoded source samples after the cut (plus
the source rate and channel count), not of its path, so the same audio under two ids, two
manifests or two containers with the same samples is encoded once. The hash is taken before
mixing down and resampling, so a different soxr build cannot change the keys of a store.

A local file is decoded from disk, block by block, so a cut of a long recording reads only its cut
and keying an hour-long file (to learn that it is too long) needs a block of memory, not the hour.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from alarm.pipeline.audio_source import DecodeError, audio_bytes
from alarm.pipeline.manifest import TAR_SEPARATOR
from alarm.pipeline.objects import is_url

KEY_VERSION = b"alarm-clip-v1"
BLOCK_FRAMES = 1 << 18
"""Frames decoded at a time (about 1 MiB a channel in float32)."""
MAX_PEAK = 1e6
"""Largest sample magnitude accepted. Full scale is 1.0, and 16-bit values written to a float file
unscaled reach 32768; far above that the encoders' float32 front ends overflow and store NaN (1e30
did: ``tests/test_hostile_corpus.py``; measured once with the tiny encoders, w2vbert's filterbank from
1e15 and the others from 1e19)."""
SHORTFALL = 0.01
"""A decode that ends more than this fraction short of the frames its header announces is truncated
(an MP3 cut short in transit decodes what is left without an error)."""


@dataclass
class DecodeConfig:
    """How clips are decoded.

    Attributes:
        max_seconds: clips this long or longer are rejected (ALARM drops clips of 60 s or more).
        resample_quality: soxr quality (``HQ`` or ``VHQ``); part of every encoder group's key material.
    """

    max_seconds: float = 60.0
    resample_quality: str = "HQ"

    def __post_init__(self) -> None:
        if self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive, got {self.max_seconds}")
        if self.resample_quality not in ("HQ", "VHQ"):
            raise ValueError(f"resample_quality must be HQ or VHQ, got {self.resample_quality!r}")


@dataclass
class DecodedClip:
    """A decoded clip at its source rate, mixed down to mono."""

    key: str
    source_rate: int
    channels: int
    mono: np.ndarray

    @property
    def duration(self) -> float:
        return len(self.mono) / self.source_rate

    def at(self, rate: int, quality: str = "HQ") -> np.ndarray:
        """The clip resampled to ``rate`` Hz (float32)."""
        return resample(self.mono, self.source_rate, rate, quality)


def resample(mono: np.ndarray, source_rate: int, rate: int, quality: str = "HQ") -> np.ndarray:
    """soxr resampling of a mono float32 wave (a copy when the rates already agree)."""
    if source_rate == rate:
        return np.array(mono, dtype=np.float32)
    import soxr

    return np.ascontiguousarray(soxr.resample(mono, source_rate, rate, quality=quality), dtype=np.float32)


def _header_problem(raw: BinaryIO, size: int) -> str | None:
    """Why a WAV (RIFF, RF64) or AIFF file's data chunk cannot be trusted (a reject reason), or None.

    libsndfile quietly reads what is there, so a file cut short in transit would otherwise pass, and
    reads a WAV whose header was never finished (data size 0, audio after it) as no samples. Only the
    chunk headers are read.
    """
    raw.seek(0)
    head = raw.read(12)
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        kind, endian, data_id = "WAV", "<", b"data"
    elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        kind, endian, data_id = "AIFF", ">", b"SSND"
    else:
        return None
    pos, data64 = 12, None
    while pos + 8 <= size:
        raw.seek(pos)
        header = raw.read(16)
        if len(header) < 8:
            return None
        chunk, length = header[:4], struct.unpack(endian + "I", header[4:8])[0]
        if chunk == b"ds64" and len(header) == 16:  # RF64: the 64-bit RIFF size, then the data size
            data64 = struct.unpack("<Q", (raw.read(8) + bytes(8))[:8])[0]
        if chunk == data_id:
            if length == 0xFFFFFFFF and data64 is not None:
                length = data64
            if kind == "WAV" and length == 0 and size > pos + 8 and not _chunk_at(raw, pos + 8, size):
                return (f"truncated: the WAV header says its data chunk is empty, but {size - pos - 8} bytes "
                        "follow (a recording whose header was never finished)")
            if length != 0xFFFFFFFF and pos + 8 + length > size:
                return f"truncated: the {kind} data chunk is shorter than its header says"
            return None
        pos += 8 + length + (length & 1)
    return None


def _chunk_at(raw: BinaryIO, pos: int, size: int) -> bool:
    """True when a RIFF chunk (four printable id bytes and a size that fits) starts at ``pos``: what
    follows an empty data chunk is then another chunk (``LIST``), not audio."""
    raw.seek(pos)
    header = raw.read(8)
    return (len(header) == 8 and all(32 <= b < 127 for b in header[:4])
            and pos + 8 + struct.unpack("<I", header[4:])[0] <= size)


def local_file_problem(path: str) -> str | None:
    """Why a local ``path`` cannot be read as an audio file (a reject reason), or None when it can.

    A folder, a pipe or a device is named as such rather than "not found" (it exists), and is never
    opened: reading a pipe with no writer would hang the job.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"missing: {path} is a link to {os.readlink(path)}, which does not exist"
        return f"missing: audio file not found: {path}"
    except OSError as err:
        return f"unreadable: {path}: {err.strerror}"
    if stat.S_ISDIR(mode):
        return f"not a file: {path} is a folder"
    if not stat.S_ISREG(mode):
        return f"not a file: {path} is not a regular file (a pipe, socket or device)"
    return None


@contextmanager
def _opened(audio: str) -> Iterator[Any]:
    """What libsndfile should open for ``audio``, its header checked first: the local path (read
    natively, nothing read up front) or the bytes in memory for a tar member or an object.

    Raises:
        DecodeError: missing, not a file, unreadable, empty or truncated.
    """
    local = TAR_SEPARATOR not in audio and not is_url(audio)
    if local:
        problem = local_file_problem(audio)
        if problem:
            raise DecodeError(problem)
        try:
            raw: BinaryIO = open(audio, "rb")  # noqa: SIM115 (closed below)
            size = os.fstat(raw.fileno()).st_size
        except OSError as err:
            raise DecodeError(f"unreadable: {audio}: {err.strerror}") from err
    else:
        data = audio_bytes(audio)
        raw, size = io.BytesIO(data), len(data)
    with raw:
        if size == 0:
            raise DecodeError("empty: the audio file has no bytes")
        try:
            problem = _header_problem(raw, size)
        except OSError as err:
            raise DecodeError(f"unreadable: {audio}: {err.strerror}") from err
        if problem:
            raise DecodeError(problem)
        raw.seek(0)
        yield audio if local else raw


LIBSNDFILE_SAYS = {
    "File does not exist or is not a regular file": "no audio stream found (a damaged or cut-short file)",
    "SF_INFO struct incomplete": "the header gives no sample rate or channel count",
}
"""libsndfile errors whose words mislead here (the file does exist), and what they mean."""


def _undecodable(err: Exception, name: Any) -> DecodeError:
    """libsndfile's error as a reason, without the path or the in-memory buffer it names (the rejects
    table has the path; ``<_io.BytesIO object at 0x...>`` would change from run to run)."""
    detail = str(err).replace(f"Error opening {name!r}: ", "").replace("\n", " ") or type(err).__name__
    meaning = next((m for says, m in LIBSNDFILE_SAYS.items() if says in detail), None)
    return DecodeError(f"undecodable: {meaning} (libsndfile: {detail})" if meaning else f"undecodable: {detail}")


@contextmanager
def _cut(audio: str, start: float | None, end: float | None) -> Iterator[tuple[Any, int]]:
    """An open ``soundfile.SoundFile`` positioned at the cut's first frame, and the cut's frame count.

    Raises:
        DecodeError: as ``_opened``, an undecodable file, a file without samples, or an empty cut.
    """
    import soundfile as sf

    with _opened(audio) as source:
        try:
            handle = sf.SoundFile(source)
        except Exception as err:  # libsndfile raises LibsndfileError/RuntimeError/TypeError for bad input
            raise _undecodable(err, source) from err
        with handle:
            rate, total = handle.samplerate, handle.frames
            if total <= 0:
                raise DecodeError("empty: the audio has no samples")
            first = 0 if start is None else int(round(start * rate))
            last = total if end is None else min(total, int(round(end * rate)))
            if first >= last:
                raise DecodeError(f"empty cut: [{start}, {end}) s holds no samples of a "
                                  f"{total / rate:.2f} s file")
            try:
                if first:
                    handle.seek(first)
            except Exception as err:  # a seek past what a damaged file holds
                raise _undecodable(err, source) from err
            yield handle, last - first


def _blocks(handle: Any, count: int) -> Iterator[np.ndarray]:
    """Up to ``count`` frames of ``handle`` as checked ``(frames, channels)`` float32 blocks.

    Raises:
        DecodeError: undecodable data, NaN or infinite samples, samples beyond ``MAX_PEAK``, no
            samples at all, or (``SHORTFALL``) far fewer frames than the header announced.
    """
    done = 0
    while done < count:
        try:
            block = handle.read(min(BLOCK_FRAMES, count - done), dtype="float32", always_2d=True)
        except Exception as err:  # libsndfile's errors while decoding (a lost sync, bad data)
            raise _undecodable(err, handle.name) from err
        if not len(block):
            break
        _check_range(block)
        done += len(block)
        yield block
    if done == 0:
        raise DecodeError("empty: no samples could be decoded")
    if count - done > SHORTFALL * count:
        rate = handle.samplerate
        raise DecodeError(f"truncated: {done / rate:.2f} s decoded of the {count / rate:.2f} s its "
                          "header announces")


def _check_range(block: np.ndarray) -> None:
    """Refuse NaN, infinite and absurdly large samples (max and min: no temporary the size of the block)."""
    hi, lo = float(block.max()), float(block.min())
    if not (np.isfinite(hi) and np.isfinite(lo)):
        raise DecodeError("non-finite: the audio holds NaN or infinite samples")
    if max(hi, -lo) > MAX_PEAK:
        raise DecodeError(f"out of range: a sample of magnitude {max(hi, -lo):.3g} (full scale is 1.0; "
                          f"over {MAX_PEAK:g} the encoders' features overflow)")


def read_samples(audio: str, start: float | None, end: float | None,
                 max_seconds: float = float("inf")) -> tuple[np.ndarray, int]:
    """Decode ``audio`` (cut to ``[start, end)`` seconds) to ``(frames, channels)`` float32 and its rate.

    Args:
        max_seconds: a cut whose header says it is this long or longer is refused before it is read.

    Raises:
        DecodeError: missing, empty, truncated or undecodable file, non-finite or out-of-range
            samples, an empty cut, or (``max_seconds``) too long.
    """
    with _cut(audio, start, end) as (handle, count):
        rate = handle.samplerate
        if count / rate >= max_seconds:
            raise DecodeError(f"too long: {count / rate:.2f} s >= the {max_seconds:g} s limit")
        blocks = list(_blocks(handle, count))
    return (blocks[0] if len(blocks) == 1 else np.concatenate(blocks)), rate


def _key_digest(rate: int, channels: int) -> Any:
    digest = hashlib.blake2b(KEY_VERSION, digest_size=16)
    digest.update(struct.pack("<II", rate, channels))
    return digest


def clip_key(samples: np.ndarray, rate: int) -> str:
    """Content key: blake2b-128 of the cut source samples, their rate and channel count."""
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    digest = _key_digest(rate, samples.shape[1] if samples.ndim == 2 else 1)
    digest.update(samples.astype("<f4", copy=False).tobytes())
    return digest.hexdigest()


def read_checked(audio: str, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    """``read_samples`` (which refuses non-finite and out-of-range samples); kept for its callers."""
    return read_samples(audio, start, end)


def mix_down(samples: np.ndarray) -> np.ndarray:
    """The float32 mono wave of ``(frames, channels)`` samples: their mean over channels.

    Up to 7 channels the channels are added column by column, which gives the very bits of numpy's
    ``mean(axis=1)`` (it adds a short row left to right; tested) at a tenth of its cost: the strided
    reduction over a row of two values was a quarter of the job's decode time.
    """
    channels = samples.shape[1]
    if channels == 1:
        return samples[:, 0].copy()
    if channels > 7:  # numpy sums longer rows pairwise: keep its order
        return samples.mean(axis=1, dtype=np.float32)
    mono = samples[:, 0].copy()
    for c in range(1, channels):
        mono += samples[:, c]
    mono /= np.float32(channels)
    return mono


def key_audio(audio: str, start: float | None, end: float | None) -> tuple[str, float]:
    """The content key and duration of a cut source, hashed block by block (what keying needs: no
    mix-down, and memory for one block whatever the length; ``clip_key`` of the whole read, tested).

    Raises:
        DecodeError: as ``read_samples``.
    """
    with _cut(audio, start, end) as (handle, count):
        rate, frames = handle.samplerate, 0
        digest = _key_digest(rate, handle.channels)
        for block in _blocks(handle, count):
            digest.update(block.astype("<f4", copy=False).tobytes())
            frames += len(block)
    return digest.hexdigest(), frames / rate


def decode_clip(audio: str, start: float | None, end: float | None, cfg: DecodeConfig) -> DecodedClip:
    """Decode, check and key one clip.

    Raises:
        DecodeError: the reason the clip is rejected (missing, empty, truncated, undecodable,
            non-finite samples, empty cut, too long).
    """
    samples, rate = read_samples(audio, start, end, cfg.max_seconds)  # an hour-long file is not read
    duration = len(samples) / rate
    if duration >= cfg.max_seconds:
        raise DecodeError(f"too long: {duration:.2f} s >= the {cfg.max_seconds:g} s limit")
    # Mixed down in float32: the same samples always give the same mono wave.
    return DecodedClip(key=clip_key(samples, rate), source_rate=rate, channels=samples.shape[1],
                       mono=mix_down(samples))
