"""The four frozen ALARM audio encoders behind one small protocol and a plain-dict registry.

Each encoder turns float32 mono waves at its own sample rate into ``(frames, len(layers), dim)`` float32
arrays: the hidden states ALARM keeps (docs/method.md §2). Clips longer than the encoder's window are cut into
windows, each encoded on its own, and the outputs concatenated in time, so a store never depends on how
clips were batched. ``encode`` batches windows of similar length together; the result equals a
one-clip-at-a-time call up to float tolerance (tests/test_encoders.py checks it).

Presets: ``alarm`` loads the real checkpoint offline (a local directory or the local Hugging Face cache),
``tiny`` builds seeded random models that run in seconds on a CPU, ``full-size-random`` builds the real
dimensions with random weights (benchmarks).

``ENCODERS`` is the one place that names the encoders and states their facts (checkpoint, dim, kept
layers, rates, window); the feature job, the plan, the demo, the CLI and the trainer's shapes read it.
Its order is ALARM-CA's: the main (query) encoder first, then the order the cross-attention visits.
One module per encoder (``whisper``, ``w2vbert``, ``muq``, ``sslam``; ``tiny`` writes the small random
checkpoints) builds on ``base`` and ``windows``; none of them imports this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.encoders.base import (
    ENCODER_CODE_VERSION,
    Encoder,
    EncoderInfo,
    EncoderSettings,
    resolve_checkpoint_dir,
)
from alarm.pipeline.encoders.tiny import build_tiny_w2vbert, build_tiny_whisper
from alarm.pipeline.encoders.w2vbert import build_w2vbert
from alarm.pipeline.encoders.whisper import build_whisper
from alarm.pipeline.encoders.windows import shortest_clip_seconds, split_windows, too_short_reason

__all__ = [
    "DTYPES", "ENCODERS", "ENCODER_CODE_VERSION", "PRESETS", "Encoder", "EncoderConfig", "EncoderInfo",
    "build_encoder", "resolve_checkpoint_dir", "shortest_clip_seconds", "split_windows", "too_short_reason",
]

PRESETS = ("alarm", "tiny", "full-size-random")
"""Encoder weights: ALARM's checkpoints (offline), seeded tiny random models, real sizes with random weights."""
DTYPES = ("float32", "float16", "bfloat16")
"""Compute dtypes of the encoders (their outputs are float32; the store's dtypes are ``store.DTYPES``)."""


@dataclass
class EncoderConfig:
    """How to build one encoder.

    Attributes:
        name: Registry key: ``whisper``, ``w2vbert``, ``muq`` or ``sslam``.
        preset: ``alarm`` (real checkpoint, offline), ``tiny`` (seeded random, CPU tests) or
            ``full-size-random`` (real dimensions, random weights; benchmarks).
        checkpoint: Local directory or Hugging Face id for the ``alarm`` preset (resolved offline only);
            None means the ALARM checkpoint. For ``tiny`` a directory overrides the cached tiny model.
        layers: Hidden-state indices to keep; None means the ALARM default for this encoder.
        device: Torch device, e.g. ``cpu`` or ``cuda:0``.
        dtype: Compute dtype of the model: ``float32``, ``float16`` or ``bfloat16``. Outputs are float32.
        batch_size: Windows per forward pass.
        window_seconds: Audio per forward pass; None means the ALARM window (whisper's is fixed by its
            feature extractor and cannot be changed).
        seed: Seed of the random weights of the ``tiny`` and ``full-size-random`` presets.
    """

    name: str
    preset: str = "alarm"
    checkpoint: str | None = None
    layers: tuple[int, ...] | None = None
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 8
    window_seconds: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in ENCODERS:
            raise ConfigError(f"unknown encoder {self.name!r}; choose one of {', '.join(ENCODERS)}")
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.layers is not None:
            self.layers = tuple(int(i) for i in self.layers)
            if not self.layers or any(i < 0 for i in self.layers) or len(set(self.layers)) != len(self.layers):
                raise ConfigError(f"layers must be distinct non-negative indices, got {self.layers}")
        if self.window_seconds is not None and self.window_seconds <= 0:
            raise ConfigError(f"window_seconds must be positive, got {self.window_seconds}")


# MuQ and SSLAM are our own torch modules: their modules import torch, so they load when first built.


def _build_muq(cfg: EncoderSettings, info: EncoderInfo) -> Encoder:
    from alarm.pipeline.encoders.muq import build_muq_encoder

    return build_muq_encoder(cfg, info)


def _build_sslam(cfg: EncoderSettings, info: EncoderInfo) -> Encoder:
    from alarm.pipeline.encoders.sslam import build_sslam_encoder

    return build_sslam_encoder(cfg, info)


def _build_tiny_muq() -> Path:
    from alarm.pipeline.encoders.muq import build_tiny_muq

    return build_tiny_muq()


def _build_tiny_sslam() -> Path:
    from alarm.pipeline.encoders.sslam import build_tiny_sslam

    return build_tiny_sslam()


# Forward FLOPs of the full-size models, counted with torch.utils.flop_counter on the meta device
# (bench/RESULTS.md, "Encoders on a GPU": whisper 75.8 G, w2vbert 69.0 G, muq 42.7 G, sslam 9.5 G per
# audio-second of a full window); ``pipeline.plan`` turns them into GPU hours.
ENCODERS: dict[str, EncoderInfo] = {
    "whisper": EncoderInfo(
        name="whisper", checkpoint="openai/whisper-large-v3", sample_rate=16000, layers=(7, 15, 23, 31),
        dim=1280, frame_rate=50.0, window_seconds=30.0, build=build_whisper,
        tiny_folder="tiny-whisper-v1", build_tiny=build_tiny_whisper, adapter="conv", conv_norm="batch",
        flops_per_window=2.27e12,  # 30 s / 1500 tokens
    ),
    "w2vbert": EncoderInfo(
        name="w2vbert", checkpoint="facebook/w2v-bert-2.0", sample_rate=16000, layers=(6, 10, 15, 20, 24),
        dim=1024, frame_rate=50.0, window_seconds=30.0, build=build_w2vbert,
        tiny_folder="tiny-w2vbert-v1", build_tiny=build_tiny_w2vbert, adapter="conv", conv_norm="layer",
        flops_per_second=6.90e10,  # counted: 69.0 G per audio-second
    ),
    "muq": EncoderInfo(
        name="muq", checkpoint="OpenMuQ/MuQ-large-msd-iter", sample_rate=24000, layers=(4, 8, 12),
        dim=1024, frame_rate=25.0, window_seconds=30.0, build=_build_muq,
        tiny_folder="tiny-muq-v1", build_tiny=_build_tiny_muq, adapter="mlp",
        flops_per_second=4.27e10,  # counted: 42.7 G per audio-second
    ),
    "sslam": EncoderInfo(
        name="sslam", checkpoint="ta012/SSLAM_AS2M_Finetuned", sample_rate=16000, layers=(4, 8, 12),
        dim=768, frame_rate=50.0, window_seconds=10.24, build=_build_sslam,
        tiny_folder="tiny-sslam-v1", build_tiny=_build_tiny_sslam, adapter="conv", conv_norm="layer",
        flops_per_window=1.0e11,  # 10.24 s / 512 tokens
    ),
}


def build_encoder(cfg: EncoderConfig) -> Encoder:
    """Build the encoder ``cfg.name`` in eval mode on ``cfg.device``.

    Raises:
        ConfigError: Bad layers or window for this model.
        FileNotFoundError: The ``alarm`` checkpoint is not available offline.
    """
    info = ENCODERS[cfg.name]
    return info.build(cfg, info)
