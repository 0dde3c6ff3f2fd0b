"""A run folder's log: ``logs.jsonl`` (one JSON record per logged step) and TensorBoard events.

A resumed run first drops what a killed run logged past its last checkpoint (those steps run
again), so every step appears once and in order. Only the main process writes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from alarm.pipeline.store_layout import atomic_path


class RunLog:
    """Appends records to ``logs.jsonl`` (and TensorBoard where installed); a no-op off the main process."""

    def __init__(self, run_dir: Path, step: int, main: bool) -> None:
        self.path = run_dir / "logs.jsonl"
        self.main = main
        if main:  # a killed run may have logged steps past its last checkpoint: they are run again
            truncate_log(self.path, step)
        self.writer = _tensorboard(run_dir, purge_step=step + 1) if main else None

    def __call__(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        if self.writer is not None:
            for key, value in _flat_scalars(record).items():
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def set_aside(run_dir: Path) -> None:
    """Move an earlier run's checkpoints and logs to ``previous-<time>/`` (a fresh start keeps them)."""
    old = [run_dir / name for name in ("checkpoints", "logs.jsonl", "rejects.jsonl", "tensorboard")
           if (run_dir / name).exists()]
    if old:
        stamp = time.strftime("previous-%Y%m%d-%H%M%S")
        aside = run_dir / stamp
        for n in range(2, 1000):  # two fresh starts within a second (a kill, then a rerun) get two folders
            try:
                aside.mkdir()
                break
            except FileExistsError:
                aside = run_dir / f"{stamp}-{n}"
        for path in old:
            path.rename(aside / path.name)



def truncate_log(log_path: Path, step: int) -> int:
    """Keep only the records of ``logs.jsonl`` up to ``step`` (the checkpoint a run resumes from).

    A run killed after logging step N but before its next checkpoint logs steps past the checkpoint
    that the resumed run logs again. Those records, and a line torn by the kill, are dropped, so every
    step appears once and in order. Returns how many lines were dropped.

    Args:
        log_path: The run's ``logs.jsonl`` (absent: nothing to do).
        step: The step the run resumes from (0 for a run with no checkpoint).
    """
    if not log_path.exists():
        return 0
    # Bytes that are not UTF-8 come only from outside damage: read as replacement characters, a line
    # they garble into invalid JSON is dropped like a torn one, instead of a traceback on resume.
    lines = log_path.read_text(errors="replace").splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the kill tore this line
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    if len(kept) == len(lines):
        return 0
    with atomic_path(log_path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


def last_eval_losses(log_path: Path) -> dict[str, float]:
    """The per-dataset losses of the last evaluation in ``logs.jsonl`` (empty when there is none)."""
    losses: dict[str, float] = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            record = json.loads(line)
            if "eval_loss_per_dataset" in record:
                losses = record["eval_loss_per_dataset"]
    return losses


def _tensorboard(run_dir: Path, purge_step: int | None = None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    # purge_step drops events a killed run wrote past its checkpoint, as truncate_log does for logs.jsonl.
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)


def _flat_scalars(record: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in record.items():
        if isinstance(value, (int, float)) and key != "step":
            out[key] = float(value)
        elif isinstance(value, dict):
            out.update({f"{key}/{k}": float(v) for k, v in value.items() if isinstance(v, (int, float))})
    return out
