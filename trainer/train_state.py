"""What each step of ``train(cfg)`` hands to the next: one small record per step.

``train`` reads as the list of steps (setup -> data in -> model -> data -> optimiser -> resume ->
loop -> final eval and checkpoint); these records are the arrows between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alarm.trainer.config import TrainConfig
from alarm.trainer.distributed import Dist
from alarm.trainer.run_log import RunLog


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves."""

    run_dir: Path
    step: int
    checkpoint: Path | None
    losses: list[float] = field(default_factory=list)
    """Training loss per optimiser step run in this call (token-mean over all processes)."""
    eval_losses: dict[str, float] = field(default_factory=dict)
    """Validation loss per dataset at the last evaluation."""


@dataclass
class Run:
    """Setup: where this process runs and writes."""

    dist: Dist
    device: Any
    """The torch device of this process."""
    bf16: bool
    """The frozen LLM in bfloat16 and the steps under bf16 autocast."""
    run_dir: Path
    """Where this process writes: the run folder, or the local working copy of a run on a URL."""
    llm_path: str
    """The LLM on local disk (resolved before any work)."""
    url: str = ""
    """The run folder's URL when ``output_dir`` is on object storage (``run_remote``), else empty."""


@dataclass
class Inputs:
    """Data in: the feature store's readers, the targets, and the checkpoint a run resumes from."""

    readers: dict[str, Any]
    table: Any
    """The targets table (pyarrow)."""
    fingerprint: str
    """Of the targets; a resumed run checks it against its checkpoint's."""
    spec_ids: dict[str, str]
    """Store spec id per encoder; a resumed run checks them against its checkpoint's."""
    latest: Path | None
    """The checkpoint resumed from (None: a fresh start)."""
    state: Any
    """Its loaded contents (``checkpoint.Checkpoint``), dropped once restored."""


@dataclass
class Parts:
    """Model: the frozen LLM, the trainable front end and what one step's forward needs."""

    tokenizer: Any
    layout: Any
    """``sequence.PromptLayout`` of the LLM's chat template."""
    llm: Any
    frontend: Any
    named: list[tuple[str, Any]]
    """The trainable parameters (what ``freeze`` leaves), by name."""
    sources: dict[str, Any]
    """Where batches read audio features: the store, or the adapter cache in the fusion stage."""
    model: Any
    """``model.Model``: one step's forward."""

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.named]

    @property
    def params(self) -> list[Any]:
        return [p for _, p in self.named]


@dataclass
class Data:
    """Data: the joined rows, their samplers and datasets, and how many steps they give."""

    skip_log: Any
    """``data.SkipLog``: clips of damaged store parts met mid-run go to ``rejects.jsonl``."""
    train_rows: list[Any]
    val_rows: list[Any]
    sampler: Any
    val_sampler: Any
    train_set: Any
    val_set: Any
    steps_in_epoch: list[int]
    """Optimiser steps per epoch (full ``grad_accum`` groups of batches only)."""
    planned: int
    """Steps of all epochs: the schedule's length unless ``schedule_steps`` is set."""
    total_steps: int
    """Steps this run stops at (``max_steps`` when set and smaller)."""


@dataclass
class Position:
    """Where the loop is: the step done, and the sampler's epoch and batch within it."""

    step: int = 0
    epoch: int = 0
    start: int = 0
    resumed: int = 0
    """The step this call started from."""


@dataclass
class Session:
    """Everything the loop, the evaluation and the checkpoint read: the steps' records together."""

    cfg: TrainConfig
    run: Run
    inputs: Inputs
    parts: Parts
    data: Data
    optimizer: Any
    scheduler: Any
    position: Position
    log: RunLog
