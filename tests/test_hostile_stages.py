"""Bad configs and bad data given to the rephrase and training stages, through the real `alarm` command.

Each case was a traceback or a silently wrong result before: a bad config must now stop at once with one
line (exit 2, no traceback), and a bad row must be dropped with its reason while the rest goes on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

import rephrase_fixtures as rf  # noqa: E402  (registers the scripted engine)
from train_fixtures import target_rows, tiny_clips, write_feature_store, write_targets  # noqa: E402

from alarm.cli import main  # noqa: E402
from alarm.pipeline.configs import ConfigError, from_dict, merge_config  # noqa: E402
from alarm.rephrase.config import RephraseConfig  # noqa: E402
from alarm.trainer.config import TrainConfig  # noqa: E402

TINY_FRONTEND = {"adapter_dim": 16, "conv_hidden_dim": 32}


def invoke(args: list[str]):
    """Run `alarm ARGS`; a traceback (any exception but the CLI's own exit) fails the test with it."""
    result = CliRunner().invoke(main, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], result.output


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hostile-train")
    clips = tiny_clips(4, lo=12, hi=30)
    write_feature_store(root / "store", clips, encoder="whisper", layers=2, dim=16)
    return {"root": root, "clips": clips, "rows": target_rows(clips)}


def train_config(data: dict, tmp_path: Path, model: Path, **over) -> Path:
    cfg = dict(targets=str(data["root"] / "targets.parquet"), store=str(data["root"] / "store"),
               output_dir=str(tmp_path / "run"), llm=str(model), frontend=dict(TINY_FRONTEND), batch_tokens=300,
               max_seq_len=200, num_workers=0, lr=3e-3, warmup_steps=1, max_steps=1, epochs=5, eval_every=0,
               save_every=100, log_every=1, sample_generations=0, progress=False)
    cfg.update(over)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------------------------- config values


@pytest.mark.parametrize(("over", "fragment"), [
    ({"lr": "fast"}, "lr: expected a number, got 'fast'"),
    ({"epochs": 1.5}, "epochs: expected a whole number"),
    ({"betas": "0.9"}, "betas: expected a list"),
    ({"betas": [0.9, 0.9, 0.9]}, "betas: expected 2 values"),
    ({"progress": "no"}, "progress: expected true or false"),
    ({"store_specs": ["x"]}, "store_specs: expected a mapping"),
    ({"encoders": {"whisper": 1}}, "encoders: expected a list"),
    ({"frontend": [1, 2]}, "frontend: expected a mapping"),
    ({"frontend": {"adapter_dimm": 3}}, "unknown config key frontend.adapter_dimm"),
    ({"frontend": {"adapter_dim": "x"}}, "frontend.adapter_dim: expected a number"),
    ({"lr": float("nan")}, "lr: expected a number, got NaN"),
])
def test_wrong_types_in_a_train_config_are_one_line(data, tmp_path, over, fragment):
    one_line_error(invoke(["train", "run", "--config", str(train_config(data, tmp_path, Path("/unused"), **over))]),
                   fragment)


def test_yaml_near_misses_are_read_as_meant():
    # PyYAML reads 1e-3 (no dot) as a string; a quoted int and a whole float are as clear.
    cfg = from_dict(TrainConfig, {"lr": "1e-3", "keep_checkpoints": "3", "epochs": 2.0, "freeze": "adapters"})
    assert (cfg.lr, cfg.keep_checkpoints, cfg.epochs, cfg.freeze) == (1e-3, 3, 2, ["adapters"])
    assert isinstance(cfg.epochs, int) and cfg.betas == (0.9, 0.999)


def test_a_nested_config_that_is_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="validate: expected a mapping of ValidateConfig"):
        from_dict(RephraseConfig, {"validate": [1]})
    bad = tmp_path / "r.yaml"
    bad.write_text("engine: transformers\n")
    # The command line's --engine would have replaced the file's value without a word.
    with pytest.raises(ConfigError, match="engine: expected a mapping"):
        merge_config(RephraseConfig, bad, {"engine.name": "scripted"})


