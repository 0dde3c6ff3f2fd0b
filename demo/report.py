"""The reports at the top: the demo's own ``report.md``, and ``alarm report DIR`` over every stage.

``write_any_report`` finds what wrote a folder (feature store, rephrase run, training run,
evaluation, manifest statistics) and calls that stage's own writer again; a folder of no known
kind is searched below. Only this layer may know every stage's writer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alarm.demo.stages import DemoRun
from alarm.demo.words import what_you_see
from alarm.pipeline.formatting import truncate
from alarm.pipeline.report import (
    REPORT_JSON,
    Section,
    attempt,
    read_json,
    write_pipeline_report,
    write_report,
)


def write_demo_report(run: DemoRun, stages: list[dict[str, Any]], wall: float) -> Path:
    """The demo's report.md: stages, outputs, loss curve, one answer, and what the numbers mean."""
    out = run.out
    rel = {k: (os.path.relpath(v, out) if v is not None else None) for k, v in run.outputs.items()}
    sections = [
        Section("Stages", headers=["stage", "seconds", "result"],
                rows=[[s["stage"], s["seconds"], s["result"]] for s in stages]),
        Section("Outputs", headers=["output", "path"], rows=[[k, f"[{v}]({v})"] for k, v in rel.items() if v]),
    ]
    if "loss_curve" in rel and (out / rel["loss_curve"]).is_file():
        sections.append(Section("Training loss", figure=rel["loss_curve"], caption="training and validation loss"))
    infer = run.facts.get("infer")
    if infer:
        answer = repr(truncate(infer["answer"])) if infer["answer"] else f"({infer.get('empty_reason')})"
        sections.append(Section("One answer (`alarm infer`)", text=(
            f"Prompt: *{infer['prompt']}* on `{Path(infer['audio']).name}`\n\n"
            f"Thinking: {truncate(infer['thinking'])!r}\n\nAnswer: {answer}")))
    sections.append(Section("Read this before the numbers", text="\n".join(f"- {line}" for line in
                                                                           what_you_see(run.facts))))
    data = {"wall_seconds": wall, "stages": stages, "outputs": {k: str(v) for k, v in run.outputs.items()},
            **run.facts}
    _, md = write_report(out, "alarm demo", data, sections, key_figures={"wall seconds": wall})
    return md


def report_kind(folder: str | Path) -> str | None:
    """What wrote ``folder``: ``pipeline``, ``prompts``, ``rephrase``, ``train``, ``eval``, ``stats``, or None."""
    root = Path(folder)
    if (root / "summary.json").is_file() or (root / "instances.parquet").is_file() or (root / "features").is_dir():
        return "pipeline"
    if (root / "config.yaml").is_file() and (root / "clips.parquet").is_file():  # before rephrase: both have run.json
        return "prompts"
    if (root / "config.yaml").is_file() and ((root / "run.json").is_file() or (root / "inputs.parquet").is_file()):
        return "rephrase"
    if (root / "logs.jsonl").is_file() or (root / "checkpoints").is_dir():
        return "train"
    if (root / "predictions.jsonl").is_file():
        return "eval"
    if (root / REPORT_JSON).is_file():
        kind = attempt("report.json", lambda: read_json(root / REPORT_JSON)["data"]["kind"], [])
        return "stats" if kind == "stats" else None
    return None


def write_stats_report_again(folder: Path) -> tuple[Path, Path]:
    """The ``alarm stats --out`` report of ``folder`` again, from the manifest its report.json names.

    Raises:
        FileNotFoundError: that manifest is gone.
    """
    from alarm.pipeline.stats import manifest_stats, write_stats_report

    manifest = read_json(folder / REPORT_JSON)["data"]["manifest"]
    if not Path(manifest).is_file():
        raise FileNotFoundError(f"{folder}: the manifest its statistics came from, {manifest}, is gone")
    return write_stats_report(manifest_stats(manifest), folder)


def write_any_report(folder: str | Path, depth: int = 3) -> list[tuple[str, Path]]:
    """(Re)write the report of ``folder`` by its kind; a folder of no known kind: of each output folder below it.

    Args:
        folder: an output folder (store, prompts run, rephrase run, training run, evaluation, statistics), or
            a folder holding some (a demo output; ``runs/`` with one training run per stage).
        depth: how many levels of unknown folders to look through.

    Returns:
        (kind, report.md path) per report written; empty when nothing was recognised.
    """
    from alarm.rephrase.prompt_report import write_prompts_report
    from alarm.rephrase.report import write_rephrase_report
    from alarm.trainer.evaluate import rewrite_eval_report
    from alarm.trainer.report import write_train_report

    def write_eval_report(path: Path) -> tuple[Path, Path]:
        report = rewrite_eval_report(path)
        return report.report_json, report.report_md

    writers: dict[str, Callable[[Path], tuple[Path, Path]]] = {
        "pipeline": write_pipeline_report, "prompts": write_prompts_report, "rephrase": write_rephrase_report,
        "train": write_train_report, "eval": write_eval_report, "stats": write_stats_report_again,
    }
    root = Path(folder)
    kind = report_kind(root)
    if kind is not None:
        return [(kind, writers[kind](root)[1])]
    found = []
    if depth > 0 and root.is_dir():
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found += write_any_report(sub, depth - 1)
    return found
