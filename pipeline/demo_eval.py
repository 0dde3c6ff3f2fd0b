"""A multiple-choice eval manifest built from the demo corpus's true labels.

The demo corpus (``pipeline/demo_corpus.py``) knows every label by construction: beep and click
counts, pitches, loudness, sweep direction, scale and melody notes, tempo, timbre, chord quality,
and for espeak-ng speech the sentence, voice gender and accent. Each readable clip under 60 s gets
one "sound, music or speech?" question plus one or two questions from its own labels, with
distractors drawn from the same label family. Everything is seeded by the question id, so the same
corpus always gives the same file.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alarm.pipeline.demo_corpus import NOTE_NAMES, SENTENCES
from alarm.pipeline.manifest import write_manifest

CATEGORIES = {"demo-sounds": "sound", "demo-music": "music", "demo-speech": "speech"}
KIND_OPTIONS = {"sound": "a sound effect", "music": "music", "speech": "speech"}
MAX_SECONDS = 60.0  # the feature cache drops clips this long, so the listener never learned them
NUMBER_OPTIONS = 4


def _choices(rng: random.Random, truth: str, pool: Sequence[str], n: int = NUMBER_OPTIONS) -> list[str]:
    """``truth`` plus up to ``n - 1`` distractors from ``pool``, in a seeded order."""
    distractors = sorted({p for p in pool if p != truth})
    picked = rng.sample(distractors, min(n - 1, len(distractors))) + [truth]
    rng.shuffle(picked)
    return picked


def _count_options(rng: random.Random, count: int) -> list[str]:
    """The true count among nearby counts (never below 1)."""
    low = max(1, count - rng.randint(0, NUMBER_OPTIONS - 1))
    return [str(n) for n in range(low, low + NUMBER_OPTIONS)]


def _label_questions(meta: dict[str, Any], transcripts: list[str]) -> list[tuple[str, str, list[str] | None]]:
    """(question, true answer, distractor pool or None for counts) from one clip's labels."""
    labels = meta.get("labels") or []
    found: list[tuple[str, str, list[str] | None]] = []
    if "count" in meta and labels:
        found.append((f"How many {labels[0]}s do you hear?", str(meta["count"]), None))
    if "pitch_hz" in meta:
        what = "beeps" if "beep" in labels else "tone"
        found.append((f"What is the pitch of the {what}?", f"{meta['pitch_hz']} Hz",
                      [f"{f} Hz" for f in (220, 330, 440, 550, 660, 880, 1000)]))
    if "loudness" in meta:
        found.append(("Is this noise loud or quiet?", meta["loudness"], ["loud", "quiet"]))
    if "direction" in meta:
        found.append(("Does the pitch rise or fall?", meta["direction"], ["rising", "falling"]))
    if "key" in meta:
        found.append(("On which note does the scale start?", meta["key"].split()[0], NOTE_NAMES))
    if "chord_quality" in meta:
        found.append(("Is the chord major or minor?", meta["chord_quality"], ["major", "minor"]))
    if "notes" in meta:
        found.append(("On which note does the melody start?", meta["notes"][0][:-1], NOTE_NAMES))
    if "tempo_bpm" in meta:
        found.append(("What is the tempo?", f"{meta['tempo_bpm']} BPM",
                      [f"{t} BPM" for t in (60, 90, 120, 150)]))
    if "timbre" in meta:
        found.append(("Which waveform does the instrument use?", meta["timbre"], ["sine", "square", "sawtooth"]))
    if "transcript" in meta:
        found.append(("What does the speaker say?", meta["transcript"], transcripts))
    if "gender" in meta:
        found.append(("Is the speaker male or female?", meta["gender"], ["male", "female"]))
    if "accent" in meta:
        found.append(("Which accent does the speaker have?", meta["accent"], ["American", "British"]))
    return found


def _clips(corpus: Path) -> list[dict[str, Any]]:
    """One row per usable clip of the corpus: whole files only, readable, shorter than 60 s."""
    from alarm.pipeline.probe import AudioUnreadable, probe_duration

    info = json.loads((corpus / "corpus.json").read_text()) if (corpus / "corpus.json").exists() else {}
    broken = set(info.get("broken_files", []))
    clips: dict[str, dict[str, Any]] = {}
    for text in (corpus / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(text)
        audio = row["audio"]
        if audio in clips or Path(audio).name in broken or "start" in row or "end" in row:
            continue
        try:
            if probe_duration(str(corpus / audio)) >= MAX_SECONDS:
                continue
        except AudioUnreadable:
            continue
        clips[audio] = row
    return list(clips.values())


def write_demo_eval(corpus_dir: str | Path, out: str | Path | None = None, seed: int = 0,
                    per_clip: int = 2) -> Path:
    """Write a multiple-choice eval manifest over the demo corpus written by ``write_demo_corpus``.

    Args:
        corpus_dir: the corpus folder (``manifest.jsonl``, ``corpus.json``, ``audio/``).
        out: manifest path (default ``<corpus_dir>/mcqa.jsonl``; audio paths are relative to it,
            so it must sit in ``corpus_dir``).
        seed: seed of the distractors and option order.
        per_clip: questions from each clip's own labels, besides "sound, music or speech?".

    Returns:
        The manifest path. Categories are sound, music and speech (the clip's domain); every answer
        is given as its option text and is one of the options.
    """
    corpus = Path(corpus_dir)
    if not (corpus / "manifest.jsonl").is_file():
        raise FileNotFoundError(f"{corpus} has no manifest.jsonl; write it with `alarm demo corpus`")
    path = Path(out) if out else corpus / "mcqa.jsonl"
    if path.resolve().parent != corpus.resolve():
        raise ValueError(f"the eval manifest must sit in the corpus folder {corpus} (its audio paths are relative)")
    clips = _clips(corpus)
    transcripts = sorted({c["metadata"]["transcript"] for c in clips if "transcript" in c.get("metadata", {})}
                         | set(SENTENCES))
    rows: list[dict[str, Any]] = []
    for clip in clips:
        category = CATEGORIES.get(clip["dataset"], "sound")
        stem = Path(clip["audio"]).stem
        asked = [("Is this a sound effect, music or speech?", KIND_OPTIONS[category], list(KIND_OPTIONS.values()))]
        found = _label_questions(clip.get("metadata", {}), transcripts)
        asked += random.Random(f"{seed}-{stem}").sample(found, min(per_clip, len(found)))
        for n, (question, truth, pool) in enumerate(asked):
            qid = f"{stem}-q{n}"
            rng = random.Random(f"{seed}-{qid}")
            options = _count_options(rng, int(truth)) if pool is None else _choices(rng, truth, pool)
            rows.append({"id": qid, "audio": clip["audio"], "question": question, "options": options,
                         "answer": truth, "category": category, "dataset": clip["dataset"]})
    return write_manifest(rows, path)
