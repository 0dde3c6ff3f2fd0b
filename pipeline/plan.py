"""Plan before you spend: clips, hours, store size, objects and GPU time, from file headers only.

Sizes are exact arithmetic on the ALARM dimensions (docs/method.md §2): frames x kept layers x dim x bytes
per stored value. Objects are the parts cut as the job cuts them and each part's shard files
(``plan_objects``). GPU time comes from the throughput ``bench/gpu_extract.py`` measured, when its
results are given; else it is an estimate: forward FLOPs per window or per audio-second of each
architecture (the registry's ``flops_per_window`` and ``flops_per_second``) divided by an assumed
sustained rate (``gpu_peak_tflops`` x ``mfu``). Whisper and SSLAM pad every window to full length, so
their cost follows the number of windows, not the audio length. Wall time divides the GPU-hours by
the GPUs.
"""

from __future__ import annotations

import errno
import math
import shutil
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.counts import ClipCounts, input_counts
from alarm.pipeline.plan_objects import ObjectPlan, clip_frames, pack_parts, plan_objects
from alarm.pipeline.store_layout import bytes_per_value


@dataclass
class PlanReport:
    """What a job over this input would compute and store, and what it takes on ``gpus`` GPUs."""

    instances: int
    """Manifest rows."""
    clips: int
    """Readable sources (audio+cut) under the clip-length limit: what the job would try to encode."""
    unreadable: int
    """Sources whose header does not open, or whose cut covers no audio."""
    too_long: int
    """Readable sources at or over the clip-length limit."""
    audio_hours: float
    bytes_per_encoder: dict[str, float]
    bytes_total: float
    bytes_per_audio_second: float
    gpu_hours_per_encoder: dict[str, float]
    gpu_hours_total: float
    assumptions: dict[str, Any] = field(default_factory=dict)
    counts: ClipCounts = field(default_factory=ClipCounts)
    """Manifest rows, audio files, sources, readable and under-the-limit, named as every command names them."""
    objects_per_encoder: dict[str, ObjectPlan] = field(default_factory=dict)
    """Each group's parts and objects (shard files, small files) with their sizes."""
    gpu_basis: str = ""
    """Where the GPU-hours come from: measured throughput (which bench line), or the FLOP estimate."""
    gpus: int = 1
    wall_hours: float = 0.0
    """GPU-hours over ``gpus`` GPUs, every GPU busy (the per-encoder pools sized to each encoder's share)."""

    def headline(self) -> str:
        """The first line ``alarm pipeline plan`` prints: the named counts, hours, and what drops out."""
        return (f"{self.counts.line()}; {self.audio_hours:.3f} hours "
                f"({self.unreadable} unreadable, {self.too_long} too long)")

    def to_dict(self) -> dict[str, Any]:
        from alarm.pipeline.configs import to_dict

        out = to_dict(self)
        out["objects_per_encoder"] = {e: o.to_dict() for e, o in self.objects_per_encoder.items()}
        return out


def stored_bytes(encoder: str, durations: list[float] | Counter, layers: int, dim: int, dtype: str) -> float:
    """Bytes the store takes for clips of ``durations`` seconds: frames x layers x dim x bytes per value.

    ``durations`` is a list of clip seconds or a histogram (seconds -> clips). ``layers`` and ``dim``
    are the model's (a tiny model's are small); frame rate and window are the registry's.
    """
    from alarm.pipeline.encoders import ENCODERS

    info = ENCODERS[encoder]
    hist = durations if isinstance(durations, Counter) else Counter(durations)
    frames = sum(n * clip_frames(d, info.frame_rate, info.window_seconds) for d, n in hist.items())
    return frames * layers * dim * bytes_per_value(dtype, layers, dim)


def probe_durations(cfg: Any) -> tuple[list[Any], list[float], int, int]:
    """The input's instances and the seconds of each readable source under the limit, from headers only.

    Returns (instances, durations, unreadable sources, sources at or over the limit).
    """
    from alarm.pipeline.probe import AudioUnreadable, probe_duration
    from alarm.pipeline.sources import read_input, source_order

    instances, _ = read_input(cfg)
    sources = sorted({(i.audio, i.start, i.end) for i in instances}, key=source_order)
    durations, unreadable, too_long = [], 0, 0
    for audio, start, end in sources:
        try:
            total = probe_duration(audio)
        except AudioUnreadable:
            unreadable += 1
            continue
        d = max(0.0, min(end if end is not None else total, total) - (start or 0.0))
        if d <= 0:
            unreadable += 1
        elif d >= cfg.decode.max_seconds:
            too_long += 1
        else:
            durations.append(d)
    return instances, durations, unreadable, too_long


