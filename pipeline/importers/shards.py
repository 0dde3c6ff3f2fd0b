"""Embedded audio bytes written once into WebDataset tar shards that our manifest addresses.

Hugging Face datasets (and the ALARM corpus's raw sets) often hold each clip's encoded bytes inside
the Arrow/Parquet files. We copy those bytes **unchanged** into plain tar shards and address each
clip as ``shard.tar#member``, the form the manifest, the decoder (``audio_source.member_bytes``),
``alarm stats`` and the feature cache already read. We chose tar shards over re-encoding to FLAC:

* no decode and no encode at import time: an import is a sequential copy, as fast as the disk;
* the clip's content key (computed from the decoded samples) is the same as if the original file
  were read, and a lossy MP3/Opus clip is not inflated into a several-times-larger FLAC;
* a few large files instead of millions of small ones, which object stores and network filesystems
  prefer; the reader seeks straight to a member through a cached offset table.

A shard is written under a temporary name and renamed into place when full, so a reader never sees
half a shard.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3")


def sniff_suffix(data: bytes, hint: str | None = None) -> str:
    """The file suffix of encoded audio bytes: from ``hint`` (a file name) if it has an audio suffix,
    else from the bytes' magic number; ``.bin`` when neither tells (the decoder sniffs anyway)."""
    if hint:
        suffix = Path(hint).suffix.lower()
        if suffix in AUDIO_SUFFIXES:
            return suffix
    if data[:4] == b"RIFF":
        return ".wav"
    if data[:4] == b"fLaC":
        return ".flac"
    if data[:4] == b"OggS":
        return ".opus" if b"OpusHead" in data[:64] else ".ogg"
    if data[:3] == b"ID3" or data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return ".mp3"
    return ".bin"


class ShardWriter:
    """Append encoded clips to numbered tar shards ``<folder>/<prefix>-000000.tar``, ...

    Args:
        folder: where the shards go (created).
        prefix: shard name prefix.
        max_members: clips per shard before the next one starts.
        max_bytes: bytes per shard before the next one starts.
    """

    def __init__(self, folder: Path, prefix: str = "audio", max_members: int = 10_000,
                 max_bytes: int = 1 << 30) -> None:
        self.folder = Path(folder)
        self.prefix = prefix
        self.max_members = max_members
        self.max_bytes = max_bytes
        self.shards: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._path: Path | None = None
        self._members = 0
        self._bytes = 0
        self._count = 0

    def add(self, data: bytes, hint: str | None = None) -> str:
        """Store one clip's bytes; returns its address ``/abs/shard.tar#member``."""
        if self._tar is None or self._members >= self.max_members or self._bytes >= self.max_bytes:
            self._start()
        member = f"{self._count:09d}{sniff_suffix(data, hint)}"
        info = tarfile.TarInfo(member)
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))
        self._members += 1
        self._bytes += len(data) + 1024
        self._count += 1
        return f"{self._path}#{member}"

    def _start(self) -> None:
        self.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.shards:  # a new import replaces the shards an earlier one left under this prefix
            for stale in self.folder.glob(f"{self.prefix}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
                stale.unlink()
        self._path = (self.folder / f"{self.prefix}-{len(self.shards):06d}.tar").resolve()
        self._tar = tarfile.open(self._tmp(self._path), "w", format=tarfile.USTAR_FORMAT)
        self._members = self._bytes = 0

    @staticmethod
    def _tmp(path: Path) -> Path:
        # Not store_layout.atomic_path (a with-block): a shard stays open across many add() calls
        # and is renamed into place by close().
        return path.with_name(f".{path.name}.tmp")

    def close(self) -> None:
        """Finish the shard being written (rename it into place)."""
        if self._tar is None:
            return
        self._tar.close()
        self._tmp(self._path).replace(self._path)
        self.shards.append(self._path)
        self._tar = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
