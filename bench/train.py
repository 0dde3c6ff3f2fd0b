"""Trainer benchmark: the store's loader against raw reads, and a step from the cache against a step
that runs the encoder. Prints ONE JSON line.

(a) loader: a whisper-shaped store (4 layers x 1280, float16, clips of 2-12 s) read through the
    trainer's DataLoader (token-budget batches, worker processes, collate to float32) in clips/s and
    stored MB/s, against a plain sequential read of the same part files (the ratio's target is
    >= 0.5), cold (evicted from the page cache) and warm, and against the clips/s a training step
    consumes (from (b)).
(b) step time: the same front end + LLM forward/backward/optimizer step fed from cached features
    (read from a store through the loader's dataset + collate) or from the encoder run inside the
    step on the batch's audio. CPU: the ``tiny`` encoder preset, a small adapter and the tiny Qwen3.
    GPU: the ``full-size-random`` whisper, ALARM's adapter sizes and a random Qwen3-4B-shaped LLM
    (bf16), needing only torch, transformers and numpy.
(c) peak memory of both step modes, each measured in its own subprocess (max RSS on CPU, peak
    allocated GPU memory on a GPU).

Cold reads use posix_fadvise(DONTNEED) after an fsync to evict the files, so they hit the disk;
warm reads compare the loader's own overhead (Zarr decoding, dequantising to float32, batching,
worker start and IPC) against a memcpy-speed read, a far stricter bar.

Usage: ``python bench/train.py [--clips 48] [--steps 5] [--batch-clips 4] [--workers 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_store(root: Path, frames: dict[str, int], layers: int, dim: int, seed: int = 0,
                features: dict[str, np.ndarray] | None = None) -> object:
    """A one-group whisper store of random (or given) features; returns its reader."""
    from pipeline.store import PartWriter, StoreConfig, group_spec, init_group, open_features, write_index

    cfg = StoreConfig()
    spec = group_spec({"name": "whisper", "preset": "bench-random", "layers": layers, "dim": dim}, cfg)
    group = init_group(root, "whisper", spec, layers=layers, dim=dim, frame_rate=50.0)
    rng = np.random.default_rng(seed)
    keys = list(frames)
    per_part = max(1, len(keys) // 4)
    for p in range(0, len(keys), per_part):
        part = keys[p:p + per_part]
        writer = PartWriter(group, f"part-{p:05d}", sum(frames[k] for k in part), layers, dim, cfg)
        for key in part:
            x = features[key] if features is not None else \
                rng.standard_normal((frames[key], layers, dim), dtype=np.float32)
            writer.append(key, x, frames[key] / 50.0)
        writer.commit()
    write_index(group)
    return open_features(root, "whisper")


def evict(files: list[Path]) -> None:
    """Drop files from the page cache (flushed first), so the next read comes from the disk."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_raw(files: list[Path]) -> tuple[int, float]:
    """Read files sequentially in 4 MiB blocks; bytes and seconds."""
    start = time.perf_counter()
    total = 0
    for path in files:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                total += len(chunk)
    return total, time.perf_counter() - start


