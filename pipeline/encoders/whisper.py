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

        feats = log_mel(self.extractor, windows, str(self.device))
        with torch.inference_mode():
            out = self.module(feats.to(self.device, self.dtype), output_hidden_states=True)
        stacked = stack_layers(out.hidden_states, self.layers)
        return [stacked[b, : self.window_frames(len(w))] for b, w in enumerate(windows)]


MIN_MEL_FRAMES = 100
"""The fewest STFT frames ``log_mel`` computes (1 s of audio); see the comment where it is used."""


def log_mel(extractor: Any, windows: list[np.ndarray], device: str) -> Any:
    """The extractor's log-mel of 30 s zero-padded windows, computed over the frames that hold audio.

    Equal, bit for bit, to ``extractor(windows, padding="max_length")`` (``tests/test_encoders.py``
    checks it on clips of many lengths), at a fraction of the cost for short clips. STFT frame ``t``
    reads samples ``[t * hop - n_fft / 2, t * hop + n_fft / 2)`` of the padded window, so from frame
    ``t0``, the first past the longest window's audio, every frame reads zeros only: each gives the same
    column, and the whole window's maximum (the ``max - 8`` floor) is already among frames ``0..t0``.
    The STFT therefore runs on ``t0 * hop + n_fft / 2`` samples (its right-edge reflection then touches
    no kept frame) and column ``t0`` is repeated to the 3,000 frames the model expects.

    Returns:
        ``(batch, n_mels, n_samples // hop)`` float32 features on the CPU, as the extractor gives them.
    """
    import torch

    fe = extractor
    half, full_frames = fe.n_fft // 2, fe.n_samples // fe.hop_length
    first_silent = -(-(max(len(w) for w in windows) + half) // fe.hop_length)  # ceil
    # Never fewer than MIN_MEL_FRAMES columns: CPU matmul kernels for very narrow matrices (11 columns
    # or fewer, measured) round differently from the padded window's, and the values must not change.
    first_silent = max(first_silent, MIN_MEL_FRAMES)
    samples = first_silent * fe.hop_length + half
    if fe.dither != 0.0 or fe.padding_value != 0.0 or samples >= fe.n_samples or first_silent >= full_frames:
        # Random dither or non-zero padding would make the padded frames differ: the extractor's own path.
        return fe(windows, sampling_rate=fe.sampling_rate, padding="max_length", return_tensors="pt",
                  device=device).input_features
    # The same operations as WhisperFeatureExtractor._torch_extract_fbank_features (batched path).
    wave = np.zeros((len(windows), samples), np.float32)
    for b, w in enumerate(windows):
        wave[b, : len(w)] = w
    waveform = torch.from_numpy(wave).to(device, torch.float32)
    stft = torch.stft(waveform, fe.n_fft, fe.hop_length, window=torch.hann_window(fe.n_fft, device=device),
                      return_complex=True)
    magnitudes = (stft[..., : first_silent + 1].abs() ** 2).contiguous()
    mel_spec = torch.from_numpy(fe.mel_filters).to(device, torch.float32).T @ magnitudes
    log_spec = torch.clamp(mel_spec, min=1e-10).log10()
    max_val = log_spec.max(dim=2, keepdim=True)[0].max(dim=1, keepdim=True)[0]
    log_spec = (torch.maximum(log_spec, max_val - 8.0) + 4.0) / 4.0
    out = log_spec[..., first_silent:].expand(-1, -1, full_frames).clone()
    out[..., : first_silent + 1] = log_spec
    return out.cpu()


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
