"""Spectral front ends in torch (no torchaudio): Kaldi-style fbank and a torchaudio-style dB mel spectrogram.

* ``kaldi_fbank`` follows Kaldi's ``compute-fbank-feats`` definition (25 ms frames every 10 ms without centring,
  per-frame DC removal, pre-emphasis 0.97, a Hanning or Povey window, zero padding to 512 points, power spectrum,
  triangular filters equally spaced on Kaldi's mel scale ``1127 ln(1 + f/700)`` from 20 Hz to Nyquist, natural
  log floored at float32 epsilon). SSLAM uses it with 128 bins and a Hanning window on the raw float wave;
  W2V-BERT's SeamlessM4T extractor uses 80 bins and a Povey window on the wave scaled to 16-bit range.
* ``seamless_fbank`` is that SeamlessM4T feature (per-utterance normalisation and stacking of two frames),
  batched on any device; tests check it against transformers' ``SeamlessM4TFeatureExtractor``.
* ``mel_db`` is MuQ's front end (torchaudio ``MelSpectrogram`` + ``AmplitudeToDB`` defaults: centred reflect-padded
  STFT, periodic Hann window, power 2, HTK mel filters without normalisation, ``10 log10(max(x, 1e-10))``).

All functions take batched float waves ``(batch, samples)`` and return ``(batch, frames, bins)`` unless noted.
"""

from __future__ import annotations

import math

import torch

FLOAT32_EPS = torch.finfo(torch.float32).eps


def kaldi_mel_scale(freq: torch.Tensor | float) -> torch.Tensor:
    """Kaldi's mel scale, ``1127 ln(1 + f / 700)``."""
    return 1127.0 * torch.log1p(torch.as_tensor(freq, dtype=torch.float64) / 700.0)


def kaldi_mel_banks(num_bins: int, fft_size: int, sample_rate: int, low_freq: float = 20.0,
                    high_freq: float = 0.0) -> torch.Tensor:
    """Kaldi's triangular mel filters, ``(num_bins, fft_size // 2 + 1)`` float32 (last FFT bin gets weight 0).

    Filters are triangles in the mel domain between equally spaced mel points; ``high_freq <= 0`` means
    Nyquist plus ``high_freq`` (Kaldi's convention).
    """
    nyquist = sample_rate / 2.0
    high = high_freq if high_freq > 0 else nyquist + high_freq
    if not 0.0 <= low_freq < high <= nyquist:
        raise ValueError(f"bad mel range {low_freq}..{high} Hz for sample rate {sample_rate}")
    mel_low, mel_high = kaldi_mel_scale(low_freq), kaldi_mel_scale(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins, dtype=torch.float64).unsqueeze(1)
    left, center, right = mel_low + index * delta, mel_low + (index + 1) * delta, mel_low + (index + 2) * delta
    fft_mel = kaldi_mel_scale(sample_rate / fft_size * torch.arange(fft_size // 2, dtype=torch.float64))
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1)).float()


def frame_window(kind: str, length: int) -> torch.Tensor:
    """A symmetric analysis window: ``hanning`` (Hann, not periodic) or ``povey`` (Hann to the power 0.85)."""
    hann = torch.hann_window(length, periodic=False, dtype=torch.float64)
    if kind == "hanning":
        return hann.float()
    if kind == "povey":
        return hann.pow(0.85).float()
    raise ValueError(f"unknown window {kind!r}; use 'hanning' or 'povey'")


def kaldi_num_frames(num_samples: int, frame_length: int = 400, frame_shift: int = 160) -> int:
    """Frames Kaldi computes for ``num_samples`` (``snip_edges``: only whole frames)."""
    return 0 if num_samples < frame_length else 1 + (num_samples - frame_length) // frame_shift


def kaldi_fbank(waves: torch.Tensor, num_mel_bins: int = 128, sample_rate: int = 16000, window: str = "hanning",
                frame_length: int = 400, frame_shift: int = 160, preemphasis: float = 0.97,
                low_freq: float = 20.0, high_freq: float = 0.0) -> torch.Tensor:
    """Log mel filterbank energies as Kaldi defines them (no dither, no energy term).

    Args:
        waves: ``(batch, samples)`` float waves, all the same length.
        num_mel_bins: Number of triangular filters.
        sample_rate: Sample rate in Hz.
        window: ``hanning`` or ``povey``.
        frame_length: Samples per frame (25 ms at 16 kHz).
        frame_shift: Samples between frames (10 ms at 16 kHz).
        preemphasis: Pre-emphasis coefficient (the first sample of a frame is pre-emphasised against itself).
        low_freq: Lowest filter edge in Hz.
        high_freq: Highest filter edge in Hz; ``<= 0`` is relative to Nyquist.

    Returns:
        ``(batch, frames, num_mel_bins)`` float32, ``frames = kaldi_num_frames(samples)``.
    """
    waves = waves.float()
    frames = kaldi_num_frames(waves.shape[-1], frame_length, frame_shift)
    if frames == 0:
        return waves.new_zeros((waves.shape[0], 0, num_mel_bins))
    x = waves.unfold(-1, frame_length, frame_shift)  # (batch, frames, frame_length)
    x = x - x.mean(dim=-1, keepdim=True)
    if preemphasis:
        previous = torch.cat([x[..., :1], x[..., :-1]], dim=-1)
        x = x - preemphasis * previous
    fft_size = 1 << max(0, math.ceil(math.log2(frame_length)))
    win, banks = _fbank_tables(window, frame_length, num_mel_bins, fft_size, sample_rate, low_freq, high_freq,
                               x.device)
    power = torch.fft.rfft(x * win, n=fft_size).abs().pow(2)
    return torch.clamp(power @ banks.T, min=FLOAT32_EPS).log()


