"""`evaluate(cfg)`: multiple-choice audio QA (MMAU / MMSU / MMAR layout) with a trained front end.

Sections: config -> reports (``report.json``, ``report.md``) -> predictions (append-only,
resumable) -> evaluate (ask, score, report). The eval manifest, the prompt and the answer parser
live in ``trainer.mcqa``. docs/method.md §6: an unparseable answer counts as wrong (and is counted
separately); thinking budget 8192, output cap 16384.

Generation goes through one seam, ``answer_fn(requests) -> results`` (by default
``trainer.infer.Listener.generate``), so everything else here is tested without a model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.store_layout import atomic_path
from alarm.trainer.infer_records import InferConfig
from alarm.trainer.mcqa import Question, build_prompt, parse_choice, read_eval_manifest

PREDICTIONS = "predictions.jsonl"

AnswerFn = Callable[[list[Any]], list[Any]]


# ------------------------------------------------------------------------------------ config, report


@dataclass
class EvalConfig(InferConfig):
    """One evaluation run: which questions, and the trained front end and generation settings of
    ``trainer.infer.InferConfig`` (checked there: device, engine, thinking budget, cap, temperature)."""

    checkpoint: str = ""
    """Trained front-end checkpoint (or exported folder) passed to ``trainer.infer.Listener``."""
    manifest: str = ""
    """Eval manifest (JSONL/Parquet: id, audio, question, options, answer, category[, dataset, start, end])."""
    out: str = ""
    """Output folder: predictions.jsonl, report.json, report.md."""
    batch_size: int = 8
    """Questions per generate call (also how often predictions are flushed to disk)."""
    limit: int | None = None
    """Only the first N valid questions of the manifest."""
    retry_errors: bool = False
    """Ask again the questions whose saved prediction is a generation error."""
    store_features: bool = True
    """When the listener's feature store already holds a question's clip (same content key), read its
    features instead of running the encoders again: the values are the same (tests/test_infer.py)
    and encoding dominates the cost of a question on a CPU."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        for name in ("manifest", "checkpoint", "out"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is required")
        super().__post_init__()
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1 (or unset), got {self.limit}")

    def run_id(self) -> str:
        """Fingerprint of everything that decides an answer besides the question itself."""
        store = str(Path(self.store).resolve()) if self.store and "://" not in self.store else self.store or None
        from alarm.trainer.checkpoint_identity import checkpoint_identity

        keyed = {"checkpoint": checkpoint_identity(self.checkpoint), "store": store, "llm": self.llm,
                 "engine": self.engine, "think_budget": self.think_budget, "max_new_tokens": self.max_new_tokens,
                 "temperature": self.temperature, "seed": self.seed}
        return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Score:
    """Counts for a group of questions. ``wrong`` includes the unparseable ones and the errors."""

    questions: int = 0
    correct: int = 0
    wrong: int = 0
    unparseable: int = 0
    errors: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.questions if self.questions else 0.0

    def add(self, status: str) -> None:
        self.questions += 1
        self.correct += status == "correct"
        self.wrong += status != "correct"
        self.unparseable += status == "unparseable"
        self.errors += status == "error"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy": round(self.accuracy, 4)}


@dataclass
class EvalReport:
    """What ``evaluate`` found and where it wrote it."""

    out: Path
    overall: Score
    per_category: dict[str, Score]
    per_dataset: dict[str, Score]
    asked: int
    """Questions generated in this call (the rest came from earlier predictions)."""
    reused: int
    rejected: int
    rejects_path: Path | None
    predictions: Path
    report_json: Path
    report_md: Path
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall.to_dict(),
            "per_category": {k: v.to_dict() for k, v in self.per_category.items()},
            "per_dataset": {k: v.to_dict() for k, v in self.per_dataset.items()},
            "asked": self.asked, "reused": self.reused, "rejected": self.rejected,
            "rejects": str(self.rejects_path) if self.rejects_path else None,
            "predictions": str(self.predictions), "settings": self.settings,
        }


SCORE_HEADERS = ["questions", "correct", "unparseable", "errors", "accuracy"]


def score_rows(groups: dict[str, Score], overall: Score) -> list[list[Any]]:
    """Table rows, one per group (sorted) and a last **overall** row."""
    rows = [(name, s) for name, s in sorted(groups.items())] + [("**overall**", overall)]
    return [[name, s.questions, s.correct, s.unparseable, s.errors, f"{100 * s.accuracy:.1f}%"] for name, s in rows]


def markdown_tables(report: EvalReport) -> str:
    """The per-category table (and the per-dataset one when there are several datasets)."""
    from alarm.pipeline.report import markdown_table

    text = markdown_table(["category", *SCORE_HEADERS], score_rows(report.per_category, report.overall))
    if len(report.per_dataset) > 1:
        text += "\n\n" + markdown_table(["dataset", *SCORE_HEADERS], score_rows(report.per_dataset, report.overall))
    return text


