"""The importers as a whole: the registry is what the CLI offers, the README's import runs as written,
and the pieces every importer shares (audio suffixes, labels, tar shards)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from importer_fixtures import cli
from test_readme import commands, fresh_clone, readme_block, run_script, shell_env  # noqa: F401 (fixture)

from alarm.pipeline.importers.commands import import_command
from alarm.pipeline.importers.hf_audio import labels_of
from alarm.pipeline.importers.registry import IMPORTERS
from alarm.pipeline.importers.shards import ShardWriter, sniff_suffix


def test_the_cli_offers_exactly_the_registry() -> None:
    assert sorted(import_command.commands) == sorted(IMPORTERS)
    result = cli("manifest", "import", "--help")
    assert result.exit_code == 0 and all(name in result.output for name in IMPORTERS)


def test_readme_import_runs_as_written(tmp_path: Path, shell_env: dict[str, str]) -> None:  # noqa: F811
    clone = fresh_clone(tmp_path / "clone")
    mine = [c for c in commands(readme_block()) if "imported.jsonl" in c]
    assert mine and mine[0].startswith("alarm manifest import csv")
    result = run_script(mine, clone, shell_env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (clone / "out" / "imported.jsonl").read_text().splitlines()]
    assert rows == [
        {"id": "examples/1", "dataset": "examples", "audio": str(clone / "manifests/examples/sound.wav"),
         "metadata": {"labels": ["beep"], "pitch_hz": "880"}},
        {"id": "examples/2", "dataset": "examples", "audio": str(clone / "manifests/examples/speech.wav"),
         "metadata": {"labels": ["speech"]}},
    ]
    assert "0 rejected rows" in result.stdout and "examples" in result.stdout  # check, then stats


def test_suffixes_labels_and_shards(tmp_path: Path) -> None:
    assert sniff_suffix(b"fLaC....") == ".flac" and sniff_suffix(b"RIFF....") == ".wav"
    assert sniff_suffix(b"OggS" + b"\0" * 24 + b"OpusHead") == ".opus" and sniff_suffix(b"ID3...") == ".mp3"
    assert sniff_suffix(b"????", "clip.MP3") == ".mp3" and sniff_suffix(b"????", "x.txt") == ".bin"
    assert labels_of([0, 2, -1], ["dog", "cat", "owl"], None) == ["dog", "owl"]
    assert labels_of("dog; bark ;", None, ";") == ["dog", "bark"] and labels_of(None, None, None) == []
    try:
        labels_of(5, ["dog"], None)
        raise AssertionError("an out-of-range class must be refused")
    except ValueError as err:
        assert "label 5 is not a class of this dataset (1 classes)" in str(err)
    with ShardWriter(tmp_path, prefix="p", max_members=2) as writer:
        addresses = [writer.add(bytes([i]) * 10, hint=f"{i}.wav") for i in range(5)]
    assert [Path(a.split("#")[0]).name for a in addresses] == ["p-000000.tar"] * 2 + ["p-000001.tar"] * 2 + [
        "p-000002.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p-000000.tar", "p-000001.tar", "p-000002.tar"]
    with tarfile.open(tmp_path / "p-000001.tar") as tar:
        assert tar.getnames() == ["000000002.wav", "000000003.wav"]
        assert tar.extractfile("000000003.wav").read() == bytes([3]) * 10