def plan_job(cfg: Any, gpu_peak_tflops: float = 989.0, mfu: float = 0.35, gpus: int = 1,
             bench: str | None = None) -> PlanReport:
    """Predict a job's work, store size and objects without decoding anything.

    Args:
        cfg: a ``PipelineConfig`` (input, encoders, layers, store settings, max clip length).
        gpu_peak_tflops: dense bf16 peak of the GPU (H100 SXM: 989), for the FLOP estimate.
        mfu: the fraction of peak the encoders sustain, for the FLOP estimate.
        gpus: GPUs the job runs on (the wall time divides by them).
        bench: a JSON-lines file holding a ``bench/gpu_extract.py`` line: GPU time from its measured
            throughput instead of the FLOP estimate.
    """
    instances, durations, unreadable, too_long = probe_durations(cfg)
    counts = input_counts(instances)
    counts.readable = counts.sources - unreadable
    counts.under_limit, counts.limit_seconds = len(durations), cfg.decode.max_seconds
    report = plan_durations(cfg, Counter(durations), gpu_peak_tflops, mfu, gpus, bench)
    report.instances, report.unreadable, report.too_long, report.counts = len(instances), unreadable, too_long, counts
    return report


def plan_hours(cfg: Any, hours: float, clip_seconds: float, **how: Any) -> PlanReport:
    """``plan_job`` for a corpus not yet at hand: ``hours`` of audio in clips of ``clip_seconds`` each."""
    if hours <= 0 or not 0 < clip_seconds < cfg.decode.max_seconds:
        raise ConfigError(f"--hours must be positive and --clip-seconds in (0, {cfg.decode.max_seconds:g})")
    clips = round(hours * 3600 / clip_seconds)
    report = plan_durations(cfg, Counter({clip_seconds: clips}), **how)
    report.counts.under_limit = report.clips
    return report


def plan_durations(cfg: Any, durations: Counter, gpu_peak_tflops: float = 989.0, mfu: float = 0.35,
                   gpus: int = 1, bench: str | None = None) -> PlanReport:
    """Sizes, objects and GPU time of clips of these durations (a histogram: seconds -> clips)."""
    from alarm.pipeline.encoders import ENCODERS

    if gpus < 1:
        raise ConfigError(f"--gpus must be at least 1, got {gpus}")
    seconds = sum(d * n for d, n in durations.items())
    parts = pack_parts(durations, cfg.storage.part_seconds)
    measured = read_gpu_bench(bench, cfg.encoders) if bench else None
    sizes, gpu_h, objects = {}, {}, {}
    for e in cfg.encoders:
        info = ENCODERS[e]
        layers = len(cfg.layers.get(e) or info.layers)
        sizes[e] = stored_bytes(e, durations, layers, info.dim, cfg.storage.dtype)
        frame_bytes = layers * info.dim * bytes_per_value(cfg.storage.dtype, layers, info.dim)
        objects[e] = plan_objects(parts, info.frame_rate, info.window_seconds, frame_bytes, cfg.storage)
        if info.flops_per_window:
            work = sum(n * math.ceil(d / info.window_seconds) for d, n in durations.items())
            flops = info.flops_per_window * work
        else:
            work = seconds
            flops = info.flops_per_second * seconds
        gpu_h[e] = (measured_seconds(e, work, measured) if measured else
                    flops / (gpu_peak_tflops * 1e12 * mfu)) / 3600
    basis = (f"measured: {measured['device']}, {measured['dtype']}, bench/gpu_extract.py in {bench}" if measured
             else f"FLOP estimate: {mfu:.0%} of {gpu_peak_tflops:g} TFLOP/s (no measured throughput given)")
    total = sum(sizes.values())
    clips = sum(durations.values())
    return PlanReport(
        instances=clips, clips=clips, unreadable=0, too_long=0,
        audio_hours=seconds / 3600, bytes_per_encoder=sizes, bytes_total=total,
        bytes_per_audio_second=total / seconds if seconds else 0.0, gpu_hours_per_encoder=gpu_h,
        gpu_hours_total=sum(gpu_h.values()), counts=ClipCounts(under_limit=clips),
        objects_per_encoder=objects, gpu_basis=basis, gpus=gpus, wall_hours=sum(gpu_h.values()) / gpus,
        assumptions={"dims": "ALARM checkpoints (docs/method.md §2)", "dtype": cfg.storage.dtype,
                     "gpu_peak_tflops": gpu_peak_tflops, "mfu": mfu, "gpu_basis": basis,
                     "part_seconds": cfg.storage.part_seconds, "shard_frames": cfg.storage.shard_frames,
                     "clips": "readable sources (audio+cut) under the limit; identical content under two "
                              "names counts twice here, once in the store (keyed by content)"})


def read_gpu_bench(path: str, encoders: list[str]) -> dict[str, Any]:
    """The last ``bench/gpu_extract.py`` line of a JSON-lines file that measured every one of ``encoders``.

    Raises:
        ConfigError: the file is missing, or has no such line, or measured the ``tiny`` models.
    """
    import json
    from pathlib import Path

    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise ConfigError(f"--bench {path}: {err.strerror or err}") from None
    found = None
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("bench") == "gpu_extract" and \
                all(e in (row.get("encoders") or {}) for e in encoders):
            found = row
    if found is None:
        raise ConfigError(f"--bench {path}: no bench/gpu_extract.py line measuring {', '.join(encoders)}")
    if found.get("preset") == "tiny":
        raise ConfigError(f"--bench {path}: measured the tiny models, which say nothing of the real ones' "
                          "speed; run bench/gpu_extract.py with --preset full-size-random or alarm")
    return found


