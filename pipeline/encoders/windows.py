"""Windowed encoding: clips cut into windows, windows batched by length, outputs joined in time.

Every frame rule here is the encoder's own (``window_frames``), so a store never depends on how clips
were batched; ``first_frame_samples`` and ``shortest_clip_seconds`` derive the shortest usable clip
from the same rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alarm.pipeline.encoders.base import (
    ENCODER_CODE_VERSION,
    EncoderInfo,
    EncoderSettings,
    weights_fingerprint,
)


@dataclass(frozen=True)
class Window:
    """One forward-pass piece of one clip: ``wave[start:stop]`` of clip ``clip``."""

    clip: int
    index: int
    start: int
    stop: int


def split_windows(num_samples: int, window: int, hop: int) -> list[tuple[int, int]]:
    """Cut ``[0, num_samples)`` into windows of ``window`` samples every ``hop`` samples.

    ``hop <= window``; a window longer than its hop overlaps the next one only where a front end needs
    context (SSLAM's fbank frame is 400 samples for a 160-sample shift). The last window may be short.
    """
    if num_samples <= 0:
        return []
    count = max(1, math.ceil((num_samples - (window - hop)) / hop))
    return [(k * hop, min(num_samples, k * hop + window)) for k in range(count)]


class WindowedEncoder:
    """Implements the ``Encoder`` protocol around a model that encodes one window at a time.

    The model object supplies ``window_samples``, ``hop_samples``, ``window_frames(n)`` (frames for a
    window of ``n`` samples), ``forward(list[np.ndarray]) -> list[np.ndarray]`` (a batch of windows, each
    result ``(window_frames(len), layers, dim)``) and ``spec_extra() -> dict``.
    """

    def __init__(self, info: EncoderInfo, cfg: EncoderSettings, layers: tuple[int, ...], dim: int,
                 model: Any, checkpoint: str) -> None:
        self.name = info.name
        self.sample_rate = info.sample_rate
        self.layers = layers
        self.dim = dim
        self.frame_rate = info.frame_rate
        self.cfg = cfg
        self.model = model
        self.checkpoint = checkpoint
        self._spec: dict[str, Any] | None = None

    def num_frames(self, num_samples: int) -> int:
        """Output frames for ``num_samples`` samples: the sum over its windows."""
        m = self.model
        return sum(m.window_frames(b - a) for a, b in split_windows(num_samples, m.window_samples,
                                                                    m.hop_samples))

    def min_samples(self) -> int:
        """The fewest samples that give one output frame, found on ``num_frames`` (the frame rule)."""
        return first_frame_samples(self.num_frames, self.model.window_samples)

    def spec(self) -> dict[str, Any]:
        """Everything that determines the outputs; computed once (the fingerprint hashes the weights)."""
        if self._spec is None:
            self._spec = {
                "encoder": self.name,
                "checkpoint": self.checkpoint,
                "preset": self.cfg.preset,
                "weights_sha256": weights_fingerprint(self.model.module),
                "layers": list(self.layers),
                "dim": self.dim,
                "sample_rate": self.sample_rate,
                "frame_rate": self.frame_rate,
                "window_samples": self.model.window_samples,
                "hop_samples": self.model.hop_samples,
                "compute_dtype": self.cfg.dtype,
                "code_version": ENCODER_CODE_VERSION,
                **self.model.spec_extra(),
            }
        return self._spec

    def encode(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Encode clips window by window, batching windows of similar length; see the module docstring."""
        m = self.model
        clips = [np.ascontiguousarray(np.asarray(w, dtype=np.float32)) for w in waves]
        bad = [i for i, c in enumerate(clips) if c.ndim != 1]
        if bad:
            raise ValueError(f"{self.name}: encode expects 1-D mono waves; clips {bad} have other shapes")
        windows = [
            Window(c, i, a, b)
            for c, wave in enumerate(clips)
            for i, (a, b) in enumerate(split_windows(len(wave), m.window_samples, m.hop_samples))
            if m.window_frames(b - a) > 0
        ]
        # Longest first so each batch pads to a similar length; ties keep clip order (deterministic).
        windows.sort(key=lambda w: -(w.stop - w.start))
        outputs: dict[tuple[int, int], np.ndarray] = {}
        for k in range(0, len(windows), self.cfg.batch_size):
            batch = windows[k : k + self.cfg.batch_size]
            results = m.forward([clips[w.clip][w.start : w.stop] for w in batch])
            for w, out in zip(batch, results, strict=True):
                expected = m.window_frames(w.stop - w.start)
                if out.shape != (expected, len(self.layers), self.dim):
                    raise RuntimeError(f"{self.name}: window gave {out.shape}, expected "
                                       f"{(expected, len(self.layers), self.dim)}")
                outputs[(w.clip, w.index)] = out
        result = []
        for c, wave in enumerate(clips):
            parts = [outputs[(c, i)] for i in range(len(split_windows(len(wave), m.window_samples,
                                                                        m.hop_samples)))
                     if (c, i) in outputs]
            if parts:
                result.append(np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float32))
            else:
                result.append(np.zeros((0, len(self.layers), self.dim), np.float32))
        return result


def first_frame_samples(num_frames: Callable[[int], int], limit: int) -> int:
    """The smallest ``n`` in ``[1, limit]`` with ``num_frames(n) >= 1``, by bisection.

    Every frame rule here is non-decreasing in ``n`` (more audio never gives fewer frames), so the
    minimum comes from the rule itself instead of a constant that could drift from the code.

    Raises:
        ValueError: Even ``limit`` samples give no frame.
    """
    if num_frames(limit) < 1:
        raise ValueError(f"{limit} samples give no output frame; the frame rule cannot be satisfied")
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi) // 2
        if num_frames(mid) >= 1:
            hi = mid
        else:
            lo = mid + 1
    return lo


def shortest_clip_seconds(rules: Iterable[tuple[int, int]]) -> float:
    """The shortest clip, in seconds, that gives every encoder at least one frame.

    Args:
        rules: ``(min_samples, sample_rate)`` of each encoder (``Encoder.min_samples``).

    A clip of ``n`` source samples at rate ``sr`` is resampled by soxr to ``round(n * rate / sr)``
    samples, so ``n / sr >= min_samples / rate`` guarantees each encoder its ``min_samples``.
    Returns 0.0 when ``rules`` is empty.
    """
    return max((samples / rate for samples, rate in rules), default=0.0)


def too_short_reason(duration: float, shortest: float) -> str:
    """The reject reason of a clip shorter than ``shortest`` seconds (``shortest_clip_seconds``)."""
    return f"too short: {duration:.6g} s < {shortest:.6g} s"


