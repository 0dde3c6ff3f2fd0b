"""Trainer benchmark: the store's loader against raw reads, and a step from the cache against a step
that runs the encoder. Prints ONE JSON line.

(a) loader: a whisper-shaped store (4 layers x 1280, float16, clips of 2-12 s) read through the
    trainer's DataLoader (token-budget batches, worker processes, collate in the stored dtype) in clips/s and
    stored MB/s, against a plain sequential read of the same part files (the ratio's target is
    >= 0.5), cold (evicted from the page cache) and warm, and against the clips/s a training step
    consumes (from (b)).
(b) step time: the same front end + LLM forward/backward/optimizer step fed from cached features
    (read from a store through the loader's dataset + collate) or from the encoder run inside the
    step on the batch's audio. CPU: the ``tiny`` encoder preset, a small adapter and the tiny Qwen3.
    GPU: the ``full-size-random`` encoders (all four by default, fused by ALARM-CA), ALARM's adapter
    sizes and a random Qwen3-4B-shaped LLM (bf16); the store needs zarr, which ``bench/gpu_all.sh``
    carries as a wheel (bench/wheels.md).
(c) peak memory of both step modes, each measured in its own subprocess (max RSS on CPU, peak
    allocated GPU memory on a GPU).

Cold reads use posix_fadvise(DONTNEED) after an fsync to evict the files, so they hit the disk;
warm reads compare the loader's own overhead (Zarr decoding, dequantising to float32, batching,
worker start and IPC) against a memcpy-speed read, a far stricter bar.

Usage: ``python bench/train.py [--clips 64] [--steps 6] [--batch-clips 4] [--workers 0,2] [--rounds 2]
[--device cpu|cuda] [--encoders whisper,w2vbert,muq,sslam]`` (encoders: whisper on a CPU, all four on a GPU;
the loader in (a) then reads a store of every listed encoder).
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
                features: dict[str, np.ndarray] | None = None, name: str = "whisper",
                frame_rate: float = 50.0) -> object:
    """One group (``name``, whisper by default) of random (or given) features; returns its reader."""
    from alarm.pipeline.part_writer import PartWriter
    from alarm.pipeline.store import open_features
    from alarm.pipeline.store_index import write_index
    from alarm.pipeline.store_layout import StoreConfig, group_spec, init_group

    cfg = StoreConfig()
    spec = group_spec({"name": name, "preset": "bench-random", "layers": layers, "dim": dim}, cfg)
    group = init_group(root, name, spec, layers=layers, dim=dim, frame_rate=frame_rate)
    rng = np.random.default_rng(seed)
    keys = list(frames)
    per_part = max(1, len(keys) // 4)
    for p in range(0, len(keys), per_part):
        part = keys[p:p + per_part]
        writer = PartWriter(group, f"part-{p:05d}", sum(frames[k] for k in part), layers, dim, cfg)
        for key in part:
            x = features[key] if features is not None else \
                rng.standard_normal((frames[key], layers, dim), dtype=np.float32)
            writer.append(key, x, frames[key] / frame_rate)
        writer.commit()
    write_index(group)
    return open_features(root, name)


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


def bench_loader(tmp: Path, clips: int, workers: list[int], names: tuple[str, ...] = ("whisper",)) -> dict:
    """(a): loader clips/s and MB/s against a raw sequential read of the same part files.

    One store group per encoder of ``names``, shaped as the registry says (whisper alone: 4 x 1280).

    Measured cold (files evicted from the page cache first: disk-bound, the training case for a
    store larger than memory) and warm (in the page cache: the loader's own overhead).
    """
    import torch

    from alarm.pipeline.encoders import ENCODERS
    from alarm.trainer.data import Example, FeatureDataset, TokenBudgetSampler, make_loader

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    seconds = {f"clip{i:04d}": rng.uniform(2, 12) for i in range(clips)}
    frames = {k: int(50 * s) for k, s in seconds.items()}  # whisper's (50 Hz): the token count follows it
    readers, stored = {}, 0
    for name in names:
        info = ENCODERS[name]
        counts = {k: int(info.frame_rate * s) for k, s in seconds.items()}
        readers[name] = write_store(tmp / "store-a", counts, layers=len(info.layers), dim=info.dim, name=name,
                                    frame_rate=info.frame_rate)
        stored += sum(counts.values()) * len(info.layers) * info.dim * 2  # float16 values the loader reads
    files = sorted(p for r in readers.values() for p in (r.group / "parts").rglob("*") if p.is_file())
    examples = [Example(k, k, "bench", [], [], {name: int(ENCODERS[name].frame_rate * seconds[k]) for name in names},
                        25 * n // 50 + 200) for k, n in frames.items()]
    sampler = TokenBudgetSampler([e.n_tokens for e in examples], batch_tokens=4096, seed=0)
    dataset = FeatureDataset(examples, readers)

    def load(n_workers: int) -> float:
        start = time.perf_counter()
        seen = 0
        for batch in make_loader(dataset, sampler, n_workers):
            seen += len(batch["instance_ids"])
        if seen != clips:
            raise RuntimeError(f"loader yielded {seen} clips, expected {clips}")
        return time.perf_counter() - start

    out: dict = {"clips": clips, "stored_mb": round(stored / 1e6, 1)}
    for kind in ("cold", "warm"):
        if kind == "cold":
            evict(files)
        raw_bytes, raw_s = read_raw(files)
        out[f"raw_read_mb_per_s_{kind}"] = round(raw_bytes / 1e6 / raw_s, 1)
        best = None
        for n_workers in workers:
            if kind == "cold":
                evict(files)
            loader_s = load(n_workers)
            out[f"loader_mb_per_s_{kind}_w{n_workers}"] = round(stored / 1e6 / loader_s, 1)
            best = loader_s if best is None else min(best, loader_s)
        out[f"loader_clips_per_s_{kind}"] = round(clips / best, 1)
        out[f"loader_vs_raw_{kind}"] = round((stored / best) / (raw_bytes / raw_s), 3)
    start = time.perf_counter()  # the store readers alone, in this process (warm)
    for key in frames:
        for reader in readers.values():
            reader.read(key)
    out["reader_mb_per_s_warm"] = round(stored / 1e6 / (time.perf_counter() - start), 1)
    out["raw_read_mb"] = round(raw_bytes / 1e6, 1)
    return out


def build_encoder_for(device: str, name: str = "whisper") -> object:
    """An encoder the step runs: tiny preset on CPU, full-size-random (bf16) on GPU."""
    from alarm.pipeline.encoders import EncoderConfig, build_encoder

    if device == "cuda":
        return build_encoder(EncoderConfig(name, preset="full-size-random", device="cuda", dtype="bfloat16"))
    return build_encoder(EncoderConfig(name, preset="tiny"))


def build_llm(device: str) -> tuple:
    """Frozen LLM, tokenizer and adapter sizes: tiny Qwen3 on CPU, a random Qwen3-4B shape on GPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alarm.rephrase.qwen3 import build_tiny_qwen3, qwen3_tokenizer_dir

    if device == "cuda":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        config = Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                             num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                             max_position_embeddings=40960, tie_word_embeddings=True)
        with torch.device("cuda"):
            llm = Qwen3ForCausalLM(config).to(torch.bfloat16)
        return llm.requires_grad_(False).eval(), AutoTokenizer.from_pretrained(qwen3_tokenizer_dir()), {}
    folder = build_tiny_qwen3()
    llm = AutoModelForCausalLM.from_pretrained(folder)
    # CPU: a narrower adapter than ALARM's 1024/2048 so a step takes about a second on 2 cores.
    return llm.requires_grad_(False).eval(), AutoTokenizer.from_pretrained(folder), \
        {"adapter_dim": 128, "conv_hidden_dim": 256}


