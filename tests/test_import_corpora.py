"""``alarm manifest import alarm-corpora``: a tiny corpus and raw sets written with ``datasets`` under the
published column names; the join, its rejects, and the published targets read by the trainer's data code."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from importer_fixtures import assert_checks_and_stats, by_id, cli, rejects_of, wav
from test_readme import shell_env  # noqa: F401 (fixture: a Ray of its own for subprocesses)
from train_fixtures import write_feature_store

from alarm.pipeline.extract_stages import key_source

THINK = "The clip sounds like rain.</think>\n\nRain."


def corpus_row(name: str, uid1: str, uid2: str, prompt: str, index: int, answer: str = THINK) -> dict:
    return {"dataset_name": name, "context": prompt, "audio_description": f"[00:00-00:01] |{name} {uid1}|",
            "llm_answer_with_context": answer, "llm_answer_no_context": f"I hear {uid1}.</think>\n\n{uid1}.",
            "unique_id_1": uid1, "unique_id_2": uid2, "dataset_index": index}


def raw_set(folder: Path, rows: list[tuple[str, str, bytes | None]], split: str = "train") -> None:
    """A per-dataset raw set: a DatasetDict whose audio column holds the files' bytes."""
    from datasets import Audio, Dataset, DatasetDict, Features, Value

    features = Features({"audio": {"bytes": Value("binary"), "path": Value("string")},
                         "audio_description": Value("string"), "unique_id_1": Value("string"),
                         "unique_id_2": Value("string"), "dataset_index": Value("int64"), "duration": Value("float64")})
    ds = Dataset.from_dict({
        "audio": [None if data is None else {"bytes": data, "path": f"{u1}.wav"} for u1, _, data in rows],
        "audio_description": ["d"] * len(rows), "unique_id_1": [u1 for u1, _, _ in rows],
        "unique_id_2": [u2 for _, u2, _ in rows], "dataset_index": list(range(len(rows))),
        "duration": [1.0] * len(rows),
    }, features=features).cast_column("audio", Audio(decode=False))
    DatasetDict({split: ds}).save_to_disk(str(folder))


@pytest.fixture
def corpus(tmp_path: Path) -> dict:
    """corpus/ALARM-Corpora (the four splits) and corpus/raw/<dataset_name>/ (two raw sets)."""
    from datasets import Dataset, DatasetDict

    clips = {n: wav(tmp_path / "clips" / f"{n}.wav", s, freq=f)
             for n, s, f in (("c1", 1.0, 300), ("c2", 0.5, 500), ("s1", 0.75, 700), ("v1", 0.6, 900))}
    data = {n: p.read_bytes() for n, p in clips.items()}
    raw = tmp_path / "corpus" / "raw"
    raw_set(raw / "clotho", [("c1", "0", data["c1"]), ("c2", "0", data["c2"]), ("c3", "0", None),
                             ("v1", "0", data["v1"]), ("bad", "0", b"RIFF not really audio")])
    raw_set(raw / "librispeech", [("s1", "u1", data["s1"]), ("dup", "1", data["s1"]), ("dup", "1", data["c1"])],
            split="test")
    train = [corpus_row("clotho", "c1", "0", "What do you hear?", 0),
             corpus_row("clotho", "c2", "0", "Describe the sound.", 1),
             corpus_row("clotho", "c1", "0", "Again?", 2),               # duplicate key
             corpus_row("librispeech", "s1", "u1", "What is said?", 0),
             corpus_row("librispeech", "s9", "u9", "What is said?", 1),  # no raw row
             corpus_row("vocalsound", "x", "y", "Who laughs?", 0),        # no raw set
             corpus_row("clotho", "c3", "0", "Anything?", 3),             # raw row without audio
             corpus_row("librispeech", "dup", "1", "Twice?", 2)]          # key twice in the raw set
    validation = [corpus_row("clotho", "v1", "0", "Is it loud?", 4, answer="Unfinished thinking")]
    raw_validation = [*validation, corpus_row("clotho", "bad", "0", "Broken?", 5)]
    DatasetDict({name: Dataset.from_list(rows) for name, rows in (
        ("train", train), ("validation", validation), ("raw_train", train), ("raw_validation", raw_validation))
    }).save_to_disk(str(tmp_path / "corpus" / "ALARM-Corpora"))
    return {"src": tmp_path / "corpus" / "ALARM-Corpora", "clips": clips}


