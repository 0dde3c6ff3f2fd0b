"""MuQ's front end: the dB mel spectrogram and the 2-D conv subsampler (see ``encoders.muq``).

Parameter names follow MuQ's checkpoint (``model.preprocessor_melspec_2048.mel_stft.*``, ``model.conv``).
"""

from __future__ import annotations

import torch
from torch import nn

from alarm.pipeline.encoders.features import htk_mel_banks, mel_db

SAMPLE_RATE = 24000
N_FFT = 2048


# ------------------------------------------------------------------------------------------ front end


class _Spectrogram(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT))


class _MelScale(nn.Module):
    def __init__(self, n_mels: int) -> None:
        super().__init__()
        self.register_buffer("fb", htk_mel_banks(n_mels, N_FFT, SAMPLE_RATE))


class _MelSpectrogram(nn.Module):
    def __init__(self, n_mels: int) -> None:
        super().__init__()
        self.spectrogram = _Spectrogram()
        self.mel_scale = _MelScale(n_mels)


class MelFrontEnd(nn.Module):
    """dB mel spectrogram; buffers named as torchaudio's ``MelSpectrogram`` inside MuQ's ``MelSTFT``."""

    def __init__(self, n_mels: int, hop_length: int) -> None:
        super().__init__()
        self.hop_length = hop_length
        self.mel_stft = _MelSpectrogram(n_mels)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` -> ``(batch, n_mels, samples // hop)`` (the last centred frame dropped)."""
        spec = mel_db(waves, self.mel_stft.spectrogram.window, self.mel_stft.mel_scale.fb, self.hop_length)
        return spec[..., :-1]


# ------------------------------------------------------------------------------------------ conv subsampling


def time_mask(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Downsample a ``(batch, time)`` validity mask to ``length`` steps (stride 2, as the convs do)."""
    if mask is None:
        return None
    while mask.shape[1] > length:
        mask = mask[:, ::2]
    return mask[:, :length]


class Res2dBlock(nn.Module):
    """Residual 3x3 conv block, stride ``(2, s)`` over ``(freq, time)``, batch-normed."""

    def __init__(self, idim: int, odim: int, stride: tuple[int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(idim, odim, 3, padding=1, stride=stride)
        self.bn1 = nn.BatchNorm2d(odim)
        self.conv2 = nn.Conv2d(odim, odim, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(odim)
        self.conv3 = nn.Conv2d(idim, odim, 3, padding=1, stride=stride)
        self.bn3 = nn.BatchNorm2d(odim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        m = time_mask(mask, h.shape[-1])
        if m is not None:  # a shorter input would see zero padding here
            h = h * m[:, None, None, :].to(h.dtype)
        return torch.relu(self.bn3(self.conv3(x)) + self.bn2(self.conv2(h)))


class ConvSubsampling(nn.Module):
    """Two residual blocks (time / 4, mel / 4) and a linear projection to the encoder width."""

    def __init__(self, conv_dim: int, encoder_dim: int, n_mels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(Res2dBlock(1, conv_dim, (2, 2)), Res2dBlock(conv_dim, conv_dim, (2, 2)))
        self.linear = nn.Linear(conv_dim * n_mels // 4, encoder_dim)

    def forward(self, mel: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``(batch, n_mels, time)`` -> ``(batch, time / 4, encoder_dim)``."""
        x = mel.unsqueeze(1)
        for block in self.conv:
            x = block(x, mask)
        b, c, f, t = x.shape
        return self.linear(x.permute(0, 3, 1, 2).reshape(b, t, c * f))
