"""GPU throughput of the four ALARM encoders: audio-seconds per device-second and achieved FLOP/s.

Needs only torch, transformers and numpy (no Ray, Zarr, soundfile or network): it builds the encoders of
``pipeline.encoders`` (``full-size-random`` by default: the real dimensions with random weights), generates
seeded audio (clip lengths log-normal between 1 and 30 s, like the extraction benchmark) and times
``Encoder.encode`` end to end (front end, windowing, batching, forward passes, copies back to the host).
FLOPs are counted with ``torch.utils.flop_counter`` on one untimed pass over the same clips (at the
first batch size of the sweep: larger batches pad more, so this counts the useful work).

The card's peak is measured, not assumed: a large square matrix product in the compute dtype
(``--peak-size``, 8192 by default on a GPU), the mean of ten timed products after three warm-ups. The
datasheet's dense peak is printed beside it for context. Each encoder is timed at every batch size
of ``--batch-sizes``; the fastest is reported, and "all four" adds up each encoder at its fastest.
``--budget-s`` bounds the whole run: a measurement that would not fit (estimated from the one
before it) is skipped and named in ``skipped``.

Prints ONE JSON line. Smoke test on a CPU: ``python bench/gpu_extract.py --preset tiny --device cpu``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from alarm.pipeline.encoders import ENCODERS, PRESETS

# Dense tensor-core peaks in TFLOP/s (no sparsity), by dtype; matched against the device name.
# Context only: the fraction of peak divides by the peak measured in this run.
PEAK_TFLOPS = {
    "H200": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0},
    "H100 PCIe": {"bfloat16": 756.0, "float16": 756.0, "float32": 51.0},
    "H100": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0},
    "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5},
    "L40S": {"bfloat16": 362.0, "float16": 362.0, "float32": 91.6},
    "L4": {"bfloat16": 121.0, "float16": 121.0, "float32": 30.3},
}


def clip_seconds(count: int, total: float | None, seed: int) -> list[float]:
    """``count`` log-normal clip lengths in [1, 30] s (scaled to ``total`` seconds when given)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=np.log(8.0), sigma=0.8, size=count), 1.0, 30.0)
    if total:
        lengths = np.clip(lengths * total / lengths.sum(), 1.0, 30.0)
    return [float(x) for x in lengths]


def make_waves(seconds: list[float], sample_rate: int, seed: int) -> list[np.ndarray]:
    """Band-limited noise with a tone: non-trivial spectra for every front end."""
    rng = np.random.default_rng(seed)
    waves = []
    for s in seconds:
        n = int(s * sample_rate)
        t = np.arange(n) / sample_rate
        tone = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
        waves.append((tone + 0.05 * rng.standard_normal(n)).astype(np.float32))
    return waves


def datasheet_flops(device: str, dtype: str) -> float | None:
    """The datasheet's dense peak in FLOP/s for ``dtype`` (None on a CPU or an unknown card)."""
    if not device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name(torch.device(device))
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks[dtype] * 1e12
    return None


def measured_peak_flops(device: str, dtype: str, size: int) -> float:
    """FLOP/s of a ``size``-square matrix product in ``dtype``: the mean of 10 timed after 3 warm-ups."""
    import torch

    from alarm.pipeline.encoders.base import torch_dtype

    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=torch_dtype(dtype), generator=gen)
    b = torch.randn(size, size, device=device, dtype=torch_dtype(dtype), generator=gen)
    for _ in range(3):
        torch.matmul(a, b)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(10):
        torch.matmul(a, b)
    synchronize(device)
    elapsed = (time.perf_counter() - start) / 10
    del a, b
    return 2.0 * size**3 / elapsed


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def time_encode(enc: object, waves: list[np.ndarray], device: str, repeats: int) -> tuple[float, list]:
    """Mean seconds of ``enc.encode(waves)`` over ``repeats`` timed calls (after one short warm-up)."""
    enc.encode(waves[: min(2, len(waves))])  # warm-up: kernels, caches, allocator at this batch size
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        outputs = enc.encode(waves)
    synchronize(device)
    return (time.perf_counter() - t0) / repeats, outputs