def make_waves(batch_clips: int, rate: int = 16000) -> list[np.ndarray]:
    """The batch's audio: 4-10 s of noise at 16 kHz per clip (the same in every process).

    At another ``rate`` (MuQ's 24 kHz) the clips last as long, with fresh noise.
    """
    rng = np.random.default_rng(0)
    waves = [rng.uniform(-0.3, 0.3, int(16000 * rng.uniform(4, 10))).astype(np.float32) for _ in range(batch_clips)]
    if rate == 16000:
        return waves
    return [rng.uniform(-0.3, 0.3, len(w) * rate // 16000).astype(np.float32) for w in waves]


def prepare_cache(workdir: Path, batch_clips: int, device: str, names: tuple[str, ...] = ("whisper",)) -> None:
    """Run each encoder once on the batch's audio into a store (what the pipeline does before training)."""
    for name in names:
        encoder = build_encoder_for(device, name)
        feats = {f"c{i}": f for i, f in enumerate(encoder.encode(make_waves(batch_clips, encoder.sample_rate)))}
        write_store(workdir / "store-b", {k: len(v) for k, v in feats.items()}, len(encoder.layers), encoder.dim,
                    features=feats, name=name, frame_rate=encoder.frame_rate)
        del encoder
    if device == "cuda":  # the step processes measure their own peaks; leave them the memory
        import torch

        torch.cuda.empty_cache()


def bench_step(mode: str, steps: int, batch_clips: int, device: str, workdir: Path,
               names: tuple[str, ...] = ("whisper",)) -> dict:
    """(b)+(c) for one mode, run in its own process: median step seconds and peak memory.

    ``cached`` never builds the encoders: it reads the batch from the store ``prepare_cache`` wrote.
    ``encoder`` runs the encoders on the batch's audio inside every step. Several encoders are fused
    by ALARM-CA (the first is the query encoder).
    """
    import torch

    from alarm.pipeline.store import open_features
    from alarm.trainer.data import Example, FeatureDataset, collate
    from alarm.trainer.frontend import EncoderShape, FrontEndConfig, build_frontend
    from alarm.trainer.model import Model
    from alarm.trainer.sequence import PromptLayout

    torch.manual_seed(0)
    if device == "cpu":  # one thread: on a shared 2-core machine, spinning OpenMP threads make timings bimodal
        torch.set_num_threads(1)
    dev = torch.device(device)
    llm, tokenizer, sizes = build_llm(device)
    llm.to(dev)
    readers = {name: open_features(workdir / "store-b", name) for name in names}
    shapes = [EncoderShape(name, r.layers, r.dim) for name, r in readers.items()]
    fusion = {"fusion": "ca"} if len(names) > 1 else {}
    frontend = build_frontend(FrontEndConfig(encoders=shapes, llm_dim=llm.config.hidden_size, **fusion,
                                             **sizes)).to(dev).train()
    layout = PromptLayout.from_tokenizer(tokenizer)
    model = Model(llm, frontend, layout, 4096, dev, torch.bfloat16 if device == "cuda" else None, cached=False)
    optimizer = torch.optim.AdamW(frontend.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    prompt = layout.prompt_ids(tokenizer, "What do you hear in this recording?")
    examples = [Example(f"c{i}", f"c{i}", "bench", prompt, rng.integers(0, 150000, 120).tolist(),
                        dict.fromkeys(names, 0), 0) for i in range(batch_clips)]
    if mode == "cached":
        dataset = FeatureDataset(examples, readers)
    else:
        encoders = {name: build_encoder_for(device, name) for name in names}
        waves = {name: make_waves(batch_clips, enc.sample_rate) for name, enc in encoders.items()}
    times = []
    for _ in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if mode == "cached":
            batch = collate([dataset[i] for i in range(batch_clips)])
        else:
            with torch.no_grad():
                feats = {name: enc.encode(waves[name]) for name, enc in encoders.items()}
            batch = collate([{"example": e, "feats": {name: f[i] for name, f in feats.items()}}
                             for i, e in enumerate(examples)])
        row_loss, counts = model.loss(batch)
        (row_loss.sum() / counts.sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"step_s": float(np.median(times[1:])), "peak_mb": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-clips", type=int, default=4)
    parser.add_argument("--workers", default="0,2", help="DataLoader worker counts to try (best is reported)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each step mode")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="cuda when a GPU is visible")
    parser.add_argument("--encoders", default=None, help="whisper on a CPU, all four on a GPU (comma-separated)")
    parser.add_argument("--step-mode", choices=["cached", "encoder"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("ALARM_CACHE", str(REPO / ".cache" / "alarm"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from alarm.pipeline.encoders import ENCODERS

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = tuple((args.encoders or ("whisper" if device == "cpu" else ",".join(ENCODERS))).split(","))
    if args.step_mode:  # child process: one step mode, so its peak memory is its own
        print(json.dumps(bench_step(args.step_mode, args.steps, args.batch_clips, device, args.workdir, names)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        prepare_cache(Path(tmp), args.batch_clips, device, names)
        runs: dict[str, list[dict]] = {"cached": [], "encoder": []}
        for _ in range(args.rounds):  # alternate, so load drift on a shared machine hits both modes
            for mode in runs:
                out = subprocess.run([sys.executable, __file__, "--step-mode", mode, "--steps", str(args.steps),
                                      "--batch-clips", str(args.batch_clips), "--workdir", tmp,
                                      "--device", device, "--encoders", ",".join(names)],
                                     capture_output=True, text=True, check=True)
                runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
        loader = bench_loader(Path(tmp), args.clips, [int(w) for w in args.workers.split(",")], names)
    steps = {m: {"step_s": min(r["step_s"] for r in rs), "peak_mb": max(r["peak_mb"] for r in rs)}
             for m, rs in runs.items()}
    step_clips_per_s = args.batch_clips / steps["cached"]["step_s"]
    print(json.dumps({
        "bench": "train", "device": device, "preset": "full-size-random" if device == "cuda" else "tiny",
        "encoders": list(names),
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
