"""The README runs as written, and the CLI's outputs it describes.

* the README's stage-by-stage block, parsed from README.md and run verbatim in a fresh folder that holds
  what a clone provides (``configs/``, ``manifests/``), then the failures a user meets without ``--llm``;
* ``alarm pipeline run``: a store must be named, a short summary on the terminal, the whole one in
  ``summary.json`` and with ``--json``;
* an LLM that is not on disk fails at once, in one line (``trainer.config.local_llm``);
* ``alarm report`` rewrites every output folder the README lists, evaluation and statistics included.

Subprocesses get an embedded Ray of their own (``RAY_ADDRESS=local``, their own ``RAY_TMPDIR``), so a
cluster somewhere else on the machine is never joined.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from store_fixtures import good_corpus, hostile_corpus, write_manifest_rows

from alarm.cli import main
from alarm.pipeline.configs import ConfigError
from alarm.trainer.config import ALLOW_DOWNLOAD, local_llm

REPO = Path(__file__).resolve().parents[1]
ALARM = Path(sys.executable).parent / "alarm"


def readme_block(title: str = "## The job, stage by stage") -> str:
    """The first ```bash block after ``title`` in README.md."""
    text = (REPO / "README.md").read_text()
    after = text[text.index(title):]
    match = re.search(r"```bash\n(.*?)```", after, flags=re.S)
    assert match, f"no bash block under {title!r}"
    return match.group(1)


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comment lines and blank lines left out."""
    joined = re.sub(r"\\\n\s*", "", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture
def shell_env() -> Iterator[dict[str, str]]:
    """The environment of a user's shell: the venv's ``alarm`` first on PATH, this checkout's code, and a
    Ray of its own (short temp path: Ray's socket paths must stay under 107 characters)."""
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, "PATH": f"{ALARM.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "RAY_ADDRESS": "local", "RAY_TMPDIR": ray_tmp, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    yield env
    shutil.rmtree(ray_tmp, ignore_errors=True)


def fresh_clone(folder: Path) -> Path:
    """What a clone gives the README's commands to read: the example configs and manifests."""
    for name in ("configs", "manifests"):
        shutil.copytree(REPO / name, folder / name)
    return folder


def run_script(commands_: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run the commands in one bash (so variables carry over), stopping at the first that fails.

    ``set -e`` alone would miss the first half of ``a && b`` failing: each command gets its own check.
    """
    lines = ["set -uo pipefail"]
    for i, command in enumerate(commands_):
        lines.append(f"{{ {command}\n}} || {{ echo \"README command {i} failed with $?: \"{json.dumps(command)} >&2; "
                     "exit 1; }")
    return subprocess.run(["bash", "-c", "\n".join(lines)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------------------------ the README's block


def test_readme_block_parses_into_every_stage() -> None:
    cmds = commands(readme_block())
    for needed in ("alarm manifest check", "alarm prompts run", "alarm pipeline run", "alarm rephrase run", "alarm train run",
                   "alarm train export", "alarm infer", "alarm eval", "alarm report"):
        assert any(c.startswith(needed) for c in cmds), needed
    assert all("/tmp/" not in c for c in cmds), "the block writes under the current folder, not /tmp"
    run = next(c for c in cmds if c.startswith("alarm pipeline run"))
    assert "--store" in run


@pytest.mark.slow  # about 3 minutes on two busy cores: the whole job on the demo corpus, tiny models
def test_readme_stage_by_stage_block_runs_verbatim(tmp_path: Path, shell_env: dict[str, str]) -> None:
    clone = fresh_clone(tmp_path / "clone")
    cmds = commands(readme_block())
    started = time.perf_counter()
    result = run_script(cmds, clone, shell_env, timeout=900)
    wall = time.perf_counter() - started
    assert result.returncode == 0, f"{result.stderr[-4000:]}\n--- stdout ---\n{result.stdout[-3000:]}"
    out = clone / "out"
    summary = json.loads((out / "store" / "summary.json").read_text())
    assert summary["clips"] > 0 and set(summary["stored"]) == {"whisper", "w2vbert", "muq", "sslam"}
    assert "stored: " in result.stdout and '"spec_ids"' not in result.stdout  # the short summary, not the JSON
    assert (out / "targets.parquet").is_file()
    assert (out / "runs" / "whisper" / "checkpoints" / "step_00000020").is_dir()
    assert (out / "exported").is_dir()
    eval_doc = json.loads((out / "eval" / "report.json").read_text())
    assert eval_doc["data"]["overall"]["questions"] == 6
    assert "-- answer" in result.stdout  # alarm infer answered
    prompts = json.loads((out / "prompts" / "stats.json").read_text())
    assert prompts["to_prompt"] > 0 and prompts["rejected_clips_per_rule"] == {"no_candidates": prompts["to_prompt"]}
    for kind in ("prompts", "pipeline", "rephrase", "train", "eval"):
        assert re.search(rf"^{kind}: out/", result.stdout, flags=re.M), kind  # `alarm report out` found each
    print(f"README block: {len(cmds)} commands in {wall:.0f} s")

    # What the README did before: step 3 without an LLM on disk. It fails at once, in one line, even
    # where the hub is allowed to be tried (no HF_HUB_OFFLINE), instead of a minute of retries.
    online = {k: v for k, v in shell_env.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    online["HF_HUB_CACHE"] = str(tmp_path / "empty-hf-cache")
    for command, expected in (
            ("alarm train run --config configs/train-tiny.yaml", ALLOW_DOWNLOAD),
            ("alarm infer manifests/examples/sound.wav --prompt hi --checkpoint out/runs/whisper "
             "--llm Qwen/Qwen3-4B-Thinking-2507", "huggingface-cli download Qwen/Qwen3-4B-Thinking-2507"),
            ("alarm eval manifests/examples/mcqa.jsonl --checkpoint out/runs/whisper --out out/eval2 "
             "--llm /no/such/model", "llm folder /no/such/model does not exist")):
        t0 = time.perf_counter()
        failed = subprocess.run(["bash", "-c", command], cwd=clone, env=online, capture_output=True, text=True,
                                timeout=120)
        seconds = time.perf_counter() - t0
        lines = [line for line in failed.stderr.splitlines() if line.strip()]
        assert failed.returncode == 2, failed.stderr[-3000:]
        assert len(lines) == 1 and lines[0].startswith("error: llm") and expected in lines[0], failed.stderr[-3000:]
        assert seconds < 30, f"{command}: {seconds:.0f} s"


# ------------------------------------------------------------------------------------ alarm pipeline run


def test_pipeline_run_requires_a_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = write_manifest_rows(good_corpus(tmp_path / "audio", count=1), tmp_path / "m.jsonl")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("RAY_ADDRESS", "local")  # before the fix the job ran here: never join a foreign cluster
    result = CliRunner().invoke(main, ["pipeline", "run", str(manifest), "--preset", "tiny", "--encoders",
                                       "whisper", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "give --store FOLDER" in result.output
    assert list(work.iterdir()) == []  # nothing written into the current folder


@pytest.mark.slow  # two jobs, each a subprocess starting its own Ray: ~25 s on two busy cores
def test_pipeline_run_prints_a_short_summary_and_writes_the_json(tmp_path: Path, shell_env: dict[str, str]) -> None:
    good = good_corpus(tmp_path / "good", count=3)
    bad, expected = hostile_corpus(tmp_path / "bad")
    manifest = write_manifest_rows(good + bad, tmp_path / "manifest.jsonl")
    store = tmp_path / "store"
    run = ["alarm", "pipeline", "run", str(manifest), "--store", str(store), "--preset", "tiny",
           "--encoders", "whisper", "--no-progress"]
    first = subprocess.run(run, env=shell_env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((store / "summary.json").read_text())
    lines = first.stdout.strip().splitlines()
    assert 3 <= len(lines) <= 6 and "{" not in first.stdout, first.stdout
    rejected = sum(summary["rejected"].values())
    assert rejected == len(expected) and summary["clips"] == 3
    assert lines[0].startswith("stored: 3 clips, ")
    assert lines[1].startswith(f"rejected: {rejected} instances (")
    for kind, n in summary["rejected"].items():
        assert f"{kind} {n}" in lines[1]
    assert re.search(r"^written: [0-9.]+ (KiB|MiB) in ", first.stdout, flags=re.M)
    assert f"summary: {store / 'summary.json'}" in first.stdout
    # Floats are rounded in the JSON too (6 significant digits): no 17-digit timings.
    floats = re.findall(r"\d+\.\d+", (store / "summary.json").read_text())
    assert floats and all(len(f.replace(".", "").lstrip("0")) <= 6 for f in floats), floats

    again = subprocess.run([*run, "--json"], env=shell_env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    printed = json.loads(again.stdout)  # stdout is the JSON alone; the paths go to stderr
    assert printed == json.loads((store / "summary.json").read_text())
    assert printed["encoded"] == {"whisper": 0} and printed["skipped"] == {"whisper": 3}
    assert "summary.json" in again.stderr


# ------------------------------------------------------------------------------------ the LLM: local or one line


def fake_hf_cache(root: Path, repo_id: str) -> Path:
    """A model as ``huggingface-cli download`` leaves it in the hub cache (refs/main -> snapshots/<rev>)."""
    folder = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = folder / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("a" * 40)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face hub cache of this test's own (the hub reads its cache path at import time)."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_local_llm_folder_cache_or_one_clear_error(tmp_path: Path, hub_cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the check itself must never go to the network
    monkeypatch.delenv(ALLOW_DOWNLOAD, raising=False)
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert local_llm(str(folder)) == str(folder)
    snapshot = fake_hf_cache(hub_cache, "Qwen/Qwen3-4B-Thinking-2507")
    assert Path(local_llm("Qwen/Qwen3-4B-Thinking-2507")) == snapshot

    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        local_llm("Qwen/Qwen3-8B")
    assert time.perf_counter() - t0 < 5
    message = str(err.value)
    assert "\n" not in message and "huggingface-cli download Qwen/Qwen3-8B" in message and ALLOW_DOWNLOAD in message
    with pytest.raises(ConfigError, match=r"^llm folder /no/such/model does not exist"):
        local_llm("/no/such/model")

    monkeypatch.setenv(ALLOW_DOWNLOAD, "1")  # opted in: the id goes to from_pretrained, which downloads
    assert local_llm("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"
    with pytest.raises(ConfigError, match="does not exist"):  # a folder that is not there is never a download
        local_llm("./models/qwen")


def test_train_run_refuses_an_llm_not_on_disk_before_any_work(tmp_path: Path, hub_cache: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_DOWNLOAD, raising=False)
    config = tmp_path / "run.yaml"
    config.write_text(f"targets: {tmp_path}/t.parquet\nstore: {tmp_path}/store\noutput_dir: {tmp_path}/run\n"
                      "max_seq_len: 1024\nbatch_tokens: 2048\n")  # llm: the default hub id, not cached here
    result = CliRunner().invoke(main, ["train", "run", "--config", str(config)])
    assert result.exit_code == 2
    assert result.output.startswith("error: llm 'Qwen/Qwen3-4B-Thinking-2507' is neither a local folder")
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # failed before the run folder was made


def test_rephrase_run_refuses_an_llm_not_on_disk_before_any_work(tmp_path: Path, hub_cache: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_DOWNLOAD, raising=False)
    result = CliRunner().invoke(main, ["rephrase", "run", "manifests/examples/tiny.jsonl", "--out",
                                       str(tmp_path / "r"), "--model", "Qwen/Qwen3-8B"])
    assert result.exit_code == 2
    assert result.output.startswith("error: llm 'Qwen/Qwen3-8B' is neither a local folder")
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # failed before the run folder was made


# ------------------------------------------------------------------------------------ alarm report


def scripted_eval(manifest: Path, out: Path) -> dict:
    """An evaluation folder written by the real ``evaluate`` (answers scripted for determinism)."""
    from alarm.trainer.evaluate import EvalConfig, evaluate
    from alarm.trainer.infer import InferResult

    def answer(requests: list) -> list:
        return [InferResult(thinking="Hm.", answer=f"<answer>{1 + i % 2}</answer>", text="", thinking_tokens=1,
                            answer_tokens=3, forced=False) for i, _ in enumerate(requests)]

    evaluate(EvalConfig(manifest=str(manifest), checkpoint="ckpt", out=str(out), progress=False), answer_fn=answer)
    return json.loads((out / "report.json").read_text())["data"]


def test_alarm_report_rewrites_eval_and_stats_folders(tmp_path: Path) -> None:
    rows = good_corpus(tmp_path / "audio", count=2)
    manifest = write_manifest_rows(rows, tmp_path / "manifest.jsonl")
    questions = [{"id": f"q{i}", "audio": r["audio"], "question": f"Q{i}?", "options": ["a", "b"], "answer": "a",
                  "category": "sound" if i else "music", "dataset": "toy"} for i, r in enumerate(rows * 2)]
    questions.append({"id": "bad", "audio": rows[0]["audio"]})  # a rejected row: counted in the report
    eval_manifest = tmp_path / "mcqa.jsonl"
    eval_manifest.write_text("".join(json.dumps(q) + "\n" for q in questions))

    out = tmp_path / "out"
    before = scripted_eval(eval_manifest, out / "nested" / "eval")
    stats = CliRunner().invoke(main, ["stats", str(manifest), "--out", str(out / "stats")])
    assert stats.exit_code == 0, stats.output
    stats_before = json.loads((out / "stats" / "report.json").read_text())["data"]
    for name in ("report.json", "report.md"):
        (out / "nested" / "eval" / name).unlink()
    for name in ("report.md", "durations.png"):  # report.json names the manifest: the folder's only record
        (out / "stats" / name).unlink()

    result = CliRunner().invoke(main, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(line.split(":")[0] for line in result.output.splitlines()) == ["eval", "stats"]
    after = json.loads((out / "nested" / "eval" / "report.json").read_text())["data"]
    # From the predictions alone the scores match; the settings of the run are gone with the old report.
    assert {k: v for k, v in after.items() if k not in ("settings", "asked", "reused")} == \
        {k: v for k, v in before.items() if k not in ("settings", "asked", "reused")}
    assert after["overall"]["questions"] == 4 and after["rejected"] == 1
    assert json.loads((out / "stats" / "report.json").read_text())["data"] == stats_before
    assert (out / "stats" / "report.md").is_file() and (out / "stats" / "durations.png").is_file()

    # With its report in place, a rewrite keeps every figure and setting of the run.
    result = CliRunner().invoke(main, ["report", str(out / "nested" / "eval")])
    assert result.exit_code == 0 and result.output.startswith("eval: "), result.output
    first = scripted_eval(eval_manifest, tmp_path / "eval2")
    CliRunner().invoke(main, ["report", str(tmp_path / "eval2")])
    assert json.loads((tmp_path / "eval2" / "report.json").read_text())["data"] == first
    md = (tmp_path / "eval2" / "report.md").read_text()
    assert "| **overall** | 4 | 2 | 0 | 0 | 50.0% |" in md

    (tmp_path / "empty").mkdir()
    missing = CliRunner().invoke(main, ["report", str(tmp_path / "empty")])
    assert missing.exit_code == 2 and "evaluation or statistics folder" in missing.output
