"""Shared by the importer tests: real audio files, the CLI run in-process, and the checks every
imported manifest must pass (``alarm manifest check`` and ``alarm stats``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result

from alarm.cli import main


def wav(path: Path, seconds: float, rate: int = 16000, channels: int = 1, freq: float = 440.0,
        fmt: str = "WAV") -> Path:
    """A real audio file (a tone per channel) written with soundfile."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * rate))) / rate
    x = np.stack([0.3 * np.sin(2 * np.pi * (freq + 110 * c) * t) for c in range(channels)], axis=1)
    sf.write(path, x.astype(np.float32), rate, format=fmt)
    return path


def cli(*args: str) -> Result:
    """Run ``alarm ARGS`` in-process; the result carries exit code and output."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def by_id(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in rows_of(path)}


def rejects_of(manifest: Path) -> dict[str | None, str]:
    """id -> reason of the rejects file beside an imported manifest ({} when there is none)."""
    path = manifest.with_name(manifest.name.split(".", 1)[0] + ".rejects.jsonl")
    return {r["id"]: r["reason"] for r in rows_of(path)} if path.is_file() else {}


def assert_checks_and_stats(manifest: Path, instances: int, hours: float | None = None) -> dict:
    """The imported manifest passes ``alarm manifest check`` with no reject and ``alarm stats`` reads
    every clip's audio (none unreadable); returns the stats JSON."""
    check = cli("manifest", "check", manifest, "--rejects", manifest.parent / "check-rejects.jsonl")
    assert check.exit_code == 0, check.output
    assert "0 rejected rows" in check.output, check.output
    assert not (manifest.parent / "check-rejects.jsonl").exists()
    stats = cli("stats", manifest, "--json", "--workers", "2")
    assert stats.exit_code == 0, stats.output
    doc = json.loads(stats.stdout)
    assert doc["total"]["instances"] == instances
    assert doc["total"]["unreadable"] == 0, doc["unreadable_examples"]
    if hours is not None:
        assert abs(doc["total"]["hours"] * 3600 - hours * 3600) < 0.05, doc["total"]
    return doc