def bench_loader(tmp: Path, clips: int, workers: int) -> dict:
    """(a): loader clips/s and MB/s against a raw sequential read of the same part files.

    Measured cold (files evicted from the page cache first: disk-bound, the training case for a
    store larger than memory) and warm (in the page cache: the loader's own overhead).
    """
    import torch

    from trainer.data import Example, FeatureDataset, TokenBudgetSampler, make_loader

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    frames = {f"clip{i:04d}": int(50 * rng.uniform(2, 12)) for i in range(clips)}
    reader = write_store(tmp / "store-a", frames, layers=4, dim=1280)
    files = sorted(p for p in (reader.group / "parts").rglob("*") if p.is_file())
    examples = [Example(k, k, "bench", [], [], {"whisper": n}, 25 * n // 50 + 200) for k, n in frames.items()]
    sampler = TokenBudgetSampler([e.n_tokens for e in examples], batch_tokens=4096, seed=0)
    dataset = FeatureDataset(examples, {"whisper": reader})
    stored = sum(frames.values()) * 4 * 1280 * 2  # float16 values the loader reads

    def load() -> float:
        start = time.perf_counter()
        seen = 0
        for batch in make_loader(dataset, sampler, workers):
            seen += len(batch["instance_ids"])
        if seen != clips:
            raise RuntimeError(f"loader yielded {seen} clips, expected {clips}")
        return time.perf_counter() - start

    out: dict = {"clips": clips, "stored_mb": round(stored / 1e6, 1), "loader_workers": workers}
    for kind in ("cold", "warm"):
        if kind == "cold":
            evict(files)
        raw_bytes, raw_s = read_raw(files)
        if kind == "cold":
            evict(files)
        loader_s = load()
        out[f"raw_read_mb_per_s_{kind}"] = round(raw_bytes / 1e6 / raw_s, 1)
        out[f"loader_mb_per_s_{kind}"] = round(stored / 1e6 / loader_s, 1)
        out[f"loader_clips_per_s_{kind}"] = round(clips / loader_s, 1)
        out[f"loader_vs_raw_{kind}"] = round((stored / loader_s) / (raw_bytes / raw_s), 3)
    out["raw_read_mb"] = round(raw_bytes / 1e6, 1)
    return out


def build_parts(device: str) -> tuple:
    """Encoder, LLM folder/object and front-end sizes for the device (see the module docstring)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.encoders import EncoderConfig, build_encoder
    from rephrase.qwen3 import build_tiny_qwen3, qwen3_tokenizer_dir

    if device == "cuda":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        encoder = build_encoder(EncoderConfig("whisper", preset="full-size-random", device="cuda", dtype="bfloat16"))
        config = Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                             num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                             max_position_embeddings=40960, tie_word_embeddings=True)
        with torch.device("cuda"):
            llm = Qwen3ForCausalLM(config).to(torch.bfloat16)
        tokenizer = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir())
        sizes: dict = {}
    else:
        encoder = build_encoder(EncoderConfig("whisper", preset="tiny"))
        folder = build_tiny_qwen3()
        llm = AutoModelForCausalLM.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        sizes = {"adapter_dim": 128, "conv_hidden_dim": 256}
    return encoder, llm.requires_grad_(False).eval(), tokenizer, sizes


def bench_step(mode: str, steps: int, batch_clips: int, device: str) -> dict:
    """(b)+(c) for one mode, run in its own process: median step seconds and peak memory."""
    import torch

    from trainer.data import Example, FeatureDataset, collate
    from trainer.frontend import EncoderShape, FrontEndConfig, build_frontend
    from trainer.sequence import PromptLayout
    from trainer.train import Model

    torch.manual_seed(0)
    encoder, llm, tokenizer, sizes = build_parts(device)
    dev = torch.device(device)
    llm.to(dev)
    frontend = build_frontend(FrontEndConfig(encoders=[EncoderShape("whisper", len(encoder.layers), encoder.dim)],
                                             llm_dim=llm.config.hidden_size, **sizes)).to(dev).train()
    layout = PromptLayout.from_tokenizer(tokenizer)
    model = Model(llm, frontend, layout, 4096, dev, torch.bfloat16 if device == "cuda" else None, cached=False)
    optimizer = torch.optim.AdamW(frontend.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    waves = [rng.uniform(-0.3, 0.3, int(16000 * rng.uniform(4, 10))).astype(np.float32)
             for _ in range(batch_clips)]
    prompt = layout.prompt_ids(tokenizer, "What do you hear in this recording?")
    examples = [Example(f"c{i}", f"c{i}", "bench", prompt, rng.integers(0, 150000, 120).tolist(),
                        {"whisper": 0}, 0) for i in range(batch_clips)]
    dataset = None
    if mode == "cached":  # the features were computed once, before training, into a store
        feats = dict(zip([e.clip_key for e in examples], encoder.encode(waves), strict=True))
        tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
        reader = write_store(tmp / "store", {k: len(v) for k, v in feats.items()}, len(encoder.layers),
                             encoder.dim, features=feats)
        dataset = FeatureDataset(examples, {"whisper": reader})
    times = []
    for _ in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if mode == "cached":
            batch = collate([dataset[i] for i in range(batch_clips)])
        else:
            with torch.no_grad():
                feats = encoder.encode(waves)
            batch = collate([{"example": e, "feats": {"whisper": f}} for e, f in zip(examples, feats, strict=True)])
        row_loss, counts = model.loss(batch)
        (row_loss.sum() / counts.sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"step_s": float(np.median(times[1:])), "peak_mb": round(peak, 1),
            "frames": int(sum(len(w) for w in waves) / 16000 * 50)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-clips", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--step-mode", choices=["cached", "encoder"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("ALARM_CACHE", str(REPO / ".cache" / "alarm"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.step_mode:  # child process: one step mode, so its peak memory is its own
        print(json.dumps(bench_step(args.step_mode, args.steps, args.batch_clips, device)))
        return
    steps = {}
    for mode in ("cached", "encoder"):
        out = subprocess.run([sys.executable, __file__, "--step-mode", mode, "--steps", str(args.steps),
                              "--batch-clips", str(args.batch_clips)], capture_output=True, text=True, check=True)
        steps[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        loader = bench_loader(Path(tmp), args.clips, args.workers)
    step_clips_per_s = args.batch_clips / steps["cached"]["step_s"]
    print(json.dumps({
        "bench": "train", "device": device, "preset": "full-size-random" if device == "cuda" else "tiny",
        **loader,
        "step_clips_per_s_cached": round(step_clips_per_s, 2),
        "loader_cold_vs_step": round(loader["loader_clips_per_s_cold"] / step_clips_per_s, 2),
        "batch_clips": args.batch_clips,
        "step_s_cached": round(steps["cached"]["step_s"], 4),
        "step_s_encoder": round(steps["encoder"]["step_s"], 4),
        "encoder_over_cached": round(steps["encoder"]["step_s"] / steps["cached"]["step_s"], 2),
        "peak_mb_cached": steps["cached"]["peak_mb"], "peak_mb_encoder": steps["encoder"]["peak_mb"],
        "peak_memory_kind": "gpu_allocated" if device == "cuda" else "max_rss",
    }))


if __name__ == "__main__":
    main()
