"""The demo's stages over one output folder, in order; each returns a one-line result.

``DemoRun`` holds the folder's paths and what the stages found; each stage is a function of it,
so ``run.py`` can list them. Stage 5 trains on reference targets (``targets.py``), not on the
rephrased ones: a tiny random LLM never writes a target that passes validation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alarm.demo.config import DEMO_FRONTEND, DemoConfig
from alarm.demo.targets import write_reference_targets
from alarm.demo.words import accuracy_words


class DemoRun:
    """One demo output folder: where each stage writes, and what the stages found (for the report)."""

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


def write_corpus(run: DemoRun) -> str:
    """Stage 1: the demo corpus and its multiple-choice eval set (each written once)."""
    from alarm.pipeline.counts import input_counts
    from alarm.pipeline.demo_corpus import write_demo_corpus
    from alarm.pipeline.demo_eval import write_demo_eval
    from alarm.pipeline.manifest import read_manifest
    from alarm.trainer.mcqa import read_eval_manifest

    if not (run.corpus_dir / "corpus.json").is_file():
        write_demo_corpus(run.corpus_dir, run.cfg.corpus)
    if not run.eval_manifest.is_file():
        write_demo_eval(run.corpus_dir, run.eval_manifest, per_clip=run.cfg.eval_per_clip)
    info = json.loads((run.corpus_dir / "corpus.json").read_text())
    counts = input_counts(read_manifest(run.manifest).instances)
    options = [len(q.options) for q in read_eval_manifest(run.eval_manifest).questions]
    questions = len(options)
    run.chance = round(sum(1 / n for n in options) / max(1, questions), 4)
    run.outputs.update(manifest=run.manifest, eval_manifest=run.eval_manifest)
    broken = len(info.get("broken_files", []))
    run.facts["corpus"] = {"counts": counts.to_dict(), "broken_files": broken, "speech": info["speech"],
                           "eval_questions": questions}
    return (f"{counts.line()} ({broken} files broken on purpose), {questions} eval questions, "
            f"speech: {info['speech']}")


def build_models(run: DemoRun) -> str:
    """Stage 2: the offline tiny Qwen3 (random weights, the real tokenizer)."""
    from alarm.rephrase.qwen3 import build_tiny_qwen3

    run.llm = build_tiny_qwen3()
    return f"tiny Qwen3 (random weights, the real Qwen3 tokenizer) in {run.llm}"


def cache_features(run: DemoRun) -> str:
    """Stage 3: the feature cache, tiny preset, on embedded Ray."""
    from alarm.pipeline.counts import store_counts
    from alarm.pipeline.job import PipelineConfig, run_pipeline

    summary = run_pipeline(PipelineConfig(store=str(run.store), manifest=str(run.manifest),
                                          preset="tiny", encoders=list(run.cfg.encoders)))
    run.outputs.update(store=run.store, store_report=run.store / "report.md")
    rejected = sum(summary.rejected.values())
    encoded = sum(summary.encoded.values())
    counts = store_counts(run.store)
    run.facts["features"] = {"clips": summary.clips, "counts": counts.to_dict(),
                             "audio_seconds": round(summary.audio_hours * 3600, 1),
                             "rejected": summary.rejected, "encoded_now": summary.encoded}
    return (f"{counts.line()} ({summary.audio_hours * 3600:.0f} audio-s) for {len(run.cfg.encoders)} "
            f"encoders; {encoded} encoder-clips computed now; {rejected} manifest rows rejected with a reason")


def run_rephrasing(run: DemoRun) -> str:
    """Stage 4: self-rephrasing and validation on the tiny Qwen3."""
    from alarm.rephrase.engines import EngineConfig
    from alarm.rephrase.run import RephraseConfig, run_rephrase

    engine = "vllm" if _vllm_available() else "transformers"
    tokens = run.cfg.rephrase_max_tokens
    cfg = RephraseConfig(engine=EngineConfig(name=engine, model=str(run.llm)),
                         answer_max_tokens=tokens * 3 // 4, think_budget=tokens // 2, total_max_tokens=tokens,
                         chunk_size=64)
    result = run_rephrase(run.manifest, run.rephrase_dir, cfg, instances=run.store / "instances.parquet",
                          progress=run.cfg.progress)
    run.outputs.update(rephrase=run.rephrase_dir, rephrase_report=run.rephrase_dir / "report.md")
    validation = result.get("validation", {})
    generated = sum(result.get(p, {}).get("generated", 0) for p in ("answer", "rephrase"))
    run.facts["rephrase"] = {"engine": engine, "generated_now": generated, "kept": validation.get("kept"),
                             "rejected_per_rule": validation.get("rejected_per_rule"),
                             "accounting": validation.get("accounting")}
    return f"engine {engine}, {generated} generations now; {validation.get('accounting', '')}"


def train_adapter(run: DemoRun) -> str:
    """Stage 5: ALARM-CA fusion trained on the reference targets."""
    from alarm.trainer.config import TrainConfig
    from alarm.trainer.train import train

    targets = run.out / "reference_targets.parquet"
    n = write_reference_targets(run.manifest, run.store, targets)
    steps = run.cfg.train_steps
    cfg = TrainConfig(targets=str(targets), store=str(run.store), output_dir=str(run.train_dir),
                      llm=str(run.llm), encoders=list(run.cfg.encoders), fusion="ca",
                      frontend=dict(DEMO_FRONTEND), batch_tokens=2048, max_seq_len=1024, num_workers=0,
                      lr=1e-3, warmup_steps=min(20, steps // 10), epochs=1000, max_steps=steps,
                      schedule_steps=steps, eval_every=max(1, steps // 4), save_every=max(1, steps // 2),
                      log_every=max(1, steps // 40), sample_generations=1, sample_max_new_tokens=16,
                      progress=run.cfg.progress)
    result = train(cfg)
    run.checkpoint = result.checkpoint
    run.outputs.update(train=result.run_dir, checkpoint=result.checkpoint,
                       train_report=result.run_dir / "report.md", loss_curve=result.run_dir / "loss.png")
    logged = _losses(result.run_dir / "logs.jsonl")
    run.facts["train"] = {"targets": n, "step": result.step, "steps_now": len(result.losses),
                          "first_loss": logged[0] if logged else None, "last_loss": logged[-1] if logged else None,
                          "eval_loss": result.eval_losses}
    trend = f"loss {logged[0]:.2f} -> {logged[-1]:.2f}" if logged else "no loss logged"
    now = f"{len(result.losses)} steps now" if result.losses else "already trained (resumed at its end)"
    return f"{n} reference targets, ALARM-CA, step {result.step} ({now}), {trend}"


def evaluate_adapter(run: DemoRun) -> str:
    """Stage 6: multiple-choice evaluation of the trained adapter."""
    from alarm.trainer.evaluate import EvalConfig, evaluate

    report = evaluate(EvalConfig(manifest=str(run.eval_manifest), checkpoint=str(run.checkpoint),
                                 store=str(run.store), llm=str(run.llm), out=str(run.eval_dir),
                                 think_budget=run.cfg.eval_think_budget,
                                 max_new_tokens=run.cfg.eval_max_new_tokens, progress=run.cfg.progress))
    run.outputs.update(eval=run.eval_dir, eval_report=report.report_md)
    data = report.to_dict()
    run.facts["eval"] = data
    data["chance_accuracy"] = run.chance
    overall = data.get("overall", {})
    data["accuracy_words"] = accuracy_words(overall, run.chance)
    return (f"{overall.get('questions', 0)} questions: {data['accuracy_words']}; "
            f"asked now {data.get('asked', '?')}")


def answer_one(run: DemoRun) -> str:
    """Stage 7: one question answered with the encoders on the fly (kept: a rerun asks it again only
    when the checkpoint, the clip, the prompt or the generation settings changed)."""
    from alarm.pipeline.formatting import truncate

    clip = json.loads(run.manifest.read_text().splitlines()[0])
    audio = str((run.manifest.parent / clip["audio"]).resolve())
    prompt = "What do you hear in this clip?"
    weights = sorted(Path(run.checkpoint).glob("*"))
    key = {"checkpoint": str(run.checkpoint), "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns]
                                                        for p in weights if p.is_file()],
           "audio": audio, "prompt": prompt, "llm": str(run.llm), "think_budget": run.cfg.eval_think_budget,
           "max_new_tokens": run.cfg.eval_max_new_tokens}
    kept = run.out / "infer.json"
    facts = json.loads(kept.read_text()) if kept.is_file() else {}
    if facts.get("key") != key:
        facts = {"key": key, **_ask(run, audio, prompt)}
        kept.write_text(json.dumps(facts, indent=2) + "\n")
    run.facts["infer"] = {k: v for k, v in facts.items() if k != "key"}
    if facts["error"]:
        return f"{Path(audio).name}: error {facts['error']}"
    answer = (f"answer {truncate(facts['answer'], 60)!r} (random text: the LLM's weights are random)"
              if facts["answer"] else f"answer {facts['empty_reason']}")
    return (f"{Path(audio).name}: {facts['thinking_tokens']} thinking tokens"
            f"{' (budget forced)' if facts['forced'] else ''}, {answer}")


def _ask(run: DemoRun, audio: str, prompt: str) -> dict:
    from alarm.trainer.infer import InferConfig, infer_files

    result = infer_files(InferConfig(checkpoint=str(run.checkpoint), store=str(run.store), llm=str(run.llm),
                                     think_budget=run.cfg.eval_think_budget,
                                     max_new_tokens=run.cfg.eval_max_new_tokens), [audio], prompt)[0]
    return {"audio": audio, "prompt": prompt, "thinking": result.thinking, "answer": result.answer,
            "forced": result.forced, "error": result.error, "thinking_tokens": result.thinking_tokens,
            "answer_tokens": result.answer_tokens, "empty_reason": result.empty_reason()}


def _vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _losses(logs: Path) -> list[float]:
    """Training losses in step order from a run's logs (a resumed step: its last record wins)."""
    from alarm.trainer.report import by_step, read_logs

    return [float(r["loss"]) for r in by_step(read_logs(logs)[0], "loss")] if logs.is_file() else []
