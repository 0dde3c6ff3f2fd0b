"""The training run's report: loss curves (``loss.png``), best and final figures, samples."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from alarm.pipeline.report import (
    HISTORY_ROWS,
    Section,
    attempt,
    format_number,
    loss_figure,
    need,
    read_yaml,
    smooth,
    truncate,
    write_report,
)


def read_logs(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of a ``logs.jsonl`` and the number of unreadable lines (a killed run may cut its last)."""
    records, bad = [], 0
    for line in need(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def by_step(records: list[dict[str, Any]], field_name: str) -> list[dict[str, Any]]:
    """Records holding a number in ``field_name``, one per step in step order.

    A resumed run logs again the steps after its last checkpoint: the latest record of a step wins.
    """
    latest = {r["step"]: r for r in records if isinstance(r.get(field_name), (int, float))}
    return [latest[s] for s in sorted(latest)]


def write_train_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Report a training run from ``logs.jsonl``, ``config.yaml`` and ``checkpoints/``; draws ``loss.png``.

    Args:
        run_dir: the run folder (``output_dir`` of the config); the report is written into it.

    Returns:
        The paths of report.json and report.md.
    """
    from alarm.trainer.checkpoint import latest_checkpoint

    root = Path(run_dir)
    missing: list[str] = []
    records, bad = attempt("logs.jsonl", lambda: read_logs(root / "logs.jsonl"), missing, ([], 0))
    if bad:
        missing.append(f"logs.jsonl: {bad} unreadable line(s) skipped")
    config = attempt("config.yaml", lambda: read_yaml(root / "config.yaml"), missing, {}) or {}
    checkpoint = attempt("checkpoints", lambda: latest_checkpoint(root), missing)
    train = by_step(records, "loss")
    evals = by_step(records, "eval_loss")
    losses = [float(r["loss"]) for r in train]
    smoothed = smooth(losses) if losses else []
    per_ds: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in evals:
        for ds, v in (r.get("eval_loss_per_dataset") or {}).items():
            per_ds[ds].append((r["step"], float(v)))
    best = min(evals, key=lambda r: r["eval_loss"], default=None)
    datasets = {ds: {"first": pts[0][1], "best": min(v for _, v in pts),
                     "best_step": min(pts, key=lambda p: p[1])[0], "final": pts[-1][1], "final_step": pts[-1][0]}
                for ds, pts in sorted(per_ds.items())}
    last = train[-1] if train else {}
    figures = {}
    if train or evals:
        figures["loss"] = loss_figure([(r["step"], float(r["loss"])) for r in train],
                                      [(r["step"], float(r["eval_loss"])) for r in evals], per_ds,
                                      root / "loss.png").name
    else:
        missing.append("no loss record in logs.jsonl: no loss curves")
    samples = [{"step": r["step"], "instance_id": s.get("instance_id"), "generated": s.get("generated", "")}
               for r in evals[-1:] for s in (r.get("samples") or [])]
    data = {
        "kind": "train", "run_dir": str(root.resolve()),
        "step": max([r["step"] for r in records], default=0),
        "train": {"first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
                  "final_loss_smoothed": smoothed[-1] if smoothed else None,
                  "min_loss": min(losses) if losses else None, "tokens_per_s": last.get("tokens_per_s"),
                  "lr": last.get("lr"), "epoch": last.get("epoch"), "records": len(train)},
        "eval": {"steps": [r["step"] for r in evals], "loss": [r["eval_loss"] for r in evals],
                 "final": evals[-1]["eval_loss"] if evals else None,
                 "best": best["eval_loss"] if best else None, "best_step": best["step"] if best else None,
                 "per_dataset": datasets},
        "checkpoint": str(checkpoint) if checkpoint else None,
        "config": {k: config.get(k) for k in ("llm", "encoders", "fusion", "targets", "store", "max_steps",
                                              "epochs", "lr", "batch_tokens") if k in config},
        "samples": samples, "figures": figures,
    }
    key = {"step": data["step"], "final train loss (smoothed)": data["train"]["final_loss_smoothed"],
           "final validation loss": data["eval"]["final"],
           "best validation loss": (f"{format_number(best['eval_loss'])} at step {best['step']:,}"
                                    if best else None),
           "tokens/s": data["train"]["tokens_per_s"], "checkpoint": data["checkpoint"]}
    sections = [
        Section("Loss", figure=figures.get("loss"), caption="training and validation loss"),
        Section("Validation loss per dataset", headers=["dataset", "first", "best", "best step", "final"],
                rows=[[ds, v["first"], v["best"], v["best_step"], v["final"]] for ds, v in datasets.items()]),
        Section("Validation history" + (f" (last {HISTORY_ROWS} of {len(evals)})" if len(evals) > HISTORY_ROWS
                                        else ""),
                headers=["step", "all", *datasets],
                rows=[[r["step"], r["eval_loss"], *[(r.get("eval_loss_per_dataset") or {}).get(ds)
                                                    for ds in datasets]] for r in evals[-HISTORY_ROWS:]]),
        Section(f"Sample generations (step {samples[0]['step']:,})" if samples else "Sample generations",
                headers=["instance", "generated"],
                rows=[[s["instance_id"], truncate(s["generated"])] for s in samples]),
        Section("Configuration", headers=["setting", "value"],
                rows=[[k, json.dumps(v) if isinstance(v, (list, dict)) else v]
                      for k, v in data["config"].items()]),
    ]
    return write_report(root, "Training report", data, sections, key, missing)
