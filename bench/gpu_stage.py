"""The feature job's encoder stage against a naive per-clip loop, on the same clips and the same model.

Stage: ``EncodeStage`` (the per-encoder actor of the GPU layout) fed the job's own units: clips sorted
by duration and cut into parts of ``part_seconds`` (``plan_parts``), each part encoded in chunks of
``4 x batch_size`` clips whose windows are batched by length, then written to a real Zarr store
(``PartWriter``). Ray is not carried to the device machine (its wheel is larger than what a run may
take along), so the stage object is called directly, one unit per call, as a Ray actor would call
it; the JSON says so in ``driver``. Decoding is left out of both sides: the waves are generated in
memory at the encoder's rate.

Naive: the loop a user would write, with the same encoder object: one ``encode([clip])`` call per
clip in manifest order (one clip per forward pass), each result saved as one float16 ``.npy``.

Prints ONE JSON line. ``--budget-s`` bounds the run: an encoder that would not fit (estimated from
the one before it) is skipped and named in ``skipped``.
Smoke test on a CPU: ``python bench/gpu_stage.py --preset tiny --device cpu --clips 8``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from gpu_extract import clip_seconds, make_waves, synchronize  # bench/ is this script's sys.path[0]

from alarm.pipeline.encoders import ENCODERS, PRESETS

DRIVER = "EncodeStage called directly, one unit per call (no Ray on the device machine)"


def units_for(seconds: list[float], part_seconds: float) -> list[dict]:
    """The job's units over the clips: keys sorted by (duration, key), cut greedily into parts."""
    from alarm.pipeline.work_units import part_id, plan_parts

    clips = {f"c{i:05d}": s for i, s in enumerate(seconds)}
    return [{"part": part_id(keys), "keys": keys, "encoders": [], "durations": [clips[k] for k in keys]}
            for keys in plan_parts(clips, part_seconds)]


def run_stage(stage: object, units: list[dict], waves: dict[str, np.ndarray], rate: int) -> float:
    """Feed every unit to the stage as a one-row batch, the way a Ray actor pool does; seconds."""
    start = time.perf_counter()
    for unit in units:
        clips = [waves[k] for k in unit["keys"]]
        stage({"unit": np.array([json.dumps(unit)], dtype=object),
               f"wave_{rate}": np.array([np.concatenate(clips).tobytes()], dtype=object),
               f"lengths_{rate}": np.array([json.dumps([len(c) for c in clips])], dtype=object)})
    return time.perf_counter() - start


def run_naive(encoder: object, waves: dict[str, np.ndarray], out: Path) -> float:
    """One ``encode`` call per clip, in key (manifest) order, one float16 ``.npy`` per clip; seconds."""
    start = time.perf_counter()
    for key, wave in waves.items():
        (feats,) = encoder.encode([wave])
        np.save(out / f"{key}.npy", feats.astype(np.float16))
    return time.perf_counter() - start


def bench_one(name: str, args: argparse.Namespace, seconds: list[float], root: Path) -> dict:
    """Build the stage for one encoder (a group in a fresh store), then time stage and naive loop."""
    import torch

    from alarm.pipeline.encoders import EncoderConfig
    from alarm.pipeline.extract_stages import EncodeStage, encoder_facts
    from alarm.pipeline.store_layout import StoreConfig, group_spec, init_group

    cfg = asdict(EncoderConfig(name, preset=args.preset, device=args.device, dtype=args.dtype,
                               batch_size=args.batch_size))
    storage = StoreConfig(part_seconds=args.part_seconds)
    facts = encoder_facts(cfg)  # what the job's driver does before planning
    group = init_group(root / name, name, group_spec(facts["spec"], storage), facts["layers"], facts["dim"],
                       facts["frame_rate"])
    stage = EncodeStage(cfg, str(group), asdict(storage), threads=0)
    rate = ENCODERS[name].sample_rate
    waves = dict(zip((f"c{i:05d}" for i in range(len(seconds))), make_waves(seconds, rate, args.seed),
                     strict=True))
    units = units_for(seconds, args.part_seconds)
    for unit in units:
        unit["encoders"] = [name]
    stage.encoder.encode(list(waves.values())[:2])  # warm-up: kernels, caches, allocator
    synchronize(args.device)
    stage_s = run_stage(stage, units, waves, rate)
    naive_dir = root / f"{name}-naive"
    naive_dir.mkdir()
    synchronize(args.device)
    naive_s = run_naive(stage.encoder, waves, naive_dir)
    audio = sum(seconds)
    row = {"units": len(units), "stage_seconds": round(stage_s, 4), "naive_seconds": round(naive_s, 4),
           "stage_audio_seconds_per_second": round(audio / stage_s, 2),
           "naive_audio_seconds_per_second": round(audio / naive_s, 2),
           "stage_over_naive": round(naive_s / stage_s, 3),
           "parts_written": sum(1 for p in (group / "parts").iterdir() if p.is_dir())}
    del stage
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def main() -> None:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full-size-random", choices=PRESETS)
    parser.add_argument("--device", default=None, help="cuda:0 when a GPU is visible, else cpu")
    parser.add_argument("--dtype", default=None, help="bfloat16 on a GPU, float32 on a CPU")
    parser.add_argument("--encoders", default=",".join(ENCODERS))
    parser.add_argument("--clips", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=None, help="total audio seconds (rescales the clips)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass in the stage")
    parser.add_argument("--part-seconds", type=float, default=300.0, help="audio-seconds per part (the job's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-s", type=float, default=None, help="skip encoders that would end later")
    args = parser.parse_args()

    import torch

    args.device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    deadline = start + args.budget_s if args.budget_s else float("inf")
    seconds = clip_seconds(args.clips, args.seconds, args.seed)
    rows, skipped, last = {}, [], 0.0
    with tempfile.TemporaryDirectory(prefix="bench-gpu-stage-") as tmp:
        for name in [n for n in args.encoders.split(",") if n]:
            if rows and time.perf_counter() + last > deadline:
                skipped.append(name)
                continue
            t0 = time.perf_counter()
            rows[name] = bench_one(name, args, seconds, Path(tmp))
            last = time.perf_counter() - t0
    stage_s = sum(r["stage_seconds"] for r in rows.values())
    naive_s = sum(r["naive_seconds"] for r in rows.values())
    device_name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") \
        else "cpu"
    print(json.dumps({"bench": "gpu_stage", "device": device_name, "preset": args.preset, "dtype": args.dtype,
                      "driver": DRIVER, "batch_size": args.batch_size, "part_seconds": args.part_seconds,
                      "clips": len(seconds), "audio_seconds": round(sum(seconds), 2), "encoders": rows,
                      "all": {"stage_seconds": round(stage_s, 4), "naive_seconds": round(naive_s, 4),
                              "stage_over_naive": round(naive_s / stage_s, 3) if rows else None},
                      "skipped": skipped, "wall_seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
