"""The four frozen ALARM audio encoders behind one small protocol and a plain-dict registry.

Each encoder turns float32 mono waves at its own sample rate into ``(frames, len(layers), dim)`` float32
arrays: the hidden states ALARM keeps (ALARM.md §2). Clips longer than the encoder's window are cut into
windows, each encoded on its own, and the outputs concatenated in time, so a store never depends on how
clips were batched. ``encode`` batches windows of similar length together; the result equals a
one-clip-at-a-time call up to float tolerance (tests/test_encoders.py checks it).

Presets: ``alarm`` loads the real checkpoint offline (a local directory or the local Hugging Face cache),
``tiny`` builds seeded random models that run in seconds on a CPU, ``full-size-random`` builds the real
dimensions with random weights (benchmarks).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from alarm.pipeline.configs import ConfigError

# Bump when a code change alters any encoder's output for the same weights: it is part of every spec,
# so a store written by older code is refused instead of silently mixed.
ENCODER_CODE_VERSION = "1"

PRESETS = ("alarm", "tiny", "full-size-random")
DTYPES = ("float32", "float16", "bfloat16")


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


@runtime_checkable
class Encoder(Protocol):
    """A built, frozen encoder; see the module docstring."""

    name: str
    sample_rate: int
    layers: tuple[int, ...]
    dim: int
    frame_rate: float

    def spec(self) -> dict[str, Any]:
        """Everything that determines the outputs (checkpoint, weights fingerprint, layers, windowing, ...)."""
        ...

    def num_frames(self, num_samples: int) -> int:
        """Output frames for a clip of ``num_samples`` samples at ``sample_rate``."""
        ...

    def min_samples(self) -> int:
        """The fewest samples at ``sample_rate`` that give at least one output frame."""
        ...

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """Encode float32 mono waves; each result is ``(num_frames(len(w)), len(layers), dim)`` float32."""
        ...


@dataclass(frozen=True)
class EncoderInfo:
    """Static facts of one registry entry (ALARM.md §2), known without building the model.

    Attributes:
        name: Registry key.
        checkpoint: The ALARM checkpoint (Hugging Face id).
        sample_rate: Input sample rate in Hz.
        layers: Default hidden-state indices kept.
        dim: Hidden size.
        frame_rate: Output frames per second of audio.
        window_seconds: Default audio per forward pass.
        build: ``build(cfg) -> Encoder``.
    """

    name: str
    checkpoint: str
    sample_rate: int
    layers: tuple[int, ...]
    dim: int
    frame_rate: float
    window_seconds: float
    build: Callable[[EncoderConfig], Encoder] = field(repr=False)


# ------------------------------------------------------------------------------------------ helpers


def torch_dtype(name: str) -> Any:
    """The torch dtype called ``name`` (float32, float16, bfloat16)."""
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def weights_fingerprint(module: Any) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes, in name order)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # bfloat16 has no numpy dtype: hash its raw 16-bit patterns instead.
        raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()


def resolve_checkpoint_dir(checkpoint: str) -> Path:
    """A local directory for ``checkpoint``: the path itself, or its snapshot in the local HF cache.

    Raises:
        FileNotFoundError: The checkpoint is neither a directory nor in the local cache (we never download).
    """
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(checkpoint, local_files_only=True))
    except Exception as err:  # the hub raises several types for "not cached"
        raise FileNotFoundError(
            f"checkpoint {checkpoint!r} is neither a local directory nor in the local Hugging Face cache; "
            "download it on a machine with network access (huggingface-cli download) or pass a directory"
        ) from err


def read_checkpoint(checkpoint: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config.json`` and every tensor of a checkpoint (local folder or local HF cache).

    Weights come from ``*.safetensors`` shards, else ``pytorch_model.bin`` / ``model.pt``.

    Raises:
        FileNotFoundError: Not available offline, or no config or weights in the folder.
    """
    import torch
    from safetensors.torch import load_file

    folder = resolve_checkpoint_dir(str(checkpoint))
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    config = json.loads(config_path.read_text())
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        state: dict[str, Any] = {}
        for shard in shards:
            state.update(load_file(str(shard)))
        return config, state
    for name in ("pytorch_model.bin", "model.pt"):
        if (folder / name).is_file():
            return config, torch.load(folder / name, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no weights (*.safetensors or pytorch_model.bin) in {folder}")


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

    def __init__(self, info: EncoderInfo, cfg: EncoderConfig, layers: tuple[int, ...], dim: int,
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


def check_layers(name: str, layers: tuple[int, ...], available: int) -> None:
    """Raise ConfigError when a requested hidden-state index does not exist (``available`` states)."""
    bad = [i for i in layers if i >= available]
    if bad:
        raise ConfigError(f"{name}: layers {bad} do not exist; this model has hidden states 0..{available - 1}")


def default_layers(info: EncoderInfo, cfg: EncoderConfig, num_states: int) -> tuple[int, ...]:
    """The layers to keep: ``cfg.layers``, else ALARM's, else (small random models) as many spread evenly.

    A tiny model has fewer hidden states than the real one, so ALARM's indices may not exist there; it then
    keeps the same number of states spread over its depth, so tiny outputs have the real layer count.
    """
    if cfg.layers is not None:
        check_layers(info.name, cfg.layers, num_states)
        return cfg.layers
    if max(info.layers) < num_states:
        return info.layers
    count = min(len(info.layers), num_states - 1)
    return tuple(int(i) for i in np.unique(np.linspace(1, num_states - 1, count).round().astype(int)))


def window_samples(info: EncoderInfo, cfg: EncoderConfig) -> int:
    """Samples per window: ``cfg.window_seconds`` or the ALARM window, at the encoder's sample rate."""
    seconds = cfg.window_seconds if cfg.window_seconds is not None else info.window_seconds
    return int(round(seconds * info.sample_rate))


def stack_layers(hidden_states: Sequence[Any], layers: tuple[int, ...]) -> np.ndarray:
    """``(batch, frames, len(layers), dim)`` float32 numpy from a tuple of ``(batch, frames, dim)`` tensors."""
    import torch

    return torch.stack([hidden_states[i] for i in layers], dim=2).float().cpu().numpy()


# ------------------------------------------------------------------------------------------ whisper


class WhisperWindows:
    """Whisper encoder windows: each padded to the 30 s the model expects, outputs trimmed to real length."""

    def __init__(self, module: Any, extractor: Any, layers: tuple[int, ...], device: str, dtype: str) -> None:
        self.module = module
        self.extractor = extractor
        self.layers = layers
        self.device = device
        self.dtype = torch_dtype(dtype)
        self.window_samples = int(extractor.n_samples)
        self.hop_samples = self.window_samples

    def window_frames(self, num_samples: int) -> int:
        """Half the 100 Hz mel frames (the STFT's last frame is dropped, as the extractor does)."""
        return (num_samples // self.extractor.hop_length) // 2

    def spec_extra(self) -> dict[str, Any]:
        """Front-end settings that determine the outputs."""
        fe = self.extractor
        return {"preprocessing": {"features": "whisper-log-mel", "n_mels": fe.feature_size, "n_fft": fe.n_fft,
                                  "hop_length": fe.hop_length, "pad_to_samples": fe.n_samples}}

    def forward(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """Encode a batch of windows (each at most ``window_samples`` long)."""
        import torch

        # The extractor's torch STFT runs on the model's device (it returns the features on the CPU).
        feats = self.extractor(windows, sampling_rate=self.extractor.sampling_rate, padding="max_length",
                               return_tensors="pt", device=str(self.device)).input_features
        with torch.inference_mode():
            out = self.module(feats.to(self.device, self.dtype), output_hidden_states=True)
        stacked = stack_layers(out.hidden_states, self.layers)
        return [stacked[b, : self.window_frames(len(w))] for b, w in enumerate(windows)]


def _whisper_large_v3_config() -> Any:
    """whisper-large-v3's encoder dimensions, written out so no hub access is needed."""
    from transformers import WhisperConfig

    return WhisperConfig(num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                         encoder_ffn_dim=5120, max_source_positions=1500, decoder_layers=1,
                         decoder_attention_heads=20, decoder_ffn_dim=5120)


def build_whisper(cfg: EncoderConfig, info: EncoderInfo) -> Encoder:
    """Whisper's encoder (transformers' ``WhisperEncoder``) with its ``WhisperFeatureExtractor``."""
    import torch
    from transformers import WhisperFeatureExtractor, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if cfg.preset == "full-size-random":
        torch.manual_seed(cfg.seed)
        checkpoint = f"{info.checkpoint}@random-seed-{cfg.seed}"
        module = WhisperEncoder(_whisper_large_v3_config())
        extractor = WhisperFeatureExtractor(feature_size=128)
    else:
        if cfg.preset == "tiny" and cfg.checkpoint is None:
            from alarm.pipeline.tiny_encoders import build_tiny_whisper

            path = Path(build_tiny_whisper())
        else:
            path = resolve_checkpoint_dir(cfg.checkpoint or info.checkpoint)
        checkpoint = cfg.checkpoint or (info.checkpoint if cfg.preset == "alarm" else f"tiny:{path.name}")
        module = WhisperModel.from_pretrained(path, local_files_only=True).get_encoder()
        extractor = WhisperFeatureExtractor.from_pretrained(path, local_files_only=True)
    if cfg.window_seconds is not None and round(cfg.window_seconds * info.sample_rate) != extractor.n_samples:
        raise ConfigError(f"whisper's window is fixed at {extractor.n_samples / info.sample_rate:g} s by its "
                          f"feature extractor; got window_seconds={cfg.window_seconds}")
    module = module.to(cfg.device, torch_dtype(cfg.dtype)).eval()
    layers = default_layers(info, cfg, module.config.encoder_layers + 1)
    model = WhisperWindows(module, extractor, layers, cfg.device, cfg.dtype)
    return WindowedEncoder(info, cfg, layers, module.config.d_model, model, checkpoint)


# ------------------------------------------------------------------------------------------ w2v-bert


class W2VBertWindows:
    """W2V-BERT 2.0 windows: 160 zero samples each side, SeamlessM4T fbank (stacked to 50 Hz), masked batch."""

    PAD = 160

    def __init__(self, module: Any, extractor: Any, layers: tuple[int, ...], device: str, dtype: str,
                 window: int) -> None:
        self.module = module
        self.extractor = extractor
        self.layers = layers
        self.device = device
        self.dtype = torch_dtype(dtype)
        self.window_samples = window
        self.hop_samples = window

    def window_frames(self, num_samples: int) -> int:
        """Stacked frames: 25 ms / 10 ms fbank frames of the padded window (no centring), halved."""
        padded = num_samples + 2 * self.PAD
        frames = 1 + (padded - 400) // 160 if padded >= 400 else 0
        return frames // self.extractor.stride

    def spec_extra(self) -> dict[str, Any]:
        """Front-end settings that determine the outputs."""
        fe = self.extractor
        return {"preprocessing": {"features": "seamless-m4t-fbank", "n_mels": fe.num_mel_bins,
                                  "stride": fe.stride, "pad_samples_each_side": self.PAD,
                                  "normalize_per_mel_bins": True}}

    def forward(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """Encode a batch; padding is masked, so results equal one-window-at-a-time calls."""
        import torch

        from alarm.pipeline.features import seamless_fbank

        # Our torch port of the SeamlessM4T extractor (tests/test_features.py checks it against transformers'):
        # same features, computed on the model's device.
        padded = [torch.nn.functional.pad(torch.from_numpy(w).to(self.device), (self.PAD, self.PAD))
                  for w in windows]
        features, mask = seamless_fbank(padded, stride=self.extractor.stride)
        with torch.inference_mode():
            out = self.module(features.to(self.dtype), attention_mask=mask, output_hidden_states=True)
        stacked = stack_layers(out.hidden_states, self.layers)
        return [stacked[b, : self.window_frames(len(w))] for b, w in enumerate(windows)]


def _w2v_bert_2_config() -> Any:
    """w2v-bert-2.0's dimensions, written out so no hub access is needed."""
    from transformers import Wav2Vec2BertConfig

    return Wav2Vec2BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                              intermediate_size=4096, feature_projection_input_dim=160,
                              position_embeddings_type="relative_key", conv_depthwise_kernel_size=31,
                              add_adapter=False)


def build_w2vbert(cfg: EncoderConfig, info: EncoderInfo) -> Encoder:
    """W2V-BERT 2.0 (transformers' ``Wav2Vec2BertModel``) with its ``SeamlessM4TFeatureExtractor``."""
    import torch
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertModel

    if cfg.preset == "full-size-random":
        torch.manual_seed(cfg.seed)
        checkpoint = f"{info.checkpoint}@random-seed-{cfg.seed}"
        module = Wav2Vec2BertModel(_w2v_bert_2_config())
        extractor = SeamlessM4TFeatureExtractor()
    else:
        if cfg.preset == "tiny" and cfg.checkpoint is None:
            from alarm.pipeline.tiny_encoders import build_tiny_w2vbert

            path = Path(build_tiny_w2vbert())
        else:
            path = resolve_checkpoint_dir(cfg.checkpoint or info.checkpoint)
        checkpoint = cfg.checkpoint or (info.checkpoint if cfg.preset == "alarm" else f"tiny:{path.name}")
        module = Wav2Vec2BertModel.from_pretrained(path, local_files_only=True)
        extractor = SeamlessM4TFeatureExtractor.from_pretrained(path, local_files_only=True)
    module = module.to(cfg.device, torch_dtype(cfg.dtype)).eval()
    layers = default_layers(info, cfg, module.config.num_hidden_layers + 1)
    model = W2VBertWindows(module, extractor, layers, cfg.device, cfg.dtype, window_samples(info, cfg))
    return WindowedEncoder(info, cfg, layers, module.config.hidden_size, model, checkpoint)


# ------------------------------------------------------------------------------------------ registry


def _build_whisper(cfg: EncoderConfig) -> Encoder:
    return build_whisper(cfg, ENCODERS["whisper"])


def _build_w2vbert(cfg: EncoderConfig) -> Encoder:
    return build_w2vbert(cfg, ENCODERS["w2vbert"])


def _build_muq(cfg: EncoderConfig) -> Encoder:
    from alarm.pipeline.muq import build_muq_encoder

    return build_muq_encoder(cfg, ENCODERS["muq"])


def _build_sslam(cfg: EncoderConfig) -> Encoder:
    from alarm.pipeline.sslam import build_sslam_encoder

    return build_sslam_encoder(cfg, ENCODERS["sslam"])


ENCODERS: dict[str, EncoderInfo] = {
    "whisper": EncoderInfo("whisper", "openai/whisper-large-v3", 16000, (7, 15, 23, 31), 1280, 50.0, 30.0,
                           _build_whisper),
    "w2vbert": EncoderInfo("w2vbert", "facebook/w2v-bert-2.0", 16000, (6, 10, 15, 20, 24), 1024, 50.0, 30.0,
                           _build_w2vbert),
    "muq": EncoderInfo("muq", "OpenMuQ/MuQ-large-msd-iter", 24000, (4, 8, 12), 1024, 25.0, 30.0, _build_muq),
    "sslam": EncoderInfo("sslam", "ta012/SSLAM_AS2M_Finetuned", 16000, (4, 8, 12), 768, 50.0, 10.24,
                         _build_sslam),
}


def build_encoder(cfg: EncoderConfig) -> Encoder:
    """Build the encoder ``cfg.name`` in eval mode on ``cfg.device``.

    Raises:
        ConfigError: Bad layers or window for this model.
        FileNotFoundError: The ``alarm`` checkpoint is not available offline.
    """
    return ENCODERS[cfg.name].build(cfg)


# ------------------------------------------------------------------------------------------ facts cache
# A job needs a few facts of each encoder before it plans (its spec, with the weights fingerprint, and
# its output shape). They take a model load to learn, so they are kept per checkpoint identity: a
# rerun with nothing to compute loads no model. A stale entry cannot corrupt a store: the actors that
# do load the model check their spec against the group the job planned (``check_spec``).


# The tiny builders' folder names (``pipeline.tiny_encoders``, ``muq``, ``sslam``), so that finding a
# built one imports no torch; tests/test_ray_embedded.py checks they match the builders.
TINY_FOLDERS = {"whisper": "tiny-whisper-v1", "w2vbert": "tiny-w2vbert-v1", "muq": "tiny-muq-v1",
                "sslam": "tiny-sslam-v1"}


def _tiny_checkpoint(name: str) -> Path:
    """The cached tiny checkpoint folder of ``name`` (built on first use)."""
    from alarm.pipeline.cache import alarm_cache_dir, fingerprint

    folder = alarm_cache_dir() / "models" / f"{TINY_FOLDERS[name]}-{fingerprint({'kind': TINY_FOLDERS[name]})}"
    if (folder / ".done").is_file():
        return folder
    if name == "whisper":
        from alarm.pipeline.tiny_encoders import build_tiny_whisper

        return build_tiny_whisper()
    if name == "w2vbert":
        from alarm.pipeline.tiny_encoders import build_tiny_w2vbert

        return build_tiny_w2vbert()
    if name == "muq":
        from alarm.pipeline.muq import build_tiny_muq

        return build_tiny_muq()
    from alarm.pipeline.sslam import build_tiny_sslam

    return build_tiny_sslam()


def checkpoint_identity(cfg: EncoderConfig) -> dict[str, Any] | None:
    """What identifies the weights ``cfg`` would load, without loading them.

    Every file of the checkpoint folder by relative name, size and modification time (a tiny
    checkpoint's folder name also carries its builder's hash). None where there are no files to look
    at: the ``full-size-random`` preset, or a checkpoint not available offline (building the encoder
    then raises the real error).
    """
    if cfg.preset == "full-size-random":
        return None
    try:
        if cfg.preset == "tiny" and cfg.checkpoint is None:
            folder = _tiny_checkpoint(cfg.name)
        else:
            folder = resolve_checkpoint_dir(cfg.checkpoint or ENCODERS[cfg.name].checkpoint)
    except FileNotFoundError:
        return None
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():  # follows the Hugging Face cache's symlinks to the blobs
            st = path.stat()
            files.append([path.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns])
    return {"folder": str(folder.resolve()), "files": files}


def _facts_path(cfg: EncoderConfig) -> Path | None:
    """The cache file of ``cfg``'s facts, keyed by everything they depend on; None if not cacheable."""
    from importlib.metadata import version

    from alarm.pipeline.cache import alarm_cache_dir, fingerprint

    identity = checkpoint_identity(cfg)
    if identity is None:
        return None
    key = {"identity": identity, "name": cfg.name, "preset": cfg.preset, "checkpoint": cfg.checkpoint,
           "layers": cfg.layers, "dtype": cfg.dtype, "window_seconds": cfg.window_seconds,
           "code_version": ENCODER_CODE_VERSION,
           # Library code builds the modules (state-dict names, buffers): a new version may differ.
           "libraries": {lib: version(lib) for lib in ("torch", "transformers")}}
    return alarm_cache_dir() / "encoder-facts" / f"{cfg.name}-{fingerprint(key)}.json"


FACT_KEYS = frozenset({"spec", "layers", "dim", "frame_rate", "sample_rate", "min_samples"})
"""What ``extract_stages.facts_of`` records of a built encoder; a cached entry must hold all of it."""


def cached_facts(cfg: EncoderConfig) -> dict[str, Any] | None:
    """The facts saved by ``save_facts`` for this checkpoint identity, or None."""
    path = _facts_path(cfg)
    if path is None or not path.is_file():
        return None
    try:
        facts = json.loads(path.read_text())
    except ValueError:  # a damaged entry is recomputed
        return None
    # An entry written before a fact was added (e.g. min_samples) is recomputed, never half-used.
    return facts if isinstance(facts, dict) and FACT_KEYS <= facts.keys() else None


def save_facts(cfg: EncoderConfig, facts: dict[str, Any]) -> None:
    """Keep ``facts`` (JSON: spec, layers, dim, frame_rate, sample_rate) for ``cached_facts``."""
    import os
    import tempfile

    path = _facts_path(cfg)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(facts, handle, sort_keys=True)
    os.replace(tmp, path)
