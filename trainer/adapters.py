"""Per-encoder adapters (docs/method.md §3): raw cached hidden states -> vectors of the LLM's width.

Every adapter starts with a softmax-weighted average over the encoder's kept layers (one scalar per
layer, initialised 0, so training starts from the plain mean). Then:

* ``ConvAdapter`` (whisper, w2vbert, sslam): Linear(dim->1024) (identity when dim is 1024), pad time
  to even, Conv1d(1024->2048, k3, s1, p1), GELU, norm, Conv1d(2048->1024, k4, s2, p1), GELU, norm,
  Linear(1024->llm_dim). 50 Hz in, 25 Hz out: ``adapter_output_length(T) = ceil(T / 2)``.
* ``MLPAdapter`` (muq, already 25 Hz): Linear, GELU, Linear, GELU, Linear(->llm_dim).
* ``AverageAdapter`` (the inputs of ALARM-P's Perceivers): the layer average only.

Padding is handled explicitly: frames beyond a row's length are zeroed before every time-mixing
op, exactly as the zero padding of a lone example would be, so a padded batch gives each row the
same output as running it alone (in eval mode). The BatchNorm computes its training statistics over
valid frames only, for the same reason.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AdapterOutput(NamedTuple):
    """An adapter's result: ``values (B, T', D)`` zero beyond ``lengths (B,)``."""

    values: Tensor
    lengths: Tensor


def adapter_output_length(frames: Tensor | int, downsamples: bool = True) -> Tensor | int:
    """Output vectors for ``frames`` input frames: ``ceil(frames / 2)`` for the stride-2 downsampler.

    The input is padded to an even length and the k4/s2/p1 conv maps ``2n`` frames to ``n``.
    (The original release counts ``frames // 2`` valid outputs; we keep the half-covered last one.)
    """
    return (frames + 1) // 2 if downsamples else frames


def frame_mask(lengths: Tensor, size: int) -> Tensor:
    """``(B, size)`` bool mask, True for the valid frames ``< lengths``."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def check_lengths(lengths: Tensor, frames: int, what: str) -> None:
    """Refuse lengths outside ``[1, frames]``: a zero-length row would make attention undefined."""
    if lengths.ndim != 1:
        raise ValueError(f"{what}: lengths must be 1-D (B,), got shape {tuple(lengths.shape)}")
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > frames):
        raise ValueError(f"{what}: lengths must be in [1, {frames}] (the padded time axis), got "
                         f"{lengths.tolist()}")


class LayerAverage(nn.Module):
    """Softmax-weighted average over the kept layers: ``(B, T, L, D) -> (B, T, D)``."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.layer_weights = nn.Parameter(torch.zeros(layers))

    def forward(self, feats: Tensor) -> Tensor:
        if feats.ndim != 4 or feats.shape[2] != self.layer_weights.numel():
            raise ValueError(f"features must be (B, T, {self.layer_weights.numel()} layers, dim), "
                             f"got shape {tuple(feats.shape)}")
        weights = torch.softmax(self.layer_weights, dim=0)
        # Cached features are float16/bfloat16: average in the weights' precision.
        return torch.einsum("btld,l->btd", feats.to(weights.dtype), weights)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` over ``(B, C, T)`` whose training statistics skip padded frames.

    Same parameters and buffers as ``nn.BatchNorm1d`` (so checkpoints and the converter see the
    standard names); eval mode is exactly ``nn.BatchNorm1d``.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if not self.training or mask is None:
            return super().forward(x)
        valid = mask[:, None, :].to(torch.float32)
        count = valid.sum()
        x32 = x.float()
        mean = (x32 * valid).sum(dim=(0, 2)) / count
        var = ((x32 - mean[None, :, None]) ** 2 * valid).sum(dim=(0, 2)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        y = (x32 - mean[None, :, None]) * torch.rsqrt(var[None, :, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None] + self.bias[None, :, None]
        return y.to(x.dtype)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a ``(B, C, T)`` tensor (per frame, so padding cannot leak)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class ConvAdapter(nn.Module):
    """Layer average, projection, stride-2 conv downsampler and projection to the LLM width."""

    downsamples = True

    def __init__(self, layers: int, in_dim: int, dim: int, hidden_dim: int, out_dim: int, norm: str) -> None:
        super().__init__()
        if norm not in ("batch", "layer"):
            raise ValueError(f"norm must be 'batch' or 'layer', got {norm!r}")
        norm_cls = MaskedBatchNorm1d if norm == "batch" else ChannelLayerNorm
        self.average = LayerAverage(layers)
        self.proj_in = nn.Linear(in_dim, dim) if in_dim != dim else nn.Identity()
        self.conv1 = nn.Conv1d(dim, hidden_dim, kernel_size=3, stride=1, padding=1)
        self.norm1 = norm_cls(hidden_dim)
        self.conv2 = nn.Conv1d(hidden_dim, dim, kernel_size=4, stride=2, padding=1)
        self.norm2 = norm_cls(dim)
        self.proj_out = nn.Linear(dim, out_dim)

    def forward(self, feats: Tensor, lengths: Tensor) -> AdapterOutput:
        """``(B, T, L, D)`` features and ``(B,)`` lengths -> ``(B, ceil(T/2), out_dim)``."""
        check_lengths(lengths, feats.shape[1], "conv adapter")
        x = self.proj_in(self.average(feats))
        frames = x.shape[1] + x.shape[1] % 2
        x = F.pad(x, (0, 0, 0, frames - x.shape[1]))
        # Zero what a lone example would see as zero: its padding and the even-length pad frame.
        x = x * frame_mask(lengths, frames)[..., None].to(x.dtype)
        even_mask = frame_mask(lengths + lengths % 2, frames)
        x = self.norm1(F.gelu(self.conv1(x.transpose(1, 2))), even_mask)
        x = x * even_mask[:, None, :].to(x.dtype)
        out_lengths = adapter_output_length(lengths)
        out_mask = frame_mask(out_lengths, frames // 2)
        x = self.norm2(F.gelu(self.conv2(x)), out_mask)
        x = self.proj_out(x.transpose(1, 2))
        return AdapterOutput(x * out_mask[..., None].to(x.dtype), out_lengths)


class MLPAdapter(nn.Module):
    """Layer average and a three-layer MLP to the LLM width (muq; keeps its 25 Hz rate)."""

    downsamples = False

    def __init__(self, layers: int, in_dim: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.average = LayerAverage(layers)
        self.fc1 = nn.Linear(in_dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.proj_out = nn.Linear(dim, out_dim)

    def forward(self, feats: Tensor, lengths: Tensor) -> AdapterOutput:
        check_lengths(lengths, feats.shape[1], "mlp adapter")
        x = F.gelu(self.fc2(F.gelu(self.fc1(self.average(feats)))))
        x = self.proj_out(x)
        return AdapterOutput(x * frame_mask(lengths, x.shape[1])[..., None].to(x.dtype), lengths)


class AverageAdapter(nn.Module):
    """Only the layer average: the input of an ALARM-P Perceiver (raw width, native rate)."""

    downsamples = False

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.average = LayerAverage(layers)

    def forward(self, feats: Tensor, lengths: Tensor) -> AdapterOutput:
        check_lengths(lengths, feats.shape[1], "average adapter")
        x = self.average(feats)
        return AdapterOutput(x * frame_mask(lengths, x.shape[1])[..., None].to(x.dtype), lengths)
