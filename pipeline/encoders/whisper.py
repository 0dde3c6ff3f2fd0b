"""Whisper's encoder (openai/whisper-large-v3): 30 s log-mel windows, 50 Hz hidden states."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.encoders.base import (
    Encoder,
    EncoderInfo,
    EncoderSettings,
    default_layers,
    resolve_checkpoint_dir,
    stack_layers,
    torch_dtype,
)
from alarm.pipeline.encoders.tiny import build_tiny_whisper
from alarm.pipeline.encoders.windows import WindowedEncoder


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


def build_whisper(cfg: EncoderSettings, info: EncoderInfo) -> Encoder:
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