def test_join_maps_prompts_descriptions_and_rejects(tmp_path: Path, corpus: dict) -> None:
    out = tmp_path / "out" / "alarm.jsonl"
    result = cli("manifest", "import", "alarm-corpora", corpus["src"], out)
    assert result.exit_code == 0, result.output
    assert "alarm-corpora: 4 instances (4 clips, 2 datasets)" in result.output and "5 rejected" in result.output
    rows = by_id(out)
    shard = "alarm-audio/alarm-000000.tar"
    assert rows["clotho/c1/0"] == {"id": "clotho/c1/0", "audio": f"{shard}#000000000.wav", "dataset": "clotho",
                                   "prompt": "What do you hear?", "description": "[00:00-00:01] |clotho c1|"}
    assert rows["librispeech/s1/u1"]["prompt"] == "What is said?"
    assert set(rows) == {"clotho/c1/0", "clotho/c2/0", "clotho/v1/0", "librispeech/s1/u1"}
    raw = tmp_path / "corpus" / "raw"
    assert rejects_of(out) == {
        "clotho/c1/0": "duplicate key (first at train row 0)",
        "librispeech/s9/u9": f"unmatched: no row with this key in raw set {raw / 'librispeech'}",
        "vocalsound/x/y": f"unmatched: no raw set {raw / 'vocalsound'}",
        "clotho/c3/0": "missing: no audio in column 'audio' (raw set clotho, train row 2)",
        "librispeech/dup/1": "duplicate key in raw set librispeech (test row 1 and test row 2)",
    }
    # Each clip's bytes are copied once and decode to the original file's content key.
    member = f"{out.parent / shard}#000000000.wav"
    assert key_source(member, None, None)[0] == key_source(str(corpus["clips"]["c1"]), None, None)[0]
    assert_checks_and_stats(out, instances=4, hours=(1.0 + 0.5 + 0.75 + 0.6) / 3600)