def _write_reports(report: EvalReport) -> None:
    """report.json and report.md through the shared report writer (atomic writes)."""
    from alarm.pipeline.report import Section, write_report

    rule = ("An unparseable answer (no `<answer>i</answer>` naming an option) counts as wrong, and so does "
            "a generation error; both are also counted on their own.")
    sections = [Section("Accuracy per category", text=rule, headers=["category", *SCORE_HEADERS],
                        rows=score_rows(report.per_category, report.overall))]
    if len(report.per_dataset) > 1:
        sections.append(Section("Accuracy per dataset", headers=["dataset", *SCORE_HEADERS],
                                rows=score_rows(report.per_dataset, report.overall)))
    sections.append(Section("Settings", text=f"Per-question rows: `{report.predictions.name}`.",
                            headers=["setting", "value"],
                            rows=[[k, "–" if v is None else str(v)] for k, v in report.settings.items()]))
    overall = report.overall
    key_figures = {"questions": overall.questions, "accuracy": f"{100 * overall.accuracy:.1f}%",
                   "unparseable": overall.unparseable, "errors": overall.errors,
                   "rejected manifest rows": report.rejected, "checkpoint": report.settings.get("checkpoint")}
    write_report(report.out, "Multiple-choice evaluation", report.to_dict(), sections, key_figures)


# ------------------------------------------------------------------------------------ predictions


def prediction_key(run_id: str, question: Question, prompt: str) -> str:
    """A prediction is reused only for the same run settings, question id and prompt text."""
    return hashlib.sha256(f"{run_id}\n{question.id}\n{prompt}".encode()).hexdigest()[:20]


def load_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """Saved predictions by key. A torn last line (a kill mid-write) is cut off the file."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    complete, _, torn = data.rpartition(b"\n")
    if torn:  # rewrite without the partial line so the next append starts on a fresh line
        with atomic_path(path) as tmp:
            tmp.write_bytes(complete + b"\n" if complete else b"")
    rows: dict[str, dict[str, Any]] = {}
    for text in (complete.decode("utf-8", errors="replace").splitlines() if complete else []):
        row = _row_or_none(text)
        if row is not None:
            rows[row["key"]] = row
    return rows


def _row_or_none(text: str) -> dict[str, Any] | None:
    """A saved prediction row, or None for a blank or damaged line (its question is asked again)."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("key"), str) else None


def _drop_keys(path: Path, keys: set[str]) -> None:
    """Rewrite predictions without ``keys`` (questions about to be asked again)."""
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if (row := _row_or_none(line)) is not None and row["key"] not in keys]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def prediction_row(key: str, run_id: str, question: Question, prompt: str, result: Any) -> dict[str, Any]:
    """One predictions.jsonl row from a generation result (an ``InferResult`` or alike)."""
    error = getattr(result, "error", None)
    choice = None if error else parse_choice(getattr(result, "answer", None), question.options)
    status = "error" if error else "unparseable" if choice is None else \
        "correct" if choice == question.answer else "wrong"
    return {
        "key": key, "run": run_id, "id": question.id, "category": question.category,
        "dataset": question.dataset, "prompt": prompt, "options": list(question.options),
        "answer": question.answer, "choice": choice, "status": status, "correct": status == "correct",
        "thinking": getattr(result, "thinking", None), "answer_text": getattr(result, "answer", None),
        "thinking_tokens": getattr(result, "thinking_tokens", None),
        "answer_tokens": getattr(result, "answer_tokens", None),
        "forced": getattr(result, "forced", None), "error": error,
    }


# ------------------------------------------------------------------------------------ evaluate


def load_listener(cfg: EvalConfig) -> Any:
    """The ``trainer.infer.Listener`` for this run's checkpoint and generation settings."""
    from alarm.trainer.infer import Listener

    return Listener.load(cfg)  # an EvalConfig is an InferConfig; batch_size doubles as the listener's chunk


def _request(question: Question, prompt: str, with_key: bool) -> Any:
    from alarm.trainer.infer import InferRequest

    return InferRequest(audio=question.audio, prompt=prompt, start=question.start, end=question.end,
                        clip_key=_clip_key(question) if with_key else None)


def _clip_key(question: Question) -> str | None:
    """The store's content key of a question's clip (a decode, no encoder), None when undecodable."""
    from alarm.pipeline.decode import DecodeConfig, DecodeError, decode_clip

    try:
        return decode_clip(question.audio, question.start, question.end, DecodeConfig()).key
    except DecodeError:  # the listener decodes again and reports the reason as the row's error
        return None