def measured_seconds(encoder: str, work: float, bench: dict[str, Any]) -> float:
    """GPU-seconds for ``work`` from the bench's measured rate of ``encoder``.

    ``work`` is audio-seconds, or windows for an encoder that pads every window to full length
    (whisper, sslam): their time follows the window count, so the bench's windows are its counted
    FLOPs over the registry's FLOPs per window, and the rate is windows per GPU-second.
    """
    from alarm.pipeline.encoders import ENCODERS

    row = bench["encoders"][encoder]
    per_window = ENCODERS[encoder].flops_per_window
    if per_window:
        return work / (row["flops"] / per_window / row["seconds"])
    return work / row["audio_seconds_per_second"]


OBJECT_BYTES_RANGE = (8e6, 256e6)
"""Object sizes object stores serve well: fewer requests than small files, ranged reads still cheap."""


def decimal_bytes(n: float) -> str:
    """``96e12`` -> ``96.0 TB``: decimal units, as object stores and disks are sold and billed."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def plan_lines(report: PlanReport) -> list[str]:
    """``alarm pipeline plan``'s terminal lines: the input, one line per encoder, the totals, the wall time."""
    lines = [report.headline()]
    low, high = OBJECT_BYTES_RANGE
    for e, size in report.bytes_per_encoder.items():
        o = report.objects_per_encoder[e]
        lines.append(f"  {e}: {decimal_bytes(size)}, {o.shard_objects:,} objects of "
                     f"{decimal_bytes(o.average_shard_bytes)} on average (full shard "
                     f"{decimal_bytes(o.full_shard_bytes)}) + {o.small_objects:,} small, in {o.parts:,} parts; "
                     f"~{report.gpu_hours_per_encoder[e]:,.3f} GPU-hours")
        if o.shard_objects and not low <= o.full_shard_bytes <= high:
            lines.append(f"    note: {e}'s shards are {decimal_bytes(o.full_shard_bytes)}, outside the "
                         f"{decimal_bytes(low)}-{decimal_bytes(high)} object stores serve well; "
                         "change storage.shard_frames (--shard-frames)")
    lines.append(f"total: {decimal_bytes(report.bytes_total)} ({report.bytes_per_audio_second / 1e6:.3f} MB per "
                 f"audio-second), ~{report.gpu_hours_total:,.3f} GPU-hours ({report.gpu_basis})")
    lines.append(f"on {report.gpus} GPU{'s' if report.gpus > 1 else ''}: ~{report.wall_hours:,.3f} h wall "
                 "(every GPU busy; size each encoder's actors to its share of the GPU-hours)")
    return lines


# ------------------------------------------------------------------------------------------ disk space


class NotEnoughSpace(RuntimeError):
    """The store's disk cannot hold what the job is to write; the message is one line saying what to do."""

    @classmethod
    def before_job(cls, root: Any, free: float, needed: float) -> NotEnoughSpace:
        from alarm.pipeline.report import human_bytes

        return cls(f"store {root}: {human_bytes(free)} free on its disk, the job needs about "
                   f"{human_bytes(needed)}; free some space or choose another --store (--force starts anyway)")

    @classmethod
    def during_job(cls, root: Any, needed: float | None) -> NotEnoughSpace:
        from alarm.pipeline.report import human_bytes

        need = f", the job needed about {human_bytes(needed)} when it started" if needed else ""
        return cls(f"store {root}: no space left on device ({human_bytes(free_bytes(root))} free{need}); "
                   "free some space and rerun: the parts already written are kept")


def free_bytes(root: Any) -> float:
    """Free bytes on the disk of ``root`` (its nearest existing parent folder); inf if unknown."""
    from pathlib import Path

    path = Path(root).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return float(shutil.disk_usage(path).free)
    except OSError:
        return math.inf


def bytes_to_write(cfg: Any, facts: dict[str, dict[str, Any]], units: list[Any]) -> float:
    """The estimated bytes of the planned parts (``WorkUnit``s), from each encoder's real layers and dim."""
    total = 0.0
    for e in cfg.encoders:
        durations = [d for u in units if e in u.encoders for d in u.durations]
        total += stored_bytes(e, durations, facts[e]["layers"], facts[e]["dim"], cfg.storage.dtype)
    return total


def check_free_space(root: Any, needed: float) -> None:
    """Raise ``NotEnoughSpace`` when the disk of ``root`` has less than ``needed`` bytes free."""
    free = free_bytes(root)
    if free < needed:
        raise NotEnoughSpace.before_job(root, free, needed)


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` comes from a full disk (ENOSPC), here or in a Ray worker (its ``cause``)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(e):  # an OSError that lost its errno on the way (pyarrow)
            return True
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return False