def bench_encoder(name: str, args: argparse.Namespace, seconds: list[float], deadline: float) -> dict:
    """Build one encoder, count its FLOPs on the clips, then time it at each batch size; one result row."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from alarm.pipeline.encoders import EncoderConfig, build_encoder

    sizes = args.batch_sizes
    cfg = EncoderConfig(name, preset=args.preset, device=args.device, dtype=args.dtype, batch_size=sizes[0])
    t0 = time.perf_counter()
    enc = build_encoder(cfg)
    build_s = time.perf_counter() - t0
    waves = make_waves(seconds, ENCODERS[name].sample_rate, args.seed)
    enc.encode(waves[: min(2, len(waves))])  # warm-up: kernels, caches, allocator
    counter = FlopCounterMode(display=False)
    t0 = time.perf_counter()
    with counter:
        enc.encode(waves)
    counted_s = time.perf_counter() - t0
    flops = float(counter.get_total_flops())
    audio = sum(seconds)
    by_batch, skipped, outputs, last_s = {}, [], None, counted_s
    for bs in sizes:
        # The next size costs about what the last one did (its warm-up included): skip what would not fit.
        if by_batch and time.perf_counter() + last_s * (args.repeats + 1) > deadline:
            skipped.append(f"{name}@{bs}")
            continue
        enc.cfg.batch_size = bs
        last_s, outputs = time_encode(enc, waves, args.device, args.repeats)
        by_batch[bs] = last_s
    best = min(by_batch, key=by_batch.get)
    elapsed = by_batch[best]
    row = {"audio_seconds": round(audio, 2), "seconds": round(elapsed, 4),
           "audio_seconds_per_second": round(audio / elapsed, 2), "flops": flops,
           "flops_per_second": flops / elapsed, "best_batch_size": best,
           "audio_seconds_per_second_by_batch": {str(b): round(audio / s, 2) for b, s in by_batch.items()},
           "frames": sum(o.shape[0] for o in outputs), "layers": list(enc.layers), "dim": enc.dim,
           "build_seconds": round(build_s, 2), "skipped": skipped}
    if args.device.startswith("cuda"):
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(torch.device(args.device)) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(torch.device(args.device))
    del enc
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full-size-random", choices=PRESETS)
    parser.add_argument("--device", default=None, help="cuda:0 when a GPU is visible, else cpu")
    parser.add_argument("--dtype", default=None, help="bfloat16 on a GPU, float32 on a CPU")
    parser.add_argument("--encoders", default=",".join(ENCODERS))
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=None, help="total audio seconds (rescales the clips)")
    parser.add_argument("--batch-sizes", "--batch-size", default="16",
                        help="windows per forward pass, comma-separated: each is timed, the fastest reported")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-size", type=int, default=None,
                        help="side of the matrix product timed as peak (8192 on a GPU, 512 on a CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="use this peak instead of measuring")
    parser.add_argument("--budget-s", type=float, default=None, help="skip batch sizes that would end later")
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b]
    return args


def main() -> None:
    start = time.perf_counter()
    args = parse_args()

    import torch

    args.device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.peak_size = args.peak_size or (8192 if args.device.startswith("cuda") else 512)
    deadline = start + args.budget_s if args.budget_s else float("inf")
    peak = args.peak_tflops * 1e12 if args.peak_tflops else \
        measured_peak_flops(args.device, args.dtype, args.peak_size)
    datasheet = datasheet_flops(args.device, args.dtype)
    names = [n for n in args.encoders.split(",") if n]
    seconds = clip_seconds(args.clips, args.seconds, args.seed)
    rows = {name: bench_encoder(name, args, seconds, deadline) for name in names}
    total_s = sum(r["seconds"] for r in rows.values())
    total_flops = sum(r["flops"] for r in rows.values())
    together = {"audio_seconds": round(sum(seconds), 2), "seconds": round(total_s, 4),
                "audio_seconds_per_second": round(sum(seconds) / total_s, 2),
                "flops": total_flops, "flops_per_second": total_flops / total_s,
                "best_batch_size": {n: r["best_batch_size"] for n, r in rows.items()}}
    for row in [*rows.values(), together]:
        row["fraction_of_peak"] = round(row["flops_per_second"] / peak, 4)
    device_name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") \
        else "cpu"
    print(json.dumps({"bench": "gpu_extract", "device": device_name, "preset": args.preset, "dtype": args.dtype,
                      "batch_sizes": args.batch_sizes, "clips": len(seconds),
                      "peak_tflops": round(peak / 1e12, 4), "peak_measured": not args.peak_tflops,
                      "peak_matmul_size": args.peak_size,
                      "datasheet_tflops": None if datasheet is None else datasheet / 1e12,
                      "encoders": rows, "all": together,
                      "skipped": [s for r in rows.values() for s in r["skipped"]],
                      "wall_seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
