"""The demo corpus: deterministic, labels true by construction, edge cases present."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from alarm.pipeline.demo_corpus import DemoCorpusConfig, write_demo_corpus
from alarm.pipeline.manifest import read_manifest

SMALL = DemoCorpusConfig(sound_events=6, music=3, speech=2, long_clips=1)


def digest(folder: Path) -> dict[str, str]:
    """Hash of each file; of the decoded samples for Ogg, whose stream serial numbers are random."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = sf.read(p, dtype="float32")[0].tobytes() if p.suffix == ".ogg" else p.read_bytes()
            out[p.name] = hashlib.sha256(data).hexdigest()
    return out


def test_corpus_is_deterministic_and_honest(tmp_path: Path) -> None:
    manifest = write_demo_corpus(tmp_path / "a", SMALL)
    write_demo_corpus(tmp_path / "b", SMALL)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")

    result = read_manifest(manifest)
    rows = {i.id: i for i in result.instances}
    durations = {}
    for inst in result.instances:
        if Path(inst.audio).name.startswith("broken_"):
            continue
        info = sf.info(inst.audio)
        durations[inst.audio] = info.duration
    assert min(durations.values()) < 1.0  # a sub-second clip
    assert any(30.0 < d < 60.0 for d in durations.values())  # longer than one 30 s window
    assert any(d >= 60.0 for d in durations.values())  # dropped by the cache's default limit
    formats = {Path(a).suffix for a in durations}
    assert formats >= {".wav", ".flac", ".ogg"}

    # Labels are true by construction: the beep clip has exactly `count` beeps.
    beep = next(i for i in result.instances if "beeps" in i.id)
    audio, rate = sf.read(beep.audio, dtype="float32")
    envelope = np.abs(audio) > 0.1
    onsets = np.flatnonzero(envelope[1:] & ~envelope[:-1])
    bursts = 1 + int(np.sum(np.diff(onsets) > rate * 0.1)) if len(onsets) else 0
    assert bursts == beep.metadata["count"]
    # Each clip carries one to three prompts.
    per_clip: dict[str, int] = {}
    for inst in result.instances:
        if inst.prompt and inst.start is None:
            per_clip[inst.audio] = per_clip.get(inst.audio, 0) + 1
    assert set(per_clip.values()) <= {1, 2, 3}
    assert any(i.prompt is None for i in result.instances)
    broken = [i for i in rows if i.startswith("broken_")]
    assert len(broken) == 4
    assert not Path(rows["broken_missing"].audio).exists()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_speech_clips_when_espeak_is_installed(tmp_path: Path) -> None:
    manifest = write_demo_corpus(tmp_path, DemoCorpusConfig(sound_events=0, music=0, speech=2, long_clips=0,
                                                           broken=False))
    speech = [i for i in read_manifest(manifest).instances if i.dataset == "demo-speech"]
    assert speech and all(i.metadata["transcript"] for i in speech)
    assert sf.info(speech[0].audio).duration > 1.0
    assert json.loads((tmp_path / "corpus.json").read_text())["speech"] == "espeak-ng"