def evaluate(cfg: EvalConfig, answer_fn: AnswerFn | None = None) -> EvalReport:
    """Ask every question (resuming from saved predictions), score, and write the reports.

    Args:
        cfg: the run.
        answer_fn: generation seam, requests -> results in the same order; default: a
            ``trainer.infer.Listener`` loaded from ``cfg`` (only when something is left to ask).

    Returns:
        Scores overall, per category and per dataset, and the output paths.

    Raises:
        ManifestError: the eval manifest is missing, empty or has no valid row.
    """
    from tqdm import tqdm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_eval_manifest(cfg.manifest, rejects_path=out / "rejects.jsonl")
    if not manifest.rejects:  # a rejects file from an earlier run of another manifest would mislead
        (out / "rejects.jsonl").unlink(missing_ok=True)
    questions = manifest.questions[: cfg.limit] if cfg.limit else manifest.questions
    run_id = cfg.run_id()
    prompts = {q.id: build_prompt(q) for q in questions}
    keys = {q.id: prediction_key(run_id, q, prompts[q.id]) for q in questions}
    path = out / PREDICTIONS
    saved = load_predictions(path)
    if cfg.retry_errors:
        retry = {k for k in keys.values() if saved.get(k, {}).get("status") == "error"}
        if retry:
            _drop_keys(path, retry)
            saved = {k: v for k, v in saved.items() if k not in retry}
    todo = [q for q in questions if keys[q.id] not in saved]
    listener = None
    if todo and answer_fn is None:  # load the models only when something is left to ask
        listener = load_listener(cfg)
        answer_fn = listener.generate
    with_key = cfg.store_features and bool(getattr(listener, "readers", None))
    bar = tqdm(total=len(questions), initial=len(questions) - len(todo), unit="question",
               disable=not cfg.progress, dynamic_ncols=True)
    try:
        with open(path, "a", encoding="utf-8") as handle:
            for begin in range(0, len(todo), cfg.batch_size):
                batch = todo[begin: begin + cfg.batch_size]
                requests = [_request(q, prompts[q.id], with_key) for q in batch]
                results = answer_fn(requests)
                if len(results) != len(batch):
                    raise RuntimeError(f"answer_fn returned {len(results)} results for {len(batch)} requests")
                for question, request, result in zip(batch, requests, results, strict=True):
                    row = prediction_row(keys[question.id], run_id, question, prompts[question.id], result)
                    row["clip_key"] = request.clip_key
                    saved[row["key"]] = row
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                # One flush + fsync per batch: a kill loses at most the batch in flight, never a row
                # that was reported done (a torn last line is cut off on the next start).
                handle.flush()
                os.fsync(handle.fileno())
                bar.update(len(batch))
    finally:
        bar.close()
        if listener is not None:
            listener.close()

    overall, per_category, per_dataset = Score(), {}, {}
    for question in questions:
        status = saved[keys[question.id]]["status"]
        overall.add(status)
        per_category.setdefault(question.category, Score()).add(status)
        per_dataset.setdefault(question.dataset, Score()).add(status)
    settings = {"manifest": str(Path(cfg.manifest).resolve()), "checkpoint": cfg.checkpoint, "run": run_id,
                "store": cfg.store, "llm": cfg.llm, "engine": cfg.engine, "think_budget": cfg.think_budget,
                "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "seed": cfg.seed,
                "limit": cfg.limit}
    report = EvalReport(out=out, overall=overall, per_category=per_category, per_dataset=per_dataset,
                        asked=len(todo), reused=len(questions) - len(todo), rejected=len(manifest.rejects),
                        rejects_path=manifest.rejects_path, predictions=path, report_json=out / "report.json",
                        report_md=out / "report.md", settings=settings)
    _write_reports(report)
    return report


def rewrite_eval_report(out: str | Path) -> EvalReport:
    """Write ``report.json`` and ``report.md`` of an evaluation folder again, from its predictions only.

    Used by ``alarm report``: nothing is generated and no model is loaded. The rows scored are those of
    the run the last report names (``settings.run``), else of the run of the last row; the last answer
    per question wins, as in ``evaluate``.

    Raises:
        FileNotFoundError: ``out`` has no predictions.jsonl.
    """
    out = Path(out)
    path = out / PREDICTIONS
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not an evaluation folder")
    try:
        previous = json.loads((out / "report.json").read_text())["data"]
    except (OSError, ValueError, KeyError, TypeError):  # no report yet, or a damaged one: predictions suffice
        previous = {}
    settings = previous.get("settings") or {}
    # Read-only: a torn last line is skipped here, not cut off (evaluate does that when it resumes).
    rows = [r for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if (r := _row_or_none(line)) is not None]
    run_id = settings.get("run") or (rows[-1].get("run") if rows else None)
    latest = {r.get("id"): r for r in rows if r.get("run") == run_id}
    overall, per_category, per_dataset = Score(), {}, {}
    for row in latest.values():
        status = row.get("status", "error")
        overall.add(status)
        per_category.setdefault(str(row.get("category")), Score()).add(status)
        per_dataset.setdefault(str(row.get("dataset")), Score()).add(status)
    rejects = out / "rejects.jsonl"
    rejected = sum(1 for line in rejects.read_text().splitlines() if line.strip()) if rejects.is_file() else 0
    asked = int(previous.get("asked") or 0)
    report = EvalReport(out=out, overall=overall, per_category=per_category, per_dataset=per_dataset,
                        asked=asked, reused=max(0, len(latest) - asked), rejected=rejected,
                        rejects_path=rejects if rejected else None, predictions=path,
                        report_json=out / "report.json", report_md=out / "report.md",
                        settings=settings or {"run": run_id})
    _write_reports(report)
    return report
