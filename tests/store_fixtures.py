"""Small audio corpora for the decode, store and pipeline tests: good clips and hostile ones."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np


def tone(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Noise plus a tone, ``(frames, channels)`` float32 in [-0.5, 0.5]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    base = 0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t)
    x = base[:, None] + 0.05 * rng.standard_normal((len(t), channels))
    return x.astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str | None = None) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate, subtype=subtype, format=fmt)
    return path


def good_corpus(folder: Path, count: int = 6, seconds: tuple[float, float] = (0.6, 1.6)) -> list[dict]:
    """``count`` short clips, alternating rates and channel counts; returns manifest rows."""
    rows = []
    rates = (16000, 22050, 44100, 24000)
    for i in range(count):
        d = seconds[0] + (seconds[1] - seconds[0]) * ((i * 7) % count) / max(count - 1, 1)
        rate = rates[i % len(rates)]
        path = write_wav(folder / f"clip{i}.wav", tone(d, rate, 1 + i % 2, seed=i), rate)
        rows.append({"id": f"good{i}", "audio": str(path), "dataset": "toy"})
    return rows


def hostile_corpus(folder: Path) -> tuple[list[dict], dict[str, str]]:
    """Rows that must be rejected, and the reason kind expected for each id."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rows, expected = [], {}

    def add(rid: str, audio: Path | str, kind: str, **extra: object) -> None:
        rows.append({"id": rid, "audio": str(audio), "dataset": "bad", **extra})
        expected[rid] = kind

    add("missing", folder / "nowhere.wav", "missing")
    (folder / "empty.wav").write_bytes(b"")
    add("empty", folder / "empty.wav", "empty")
    good = write_wav(folder / "full.wav", tone(1.0, 16000), 16000)
    data = good.read_bytes()
    (folder / "truncated.wav").write_bytes(data[: len(data) // 2])
    add("truncated", folder / "truncated.wav", "truncated")
    (folder / "text.wav").write_text("this is not audio at all\n" * 20)
    add("text", folder / "text.wav", "undecodable")
    nan = tone(0.5, 16000)
    nan[100] = np.nan
    sf.write(folder / "nan.wav", nan, 16000, subtype="FLOAT")
    add("nan", folder / "nan.wav", "non-finite")
    add("badcut", good, "empty cut", start=5.0, end=6.0)
    write_wav(folder / "long.wav", tone(60.5, 8000), 8000)
    add("long", folder / "long.wav", "too long")
    return rows, expected


def write_manifest_rows(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_shard(path: Path, samples: list[tuple[str, Path, dict]]) -> Path:
    """A WebDataset tar: for each (key, audio file, json fields) an audio member and a JSON member."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, audio, fields in samples:
            tar.add(audio, arcname=f"{key}{audio.suffix}")
            blob = json.dumps(fields).encode()
            info = tarfile.TarInfo(f"{key}.json")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path
