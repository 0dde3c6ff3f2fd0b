"""``alarm manifest import lhotse``: CutSets and RecordingSet + SupervisionSet pairs written with lhotse
itself, mapped field by field; the layouts we cannot represent are rejected with their reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from importer_fixtures import assert_checks_and_stats, by_id, cli, rejects_of, wav


@pytest.fixture
def recordings(tmp_path: Path) -> dict:
    """Real files and their lhotse Recordings: a 3 s conversation, a 2 s utterance (relative path),
    a stereo file, a pair of per-channel files, a missing file and a URL."""
    from lhotse import AudioSource, Recording

    audio = tmp_path / "audio"
    talk = Recording.from_file(wav(audio / "talk.wav", 3.0), recording_id="talk")
    utt = Recording.from_file(wav(audio / "utt.flac", 2.0, fmt="FLAC"), recording_id="utt")
    utt.sources[0].source = "utt.flac"  # relative: resolved against --audio-root
    stereo = Recording.from_file(wav(audio / "stereo.wav", 1.0, channels=2), recording_id="stereo")
    left, right = wav(audio / "left.wav", 1.0), wav(audio / "right.wav", 1.0)
    pair = Recording(id="pair", sources=[AudioSource("file", [0], str(left)), AudioSource("file", [1], str(right))],
                     sampling_rate=16000, num_samples=16000, duration=1.0)
    gone = Recording(id="gone", sources=[AudioSource("file", [0], str(audio / "gone.wav"))],
                     sampling_rate=16000, num_samples=16000, duration=1.0)
    web = Recording(id="web", sources=[AudioSource("url", [0], "https://example.org/x.wav")],
                    sampling_rate=16000, num_samples=16000, duration=1.0)
    return {r.id: r for r in (talk, utt, stereo, pair, gone, web)}


def supervisions() -> list:
    from lhotse import SupervisionSegment

    return [
        SupervisionSegment("talk-1", "talk", 0.0, 1.2, text="How are you?", speaker="A", gender="male",
                           language="en"),
        SupervisionSegment("talk-2", "talk", 1.5, 1.4, text="Fine, thanks.", speaker="B", language="en",
                           custom={"emotion": "happy"}),
        SupervisionSegment("utt-1", "utt", 0.0, 2.0, text="Turn left here.", speaker="S1", gender="female",
                           language="de", custom={"accent": "bavarian", "scores": [1, 2]}),
    ]


def test_recordings_and_supervisions(tmp_path: Path, recordings: dict) -> None:
    from lhotse import RecordingSet, SupervisionSet

    RecordingSet.from_recordings([recordings["talk"], recordings["utt"]]).to_file(tmp_path / "recs.jsonl.gz")
    SupervisionSet.from_segments(supervisions()).to_file(tmp_path / "sups.jsonl.gz")
    out = tmp_path / "m.jsonl"
    result = cli("manifest", "import", "lhotse", tmp_path / "recs.jsonl.gz", out, "--supervisions",
                 tmp_path / "sups.jsonl.gz", "--dataset", "talks", "--audio-root", tmp_path / "audio")
    assert result.exit_code == 0, result.output
    assert "lhotse: 2 instances (2 clips, 1 datasets)" in result.output and "0 rejected" in result.output
    rows = list(by_id(out).values())
    talk = next(r for r in rows if r["audio"] == "audio/talk.wav")
    utt = next(r for r in rows if r["audio"] == "audio/utt.flac")
    assert talk["dataset"] == utt["dataset"] == "talks"
    assert "start" not in talk and "end" not in talk  # the whole recording: no cut
    assert talk["metadata"] == {"language": "en", "segments": [
        {"start": 0.0, "end": 1.2, "text": "How are you?", "speaker": "A", "gender": "male"},
        {"start": 1.5, "end": 2.9, "text": "Fine, thanks.", "speaker": "B"}]}
    assert utt["metadata"] == {"transcript": "Turn left here.", "speaker": "S1", "gender": "female",
                               "language": "de", "accent": "bavarian"}
    assert_checks_and_stats(out, instances=2, hours=5.0 / 3600)


def test_cutset_offsets_channels_and_rejects(tmp_path: Path, recordings: dict, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    from lhotse import CutSet, MonoCut, MultiCut, SupervisionSegment

    monkeypatch.chdir(tmp_path / "audio")  # lhotse's default: relative sources against the current folder
    sup = SupervisionSegment("utt-1", "utt", 0.25, 0.5, text="left", speaker="S1")
    cuts = [
        MonoCut("utt-cut", 1.0, 0.75, 0, recording=recordings["utt"], supervisions=[sup],
                custom={"split": "dev"}),
        MultiCut("stereo-all", 0.0, 1.0, [0, 1], recording=recordings["stereo"]),
        MonoCut("stereo-left", 0.0, 1.0, 0, recording=recordings["stereo"]),
        MultiCut("pair", 0.0, 1.0, [0, 1], recording=recordings["pair"]),
        MonoCut("gone", 0.0, 1.0, 0, recording=recordings["gone"]),
        MonoCut("web", 0.0, 1.0, 0, recording=recordings["web"]),
        MonoCut("utt-cut", 0.0, 0.5, 0, recording=recordings["utt"]),  # the same id again
    ]
    cuts.append(MonoCut("talk-pad", 0.0, 3.0, 0, recording=recordings["talk"]).pad(duration=4.0))
    CutSet.from_cuts(cuts).to_file(tmp_path / "cuts.jsonl.gz")
    out = tmp_path / "out" / "cuts.jsonl"
    result = cli("manifest", "import", "lhotse", tmp_path / "cuts.jsonl.gz", out)
    assert result.exit_code == 0, result.output
    assert "lhotse: 2 instances" in result.output and "6 rejected" in result.output
    rows = by_id(out)
    assert rows["utt-cut"] == {"id": "utt-cut", "audio": str(tmp_path / "audio" / "utt.flac"), "dataset": "cuts",
                               "start": 1.0, "end": 1.75,
                               "metadata": {"split": "dev", "transcript": "left", "speaker": "S1"}}
    assert rows["stereo-all"] == {"id": "stereo-all", "audio": str(tmp_path / "audio" / "stereo.wav"),
                                  "dataset": "cuts"}
    reasons = rejects_of(out)
    assert reasons["stereo-left"].startswith("unsupported: the cut keeps channel(s) [0] of a 2-channel recording")
    assert reasons["pair"].startswith("unsupported: the recording has 2 sources")
    assert reasons["gone"] == f"missing: audio file not found: {tmp_path}/audio/gone.wav"
    assert reasons["web"] == "unsupported: a 'url' audio source; only files can be imported"
    assert reasons["utt-cut"] == "duplicate id (first in source record 1)"
    mixed = [reason for cut_id, reason in reasons.items() if cut_id not in rows and "MixedCut" in reason]
    assert mixed == ["unsupported: a MixedCut (several tracks or padding) has no single file"]
    assert_checks_and_stats(out, instances=2, hours=1.75 / 3600)


def test_per_supervision_and_bad_sources(tmp_path: Path, recordings: dict) -> None:
    from lhotse import CutSet, RecordingSet, SupervisionSet

    RecordingSet.from_recordings([recordings["talk"]]).to_file(tmp_path / "recs.jsonl")
    SupervisionSet.from_segments(supervisions()[:2]).to_file(tmp_path / "sups.jsonl")
    out = tmp_path / "turns.jsonl"
    result = cli("manifest", "import", "lhotse", tmp_path / "recs.jsonl", out, "--supervisions",
                 tmp_path / "sups.jsonl", "--per-supervision")
    assert result.exit_code == 0, result.output
    rows = list(by_id(out).values())
    assert [(r["start"], r["end"], r["metadata"]["transcript"]) for r in rows] == [
        (0.0, 1.2, "How are you?"), (1.5, 2.9, "Fine, thanks.")]
    assert rows[1]["metadata"] == {"transcript": "Fine, thanks.", "speaker": "B", "language": "en",
                                   "emotion": "happy"}
    assert_checks_and_stats(out, instances=2)
    (tmp_path / "empty.jsonl").write_text("")
    CutSet.from_manifests(recordings=RecordingSet.from_recordings([recordings["talk"]])).to_file(tmp_path / "c.jsonl")
    first = (tmp_path / "c.jsonl").read_text().splitlines()[0]
    (tmp_path / "broken.jsonl").write_text(first + "\n" + '{"id": "c2", "type": "MonoCut", "start": 0}\n')
    bad = [
        ([tmp_path / "nope.jsonl"], "does not exist"),
        ([tmp_path / "empty.jsonl"], "is empty"),
        ([tmp_path / "broken.jsonl"], "broken.jsonl: record 2 is not one lhotse can read"),
        ([tmp_path / "sups.jsonl"], "is a SupervisionSet; give a CutSet, or a RecordingSet with --supervisions"),
        ([tmp_path / "recs.jsonl", "--supervisions", tmp_path / "recs.jsonl"], "is not a SupervisionSet"),
    ]
    for args, message in bad:
        result = cli("manifest", "import", "lhotse", args[0], tmp_path / "x.jsonl", *args[1:])
        assert result.exit_code == 2 and message in result.output, result.output
