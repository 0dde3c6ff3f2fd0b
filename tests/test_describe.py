"""The description builder (docs/method.md §5) on each shape of labels."""

from __future__ import annotations

import pytest

from alarm.pipeline.manifest import Instance
from alarm.rephrase.describe import build_description, instance_description, timestamp


def test_speech_with_attributes() -> None:
    text = build_description({"transcript": " Turn left here. ", "gender": "female"}, 3.2)
    assert text == "[00:00-00:03] Turn left here. (duration: 3s, gender: female)"


def test_caption_and_labels_between_pipes() -> None:
    assert build_description({"caption": "dog barking"}, 10.0) == "[00:00-00:10] |dog barking| (duration: 10s)"
    assert (
        build_description({"labels": ["dog", "bark"], "source": "AudioSet"}, 9.6)
        == "[00:00-00:10] |dog, bark| (duration: 10s, source: AudioSet)"
    )
    assert (
        build_description({"caption": "rain", "labels": ["weather"]}, 4)
        == "[00:00-00:04] |rain| |weather| (duration: 4s)"
    )


def test_multi_speaker_turns() -> None:
    meta = {
        "segments": [
            {"start": 3.4, "end": 7.0, "text": "Fine, thanks.", "speaker": "B", "emotion": "neutral"},
            {"start": 0.0, "end": 3.4, "text": "How are you?", "speaker": "A", "gender": "male"},
        ],
        "language": "en",
    }
    assert build_description(meta, 7.0).splitlines() == [
        "[00:00-00:03] How are you? (speaker: A, gender: male)",
        "[00:03-00:07] Fine, thanks. (speaker: B, emotion: neutral)",
        "(duration: 7s, language: en)",
    ]


def test_rounding_lists_and_minutes() -> None:
    assert timestamp(59.5) == "01:00" and timestamp(125.2) == "02:05" and timestamp(0.49) == "00:00"
    assert build_description({}, 0.3) == "[00:00-00:01] (duration: 1s)"
    assert build_description({"tempo": 120.0, "instruments": ["piano", "drums"], "duration": 99}, 2.5) == (
        "[00:00-00:03] (duration: 3s, tempo: 120, instruments: piano, drums)"
    )
    with pytest.raises(ValueError):
        build_description({}, float("nan"))


def test_precomputed_description_wins() -> None:
    inst = Instance(id="x", audio="/a.wav", dataset="d", metadata={"caption": "c"}, description="given")
    assert instance_description(inst, 5.0) == "given"
    plain = Instance(id="y", audio="/a.wav", dataset="d", metadata={"caption": "c"})
    assert instance_description(plain, 5.0) == "[00:00-00:05] |c| (duration: 5s)"
