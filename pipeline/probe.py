"""Cheap facts about audio without decoding it: bytes of a tar member, duration from the header.

Audio on object storage (``s3://...``, a plain object or a shard member) is probed through ranged
reads of the windows the header parser asks for: a WAV or FLAC header costs a window or two, not the
clip (an MP3 whose frames must be counted is still read through, window by window).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from alarm.pipeline.manifest import TAR_SEPARATOR
from alarm.pipeline.objects import is_url


class AudioUnreadable(ValueError):
    """The audio cannot be opened or its header makes no sense; the message says why."""


def split_tar(audio: str) -> tuple[str, str]:
    """``/abs/shard.tar#member`` -> (shard path, member name)."""
    shard, member = audio.split("#", 1)
    return shard, member


def open_audio_bytes(audio: str) -> bytes:
    """The raw bytes of an audio location (a file, or a member of a tar shard)."""
    if TAR_SEPARATOR in audio or is_url(audio):
        # The shard's member table is built once and cached, so probing every member of a big
        # shard stays linear (tarfile.getmember rescans the whole shard per call).
        from alarm.pipeline.audio_source import DecodeError, audio_bytes

        try:
            return audio_bytes(audio)
        except DecodeError as err:
            raise AudioUnreadable(str(err).split(": ", 1)[-1]) from err
    _check_local(audio)
    try:
        return Path(audio).read_bytes()
    except OSError as err:
        raise AudioUnreadable(f"{audio}: {err.strerror}") from err


def probe_duration(audio: str) -> float:
    """Duration in seconds from the file header (no decoding)."""
    import soundfile as sf

    source: Any
    if is_url(audio):
        source = _ranged(audio)
    elif TAR_SEPARATOR in audio:
        source = io.BytesIO(open_audio_bytes(audio))
    else:
        _check_local(audio)
        source = audio
    try:
        info = sf.info(source)
    except Exception as err:  # soundfile raises RuntimeError / LibsndfileError for bad headers
        raise AudioUnreadable(f"not a readable audio file ({err})") from err
    if info.samplerate <= 0 or info.frames < 0:
        raise AudioUnreadable(f"bad header: {info.samplerate} Hz, {info.frames} frames")
    return info.frames / info.samplerate


def _check_local(audio: str) -> None:
    """Refuse a local path that is not a readable regular file, with the decoder's reason (a folder or a
    pipe is named as such, not "not found"; a pipe is never opened)."""
    from alarm.pipeline.decode import local_file_problem

    problem = local_file_problem(audio)
    if problem:
        raise AudioUnreadable(problem.split(": ", 1)[1])  # without its kind: ``audio file not found: x.wav``


def _ranged(audio: str) -> Any:
    """``remote_audio.open_ranged``, its errors as ``AudioUnreadable`` with the reasons a decode gives."""
    import tarfile

    from alarm.pipeline.remote_audio import open_ranged

    try:
        return open_ranged(audio)
    except FileNotFoundError:
        raise AudioUnreadable(f"audio object not found: {audio.split('#', 1)[0]}") from None
    except KeyError:
        raise AudioUnreadable(f"no member {audio.split('#', 1)[1]!r} in shard {audio.split('#', 1)[0]}") from None
    except tarfile.TarError as err:
        raise AudioUnreadable(f"unreadable shard {audio.split('#', 1)[0]} ({err})") from None


def instance_duration(instance: Any) -> float:
    """The duration an instance covers: its cut if it has one, else the whole file."""
    if instance.start is not None and instance.end is not None:
        return instance.end - instance.start
    total = probe_duration(instance.audio)
    start = instance.start or 0.0
    end = instance.end if instance.end is not None else total
    return max(0.0, min(end, total) - start)
