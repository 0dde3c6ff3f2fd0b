"""Tiny end-to-end data for the inference tests: WAVs -> real feature job -> a short training run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from store_fixtures import tone, write_wav

# Whisper (conv adapter, BatchNorm) and MuQ (MLP adapter, 24 kHz) with an ALARM-CA fusion: every
# kind of adapter, two sample rates, and the fusion, at the smallest cost.
ENCODERS = ["whisper", "muq"]
TINY_FRONTEND = {"adapter_dim": 16, "conv_hidden_dim": 32, "ca_dim": 16, "ca_heads": 2, "ca_ffn_dim": 32}


def build_trained_run(root: Path, llm: Path) -> dict[str, Any]:
    """Write 4 clips, cache their features (tiny encoders, local Ray), train 4 steps; return the paths."""
    import pyarrow.parquet as pq
    from train_fixtures import write_targets

    from alarm.pipeline.job import PipelineConfig, run_pipeline
    from alarm.trainer.config import TrainConfig
    from alarm.trainer.train import train

    rows = []
    for i, (seconds, rate) in enumerate([(1.2, 16000), (0.8, 22050), (1.6, 24000), (1.0, 44100)]):
        path = write_wav(root / "audio" / f"clip{i}.wav", tone(seconds, rate, 1 + i % 2, seed=i), rate)
        rows.append({"id": f"c{i}", "audio": str(path), "dataset": "toy"})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = root / "store"
    run_pipeline(PipelineConfig(store=str(store), manifest=str(manifest), encoders=list(ENCODERS), preset="tiny",
                                progress=False))
    keys = {r["id"]: r["key"] for r in pq.read_table(store / "instances.parquet").to_pylist()}
    targets = [{"instance_id": r["id"], "clip_key": keys[r["id"]], "dataset": "toy",
                "prompt": "What do you hear?", "target": f"I hear tone {i}.</think>\n\nTone {i}.",
                "incomplete": False, "split": "train", "source": "test"} for i, r in enumerate(rows)]
    write_targets(root / "targets.parquet", targets)
    cfg = TrainConfig(targets=str(root / "targets.parquet"), store=str(store), output_dir=str(root / "run"),
                      llm=str(llm), encoders=list(ENCODERS), fusion="ca", frontend=dict(TINY_FRONTEND),
                      batch_tokens=400, max_seq_len=200, num_workers=0, lr=1e-3, warmup_steps=1, epochs=10,
                      max_steps=4, eval_every=0, save_every=100, log_every=1, sample_generations=0, progress=False)
    result = train(cfg)
    return {"root": root, "store": store, "run": root / "run", "checkpoint": result.checkpoint, "rows": rows,
            "keys": keys, "manifest": manifest}
