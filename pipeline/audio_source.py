"""Where a clip's bytes come from: a plain file, or a member of a WebDataset tar shard, local or
on object storage (``s3://...``, read through ``remote_audio``).

Decoding (``decode``) and reading shards as input (``webdataset_input``) both need this, so it sits
below both. Every failure is a ``DecodeError`` whose message is the reject reason.
"""

from __future__ import annotations

import functools
import os
import tarfile
from pathlib import Path

from alarm.pipeline.manifest import TAR_SEPARATOR
from alarm.pipeline.objects import is_url


class DecodeError(ValueError):
    """The clip cannot be used; the message is the reject reason."""


@functools.lru_cache(maxsize=64)
def _member_table(shard: str, mtime_ns: int) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size) of one shard; cached so reading N members is not O(N^2)."""
    with tarfile.open(shard) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}


def member_bytes(audio: str) -> bytes:
    """Bytes of ``/abs/shard.tar#member`` (or ``s3://bucket/shard.tar#member``).

    Raises:
        DecodeError: the shard or the member is missing or unreadable (reason ``missing: ...``).
    """
    shard, member = audio.split("#", 1)
    if is_url(shard):
        return _remote_member(shard, member)
    try:
        table = _member_table(shard, os.stat(shard).st_mtime_ns)
    except FileNotFoundError as err:
        raise DecodeError(f"missing: tar shard not found: {shard}") from err
    except (tarfile.TarError, OSError) as err:
        raise DecodeError(f"undecodable: unreadable tar shard {shard}: {err}") from err
    if member not in table:
        raise DecodeError(f"missing: no member {member!r} in {shard}")
    offset, size = table[member]
    with open(shard, "rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) != size:
        raise DecodeError(f"truncated: tar member {member!r} of {shard} is cut short")
    return data


def _remote_member(shard: str, member: str) -> bytes:
    from alarm.pipeline import remote_audio

    try:
        return remote_audio.member_bytes(shard, member)
    except FileNotFoundError as err:
        raise DecodeError(f"missing: tar shard not found: {shard}") from err
    except KeyError as err:
        raise DecodeError(f"missing: no member {member!r} in {shard}") from err
    except tarfile.TarError as err:
        raise DecodeError(f"undecodable: unreadable tar shard {shard}: {err}") from err


def audio_bytes(audio: str) -> bytes:
    """Raw bytes of a plain file or of a ``shard.tar#member`` WebDataset member, local or on a URL.

    Raises:
        DecodeError: the file, object, shard or member is missing (reason ``missing: ...``), or unreadable.
    """
    if TAR_SEPARATOR in audio:
        return member_bytes(audio)
    if is_url(audio):
        from alarm.pipeline.remote_audio import read_object

        try:
            return read_object(audio)
        except FileNotFoundError as err:
            raise DecodeError(f"missing: audio object not found: {audio}") from err
    path = Path(audio)
    if not path.is_file():
        raise DecodeError(f"missing: audio file not found: {audio}")
    return path.read_bytes()


def audio_stat(audio: str) -> tuple[int, int]:
    """(size, modification time in ns) of what holds ``audio`` (the shard for a tar member), local or on
    a URL (one HEAD); (-1, -1) when it is missing. What a cache of keyed sources checks for changes."""
    holder = audio.split("#", 1)[0] if TAR_SEPARATOR in audio else audio
    if is_url(holder):
        from alarm.pipeline.remote_audio import object_stat

        return object_stat(holder) or (-1, -1)
    try:
        st = os.stat(holder)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns
