"""``alarm demo run``: the whole job on the bundled demo corpus, every stage for real.

1. the demo corpus (generated sounds and music, espeak-ng speech where installed) and a
   multiple-choice eval set written from its labels;
2. the offline tiny models (real classes, random weights);
3. the feature cache: the four encoders (tiny preset) on embedded Ray into a Zarr store;
4. self-rephrasing on the tiny Qwen3 (vLLM when installed, transformers otherwise) and validation;
5. adapter training (ALARM-CA fusion over the four encoders) from the cached features;
6. multiple-choice evaluation of the trained adapter (``alarm eval``);
7. one question answered by ``alarm infer`` (encoders on the fly);
8. a report of the run (``report.md``) that links every stage's own report.

Every stage reuses its cache on a second run: the store computes nothing, the passes generate
nothing, training resumes at its last step, evaluation asks no question twice.

A tiny *random* LLM cannot write an ``<answer>`` block, so validation honestly rejects every
generated target. So that the trainer still has something true to learn, the demo trains on
*reference targets* written from the corpus labels (true by construction), and says so.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from alarm.pipeline.demo_corpus import DemoCorpusConfig
from alarm.pipeline.encoders import ENCODERS

ALL_ENCODERS = list(ENCODERS)
# Small enough for a 2-core CPU; the ALARM defaults are in each stage's config.
DEMO_FRONTEND = {"adapter_dim": 64, "conv_hidden_dim": 128, "ca_dim": 64, "ca_heads": 2, "ca_ffn_dim": 128}


@dataclass
class DemoConfig:
    """What ``run_demo`` runs; the defaults are the README's demo, tests shrink them."""

    corpus: DemoCorpusConfig = field(default_factory=DemoCorpusConfig)
    encoders: list[str] = field(default_factory=lambda: list(ALL_ENCODERS))
    train_steps: int = 200
    """Optimiser steps of the fusion model."""
    eval_per_clip: int = 2
    """Label questions per clip in the eval set, besides "sound, music or speech?"."""
    eval_think_budget: int = 16
    """A tiny random LLM never closes its thinking by itself: budget forcing closes it here."""
    eval_max_new_tokens: int = 48
    rephrase_max_tokens: int = 64
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.encoders) - set(ALL_ENCODERS))
        if unknown or not self.encoders:
            raise ValueError(f"encoders must be a non-empty subset of {ALL_ENCODERS}, got {self.encoders}")
        if self.train_steps < 1:
            raise ValueError(f"train_steps must be >= 1, got {self.train_steps}")
        if self.eval_think_budget >= self.eval_max_new_tokens:
            raise ValueError("eval_think_budget must be below eval_max_new_tokens (room for the answer)")


def _quiet() -> None:
    """Keep the console to the stages' own bars: no per-actor weight-loading bars, no Ray chatter."""
    import logging

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # also reaches Ray's worker processes
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("ray").setLevel(logging.WARNING)


def _vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _reference_target(metadata: dict[str, Any], prompt: str) -> str:
    """A short think-then-answer text stating only what the labels say (demo reference)."""
    facts = []
    if metadata.get("transcript"):
        facts.append(f'someone saying "{metadata["transcript"]}"')
    if metadata.get("caption"):
        facts.append(metadata["caption"])
    if metadata.get("labels"):
        facts.append(", ".join(metadata["labels"]))
    extra = [f"{k.replace('_', ' ')} {v}" for k, v in metadata.items()
             if k not in ("transcript", "caption", "labels", "segments") and not isinstance(v, (list, dict))]
    heard = "; ".join(facts) or "a sound"
    detail = f" ({', '.join(extra)})" if extra else ""
    return (f"The question is: {prompt} Listening to the clip, I hear {heard}{detail}.\n</think>\n\n"
            f"I hear {heard}{detail}.")


def write_reference_targets(manifest: Path, store: Path, out: Path) -> int:
    """Targets from the corpus labels for every instance the store accepted; returns the count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from alarm.pipeline.manifest import read_manifest
    from alarm.rephrase.validate import split_for

    keys = {r["id"]: r["key"] for r in pq.read_table(store / "instances.parquet").to_pylist()}
    rows = []
    for inst in read_manifest(manifest).instances:
        if inst.prompt is None or inst.id not in keys:
            continue
        rows.append({"instance_id": inst.id, "clip_key": keys[inst.id], "dataset": inst.dataset,
                     "prompt": inst.prompt, "target": _reference_target(inst.metadata, inst.prompt),
                     "incomplete": False, "split": split_for(inst.dataset, inst.id, 0.1),
                     "model": "demo-reference-from-labels"})
    pq.write_table(pa.Table.from_pylist(rows), out)
    return len(rows)


class DemoRun:
    """The demo's stages over one output folder; each stage returns a one-line result."""

    def __init__(self, out: Path, cfg: DemoConfig) -> None:
        self.out, self.cfg = out, cfg
        self.corpus_dir, self.store = out / "corpus", out / "store"
        self.rephrase_dir, self.train_dir, self.eval_dir = out / "rephrase", out / "train", out / "eval"
        self.manifest = self.corpus_dir / "manifest.jsonl"
        self.eval_manifest = self.corpus_dir / "mcqa.jsonl"
        self.llm: Path | None = None
        self.checkpoint: Path | None = None
        self.chance = 0.0
        """Expected accuracy of a random choice over the eval set."""
        self.facts: dict[str, Any] = {}
        self.outputs: dict[str, Path] = {}

    def corpus(self) -> str:
        from alarm.pipeline.counts import input_counts
        from alarm.pipeline.demo_corpus import write_demo_corpus
        from alarm.pipeline.demo_eval import write_demo_eval
        from alarm.pipeline.manifest import read_manifest
        from alarm.trainer.mcqa import read_eval_manifest

        if not (self.corpus_dir / "corpus.json").is_file():
            write_demo_corpus(self.corpus_dir, self.cfg.corpus)
        if not self.eval_manifest.is_file():
            write_demo_eval(self.corpus_dir, self.eval_manifest, per_clip=self.cfg.eval_per_clip)
        info = json.loads((self.corpus_dir / "corpus.json").read_text())
        counts = input_counts(read_manifest(self.manifest).instances)
        options = [len(q.options) for q in read_eval_manifest(self.eval_manifest).questions]
        questions = len(options)
        self.chance = round(sum(1 / n for n in options) / max(1, questions), 4)
        self.outputs.update(manifest=self.manifest, eval_manifest=self.eval_manifest)
        broken = len(info.get("broken_files", []))
        self.facts["corpus"] = {"counts": counts.to_dict(), "broken_files": broken, "speech": info["speech"],
                                "eval_questions": questions}
        return (f"{counts.line()} ({broken} files broken on purpose), {questions} eval questions, "
                f"speech: {info['speech']}")

    def models(self) -> str:
        from alarm.rephrase.qwen3 import build_tiny_qwen3

        self.llm = build_tiny_qwen3()
        return f"tiny Qwen3 (random weights, the real Qwen3 tokenizer) in {self.llm}"

    def features(self) -> str:
        from alarm.pipeline.counts import store_counts
        from alarm.pipeline.job import PipelineConfig, run_pipeline

        summary = run_pipeline(PipelineConfig(store=str(self.store), manifest=str(self.manifest),
                                              preset="tiny", encoders=list(self.cfg.encoders)))
        self.outputs.update(store=self.store, store_report=self.store / "report.md")
        rejected = sum(summary.rejected.values())
        encoded = sum(summary.encoded.values())
        counts = store_counts(self.store)
        self.facts["features"] = {"clips": summary.clips, "counts": counts.to_dict(),
                                  "audio_seconds": round(summary.audio_hours * 3600, 1),
                                  "rejected": summary.rejected, "encoded_now": summary.encoded}
        return (f"{counts.line()} ({summary.audio_hours * 3600:.0f} audio-s) for {len(self.cfg.encoders)} "
                f"encoders; {encoded} encoder-clips computed now; {rejected} manifest rows rejected with a reason")

    def rephrase(self) -> str:
        from alarm.rephrase.engines import EngineConfig
        from alarm.rephrase.run import RephraseConfig, run_rephrase

        engine = "vllm" if _vllm_available() else "transformers"
        tokens = self.cfg.rephrase_max_tokens
        cfg = RephraseConfig(engine=EngineConfig(name=engine, model=str(self.llm)),
                             answer_max_tokens=tokens * 3 // 4, think_budget=tokens // 2, total_max_tokens=tokens,
                             chunk_size=64)
        result = run_rephrase(self.manifest, self.rephrase_dir, cfg, instances=self.store / "instances.parquet",
                              progress=self.cfg.progress)
        self.outputs.update(rephrase=self.rephrase_dir, rephrase_report=self.rephrase_dir / "report.md")
        validation = result.get("validation", {})
        generated = sum(result.get(p, {}).get("generated", 0) for p in ("answer", "rephrase"))
        self.facts["rephrase"] = {"engine": engine, "generated_now": generated, "kept": validation.get("kept"),
                                  "rejected_per_rule": validation.get("rejected_per_rule"),
                                  "accounting": validation.get("accounting")}
        return f"engine {engine}, {generated} generations now; {validation.get('accounting', '')}"

    def train(self) -> str:
        from alarm.trainer.config import TrainConfig
        from alarm.trainer.train import train

        targets = self.out / "reference_targets.parquet"
        n = write_reference_targets(self.manifest, self.store, targets)
        steps = self.cfg.train_steps
        cfg = TrainConfig(targets=str(targets), store=str(self.store), output_dir=str(self.train_dir),
                          llm=str(self.llm), encoders=list(self.cfg.encoders), fusion="ca",
                          frontend=dict(DEMO_FRONTEND), batch_tokens=2048, max_seq_len=1024, num_workers=0,
                          lr=1e-3, warmup_steps=min(20, steps // 10), epochs=1000, max_steps=steps,
                          schedule_steps=steps, eval_every=max(1, steps // 4), save_every=max(1, steps // 2),
                          log_every=max(1, steps // 40), sample_generations=1, sample_max_new_tokens=16,
                          progress=self.cfg.progress)
        result = train(cfg)
        self.checkpoint = result.checkpoint
        self.outputs.update(train=result.run_dir, checkpoint=result.checkpoint,
                            train_report=result.run_dir / "report.md", loss_curve=result.run_dir / "loss.png")
        logged = _losses(result.run_dir / "logs.jsonl")
        self.facts["train"] = {"targets": n, "step": result.step, "steps_now": len(result.losses),
                               "first_loss": logged[0] if logged else None, "last_loss": logged[-1] if logged else None,
                               "eval_loss": result.eval_losses}
        trend = f"loss {logged[0]:.2f} -> {logged[-1]:.2f}" if logged else "no loss logged"
        now = f"{len(result.losses)} steps now" if result.losses else "already trained (resumed at its end)"
        return f"{n} reference targets, ALARM-CA, step {result.step} ({now}), {trend}"

    def evaluate(self) -> str:
        from alarm.trainer.evaluate import EvalConfig, evaluate

        report = evaluate(EvalConfig(manifest=str(self.eval_manifest), checkpoint=str(self.checkpoint),
                                     store=str(self.store), llm=str(self.llm), out=str(self.eval_dir),
                                     think_budget=self.cfg.eval_think_budget,
                                     max_new_tokens=self.cfg.eval_max_new_tokens, progress=self.cfg.progress))
        self.outputs.update(eval=self.eval_dir, eval_report=report.report_md)
        data = report.to_dict()
        self.facts["eval"] = data
        data["chance_accuracy"] = self.chance
        overall = data.get("overall", {})
        data["accuracy_words"] = accuracy_words(overall, self.chance)
        return (f"{overall.get('questions', 0)} questions: {data['accuracy_words']}; "
                f"asked now {data.get('asked', '?')}")

    def infer(self) -> str:
        from alarm.pipeline.report import truncate
        from alarm.trainer.infer import InferConfig, infer_files

        clip = json.loads(self.manifest.read_text().splitlines()[0])
        audio = str((self.manifest.parent / clip["audio"]).resolve())
        prompt = "What do you hear in this clip?"
        result = infer_files(InferConfig(checkpoint=str(self.checkpoint), store=str(self.store), llm=str(self.llm),
                                         think_budget=self.cfg.eval_think_budget,
                                         max_new_tokens=self.cfg.eval_max_new_tokens), [audio], prompt)[0]
        self.facts["infer"] = {"audio": audio, "prompt": prompt, "thinking": result.thinking,
                               "answer": result.answer, "forced": result.forced, "error": result.error,
                               "thinking_tokens": result.thinking_tokens, "answer_tokens": result.answer_tokens,
                               "empty_reason": result.empty_reason()}
        if result.error:
            return f"{Path(audio).name}: error {result.error}"
        answer = (f"answer {truncate(result.answer, 60)!r} (random text: the LLM's weights are random)"
                  if result.answer else f"answer {result.empty_reason()}")
        return (f"{Path(audio).name}: {result.thinking_tokens} thinking tokens"
                f"{' (budget forced)' if result.forced else ''}, {answer}")


def accuracy_words(overall: dict[str, Any], chance: float) -> str:
    """The evaluation's accuracy against the chance level, with the reason when it falls below it.

    A reply without a parseable ``<answer>i</answer>`` is scored wrong, so a model that never writes
    that format scores 0 %: below chance, not at it.
    """
    questions = int(overall.get("questions") or 0)
    unparseable = int(overall.get("unparseable") or 0)
    accuracy = float(overall.get("accuracy") or 0.0)
    head, level = f"accuracy {100 * accuracy:.1f} %", f"the {100 * chance:.1f} % chance level"
    if questions and unparseable == questions:
        return (f"{head}, below {level}: all {questions} answers unparseable (a random tiny LLM never writes "
                f"<answer>i</answer>, and an answer without it is scored wrong)")
    if questions and abs(accuracy - chance) <= 1 / questions:  # within one question of chance
        where = "at"
    else:
        where = "below" if accuracy < chance else "above"
    return f"{head}, {where} {level}; {unparseable} of {questions} answers unparseable (scored wrong)"


def what_you_see(facts: dict[str, Any]) -> list[str]:
    """What a user sees in the demo's numbers, and why (terminal and report.md say the same)."""
    lines = ["The LLM is a tiny *random* Qwen3 (the real tokenizer, random weights): it writes random text."]
    rephrase = facts.get("rephrase") or {}
    if rephrase:
        rules = ", ".join(f"{n} {rule}" for rule, n in (rephrase.get("rejected_per_rule") or {}).items())
        unparseable = (rephrase.get("rejected_per_rule") or {}).get("unparseable", 0)
        why = (f" {unparseable} rephrasings have no <answer> block: a random LLM never writes the format the "
               f"rephrase pass asks for." if unparseable else "")
        lines.append(f"Rephrasing: {rephrase.get('accounting')} (rejects by rule: {rules or 'none'}).{why} "
                     f"Training uses reference targets written from the corpus labels, true by construction.")
    evaluation = facts.get("eval") or {}
    if evaluation.get("accuracy_words"):
        lines.append(f"Evaluation: {evaluation['accuracy_words']}.")
    infer = facts.get("infer") or {}
    if infer and not infer.get("error"):
        said = (f"answered {infer['answer'][:40]!r} (random text)" if infer.get("answer")
                else f"gave no answer: {infer.get('empty_reason')}")
        lines.append(f"`alarm infer` thought for {infer.get('thinking_tokens')} tokens"
                     f"{', closed by budget forcing' if infer.get('forced') else ''}, then {said}.")
    lines.append("Every stage runs for real on real components; swap in the real checkpoints for real numbers.")
    return lines


def _losses(logs: Path) -> list[float]:
    """Training losses in step order from a run's logs (a resumed step: its last record wins)."""
    from alarm.trainer.report import by_step, read_logs

    return [float(r["loss"]) for r in by_step(read_logs(logs)[0], "loss")] if logs.is_file() else []


def _write_demo_report(run: DemoRun, stages: list[dict[str, Any]], wall: float) -> Path:
    from alarm.pipeline.report import Section, truncate, write_report

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


def run_demo(out: Path, cfg: DemoConfig | None = None) -> dict[str, Any]:
    """Run the demo into ``out``; return (and save as ``out/report.json``) its report data."""
    cfg = cfg or DemoConfig()
    _quiet()
    out.mkdir(parents=True, exist_ok=True)
    run = DemoRun(out, cfg)
    started = time.perf_counter()
    stages: list[dict[str, Any]] = []

    def stage(title: str, fn: Callable[[], str]) -> None:
        click.secho(f"==> {title}", bold=True)
        t0 = time.perf_counter()
        detail = fn()
        seconds = round(time.perf_counter() - t0, 1)
        stages.append({"stage": title, "seconds": seconds, "result": detail})
        click.echo(f"    {detail} ({seconds} s)")

    stage("demo corpus and eval set", run.corpus)
    stage("offline tiny models", run.models)
    stage(f"feature cache ({len(cfg.encoders)} encoders, tiny preset, embedded Ray)", run.features)
    stage("self-rephrasing + validation (tiny random Qwen3)", run.rephrase)
    stage("adapter training from the cache (reference targets)", run.train)
    stage("multiple-choice evaluation (alarm eval)", run.evaluate)
    stage("one question on the fly (alarm infer)", run.infer)
    wall = round(time.perf_counter() - started, 1)
    md = _write_demo_report(run, stages, wall)
    click.secho(f"Done in {wall} s. Outputs:", bold=True)
    width = max(len(k) for k in run.outputs)
    for name, path in run.outputs.items():
        click.echo(f"  {name:<{width}}  {path}")
    click.echo(f"  {'report':<{width}}  {md}")
    click.secho("What you see, and why:", bold=True)
    for line in what_you_see(run.facts):
        click.echo(f"  - {line.replace('*', '').replace('`', '')}")
    return json.loads((out / "report.json").read_text())["data"]
