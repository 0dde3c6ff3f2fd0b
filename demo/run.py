"""``alarm demo run``: the whole job on the bundled demo corpus, every stage for real (see ``alarm.demo``)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from alarm.demo.config import DemoConfig
from alarm.demo.report import write_demo_report
from alarm.demo.stages import (
    DemoRun,
    answer_one,
    build_models,
    cache_features,
    evaluate_adapter,
    run_rephrasing,
    train_adapter,
    write_corpus,
)
from alarm.demo.words import what_you_see


def _quiet() -> None:
    """Keep the console to the stages' own bars: no per-actor weight-loading bars, no Ray chatter."""
    import logging

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # also reaches Ray's worker processes
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("ray").setLevel(logging.WARNING)


def run_demo(out: Path, cfg: DemoConfig | None = None) -> dict[str, Any]:
    """Run the demo into ``out``; return (and save as ``out/report.json``) its report data."""
    cfg = cfg or DemoConfig()
    _quiet()
    out.mkdir(parents=True, exist_ok=True)
    run = DemoRun(out, cfg)
    started = time.perf_counter()
    stages: list[dict[str, Any]] = []

    def stage(title: str, fn: Callable[[DemoRun], str]) -> None:
        click.secho(f"==> {title}", bold=True)
        t0 = time.perf_counter()
        detail = fn(run)
        seconds = round(time.perf_counter() - t0, 1)
        stages.append({"stage": title, "seconds": seconds, "result": detail})
        click.echo(f"    {detail} ({seconds} s)")

    stage("demo corpus and eval set", write_corpus)
    stage("offline tiny models", build_models)
    stage(f"feature cache ({len(cfg.encoders)} encoders, tiny preset, embedded Ray)", cache_features)
    stage("self-rephrasing + validation (tiny random Qwen3)", run_rephrasing)
    stage("adapter training from the cache (reference targets)", train_adapter)
    stage("multiple-choice evaluation (alarm eval)", evaluate_adapter)
    stage("one question on the fly (alarm infer)", answer_one)
    wall = round(time.perf_counter() - started, 1)
    md = write_demo_report(run, stages, wall)
    click.secho(f"Done in {wall} s. Outputs:", bold=True)
    width = max(len(k) for k in run.outputs)
    for name, path in run.outputs.items():
        click.echo(f"  {name:<{width}}  {path}")
    click.echo(f"  {'report':<{width}}  {md}")
    click.secho("What you see, and why:", bold=True)
    for line in what_you_see(run.facts):
        click.echo(f"  - {line.replace('*', '').replace('`', '')}")
    return json.loads((out / "report.json").read_text())["data"]