def test_published_targets_load_in_the_trainer(tmp_path: Path, corpus: dict, qwen3_tokenizer) -> None:
    from alarm.trainer.data import join_targets, read_targets, targets_fingerprint
    from alarm.trainer.sequence import PromptLayout

    out, targets = tmp_path / "alarm.jsonl", tmp_path / "targets.parquet"
    result = cli("manifest", "import", "alarm-corpora", corpus["src"], out, "--split", "train",
                 "--split", "raw_validation", "--targets", targets)
    assert result.exit_code == 0, result.output
    assert "targets: 4 published answers (llm_answer_with_context)" in result.output
    assert rejects_of(out)["clotho/bad/0"].startswith("undecodable: ")  # keyed like the feature job: rejected
    table = read_targets(targets)  # the trainer's reader: every column it needs is there
    rows = {r["instance_id"]: r for r in table.to_pylist()}
    c1 = rows["clotho/c1/0"]
    assert c1["clip_key"] == key_source(str(corpus["clips"]["c1"]), None, None)[0]
    assert (c1["prompt"], c1["target"], c1["split"], c1["incomplete"], c1["dataset"], c1["kind"]) == (
        "What do you hear?", THINK, "train", False, "clotho", "audio")
    assert c1["model"] == "published:llm_answer_with_context" and c1["duration"] == pytest.approx(1.0)
    v1 = rows["clotho/v1/0"]
    assert (v1["split"], v1["incomplete"], v1["target"]) == ("validation", True, "Unfinished thinking")
    assert len(targets_fingerprint(table)) == 16
    frames = {r["clip_key"]: 10 + i for i, r in enumerate(rows.values())}
    reader = write_feature_store(tmp_path / "store", frames)
    layout = PromptLayout.from_tokenizer(qwen3_tokenizer)
    joined = join_targets(table, {"whisper": reader}, layout, qwen3_tokenizer,
                          lambda f: (f["whisper"] + 1) // 2 + 2, max_seq_len=4096)
    assert not joined.rejects
    assert sorted(e.instance_id for e in joined.splits["validation"]) == ["clotho/v1/0"]
    assert len(joined.splits["train"]) == 3
    assert_checks_and_stats(out, instances=4)


def test_no_context_answers_and_store_keys(tmp_path: Path, corpus: dict) -> None:
    # The keys of a store already built: c1's and v1's (c2 and s1 are absent).
    instances = tmp_path / "instances.parquet"
    keys = {n: key_source(str(corpus["clips"][n]), None, None)[0] for n in ("c1", "v1")}
    pq.write_table(pa.Table.from_pylist([{"id": "clotho/c1/0", "key": keys["c1"], "duration": 1.0},
                                         {"id": "clotho/v1/0", "key": keys["v1"], "duration": 0.6}]), instances)
    out, targets = tmp_path / "nc.jsonl", tmp_path / "nc.parquet"
    result = cli("manifest", "import", "alarm-corpora", corpus["src"], out, "--answer", "no-context",
                 "--targets", targets, "--instances", instances)
    assert result.exit_code == 0, result.output
    rows = by_id(out)
    assert set(rows) == {"clotho/c1/0", "clotho/v1/0"} and "prompt" not in rows["clotho/c1/0"]
    assert rejects_of(out)["clotho/c2/0"] == f"unkeyed: not in the feature store's {instances}"
    table = {r["instance_id"]: r for r in pq.read_table(targets).to_pylist()}
    assert table["clotho/c1/0"]["target"] == "I hear c1.</think>\n\nc1."
    assert table["clotho/c1/0"]["prompt"] == "" and table["clotho/c1/0"]["clip_key"] == keys["c1"]


def test_schema_is_the_rephrase_stages_and_bad_input_fails_in_one_line(tmp_path: Path, corpus: dict) -> None:
    from alarm.pipeline.importers.published_targets import target_schema
    from alarm.rephrase.targets import _schemas

    assert target_schema() == _schemas()[0]
    cases = [
        ([tmp_path / "nowhere"], "does not exist"),
        ([corpus["src"], "--split", "test"], "has no split(s) ['test']"),
        ([corpus["src"], "--instances", tmp_path / "i.parquet"], "--instances only applies with --targets"),
    ]
    for args, message in cases:
        result = cli("manifest", "import", "alarm-corpora", args[0], tmp_path / "o.jsonl", *args[1:])
        assert result.exit_code == 2 and message in result.output, (args, result.output)


@pytest.mark.slow  # about a minute on two busy cores: the feature cache and 4 training steps, tiny models
def test_alarm_train_run_trains_on_published_targets(tmp_path: Path, corpus: dict, tiny_qwen3_dir: Path,
                                                     shell_env: dict[str, str]) -> None:  # noqa: F811
    """Import with --targets, cache the features of the imported manifest, train: the clip keys of the
    published targets are the store's, so `alarm train run` finds every clip and trains."""
    import subprocess

    out, targets, store = tmp_path / "alarm.jsonl", tmp_path / "targets.parquet", tmp_path / "store"
    assert cli("manifest", "import", "alarm-corpora", corpus["src"], out, "--targets", targets).exit_code == 0
    run = subprocess.run(["alarm", "pipeline", "run", str(out), "--store", str(store), "--preset", "tiny",
                          "--encoders", "whisper", "--num-cpus", "2", "--no-progress"],
                         env=shell_env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    config = tmp_path / "train.yaml"
    config.write_text(f"targets: {targets}\nstore: {store}\noutput_dir: {tmp_path / 'run'}\nencoders: [whisper]\n"
                      "frontend: {adapter_dim: 16, conv_hidden_dim: 32}\nmax_seq_len: 512\nbatch_tokens: 1024\n"
                      "num_workers: 0\nwarmup_steps: 1\nmax_steps: 4\nepochs: 100\neval_every: 2\nsave_every: 4\n"
                      "log_every: 1\nsample_generations: 0\n")
    train = subprocess.run(["alarm", "train", "run", "--config", str(config), "--llm", str(tiny_qwen3_dir)],
                           env=shell_env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:] + train.stdout[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "step_00000004").is_dir()