def test_paths_that_cannot_work_are_one_line(data, tmp_path, tiny_qwen3_dir):
    write_targets(data["root"] / "targets.parquet", data["rows"])
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "not-parquet.parquet").write_text("hello")
    cases = [
        ({"llm": str(tmp_path)}, "holds no config.json: it is not a model folder"),
        ({"output_dir": str(tmp_path / "a-file")}, "is a file, not a folder"),
        ({"targets": str(tmp_path / "not-parquet.parquet")}, "is not a readable Parquet file"),
        ({"init": str(tmp_path / "no-weights")}, "no weights at"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append(({"device": "cuda"}, "torch sees no CUDA device"))
    for over, fragment in cases:
        one_line_error(invoke(["train", "run", "--config", str(train_config(data, tmp_path, tiny_qwen3_dir, **over))]),
                       fragment)


def test_a_number_column_where_text_belongs_is_one_line(data, tmp_path, tiny_qwen3_dir):
    write_targets(tmp_path / "t.parquet", [dict(r, target=7) for r in data["rows"]])
    one_line_error(invoke(["train", "run", "--config",
                           str(train_config(data, tmp_path, tiny_qwen3_dir, targets=str(tmp_path / "t.parquet")))]),
                   "target (int64) must hold strings")


# ---------------------------------------------------------------------------------------- bad rows


def test_bad_target_rows_are_rejected_with_reasons_and_the_rest_trains(data, tmp_path, tiny_qwen3_dir):
    rows = data["rows"]
    bad = [dict(rows[0], instance_id=None), dict(rows[1], dataset=None), dict(rows[2], target="  \n\t "),
           dict(rows[3], prompt=None)]
    good = [dict(r, instance_id=f"ok{i}", split="train", target=r["target"] + " 🎵\x07") for i, r in enumerate(rows)]
    write_targets(tmp_path / "t.parquet", good + bad + [dict(good[0], target="a second row with its id")])
    config = train_config(data, tmp_path, tiny_qwen3_dir, targets=str(tmp_path / "t.parquet"))
    result = invoke(["train", "run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    rejects = [json.loads(line) for line in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()]
    reasons = sorted(r["reason"] for r in rejects)
    assert reasons == ["duplicate instance_id 'ok0' (its first row is kept)", "empty target", "no dataset",
                       "no instance_id", "no prompt (null)"], reasons


def test_no_training_row_says_why(data, tmp_path, tiny_qwen3_dir):
    write_targets(tmp_path / "t.parquet", [dict(r, split="validation") for r in data["rows"]])
    config = train_config(data, tmp_path, tiny_qwen3_dir, targets=str(tmp_path / "t.parquet"))
    one_line_error(invoke(["train", "run", "--config", str(config)]), "rows are in the validation split")


def test_validation_on_training_audio_is_never_silent(data, tmp_path, tiny_qwen3_dir):
    rows = [dict(r, split="train") for r in data["rows"]]
    rows.append(dict(rows[0], instance_id="v0", split="validation"))
    write_targets(tmp_path / "t.parquet", rows)
    result = invoke(["train", "run", "--config",
                     str(train_config(data, tmp_path, tiny_qwen3_dir, targets=str(tmp_path / "t.parquet")))])
    assert result.exit_code == 0, result.output
    assert "1 of 1 validation rows share their clip with training rows" in result.output


# ---------------------------------------------------------------------------------------- rephrase


def test_rephrase_rejects_rows_with_nothing_to_say_and_splits_by_clip(tmp_path, tiny_qwen3_dir):
    extra = [
        {"id": "nolabel", "audio": "audio/clip0.wav", "dataset": "s", "prompt": "What?"},
        {"id": "blank", "audio": "audio/clip0.wav", "dataset": "s", "metadata": {"caption": " \n"},
         "description": "  ", "prompt": "What?"},
        {"id": "ws-prompt", "audio": "audio/clip0.wav", "dataset": "s", "metadata": {"caption": "bell"},
         "prompt": " \t "},
    ]
    # 8 prompts on one clip: an instance split would put some in each split
    extra += [{"id": f"k{i}", "audio": "audio/clip1.wav", "dataset": "many", "metadata": {"caption": "a bell rings"},
               "prompt": f"Question {i} 🔔?"} for i in range(8)]
    manifest = rf.write_manifest(tmp_path, n_audio=2, n_instruction=0, extra=extra)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"chunk_size": 8, "validate": {"min_tokens": 1, "val_fraction": 0.5}}))
    out = tmp_path / "out"
    result = invoke(["rephrase", "run", str(manifest), "--out", str(out), "--config", str(config),
                     "--engine", "scripted", "--model", str(tiny_qwen3_dir)])
    assert result.exit_code == 0, result.output
    rejects = {r["instance_id"]: r["rule"] for r in pq.read_table(out / "rejects.parquet").to_pylist()}
    assert rejects == {"nolabel": "no_description", "blank": "no_description", "ws-prompt": "no_prompt"}
    targets = pq.read_table(out / "targets.parquet").to_pylist()
    assert {t["split"] for t in targets if t["dataset"] == "many"} in ({"train"}, {"validation"})
    assert len([t for t in targets if t["dataset"] == "many"]) == 8


# ------------------------------------------------------------------------------------------- help


def test_help_of_every_subcommand_runs():
    import click

    def walk(command: click.Command, path: list[str]):
        yield path
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])

    paths = list(walk(main, []))
    assert len(paths) > 30  # every group and command, not just the top
    for path in paths:
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0 and result.exception is None, (path, result.output)
        assert "Usage:" in result.output, path


def test_weights_for_an_llm_of_another_hidden_size_are_one_line(data, tmp_path, tiny_qwen3_dir):
    from transformers import AutoConfig, AutoTokenizer, Qwen3ForCausalLM

    write_targets(data["root"] / "targets.parquet", data["rows"])
    first = tmp_path / "first"
    first.mkdir()
    assert invoke(["train", "run", "--config", str(train_config(data, first, tiny_qwen3_dir))]).exit_code == 0
    config = AutoConfig.from_pretrained(tiny_qwen3_dir)
    config.hidden_size *= 2  # the same family, another width
    Qwen3ForCausalLM(config).save_pretrained(tmp_path / "wide")
    AutoTokenizer.from_pretrained(tiny_qwen3_dir).save_pretrained(tmp_path / "wide")
    wide = train_config(data, tmp_path, tmp_path / "wide", init=[str(first / "run")])
    one_line_error(invoke(["train", "run", "--config", str(wide)]), "trained for an LLM of another hidden size")
    # resuming the first run with the wide LLM: the same answer, not torch's many-line error
    resume = train_config(data, first, tmp_path / "wide", max_steps=2)
    one_line_error(invoke(["train", "run", "--config", str(resume)]), "trained for an LLM of another hidden size")
