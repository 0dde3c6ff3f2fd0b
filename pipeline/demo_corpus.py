"""A small, deterministic, honest demo corpus: every label is true because we made the sound.

Three kinds of clips:

* sound events: tones, beeps, noise bursts, chirps and clicks with counts, pitches and
  loudness known by construction;
* music: notes, chords and scales on simple synthetic timbres, with key, tempo and notes known;
* speech: sentences spoken by ``espeak-ng`` with the transcript and voice known (only where
  espeak-ng is installed; the corpus says so when it is not).

Durations run from under a second to over 30 s, a few clips are 60 s or longer (dropped by the
feature cache's default limit) and a few files are broken on purpose (empty, truncated, not audio,
missing), so a demo run shows its rejects table. Files are WAV, FLAC and Ogg/Vorbis at several
sample rates, some in stereo, to exercise decoding and resampling.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alarm.pipeline.counts import input_counts
from alarm.pipeline.manifest import read_manifest, write_manifest

NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
SENTENCES = [
    "The train to the airport leaves from platform four.",
    "Please remember to water the plants on Sunday.",
    "It is going to rain later this afternoon.",
    "Turn left at the second traffic light.",
    "The meeting has been moved to three o'clock.",
    "I would like a cup of tea with milk.",
]


@dataclass
class DemoCorpusConfig:
    """What ``write_demo_corpus`` makes."""

    seed: int = 1234
    """Seed of every random choice; the same seed writes the same files (byte-identical except
    Ogg's random stream serial numbers; the decoded audio is identical)."""
    sound_events: int = 14
    """Number of sound-event clips."""
    music: int = 10
    """Number of music clips."""
    speech: int = 6
    """Number of spoken sentences (needs espeak-ng; skipped without it)."""
    long_clips: int = 2
    """Clips of 60 s or more, which the feature cache drops by default."""
    broken: bool = True
    """Add broken files (empty, truncated, not audio, missing) to show rejects."""

    def __post_init__(self) -> None:
        for name in ("sound_events", "music", "speech", "long_clips"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass
class Clip:
    name: str
    dataset: str
    audio: np.ndarray  # float32, (samples,) or (samples, channels)
    rate: int
    metadata: dict[str, Any]
    prompts: list[str]
    fmt: str = "wav"
    extra: dict[str, Any] = field(default_factory=dict)


def _fade(x: np.ndarray, rate: int, ms: float = 10.0) -> np.ndarray:
    n = min(len(x) // 2, int(rate * ms / 1000))
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def _tone(freq: float, seconds: float, rate: int, wave: str = "sine") -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * freq * t
    if wave == "square":
        y = np.sign(np.sin(phase)) * 0.6
    elif wave == "sawtooth":
        y = 2 * (freq * t - np.floor(0.5 + freq * t)) * 0.6
    else:
        y = np.sin(phase)
    return _fade(y.astype(np.float32), rate)


def _note_freq(midi: int) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


def _note_name(midi: int) -> str:
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def _sound_event(i: int, rng: np.random.Generator) -> Clip:
    rate = int(rng.choice([16000, 22050, 44100, 48000]))
    kind = ["beeps", "tone", "noise", "chirp", "clicks"][i % 5]
    seconds = float(np.clip(rng.lognormal(np.log(5.0), 0.9), 0.4, 34.0))
    if i == 1:
        seconds = 0.6  # always one clip under a second
    silence = np.zeros(int(seconds * rate), dtype=np.float32)
    if kind == "beeps":
        count = int(rng.integers(2, 6))
        freq = int(rng.choice([440, 660, 880, 1000]))
        seconds = max(seconds, count * 0.5 + 0.3)
        y = np.zeros(int(seconds * rate), dtype=np.float32)
        for k in range(count):
            start = int((0.2 + k * 0.5) * rate)
            beep = _tone(freq, 0.25, rate)
            y[start:start + len(beep)] += beep * 0.5
        meta = {"labels": ["beep"], "count": count, "pitch_hz": freq}
        prompts = ["How many beeps are there?", "Describe the sound.", "Is the pitch high or low?"]
    elif kind == "tone":
        freq = int(rng.choice([220, 330, 440, 550, 880]))
        y = _tone(freq, seconds, rate) * 0.4
        meta = {"caption": f"a steady sine tone at {freq} Hz", "pitch_hz": freq}
        prompts = ["What do you hear?", "Does the sound change over time?"]
    elif kind == "noise":
        level = str(rng.choice(["quiet", "loud"]))
        gain = 0.05 if level == "quiet" else 0.5
        y = _fade(rng.standard_normal(len(silence)).astype(np.float32) * gain, rate)
        meta = {"caption": f"{level} white noise", "loudness": level}
        prompts = ["Describe the sound.", "Is this loud or quiet?"]
    elif kind == "chirp":
        up = bool(rng.integers(0, 2))
        f0, f1 = (200.0, 2000.0) if up else (2000.0, 200.0)
        t = np.arange(len(silence)) / rate
        freq = f0 * (f1 / f0) ** (t / seconds)
        y = _fade(np.sin(2 * np.pi * np.cumsum(freq) / rate).astype(np.float32) * 0.4, rate)
        direction = "rising" if up else "falling"
        meta = {"caption": f"a {direction} frequency sweep", "direction": direction}
        prompts = ["Is the pitch going up or down?", "Describe the sound."]
    else:
        count = int(rng.integers(3, 9))
        seconds = max(seconds, count * 0.3 + 0.2)
        y = np.zeros(int(seconds * rate), dtype=np.float32)
        for k in range(count):
            start = int((0.1 + k * 0.3) * rate)
            y[start:start + 40] = 0.8
        meta = {"labels": ["click"], "count": count}
        prompts = ["How many clicks do you hear?", "What kind of sound is this?"]
    fmt = ["wav", "flac", "ogg"][i % 3]
    n_prompts = 1 + i % 3
    return Clip(f"event_{i:03d}_{kind}", "demo-sounds", y, rate, meta, prompts[:n_prompts], fmt)


def _music(i: int, rng: np.random.Generator) -> Clip:
    rate = int(rng.choice([22050, 44100]))
    wave = str(rng.choice(["sine", "square", "sawtooth"]))
    kind = ["scale", "chord", "melody"][i % 3]
    tempo = int(rng.choice([60, 90, 120, 150]))
    beat = 60.0 / tempo
    root = int(rng.integers(57, 67))
    if kind == "scale":
        steps = [0, 2, 4, 5, 7, 9, 11, 12]
        notes = [root + s for s in steps]
        y = np.concatenate([_tone(_note_freq(n), beat, rate, wave) * 0.3 for n in notes])
        meta = {"caption": f"an ascending major scale starting on {_note_name(root)}",
                "tempo_bpm": tempo, "timbre": wave, "key": f"{_note_name(root)[:-1]} major"}
        prompts = ["Is the melody going up or down?", "Describe the music.", "What is the tempo?"]
    elif kind == "chord":
        minor = bool(rng.integers(0, 2))
        chord = [root, root + (3 if minor else 4), root + 7]
        seconds = float(np.clip(rng.lognormal(np.log(6.0), 0.8), 1.0, 33.0))
        if i == 1:
            seconds = 32.5  # always one clip longer than a 30 s encoder window
        y = sum(_tone(_note_freq(n), seconds, rate, wave) for n in chord) * 0.2
        quality = "minor" if minor else "major"
        meta = {"caption": f"a sustained {_note_name(root)[:-1]} {quality} chord", "timbre": wave,
                "chord_quality": quality}
        prompts = ["Does this chord sound happy or sad?", "Describe the music."]
    else:
        length = int(rng.integers(6, 40))
        notes = [root + int(s) for s in rng.choice([0, 2, 4, 7, 9, 12], size=length)]
        y = np.concatenate([_tone(_note_freq(n), beat / 2, rate, wave) * 0.3 for n in notes])
        meta = {"caption": f"a simple melody of {length} notes", "tempo_bpm": tempo, "timbre": wave,
                "notes": [_note_name(n) for n in notes[:8]]}
        prompts = ["Describe the music.", "Is the tempo fast or slow?"]
    stereo = i % 4 == 1
    audio = np.stack([y, y * 0.8], axis=1) if stereo else y
    if stereo:
        meta["channels"] = 2
    return Clip(f"music_{i:03d}_{kind}", "demo-music", audio.astype(np.float32), rate, meta,
                prompts[: 1 + i % 3], ["flac", "wav"][i % 2])


def _speech(i: int, rng: np.random.Generator, out: Path) -> Clip | None:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        return None
    import soundfile as sf

    text = SENTENCES[i % len(SENTENCES)]
    voice, gender = [("en-us", "male"), ("en-us+f3", "female"), ("en-gb", "male"), ("en-gb+f2", "female")][i % 4]
    speed = int(rng.choice([140, 170]))
    wav = out / f".speech_{i}.wav"
    subprocess.run([espeak, "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True,
                   capture_output=True)
    audio, rate = sf.read(wav, dtype="float32")
    wav.unlink()
    meta = {"transcript": text, "gender": gender, "accent": "American" if "us" in voice else "British",
            "speaking_rate_wpm": speed}
    prompts = ["What does the speaker say?", "Describe the speaker's voice.", "Is the speaker male or female?"]
    return Clip(f"speech_{i:03d}", "demo-speech", audio, rate, meta, prompts[: 1 + i % 3], "wav")


def _long(i: int, rng: np.random.Generator) -> Clip:
    rate = 16000
    seconds = 60.0 + 15 * i
    y = _fade(rng.standard_normal(int(seconds * rate)).astype(np.float32) * 0.05, rate)
    return Clip(f"long_{i:03d}", "demo-sounds", y, rate, {"caption": "a long stretch of faint noise"},
                ["Describe the sound."], "flac")


def _write(clip: Clip, folder: Path) -> str:
    import soundfile as sf

    name = f"{clip.name}.{clip.fmt}"
    subtype = {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS"}[clip.fmt]
    sf.write(folder / name, clip.audio, clip.rate, subtype=subtype, format=clip.fmt.upper())
    return name


def _broken_files(folder: Path, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(file name, what is wrong) for files broken on purpose."""
    import soundfile as sf

    (folder / "broken_empty.wav").write_bytes(b"")
    good = folder / "broken_truncated.wav"
    sf.write(good, rng.standard_normal(16000 * 3).astype(np.float32) * 0.1, 16000, subtype="PCM_16")
    data = good.read_bytes()
    good.write_bytes(data[:60])  # the header promises 3 s; almost no samples follow
    (folder / "broken_not_audio.wav").write_text("this is a text file, not audio\n")
    return [
        ("broken_empty.wav", "empty file"),
        ("broken_truncated.wav", "truncated file"),
        ("broken_not_audio.wav", "not audio"),
        ("broken_missing.flac", "missing file"),
    ]


def write_demo_corpus(out_dir: str | Path, config: DemoCorpusConfig | None = None) -> Path:
    """Write the demo corpus into ``out_dir`` (``audio/`` plus ``manifest.jsonl``).

    Returns:
        The manifest path. ``corpus.json`` beside it records what was made (and whether
        speech was skipped because espeak-ng is missing).
    """
    config = config or DemoCorpusConfig()
    out = Path(out_dir)
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    clips: list[Clip] = [_sound_event(i, rng) for i in range(config.sound_events)]
    clips += [_music(i, rng) for i in range(config.music)]
    speech = [_speech(i, rng, audio_dir) for i in range(config.speech)]
    clips += [c for c in speech if c is not None]
    clips += [_long(i, rng) for i in range(config.long_clips)]
    rows: list[dict[str, Any]] = []
    for clip in clips:
        name = _write(clip, audio_dir)
        for n, prompt in enumerate(clip.prompts):
            rows.append({"id": f"{clip.name}-p{n}", "audio": f"audio/{name}", "dataset": clip.dataset,
                         "metadata": clip.metadata, "prompt": prompt})
    # One cut of an existing clip, and one row without a prompt (cached, never rephrased).
    if clips:
        first = clips[0]
        rows.append({"id": f"{first.name}-cut", "audio": f"audio/{first.name}.{first.fmt}",
                     "dataset": first.dataset, "metadata": first.metadata, "start": 0.0,
                     "end": round(len(first.audio) / first.rate / 2, 3), "prompt": "Describe the sound."})
        rows.append({"id": f"{first.name}-noprompt", "audio": f"audio/{first.name}.{first.fmt}",
                     "dataset": first.dataset, "metadata": first.metadata})
    broken = _broken_files(audio_dir, rng) if config.broken else []
    for name, what in broken:
        rows.append({"id": f"{Path(name).stem}", "audio": f"audio/{name}", "dataset": "demo-sounds",
                     "metadata": {"caption": f"a deliberately broken file ({what})"},
                     "prompt": "Describe the sound."})
    manifest = write_manifest(rows, out / "manifest.jsonl")
    durations = [len(c.audio) / c.rate for c in clips]
    counts = input_counts(read_manifest(manifest).instances)
    summary = {
        # The counts every command prints (pipeline.counts); "good_files" are the audio files made
        # whole, the rest of "audio_files" are broken on purpose.
        "counts": counts.to_dict(), "counts_line": counts.line(), "good_files": len(clips),
        "instances": len(rows), "broken_files": [b[0] for b in broken],
        "speech": "espeak-ng" if any(speech) else "skipped: espeak-ng is not installed",
        "shortest_s": round(min(durations), 2) if durations else None,
        "longest_s": round(max(durations), 2) if durations else None,
        "seed": config.seed,
    }
    (out / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
    return manifest
