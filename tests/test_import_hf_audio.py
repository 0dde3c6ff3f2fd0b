"""``alarm manifest import hf-audio``: real ``datasets`` folders (save_to_disk) and Parquet files with
embedded and path audio, mapped field by field; embedded bytes land unchanged in tar shards."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from importer_fixtures import assert_checks_and_stats, by_id, cli, rejects_of, wav

from alarm.pipeline.extract_stages import key_source


def audio_features(**more):
    from datasets import Audio, Features, Value

    return Features({"audio": {"bytes": Value("binary"), "path": Value("string")}, **more}), Audio(decode=False)


@pytest.fixture
def clips(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    return {"a": wav(src / "a.wav", 1.0), "b": wav(src / "b.flac", 0.5, rate=22050, fmt="FLAC"),
            "c": wav(src / "clips" / "c.wav", 0.75, channels=2)}


def write_dataset_dict(folder: Path, clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two splits; ``save_to_disk`` embeds every file's bytes (given as bytes or as a path), one row has
    no audio."""
    from datasets import ClassLabel, Dataset, DatasetDict, Value

    monkeypatch.chdir(clips["a"].parent)  # datasets reads path-only audio from the current folder
    features, audio = audio_features(label=ClassLabel(names=["dog", "rain", "speech"]), text=Value("string"),
                                     caption=Value("string"), speaker=Value("string"), uid=Value("string"))
    train = Dataset.from_dict({
        "audio": [{"bytes": clips["a"].read_bytes(), "path": "a.wav"}, {"bytes": clips["b"].read_bytes(), "path": None},
                  {"bytes": None, "path": str(clips["c"])}, None],
        "label": [0, 1, 2, -1], "text": [None, None, "hello there", None],
        "caption": ["a dog barks", "rain", None, "x"], "speaker": [None, None, "spk1", None],
        "uid": ["u-a", "u-b", "u-c", "u-none"],
    }, features=features).cast_column("audio", audio)
    test = Dataset.from_dict({
        "audio": [{"bytes": None, "path": "clips/c.wav"}], "label": [0], "text": [None], "caption": ["again"],
        "speaker": [None], "uid": ["u-a"],
    }, features=features).cast_column("audio", audio)
    DatasetDict({"train": train, "test": test}).save_to_disk(str(folder))
    monkeypatch.undo()


def test_save_to_disk_folder(tmp_path: Path, clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    write_dataset_dict(tmp_path / "src" / "toy_ds", clips, monkeypatch)
    out = tmp_path / "out" / "toy.jsonl"
    result = cli("manifest", "import", "hf-audio", tmp_path / "src" / "toy_ds", out, "--transcript", "text",
                 "--caption", "caption", "--labels", "label", "--meta", "speaker")
    assert result.exit_code == 0, result.output
    assert "hf-audio: 4 instances (4 clips, 1 datasets)" in result.output and "1 rejected" in result.output
    rows = by_id(out)
    shard = "toy-audio/toy_ds-000000.tar"
    assert rows["toy_ds/train/0"] == {"id": "toy_ds/train/0", "audio": f"{shard}#000000000.wav",
                                      "dataset": "toy_ds", "metadata": {"caption": "a dog barks", "labels": ["dog"]}}
    assert rows["toy_ds/train/1"]["audio"] == f"{shard}#000000001.flac"  # sniffed from the bytes
    assert rows["toy_ds/train/1"]["metadata"] == {"caption": "rain", "labels": ["rain"]}
    assert rows["toy_ds/train/2"] == {"id": "toy_ds/train/2", "audio": f"{shard}#000000002.wav", "dataset": "toy_ds",
                                      "metadata": {"transcript": "hello there", "labels": ["speech"],
                                                   "speaker": "spk1"}}
    assert rows["toy_ds/test/0"]["audio"] == f"{shard}#000000003.wav"
    assert rejects_of(out) == {"toy_ds/train/3": "missing: no audio in column 'audio'"}
    # The shard holds the original bytes, so the clip keys are the original files' keys.
    with tarfile.open(out.parent / shard) as tar:
        assert tar.extractfile("000000000.wav").read() == clips["a"].read_bytes()
        assert tar.extractfile("000000001.flac").read() == clips["b"].read_bytes()
        assert tar.extractfile("000000003.wav").read() == clips["c"].read_bytes()
    member = f"{out.parent / shard}#000000001.flac"
    assert key_source(member, None, None)[0] == key_source(str(clips["b"]), None, None)[0]
    assert_checks_and_stats(out, instances=4, hours=(1.0 + 0.5 + 0.75 + 0.75) / 3600)


def test_path_audio_in_arrow_files(tmp_path: Path, clips: dict[str, Path]) -> None:
    """Audio as paths: the Audio struct without bytes (absolute, relative, missing) and a plain text column."""
    import pyarrow as pa

    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "audio": pa.array([{"bytes": None, "path": str(clips["a"])}, {"bytes": None, "path": "clips/c.wav"},
                           {"bytes": None, "path": "gone.wav"}], type=struct),
        "file": ["b.flac", "a.wav", "nope.wav"], "sentence": ["one", "two", "three"],
    })
    (tmp_path / "arrow").mkdir()
    with pa.ipc.new_stream(tmp_path / "arrow" / "train-00000.arrow", table.schema) as writer:
        writer.write_table(table)
    out = tmp_path / "paths.jsonl"
    result = cli("manifest", "import", "hf-audio", tmp_path / "arrow", out, "--transcript", "sentence",
                 "--audio-root", tmp_path / "src")
    assert result.exit_code == 0, result.output
    assert [r["audio"] for r in by_id(out).values()] == ["src/a.wav", "src/clips/c.wav"]
    assert rejects_of(out) == {"arrow/train/2": f"missing: audio file not found: {tmp_path}/src/gone.wav"}
    result = cli("manifest", "import", "hf-audio", tmp_path / "arrow", out, "--audio", "file", "--audio-root",
                 tmp_path / "src", "--dataset", "plain")
    assert [(r["id"], r["audio"]) for r in by_id(out).values()] == [("plain/train/0", "src/b.flac"),
                                                                   ("plain/train/1", "src/a.wav")]
    assert_checks_and_stats(out, instances=2, hours=1.5 / 3600)