_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _fbank_tables(window: str, frame_length: int, num_mel_bins: int, fft_size: int, sample_rate: int,
                  low_freq: float, high_freq: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Window and mel filters on ``device``, built once per setting (an encoder calls fbank per window)."""
    key = (window, frame_length, num_mel_bins, fft_size, sample_rate, low_freq, high_freq, str(device))
    if key not in _TABLES:
        with torch.device("cpu"):  # never cache tensors built under a meta-device context
            tables = (frame_window(window, frame_length),
                      kaldi_mel_banks(num_mel_bins, fft_size, sample_rate, low_freq, high_freq))
        _TABLES[key] = (tables[0].to(device), tables[1].to(device))
    return _TABLES[key]


def seamless_fbank(waves: list[torch.Tensor], stride: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """SeamlessM4T / W2V-BERT input features for a batch of variable-length 16 kHz waves.

    Per wave: 80-bin Povey-window Kaldi fbank of the wave in 16-bit range, normalised per mel bin over its
    own frames (mean, unbiased variance + 1e-7); then the batch is zero-padded to a multiple of ``stride``
    frames and ``stride`` consecutive frames are stacked, as ``SeamlessM4TFeatureExtractor`` does.

    Returns:
        ``(features (batch, stacked, 80 * stride), attention_mask (batch, stacked))``; wave ``i`` has
        ``frames_i // stride`` valid stacked frames.
    """
    feats = []
    for wave in waves:
        f = kaldi_fbank(wave.float().reshape(1, -1) * 32768.0, num_mel_bins=80, window="povey")[0]
        f = (f - f.mean(0, keepdim=True)) / torch.sqrt(f.var(0, keepdim=True, unbiased=True) + 1e-7)
        feats.append(f)
    lengths = [f.shape[0] for f in feats]
    # The extractor pads the batch to a multiple of the stride; a half-filled last pair is masked out.
    usable = -(-max(lengths) // stride) * stride
    device = waves[0].device
    batch = torch.zeros((len(feats), usable, 80), device=device)
    for i, f in enumerate(feats):
        batch[i, : f.shape[0]] = f
    batch = batch[:, :usable].reshape(len(feats), usable // stride, 80 * stride)
    mask = torch.tensor([[1 if (k + 1) * stride <= n else 0 for k in range(usable // stride)] for n in lengths],
                        dtype=torch.long, device=device)
    return batch, mask


def htk_mel_banks(num_bins: int, n_fft: int, sample_rate: int, f_min: float = 0.0,
                  f_max: float | None = None) -> torch.Tensor:
    """Triangular filters on the HTK mel scale without area normalisation, ``(n_fft // 2 + 1, num_bins)``.

    This is the layout torchaudio's ``MelScale`` stores in its ``fb`` buffer (MuQ's checkpoint holds it).
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1, dtype=torch.float64)

    def to_mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    mel_points = torch.linspace(to_mel(f_min), to_mel(f_max), num_bins + 2, dtype=torch.float64)
    f_points = 700.0 * (10 ** (mel_points / 2595.0) - 1.0)
    f_diff = f_points[1:] - f_points[:-1]
    slopes = f_points.unsqueeze(0) - freqs.unsqueeze(1)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).float()


def mel_db(waves: torch.Tensor, window: torch.Tensor, mel_fb: torch.Tensor, hop_length: int) -> torch.Tensor:
    """Centred power mel spectrogram in dB, ``(batch, n_mels, 1 + samples // hop)`` (torchaudio's layout).

    Args:
        waves: ``(batch, samples)`` float waves.
        window: The STFT window (its length is the FFT size).
        mel_fb: ``(n_fft // 2 + 1, n_mels)`` filters (``htk_mel_banks`` or a checkpoint's ``fb`` buffer).
        hop_length: Samples between frames.
    """
    n_fft = window.shape[0]
    spec = torch.stft(waves.float(), n_fft, hop_length=hop_length, win_length=n_fft, window=window.float(),
                      center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    power = spec.abs().pow(2)  # (batch, freqs, frames)
    mel = torch.matmul(power.transpose(-1, -2), mel_fb.float()).transpose(-1, -2)
    return 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
