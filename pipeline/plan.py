"""Plan before you spend: clips, hours, predicted store size and GPU time, from file headers only.

Sizes are exact arithmetic on the ALARM dimensions (docs/method.md §2): frames x kept layers x dim x bytes
per stored value. GPU time is an estimate: forward FLOPs per window or per audio-second of each
architecture (2 x parameters x tokens, plus attention; the registry's ``flops_per_window`` and
``flops_per_second``) divided by an assumed sustained rate (``gpu_peak_tflops`` x ``mfu``). Whisper
and SSLAM pad every window to full length, so their cost follows the number of windows, not the
audio length.
"""

from __future__ import annotations

import errno
import math
import shutil
from dataclasses import dataclass, field
from typing import Any

from alarm.pipeline.counts import ClipCounts, input_counts
from alarm.pipeline.store_layout import bytes_per_value


@dataclass
class PlanReport:
    """What a job over this input would compute and store."""

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

    def headline(self) -> str:
        """The first line ``alarm pipeline plan`` prints: the named counts, hours, and what drops out."""
        return (f"{self.counts.line()}; {self.audio_hours:.3f} hours "
                f"({self.unreadable} unreadable, {self.too_long} too long)")

    def to_dict(self) -> dict[str, Any]:
        from alarm.pipeline.configs import to_dict

        return to_dict(self)


def clip_frames(encoder: str, duration: float, frame_rate: float, window_seconds: float) -> int:
    """Output frames of a clip, window by window (docs/method.md §2 lengths)."""
    full, rest = divmod(duration, window_seconds)
    return int(full) * int(round(window_seconds * frame_rate)) + int(rest * frame_rate)


def stored_bytes(encoder: str, durations: list[float], layers: int, dim: int, dtype: str) -> float:
    """Bytes the store takes for clips of ``durations`` seconds: frames x layers x dim x bytes per value.

    ``layers`` and ``dim`` are the model's (a tiny model's are small); frame rate and window are the
    registry's.
    """
    from alarm.pipeline.encoders import ENCODERS

    info = ENCODERS[encoder]
    frames = sum(clip_frames(encoder, d, info.frame_rate, info.window_seconds) for d in durations)
    return frames * layers * dim * bytes_per_value(dtype, layers, dim)


def plan_job(cfg: Any, gpu_peak_tflops: float = 989.0, mfu: float = 0.35) -> PlanReport:
    """Predict a job's work and store size without decoding anything.

    Args:
        cfg: a ``PipelineConfig`` (input, encoders, layers, store dtype, max clip length).
        gpu_peak_tflops: dense bf16 peak of the GPU (H100 SXM: 989).
        mfu: the fraction of peak the encoders sustain.
    """
    from alarm.pipeline.encoders import ENCODERS
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
    seconds = sum(durations)
    counts = input_counts(instances)
    counts.readable, counts.under_limit = len(sources) - unreadable, len(durations)
    counts.limit_seconds = cfg.decode.max_seconds
    sizes, gpu_h = {}, {}
    for e in cfg.encoders:
        info = ENCODERS[e]
        sizes[e] = stored_bytes(e, durations, len(cfg.layers.get(e) or info.layers), info.dim, cfg.storage.dtype)
        if info.flops_per_window:
            flops = info.flops_per_window * sum(math.ceil(d / info.window_seconds) for d in durations)
        else:
            flops = info.flops_per_second * seconds
        gpu_h[e] = flops / (gpu_peak_tflops * 1e12 * mfu) / 3600
    total = sum(sizes.values())
    return PlanReport(
        instances=len(instances), clips=len(durations), unreadable=unreadable, too_long=too_long,
        audio_hours=seconds / 3600, bytes_per_encoder=sizes, bytes_total=total,
        bytes_per_audio_second=total / seconds if seconds else 0.0, gpu_hours_per_encoder=gpu_h,
        gpu_hours_total=sum(gpu_h.values()), counts=counts,
        assumptions={"dims": "ALARM checkpoints (docs/method.md §2)", "dtype": cfg.storage.dtype,
                     "gpu_peak_tflops": gpu_peak_tflops, "mfu": mfu,
                     "clips": "readable sources (audio+cut) under the limit; identical content under two "
                              "names counts twice here, once in the store (keyed by content)"})


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
