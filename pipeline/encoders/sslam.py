"""SSLAM (ta012/SSLAM_AS2M_Finetuned): an EAT / data2vec-2 style ViT-B over 16x16 patches of a Kaldi fbank.

Our own implementation. Parameter names follow the released Hugging Face checkpoint (the EAT remote-code layout:
``model.local_encoder.proj``, ``model.extra_tokens``, ``model.fixed_positional_encoder.positions``,
``model.pre_norm``, ``model.blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, and for the fine-tuned
variant ``model.fc_norm`` and ``model.head``), so ``load_sslam`` loads the real weights with strict key checks.

Blocks are post-norm (``layer_norm_first`` false in the checkpoint): ``x = norm2(r + mlp(r))`` with
``r = norm1(x + attn(x))``. One extra (CLS) token is prepended after the fixed 2-D sin-cos positions are
added; ALARM keeps blocks 4, 8 and 12 with that token removed.

Preprocessing (EAT/SSLAM feature extraction): per window, subtract the wave's mean, Kaldi fbank with 128 bins,
Hanning window, 10 ms shift, no dither; zero-pad to 1024 frames; normalise ``(x + 4.268) / (4.569 * 2)``.
A 1024-frame window gives 64 x 8 patches = 512 tokens; ALARM keeps the first ``frames // 2`` (50 per second).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.encoders.base import (
    Encoder,
    EncoderInfo,
    EncoderSettings,
    default_layers,
    preset_module,
    read_checkpoint,
    torch_dtype,
)
from alarm.pipeline.encoders.features import kaldi_fbank, kaldi_num_frames
from alarm.pipeline.encoders.tiny import build_tiny_once
from alarm.pipeline.encoders.windows import WindowedEncoder

NORM_MEAN = -4.268
NORM_STD = 4.569
FBANK_SHIFT = 160
FBANK_LENGTH = 400
WINDOW_FRAMES = 1024


@dataclass
class SSLAMConfig:
    """The architecture, with the key names and defaults of the checkpoint's ``config.json`` (EATConfig)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 16
    stride: int = 16
    in_chans: int = 1
    mel_bins: int = 128
    max_length: int = 768
    num_classes: int = 527
    model_variant: str = "finetune"
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_first: bool = False
    norm_eps: float = 1e-6
    norm_affine: bool = True
    fixed_positions: bool = True

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads or self.embed_dim % 4:
            raise ConfigError(f"embed_dim {self.embed_dim} must divide by num_heads and by 4")
        if self.patch_size != self.stride or self.mel_bins % self.patch_size:
            raise ConfigError("SSLAM expects non-overlapping patches that tile the mel axis")
        if self.model_variant not in ("pretrain", "finetune"):
            raise ConfigError(f"model_variant must be 'pretrain' or 'finetune', got {self.model_variant!r}")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SSLAMConfig:
        """Build from a checkpoint's config.json; Hugging Face bookkeeping and dropout keys are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """``(len(positions), dim)`` sin-cos embedding (first half sines, second half cosines)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def patch_positions(dim: int, time_patches: int, freq_patches: int) -> torch.Tensor:
    """Fixed 2-D positions ``(1, time * freq, dim)`` for time-major patch order.

    As in the reference, the first half of the channels encodes the frequency-patch index and the second half
    the time-patch index.
    """
    freq, time = np.meshgrid(np.arange(freq_patches), np.arange(time_patches))
    emb = np.concatenate([sincos_1d(dim // 2, freq), sincos_1d(dim // 2, time)], axis=1)
    return torch.from_numpy(emb).float().unsqueeze(0)


class PatchEmbed(nn.Module):
    """16x16 non-overlapping patches of a ``(batch, 1, time, mel)`` image to ``(batch, patches, dim)``."""

    def __init__(self, cfg: SSLAMConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class FixedPositions(nn.Module):
    """Holds the fixed sin-cos table as a (frozen) parameter, as the checkpoint stores it."""

    def __init__(self, cfg: SSLAMConfig) -> None:
        super().__init__()
        table = patch_positions(cfg.embed_dim, cfg.max_length, cfg.mel_bins // cfg.patch_size)
        # Allocated on the current default device (meta included), then filled.
        self.positions = nn.Parameter(torch.zeros(table.shape), requires_grad=False)
        with torch.no_grad():
            self.positions.copy_(table)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Two-layer GELU MLP."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A transformer block, post-norm (the checkpoint's setting) or pre-norm."""

    def __init__(self, cfg: SSLAMConfig) -> None:
        super().__init__()
        self.layer_norm_first = cfg.layer_norm_first
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.mlp = Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        r = self.norm1(x + self.attn(x))
        return self.norm2(r + self.mlp(r))


class EATBackbone(nn.Module):
    """Patch embedding, fixed positions, one extra token, pre-norm and the transformer blocks."""

    def __init__(self, cfg: SSLAMConfig) -> None:
        super().__init__()
        self.local_encoder = PatchEmbed(cfg)
        self.extra_tokens = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.fixed_positional_encoder = FixedPositions(cfg) if cfg.fixed_positions else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.pre_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        if cfg.model_variant == "finetune":  # the AudioSet classifier head; unused for features
            self.fc_norm = nn.LayerNorm(cfg.embed_dim)
            self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """``(batch, 1, frames, mel)`` -> hidden states ``[embeddings, block 1, ..., block depth]`` (with CLS)."""
        x = self.local_encoder(image)
        if self.fixed_positional_encoder is not None:
            x = x + self.fixed_positional_encoder.positions[:, : x.shape[1]].to(x.dtype)
        x = torch.cat([self.extra_tokens.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = self.pre_norm(x)
        states = [x]
        for block in self.blocks:
            x = block(x)
            states.append(x)
        return states


class SSLAM(nn.Module):
    """The checkpoint's top-level module (its keys start with ``model.``)."""

    def __init__(self, cfg: SSLAMConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = EATBackbone(cfg)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.model(image)


# ------------------------------------------------------------------------------------------ loading


def load_sslam(path_or_hf_id: str | Path) -> SSLAM:
    """Load SSLAM from a local folder or the local HF cache (offline), with strict key checking.

    Raises:
        FileNotFoundError: Not available offline, or no config/weights in the folder.
        RuntimeError: The weights do not match the architecture (missing/unexpected keys or shapes).
    """
    config, state = read_checkpoint(path_or_hf_id)
    module = SSLAM(SSLAMConfig.from_json(config))
    module.load_state_dict(state, strict=True)
    return module.eval()


def save_sslam(module: SSLAM, folder: Path) -> None:
    """Write ``config.json`` + ``model.safetensors`` in the checkpoint's layout."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    data = {"architectures": ["EATModel"], "model_type": "eat", **asdict(module.config)}
    (folder / "config.json").write_text(json.dumps(data, indent=2))
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "model.safetensors"))


TINY_CONFIG = SSLAMConfig(embed_dim=32, depth=4, num_heads=2, max_length=64, num_classes=4)


def build_tiny_sslam() -> Path:
    """A cached folder with a seeded random tiny SSLAM (4 blocks, width 32), loadable by ``load_sslam``."""

    def write(path: Path) -> None:
        torch.manual_seed(0)
        save_sslam(SSLAM(TINY_CONFIG), path)

    return build_tiny_once("tiny-sslam-v1", write)


# ------------------------------------------------------------------------------------------ encoder


def sslam_image(wave: torch.Tensor, window_frames: int) -> torch.Tensor:
    """SSLAM's normalised ``(1, window_frames, 128)`` fbank image of one window (see the module docstring)."""
    fbank = kaldi_fbank((wave - wave.mean()).reshape(1, -1), num_mel_bins=128, window="hanning")[0]
    # Zero-padding happens before normalisation, as in the reference feature extraction.
    fbank = nn.functional.pad(fbank[:window_frames], (0, 0, 0, window_frames - min(window_frames, fbank.shape[0])))
    return ((fbank - NORM_MEAN) / (NORM_STD * 2)).unsqueeze(0)


class SSLAMWindows:
    """Window model for ``WindowedEncoder``: windows overlap by 240 samples so each has whole fbank frames."""

    def __init__(self, module: SSLAM, layers: tuple[int, ...], device: str, dtype: torch.dtype,
                 window_frames: int) -> None:
        self.module = module
        self.layers = layers
        self.device = device
        self.dtype = dtype
        self.frames = window_frames
        # Frame k covers samples [160k, 160k + 400): a window of F frames needs 160 (F - 1) + 400 samples and
        # the next window starts 160 F samples later, so windows hold exactly the clip's own fbank frames.
        self.window_samples = FBANK_SHIFT * (window_frames - 1) + FBANK_LENGTH
        self.hop_samples = FBANK_SHIFT * window_frames

    def window_frames(self, num_samples: int) -> int:
        """Tokens kept: half the window's fbank frames."""
        return kaldi_num_frames(num_samples) // 2

    def spec_extra(self) -> dict[str, Any]:
        """Front-end settings that determine the outputs."""
        return {"preprocessing": {"features": "kaldi-fbank", "n_mels": 128, "window": "hanning",
                                  "frame_shift_ms": 10, "dither": 0.0, "remove_mean": "per-window",
                                  "pad_frames": self.frames, "norm_mean": NORM_MEAN, "norm_std": NORM_STD}}

    def forward(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """Encode a batch of windows; every window is padded to the same frame count, so batching is exact."""
        images = torch.stack([sslam_image(torch.from_numpy(w).to(self.device), self.frames) for w in windows])
        with torch.inference_mode():
            states = self.module(images.to(self.dtype))
        stacked = torch.stack([states[i][:, 1:] for i in self.layers], dim=2).float().cpu().numpy()
        return [stacked[b, : self.window_frames(len(w))] for b, w in enumerate(windows)]


def build_sslam_encoder(cfg: EncoderSettings, info: EncoderInfo) -> Encoder:
    """Build the ``sslam`` registry entry (see ``pipeline.encoders``)."""
    frames = WINDOW_FRAMES
    if cfg.window_seconds is not None:
        frames = int(round(cfg.window_seconds * 100))
        if frames % 16 or frames <= 0:
            raise ConfigError(f"sslam window_seconds must give a multiple of 16 fbank frames (0.16 s steps), "
                              f"got {cfg.window_seconds}")
    module, checkpoint = preset_module(cfg, info, lambda: SSLAM(SSLAMConfig()), build_tiny_sslam, load_sslam)
    mcfg = module.config
    if frames // mcfg.patch_size > mcfg.max_length:
        raise ConfigError(f"sslam window of {frames} frames exceeds the model's {mcfg.max_length} time patches")
    dtype = torch_dtype(cfg.dtype)
    module = module.to(cfg.device, dtype).eval()
    layers = default_layers(info, cfg, mcfg.depth + 1)
    model = SSLAMWindows(module, layers, cfg.device, dtype, frames)
    return WindowedEncoder(info, cfg, layers, mcfg.embed_dim, model, checkpoint)
