"""`alarm eval`: eval manifest, prompt, answer parser, scores, reports, resume, demo eval set, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from alarm.cli import main
from alarm.pipeline.manifest import ManifestError
from alarm.trainer.evaluate import EvalConfig, evaluate
from alarm.trainer.infer import InferResult
from alarm.trainer.mcqa import INSTRUCTION, Question, build_prompt, parse_choice, read_eval_manifest

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def question_row(n: int, category: str, dataset: str = "dsA", **extra) -> dict:
    return {"id": f"q{n}", "audio": f"clip{n}.wav", "question": f"Question {n}: what is it?",
            "options": ["dog", "cat", "bird"], "answer": "cat", "category": category, "dataset": dataset,
            **extra}


# --------------------------------------------------------------------------------- prompt and parser


def test_prompt_format_is_exact() -> None:
    q = Question(id="a", audio="/x.wav", question="What is making the sound?",
                 options=("a dog", "a cat", "rain"), answer=2, category="sound")
    assert build_prompt(q) == (
        "What is making the sound?\n\n"
        "(Option_1) a dog\n(Option_2) a cat\n(Option_3) rain\n\n"
        "Choose the correct option. End your reply with the number of that option between answer tags, "
        "written as <answer>i</answer> where i is the option number."
    )
    assert build_prompt(q).endswith(INSTRUCTION)


OPTIONS = ("dog barking", "cat meowing", "rain")


@pytest.mark.parametrize("answer, expected", [
    ("<answer>2</answer>", 2),
    ("The dog, clearly.\n<answer> 1 </answer>", 1),
    ("<answer>Option_3</answer>", 3),
    ("<answer>(Option_2)</answer>", 2),
    ("<answer>option_1</answer>", 1),
    ("<answer>Option1</answer>", 1),
    ("<answer>(Option_2</answer>", None),  # unbalanced
    ("<answer>(2)</answer>", None),
    ("<answer>Cat Meowing</answer>", 2),  # the option text, case-insensitive
    ("first <answer>1</answer>, no wait: <answer>3</answer>", 3),  # the last block wins
    ("<answer>4</answer>", None),  # out of range: names no option
    ("<answer>0</answer>", None),
    ("<answer>Option_9</answer>", None),
    ("I think it is option 2.", None),  # no block
    ("<answer>2", None),  # never closed
    ("<answer>dog</answer>", None),  # not an option's full text
    ("<answer>2. cat meowing</answer>", None),
    ("<answer></answer>", None),
    ("", None),
    (None, None),
])
def test_parse_choice(answer: str | None, expected: int | None) -> None:
    assert parse_choice(answer, OPTIONS) == expected


def test_bare_number_is_an_option_number_even_when_options_are_numbers() -> None:
    assert parse_choice("<answer>3</answer>", ("2", "3", "4", "5")) == 3  # option 3 is "4"


# --------------------------------------------------------------------------------- eval manifest


def test_bad_rows_are_rejected_with_reasons(tmp_path: Path) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        question_row(1, "sound"),                                       # 1 ok (answer as text)
        question_row(2, "sound", answer=3),                             # 2 ok (answer as index)
        "{not json",                                                    # 3
        {k: v for k, v in question_row(4, "sound").items() if k != "options"},  # 4
        question_row(5, "sound", options=["only"], answer="only"),     # 5
        question_row(6, "sound", answer="horse"),                       # 6
        question_row(7, "sound", answer=4),                             # 7
        question_row(1, "music"),                                       # 8 duplicate id
        question_row(9, "sound", colour="red"),                         # 9
        question_row(10, "sound", answer=True),                         # 10
        question_row(11, "sound", options=["cat", "cat "]),             # 11
        question_row(12, "sound", options=["cat", 3]),                  # 12
        question_row(13, "sound", start=2.0, end=1.0),                  # 13
    ])
    result = read_eval_manifest(manifest, rejects_path=tmp_path / "rejects.jsonl")
    assert [(q.id, q.answer) for q in result.questions] == [("q1", 2), ("q2", 3)]
    assert result.questions[0].audio == str(tmp_path / "clip1.wav")
    reasons = {r.line: r.reason for r in result.rejects}
    assert sorted(reasons) == list(range(3, 14))
    expected = {3: "malformed JSON", 4: "missing field(s): options", 5: "at least 2", 6: "none of the options",
                7: "not an option number", 8: "duplicate id (first on line 1)", 9: "unknown field(s): colour",
                10: "option number or an option text", 11: "same text twice", 12: "non-empty strings",
                13: "empty cut"}
    for line, fragment in expected.items():
        assert fragment in reasons[line], (line, reasons[line])
    written = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [w["line"] for w in written] == list(range(3, 14)) and written[5]["id"] == "q1"


def test_empty_missing_or_all_bad_manifest_raises(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        read_eval_manifest(tmp_path / "nope.jsonl")
    with pytest.raises(ManifestError, match="empty"):
        read_eval_manifest(write_jsonl(tmp_path / "empty.jsonl", []))
    with pytest.raises(ManifestError, match="no valid row"):
        read_eval_manifest(write_jsonl(tmp_path / "bad.jsonl", ["[1, 2]"]))


def test_example_manifest_reads_clean() -> None:
    result = read_eval_manifest(REPO / "manifests/examples/mcqa.jsonl", rejects_path=Path("/dev/null"))
    assert not result.rejects and len(result.questions) >= 5
    for q in result.questions:
        assert Path(q.audio).is_file() and 1 <= q.answer <= len(q.options)
    assert {q.category for q in result.questions} == {"sound", "speech"}


# --------------------------------------------------------------------------------- scores, reports, resume


class Scripted:
    """A deterministic answer_fn: the reply to each question text, and a count of what was asked."""

    def __init__(self, replies: dict[str, str | None], fail_on_call: int | None = None) -> None:
        self.replies, self.fail_on_call = replies, fail_on_call
        self.calls, self.asked = 0, []

    def __call__(self, requests: list) -> list:
        self.calls += 1
        if self.fail_on_call is not None and self.calls >= self.fail_on_call:
            raise KeyboardInterrupt("killed")  # what a kill looks like from inside the loop
        results = []
        for request in requests:
            key = request.prompt.split(":")[0]
            self.asked.append(key)
            reply = self.replies[key]
            if reply is None:
                results.append(InferResult(thinking="", answer="", text="", thinking_tokens=0, answer_tokens=0,
                                           forced=False, error="audio not decodable"))
            else:
                results.append(InferResult(thinking="Listening.", answer=reply, text=f"Listening.</think>{reply}",
                                           thinking_tokens=2, answer_tokens=5, forced=False, error=None))
        return results


# Correct option is "cat" = 2 everywhere. sound: right, wrong, unparseable; music: right (as text), right;
# speech: a generation error. By hand: 3/6 overall, sound 1/3, music 2/2, speech 0/1.
REPLIES = {"Question 1": "<answer>2</answer>", "Question 2": "<answer>1</answer>",
           "Question 3": "it is a cat", "Question 4": "<answer>cat</answer>",
           "Question 5": "<answer>Option_2</answer>", "Question 6": None}


@pytest.fixture
def scored_manifest(tmp_path: Path) -> Path:
    cats = ["sound", "sound", "sound", "music", "music", "speech"]
    return write_jsonl(tmp_path / "eval.jsonl", [
        question_row(n, c, dataset="dsA" if n <= 4 else "dsB") for n, c in enumerate(cats, start=1)])


def run(manifest: Path, out: Path, answer_fn, **kw):
    cfg = EvalConfig(manifest=str(manifest), checkpoint="ckpt-A", out=str(out), progress=False, **kw)
    return evaluate(cfg, answer_fn=answer_fn)


def test_accuracy_per_category_and_dataset(scored_manifest: Path, tmp_path: Path) -> None:
    fn = Scripted(REPLIES)
    report = run(scored_manifest, tmp_path / "out", fn, batch_size=4)
    assert fn.calls == 2 and report.asked == 6 and report.reused == 0
    o = report.overall
    assert (o.questions, o.correct, o.wrong, o.unparseable, o.errors) == (6, 3, 3, 1, 1)
    assert o.accuracy == pytest.approx(0.5)
    cat = {k: (s.questions, s.correct, s.unparseable, s.errors) for k, s in report.per_category.items()}
    assert cat == {"sound": (3, 1, 1, 0), "music": (2, 2, 0, 0), "speech": (1, 0, 0, 1)}
    ds = {k: (s.questions, s.correct) for k, s in report.per_dataset.items()}
    assert ds == {"dsA": (4, 2), "dsB": (2, 1)}

    data = json.loads(report.report_json.read_text())["data"]
    assert data["overall"]["accuracy"] == 0.5 and data["per_category"]["sound"]["accuracy"] == pytest.approx(0.3333)
    md = report.report_md.read_text()
    assert "| category | questions | correct | unparseable | errors | accuracy |" in md
    assert "|---|---:|---:|---:|---:|---|" in md
    assert "| music | 2 | 2 | 0 | 0 | 100.0% |" in md
    assert "| sound | 3 | 1 | 1 | 0 | 33.3% |" in md
    assert "| **overall** | 6 | 3 | 1 | 1 | 50.0% |" in md
    assert "| dataset |" in md  # two datasets, so a second table

    rows = {r["id"]: r for r in map(json.loads, report.predictions.read_text().splitlines())}
    assert [rows[f"q{n}"]["status"] for n in range(1, 7)] == \
        ["correct", "wrong", "unparseable", "correct", "correct", "error"]
    assert rows["q2"]["choice"] == 1 and rows["q3"]["choice"] is None and rows["q6"]["error"]
    assert rows["q1"]["thinking"] == "Listening." and rows["q1"]["answer_text"] == "<answer>2</answer>"
    assert rows["q1"]["prompt"].startswith("Question 1: what is it?\n\n(Option_1) dog\n")


def test_resume_after_kill_no_duplicates_no_reasking(scored_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed = Scripted(REPLIES, fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        run(scored_manifest, out, killed, batch_size=2)
    predictions = out / "predictions.jsonl"
    assert len(predictions.read_text().splitlines()) == 2  # the first batch made it to disk
    with open(predictions, "a") as handle:  # a kill in the middle of writing a row
        handle.write('{"key": "torn", "id": "q3", "sta')

    resumed = Scripted(REPLIES)
    report = run(scored_manifest, out, resumed, batch_size=2)
    assert resumed.asked == ["Question 3", "Question 4", "Question 5", "Question 6"]
    assert (report.asked, report.reused, report.overall.correct) == (4, 2, 3)
    ids = [json.loads(x)["id"] for x in predictions.read_text().splitlines()]
    assert sorted(ids) == [f"q{n}" for n in range(1, 7)]

    idle = Scripted(REPLIES, fail_on_call=1)  # nothing left: must not be called at all
    again = run(scored_manifest, out, idle)
    assert idle.calls == 0 and again.asked == 0 and again.overall.correct == 3

    other = Scripted(REPLIES)  # another checkpoint: every question is asked again, old rows stay
    cfg = EvalConfig(manifest=str(scored_manifest), checkpoint="ckpt-B", out=str(out), progress=False)
    assert evaluate(cfg, answer_fn=other).asked == 6 and len(other.asked) == 6
    assert len(predictions.read_text().splitlines()) == 12


def test_retry_errors_and_limit(scored_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(scored_manifest, out, Scripted(REPLIES))
    fixed = Scripted({**REPLIES, "Question 6": "<answer>2</answer>"})
    report = run(scored_manifest, out, fixed, retry_errors=True)
    assert fixed.asked == ["Question 6"] and report.overall.correct == 4 and report.overall.errors == 0
    ids = [json.loads(x)["id"] for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(ids) == [f"q{n}" for n in range(1, 7)]

    limited = run(scored_manifest, tmp_path / "out2", Scripted(REPLIES), limit=2)
    assert limited.overall.questions == 2 and set(limited.per_category) == {"sound"}


def test_bad_config_raises() -> None:
    for bad in ({"think_budget": -1}, {"batch_size": 0}, {"limit": 0}, {"checkpoint": ""}):
        with pytest.raises(ValueError):
            EvalConfig(**{"manifest": "m.jsonl", "checkpoint": "c", "out": "o", **bad})


def test_cli_reports_bad_manifest_cleanly(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "missing.jsonl"), "--checkpoint", "c",
                                       "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "does not exist" in result.output


# --------------------------------------------------------------------------------- demo eval set


def test_demo_eval_is_deterministic_and_true(tmp_path: Path) -> None:
    from alarm.pipeline.demo_corpus import DemoCorpusConfig, write_demo_corpus
    from alarm.pipeline.demo_eval import write_demo_eval

    corpus = tmp_path / "corpus"
    write_demo_corpus(corpus, DemoCorpusConfig(sound_events=6, music=3, speech=2, long_clips=1))
    first = write_demo_eval(corpus).read_bytes()
    second = write_demo_eval(corpus, out=corpus / "again.jsonl").read_bytes()
    assert first == second
    result = read_eval_manifest(corpus / "mcqa.jsonl")
    assert not result.rejects
    rows = [json.loads(x) for x in first.decode().splitlines()]
    assert all(r["answer"] in r["options"] for r in rows)
    assert all(len(set(r["options"])) == len(r["options"]) >= 2 for r in rows)
    expected = {"sound", "music"} | ({"speech"} if shutil.which("espeak-ng") else set())
    assert {r["category"] for r in rows} == expected
    assert not any("broken" in r["audio"] or "long" in r["audio"] for r in rows)
    # Answers are the corpus's own labels: check every count question against the corpus manifest.
    corpus_rows = [json.loads(x) for x in (corpus / "manifest.jsonl").read_text().splitlines()]
    meta = {r["audio"]: r["metadata"] for r in corpus_rows}
    counts = [r for r in rows if r["question"].startswith("How many")]
    for r in counts:
        assert r["answer"] == str(meta[r["audio"]]["count"])
    kinds = [r for r in rows if r["question"].startswith("Is this a sound effect")]
    assert len(kinds) == len({r["audio"] for r in rows})  # one per clip
    assert all((r["answer"] == "music") == (r["category"] == "music") for r in kinds)


# --------------------------------------------------------------------------------- end to end


def test_cli_end_to_end_with_a_trained_adapter(trained_run: dict, tmp_path: Path) -> None:
    """The real Listener: trained front end, tiny Qwen3, budget forcing, store features or encoders."""
    rows = [json.loads(x) for x in (REPO / "manifests/examples/mcqa.jsonl").read_text().splitlines()][:3]
    for row in rows:
        row["audio"] = str(REPO / "manifests/examples" / row["audio"])
    rows.append({**rows[0], "id": "mc-missing", "audio": str(tmp_path / "missing.wav")})
    cached = trained_run["rows"][:2]  # clips the feature store holds
    rows += [{"id": f"tone-{c['id']}", "audio": c["audio"], "question": "Is this a tone?", "options": ["yes", "no"],
              "answer": 1, "category": "tone", "dataset": "toy"} for c in cached]
    manifest = write_jsonl(tmp_path / "mcqa.jsonl", rows)
    out = tmp_path / "out"

    def cli_args(folder: Path) -> list[str]:
        return ["eval", str(manifest), "--checkpoint", str(trained_run["run"]), "--store", str(trained_run["store"]),
                "--out", str(folder), "--think-budget", "3", "--max-new-tokens", "24", "--device", "cpu",
                "--batch-size", "3"]

    args = cli_args(out)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "| **overall** | 6 |" in result.output and "6 asked, 0 reused" in result.output
    predictions = {r["id"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert len(predictions) == 6
    missing = predictions.pop("mc-missing")
    assert missing["status"] == "error" and "missing.wav" in missing["error"] and missing["clip_key"] is None
    for c in cached:  # looked up by content key, so the listener reads them from the store
        assert predictions[f"tone-{c['id']}"]["clip_key"] == trained_run["keys"][c["id"]]
    for row in predictions.values():
        assert row["error"] is None and row["status"] in ("correct", "wrong", "unparseable")
        # The random tiny LLM does not close its thinking in 3 tokens: budget forcing closes it, the cap holds.
        assert row["forced"] and row["thinking"].endswith("now I will give my answer.")
        assert row["thinking_tokens"] > 3 and row["thinking_tokens"] + 1 + row["answer_tokens"] <= 24
    report = json.loads((out / "report.json").read_text())["data"]
    assert report["overall"]["questions"] == 6 and report["overall"]["errors"] == 1
    assert report["per_category"]["tone"]["questions"] == 2

    again = CliRunner().invoke(main, args)  # everything is reused: the models are not even loaded
    assert again.exit_code == 0 and "0 asked, 6 reused" in again.output
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6

    # Encoding every clip instead gives the very same generations (the store holds the same values).
    encoded = tmp_path / "encoded"
    result = CliRunner().invoke(main, [*cli_args(encoded), "--encode-all"])
    assert result.exit_code == 0, result.output
    again = {r["id"]: r for r in map(json.loads, (encoded / "predictions.jsonl").read_text().splitlines())}
    assert all(r["clip_key"] is None for r in again.values())
    for qid, row in predictions.items():
        assert (again[qid]["thinking"], again[qid]["answer_text"]) == (row["thinking"], row["answer_text"])


def test_cli_reads_a_run_and_a_store_on_s3(trained_run: dict, s3_server, tmp_path: Path) -> None:
    """`alarm eval --checkpoint s3://... --store s3://...` asks and answers as with the local run and store."""
    from remote_store_fixtures import upload_tree

    bucket = s3_server.bucket()
    run_url = upload_tree(trained_run["run"], f"s3://{bucket}/runs/r1")
    store_url = upload_tree(trained_run["store"], f"s3://{bucket}/store")
    rows = [{"id": f"tone-{c['id']}", "audio": c["audio"], "question": "Is this a tone?", "options": ["yes", "no"],
             "answer": 1, "category": "tone", "dataset": "toy"} for c in trained_run["rows"][:2]]
    manifest = write_jsonl(tmp_path / "mcqa.jsonl", rows)
    answers = []
    for checkpoint, store, out in ((str(trained_run["run"]), str(trained_run["store"]), tmp_path / "local"),
                                   (run_url, store_url, tmp_path / "remote")):
        result = CliRunner().invoke(main, ["eval", str(manifest), "--checkpoint", checkpoint, "--store", store,
                                           "--out", str(out), "--think-budget", "3", "--max-new-tokens", "24",
                                           "--device", "cpu"])
        assert result.exit_code == 0 and "2 asked, 0 reused" in result.output, result.output
        answers.append([(r["id"], r["clip_key"], r["thinking"], r["answer_text"], r["error"])
                        for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())])
    assert answers[0] == answers[1] and all(a[1] and a[4] is None for a in answers[1])  # read from the S3 store
