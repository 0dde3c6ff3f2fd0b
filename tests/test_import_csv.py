"""``alarm manifest import csv``: the three mappings of manifests/README.md on tiny fixtures, hostile rows,
TSV and templates, and bad options as one-line errors."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from importer_fixtures import assert_checks_and_stats, by_id, cli, rejects_of, wav

REPO = Path(__file__).resolve().parents[1]


def readme_command(name: str) -> list[str]:
    """The README's example command for ``name`` (AudioCaps, Clotho, ESC-50), without ``alarm``."""
    text = (REPO / "manifests" / "README.md").read_text()
    block = text[text.index(f"<!-- csv-example: {name} -->"):]
    command = re.search(r"```bash\n(.*?)```", block, flags=re.S).group(1)
    args = shlex.split(command.replace("\\\n", " "))
    assert args[:4] == ["alarm", "manifest", "import", "csv"]
    return args[1:]


def test_esc50_style(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    wav(tmp_path / "ESC-50" / "audio" / "1-100032-A-0.wav", 1.0)
    wav(tmp_path / "ESC-50" / "audio" / "1-110389-A-0.wav", 0.5, rate=44100)
    (tmp_path / "ESC-50" / "meta").mkdir()
    (tmp_path / "ESC-50" / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n"
        "1-100032-A-0.wav,1,0,dog,True,100032,A\n"
        "1-110389-A-0.wav,2,0,dog,True,110389,A\n"
        "1-404-A-1.wav,1,1,rooster,False,404,A\n")
    result = cli(*readme_command("ESC-50"))  # run as the README writes it
    assert result.exit_code == 0, result.output
    assert "csv: 2 instances (2 clips, 1 datasets)" in result.output and "1 rejected" in result.output
    rows = by_id(tmp_path / "esc50.jsonl")
    assert rows["esc50/1"] == {"id": "esc50/1", "dataset": "esc50", "audio": "ESC-50/audio/1-100032-A-0.wav",
                               "metadata": {"labels": ["dog"], "fold": "1"}}
    assert rows["esc50/2"]["metadata"] == {"labels": ["dog"], "fold": "2"}
    assert rejects_of(tmp_path / "esc50.jsonl") == {
        "esc50/3": f"missing: audio file not found: {tmp_path}/ESC-50/audio/1-404-A-1.wav"}
    assert_checks_and_stats(tmp_path / "esc50.jsonl", instances=2, hours=1.5 / 3600)


def test_clotho_style(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    wav(tmp_path / "clotho" / "development" / "Birds at dawn.wav", 1.2)
    wav(tmp_path / "clotho" / "development" / "rain, roof.wav", 0.8)
    (tmp_path / "clotho" / "clotho_captions_development.csv").write_text(
        "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
        "Birds at dawn.wav,Birds chirp loudly at dawn.,b,c,d,e\n"
        '"rain, roof.wav","Rain falls on a tin roof, steadily.",b,c,d,e\n')
    result = cli(*readme_command("Clotho"))
    assert result.exit_code == 0, result.output
    rows = list(by_id(tmp_path / "out" / "clotho.jsonl").values())
    assert [r["metadata"] for r in rows] == [{"caption": "Birds chirp loudly at dawn."},
                                           {"caption": "Rain falls on a tin roof, steadily."}]
    # Audio outside the manifest's folder is written as an absolute path.
    assert rows[1]["audio"] == str(tmp_path / "clotho" / "development" / "rain, roof.wav")
    assert {r["dataset"] for r in rows} == {"clotho"} and rejects_of(tmp_path / "out" / "clotho.jsonl") == {}
    assert_checks_and_stats(tmp_path / "out" / "clotho.jsonl", instances=2, hours=2.0 / 3600)


def test_audiocaps_style_with_a_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    wav(tmp_path / "audiocaps" / "audio" / "Y--0w1YA1Hm4.wav", 1.0)
    wav(tmp_path / "audiocaps" / "audio" / "Y-0Gj8-vB1q4.wav", 0.7)
    (tmp_path / "audiocaps" / "train.csv").write_text(
        "audiocap_id,youtube_id,start_time,caption\n"
        "91139,--0w1YA1Hm4,30,A vehicle driving as a man and woman are talking and laughing\n"
        "58146,-0Gj8-vB1q4,30,High pitched speaking and laughing\n"
        "58146,-0Gj8-vB1q4,30,the same audiocap_id again\n")
    result = cli(*readme_command("AudioCaps"))
    assert result.exit_code == 0, result.output
    rows = by_id(tmp_path / "audiocaps.jsonl")
    assert rows["91139"] == {"id": "91139", "dataset": "audiocaps", "audio": "audiocaps/audio/Y--0w1YA1Hm4.wav",
                             "metadata": {"caption": "A vehicle driving as a man and woman are talking and laughing"}}
    assert rejects_of(tmp_path / "audiocaps.jsonl") == {"58146": "duplicate id (first in source record 3)"}
    assert_checks_and_stats(tmp_path / "audiocaps.jsonl", instances=2)


def test_tsv_cuts_labels_and_hostile_rows(tmp_path: Path) -> None:
    wav(tmp_path / "a.wav", 3.0)
    (tmp_path / "m.tsv").write_text(
        "path\tfrom\tto\ttags\tspeech\tset\n"
        "a.wav\t0.5\t2.0\tdog; bark \t\tsounds\n"
        "a.wav\t1\tsoon\tdog\t\tsounds\n"         # not a number
        "a.wav\t2.0\t1.0\tdog\t\tsounds\n"        # empty cut (parse_row's own check)
        "\t0\t1\tdog\t\tsounds\n"                  # no audio
        "a.wav\t0\t1\n"                            # too few cells
        "a.wav\t\t\t\thello there\tspeech\n")
    out = tmp_path / "m.jsonl"
    result = cli("manifest", "import", "csv", tmp_path / "m.tsv", out, "--map", "audio=path", "--map", "start=from",
                 "--map", "end=to", "--map", "labels=tags", "--map", "transcript=speech", "--map", "dataset=set",
                 "--map", "id={set}-{path}-{from}", "--label-sep", ";")
    assert result.exit_code == 0, result.output
    rows = by_id(out)
    assert rows["sounds-a.wav-0.5"] == {"id": "sounds-a.wav-0.5", "dataset": "sounds", "audio": "a.wav",
                                        "start": 0.5, "end": 2.0, "metadata": {"labels": ["dog", "bark"]}}
    assert rows["speech-a.wav-"] == {"id": "speech-a.wav-", "dataset": "speech", "audio": "a.wav",
                                     "metadata": {"transcript": "hello there"}}
    reasons = sorted(rejects_of(out).values())
    assert reasons == ["'end' must be a number of seconds, got 'soon'",
                       "empty cut: end (1.0) must be after start (2.0)",
                       "malformed row: 3 cells, the header has 6",
                       "missing: the audio cell is empty"]
    assert_checks_and_stats(out, instances=2, hours=4.5 / 3600)


def test_bad_options_fail_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("file,label\nx.wav,dog\n")
    cases = [
        (["--map", "labels=label"], "--map audio=COLUMN is required"),
        (["--map", "audio"], "is not FIELD=COLUMN"),
        (["--map", "audio=filename"], "has no column(s) ['filename']; its columns are ['file', 'label']"),
        (["--map", "audio={nope}.wav"], "has no column(s) ['nope']"),
    ]
    for options, message in cases:
        result = cli("manifest", "import", "csv", tmp_path / "m.csv", tmp_path / "o.jsonl", *options)
        assert result.exit_code == 2 and message in result.output, (options, result.output)
        assert "Traceback" not in result.output
    result = cli("manifest", "import", "csv", tmp_path / "m.csv", tmp_path / "o.jsonl", "--map", "audio=file")
    assert result.exit_code == 2 and "no row could be imported (1 rejected" in result.output
    assert rejects_of(tmp_path / "o.jsonl") == {"m/1": f"missing: audio file not found: {tmp_path}/x.wav"}
    assert not (tmp_path / "o.jsonl").exists()
