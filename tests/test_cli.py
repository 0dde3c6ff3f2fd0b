"""The CLI: help, version, groups, and the foundation's commands, run as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from click.testing import CliRunner
from store_fixtures import good_corpus, write_manifest_rows

from alarm.cli import DISTRIBUTION, main


def test_help_lists_every_group_and_is_fast() -> None:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "alarm.cli", "--help"], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1])
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    for group in ("pipeline", "prompts", "rephrase", "train", "demo", "manifest", "models"):
        assert group in proc.stdout
    # Heavy libraries stay out of start-up: importing the CLI must not import them.
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, cli; print(sorted(m for m in ('torch','ray','transformers','zarr') if m in sys.modules))"],
        capture_output=True, text=True, cwd=Path(__file__).parents[1],
    )
    assert probe.stdout.strip() == "[]", probe.stdout
    assert elapsed < 10  # generous: a cold interpreter on a busy 2-core machine


def test_version_and_group_help() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and "alarm, version" in result.output
    try:  # installed (editable or wheel): the version pip knows, not the source-tree fallback
        assert f"alarm, version {version(DISTRIBUTION)}" in result.output
    except PackageNotFoundError:
        pass
    for group in ("pipeline", "prompts", "rephrase", "train", "demo"):
        result = runner.invoke(main, [group, "--help"])
        assert result.exit_code == 0, result.output


def test_manifest_check_reports_rejects(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"id": "a", "audio": "a.wav", "dataset": "d"}) + "\n"
        + "{broken\n"
        + json.dumps({"id": "a", "audio": "b.wav", "dataset": "d"}) + "\n"
    )
    result = CliRunner().invoke(main, ["manifest", "check", str(manifest)])
    assert result.exit_code == 0, result.output
    assert "1 manifest rows · 1 audio files · 1 sources (audio+cut); 2 rejected rows" in result.output
    assert (tmp_path / "m.rejects.jsonl").is_file()
    missing = CliRunner().invoke(main, ["manifest", "check", str(tmp_path / "none.jsonl")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_demo_corpus_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "corpus", str(tmp_path / "c"), "--no-speech"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "manifest.jsonl").is_file()
    assert "skipped" in result.output or "espeak" in result.output


def test_options_override_the_config_file_the_same_way_everywhere(tmp_path: Path) -> None:
    manifest = write_manifest_rows(good_corpus(tmp_path / "audio", count=2), tmp_path / "m.jsonl")
    config = tmp_path / "job.yaml"
    config.write_text("shards: ['nowhere/{000..001}.tar']\nencoders: [whisper]\nstorage:\n  dtype: float32\n")
    runner = CliRunner()

    def mb_per_second(*options: str) -> float:
        # MANIFEST replaces the file's shards; --dtype reaches into the file's storage section.
        result = runner.invoke(main, ["pipeline", "plan", str(manifest), "--config", str(config), *options])
        assert result.exit_code == 0, result.output
        assert "whisper:" in result.output and "w2vbert" not in result.output  # the file's encoders
        return float(re.search(r"([0-9.]+) MB per audio-second", result.output).group(1))

    assert mb_per_second() == pytest.approx(2 * mb_per_second("--dtype", "float16"), rel=0.01)
    bad = runner.invoke(main, ["pipeline", "plan", str(manifest), "--config", str(config), "--encoders", "nope"])
    assert bad.exit_code == 2 and "error: unknown encoder" in bad.output
    no_store = runner.invoke(main, ["pipeline", "run", str(manifest), "--config", str(config)])
    assert no_store.exit_code == 2 and "give --store FOLDER" in no_store.output
    engine = runner.invoke(main, ["rephrase", "run", str(manifest), "--out", str(tmp_path / "r"), "--engine", "nope"])
    assert engine.exit_code == 2 and "error: engine: unknown engine 'nope'" in engine.output
    assert not (tmp_path / "r").exists()  # refused before any work