def test_parquet_files_with_id_column_and_split_choice(tmp_path: Path, clips: dict[str, Path]) -> None:
    from datasets import Sequence, Value

    features, audio = audio_features(tags=Sequence(Value("string")), question=Value("string"),
                                     key=Value("string"))
    from datasets import Dataset

    ds = Dataset.from_dict({
        "audio": [{"bytes": clips["a"].read_bytes(), "path": "x/a.wav"}, {"bytes": clips["b"].read_bytes(), "path": "b"}],
        "tags": [["dog", "bark"], []], "question": ["What animal is this?", "  "], "key": ["k1", "k2"],
    }, features=features).cast_column("audio", audio)
    (tmp_path / "hub" / "data").mkdir(parents=True)
    ds.to_parquet(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet")
    ds.select([1]).to_parquet(tmp_path / "hub" / "data" / "test-00000-of-00001.parquet")
    out = tmp_path / "hub.jsonl"
    result = cli("manifest", "import", "hf-audio", tmp_path / "hub", out, "--labels", "tags", "--prompt", "question",
                 "--id-column", "key", "--split", "train", "--dataset", "sounds", "--shards-dir", tmp_path / "shards")
    assert result.exit_code == 0, result.output
    rows = by_id(out)
    assert rows == {
        "k1": {"id": "k1", "audio": "shards/sounds-000000.tar#000000000.wav", "dataset": "sounds",
               "metadata": {"labels": ["dog", "bark"]}, "prompt": "What animal is this?"},
        "k2": {"id": "k2", "audio": "shards/sounds-000000.tar#000000001.flac", "dataset": "sounds"},
    }
    assert_checks_and_stats(out, instances=2, hours=1.5 / 3600)
    # The same import again replaces the shards rather than adding to them.
    assert cli("manifest", "import", "hf-audio", tmp_path / "hub", out, "--id-column", "key", "--split", "train",
               "--dataset", "sounds", "--shards-dir", tmp_path / "shards").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["sounds-000000.tar"]


def test_bad_sources_fail_in_one_line(tmp_path: Path, clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
                                      ) -> None:
    write_dataset_dict(tmp_path / "ds", clips, monkeypatch)
    cases = [
        ([tmp_path / "nothing"], "does not exist"),
        ([tmp_path / "src"], "holds no dataset"),
        ([tmp_path / "ds", "--transcript", "words"], "has no column(s) ['words']"),
        ([tmp_path / "ds", "--split", "validation"], "has no split(s) ['validation']; it has ['train', 'test']"),
    ]
    for args, message in cases:
        result = cli("manifest", "import", "hf-audio", args[0], tmp_path / "o.jsonl", *args[1:])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
