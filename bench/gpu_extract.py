"""GPU throughput of the four ALARM encoders: audio-seconds per device-second and achieved FLOP/s.

Needs only torch, transformers and numpy (no Ray, Zarr, soundfile or network): it builds the encoders of
``pipeline.encoders`` (``full-size-random`` by default: the real dimensions with random weights), generates
seeded audio (clip lengths log-normal between 1 and 30 s, like the extraction benchmark) and times
``Encoder.encode`` end to end (front end, windowing, batching, forward passes, copies back to the host).
FLOPs are counted with ``torch.utils.flop_counter`` on one untimed pass over the same clips.

Prints ONE JSON line. Smoke test on a CPU: ``python bench/gpu_extract.py --preset tiny --device cpu``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from alarm.pipeline.encoders import ENCODERS, PRESETS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Dense tensor-core peaks in TFLOP/s (no sparsity), by dtype; matched against the device name.
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


def peak_flops(device: str, dtype: str, override: float | None) -> float | None:
    """The device's dense peak in FLOP/s for ``dtype`` (None on a CPU or an unknown card)."""
    if override:
        return override * 1e12
    if not device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name(torch.device(device))
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks[dtype] * 1e12
    return None


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def bench_encoder(name: str, args: argparse.Namespace, seconds: list[float]) -> dict:
    """Build one encoder, count its FLOPs on the clips, then time it; returns one result row."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from alarm.pipeline.encoders import EncoderConfig, build_encoder

    cfg = EncoderConfig(name, preset=args.preset, device=args.device, dtype=args.dtype,
                        batch_size=args.batch_size)
    t0 = time.perf_counter()
    enc = build_encoder(cfg)
    build_s = time.perf_counter() - t0
    waves = make_waves(seconds, ENCODERS[name].sample_rate, args.seed)
    enc.encode(waves[: min(2, len(waves))])  # warm-up: kernels, caches, allocator
    counter = FlopCounterMode(display=False)
    with counter:
        enc.encode(waves)
    flops = float(counter.get_total_flops())
    synchronize(args.device)
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        outputs = enc.encode(waves)
    synchronize(args.device)
    elapsed = (time.perf_counter() - t0) / args.repeats
    audio = sum(seconds)
    frames = sum(o.shape[0] for o in outputs)
    row = {"audio_seconds": round(audio, 2), "seconds": round(elapsed, 4),
           "audio_seconds_per_second": round(audio / elapsed, 2), "flops": flops,
           "flops_per_second": flops / elapsed, "frames": frames,
           "layers": list(enc.layers), "dim": enc.dim, "build_seconds": round(build_s, 2)}
    if args.device.startswith("cuda"):
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(torch.device(args.device)) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(torch.device(args.device))
    del enc
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full-size-random", choices=PRESETS)
    parser.add_argument("--device", default=None, help="cuda:0 when a GPU is visible, else cpu")
    parser.add_argument("--dtype", default=None, help="bfloat16 on a GPU, float32 on a CPU")
    parser.add_argument("--encoders", default=",".join(ENCODERS))
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=None, help="total audio seconds (rescales the clips)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the card's dense peak")
    args = parser.parse_args()

    import torch

    args.device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    names = [n for n in args.encoders.split(",") if n]
    seconds = clip_seconds(args.clips, args.seconds, args.seed)
    rows = {name: bench_encoder(name, args, seconds) for name in names}
    peak = peak_flops(args.device, args.dtype, args.peak_tflops)
    total_s = sum(r["seconds"] for r in rows.values())
    total_flops = sum(r["flops"] for r in rows.values())
    together = {"audio_seconds": round(sum(seconds), 2), "seconds": round(total_s, 4),
                "audio_seconds_per_second": round(sum(seconds) / total_s, 2),
                "flops": total_flops, "flops_per_second": total_flops / total_s}
    for row in [*rows.values(), together]:
        row["fraction_of_peak"] = None if peak is None else round(row["flops_per_second"] / peak, 4)
    device_name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") \
        else "cpu"
    print(json.dumps({"bench": "gpu_extract", "device": device_name, "preset": args.preset, "dtype": args.dtype,
                      "batch_size": args.batch_size, "clips": len(seconds),
                      "peak_tflops": None if peak is None else peak / 1e12, "encoders": rows, "all": together}))


if __name__ == "__main__":
    main()
