"""MuQ (OpenMuQ/MuQ-large-msd-iter): a dB mel front end, a 2-D conv subsampler and a rotary Conformer.

Our own implementation of the architecture of the ``muq`` package (which we do not install). Parameter names
follow its checkpoint (``MuQ.model`` = ``MuQModel``): ``model.preprocessor_melspec_2048.mel_stft.*`` (the STFT
window and mel filters, kept as buffers; derived when a checkpoint lacks them, as the reference's saves do),
``model.conv`` (two residual 2-D conv blocks + a linear projection), ``model.conformer`` (transformers'
``Wav2Vec2ConformerEncoder`` names: ``layers.N.ffn1`` ..., ``pos_conv_embed``, ``layer_norm``), the pre-training
heads ``model.linear``, ``model.cls_token`` and the target quantizer, so ``load_muq`` loads the real weights with
strict key checks.

Forward (MuQ ``get_predictions``): 24 kHz wave -> centred 2048-point STFT every 240 samples, 128 HTK mel bins,
``10 log10`` (last frame dropped) -> ``(x - mean) / std`` with the checkpoint's statistics -> conv subsampling
by 4 in time (25 Hz) -> Conformer. Hidden state ``i`` is the input of layer ``i + 1`` (0 = conv output) and the
last one is the final LayerNorm's output, as transformers 4.x returns them; ALARM keeps 4, 8, 12.

Batching pads windows in the batch, so every layer that mixes time is masked exactly as a shorter input would be
zero-padded (conv hidden maps, the depthwise conv input, attention keys); results equal one-window calls.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alarm.pipeline.encoders.base import (
    Encoder,
    EncoderInfo,
    EncoderSettings,
    default_layers,
    preset_module,
    read_checkpoint,
    torch_dtype,
    window_samples,
)
from alarm.pipeline.encoders.muq_frontend import N_FFT, SAMPLE_RATE
from alarm.pipeline.encoders.muq_model import Conformer, MuQ, MuQConfig
from alarm.pipeline.encoders.tiny import build_tiny_once
from alarm.pipeline.encoders.windows import WindowedEncoder

# The network's pieces, read through this module by tests and tools.
__all__ = ["N_FFT", "SAMPLE_RATE", "TINY_CONFIG", "Conformer", "MuQ", "MuQConfig", "MuQWindows",
           "build_muq_encoder", "build_tiny_muq", "load_muq", "save_muq"]


# ------------------------------------------------------------------------------------------ loading


def _rename_legacy_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Map old ``weight_g``/``weight_v`` weight-norm names to ``parametrizations.weight.original0/1``."""
    out = {}
    for key, value in state.items():
        for old, new in ((".weight_g", ".parametrizations.weight.original0"),
                         (".weight_v", ".parametrizations.weight.original1")):
            if key.endswith(old) and key not in expected and key[: -len(old)] + new in expected:
                key = key[: -len(old)] + new
        out[key] = value
    return out


# Buffers that are fixed functions of the config, filled in when a checkpoint lacks them. The reference code keeps
# its mel front end in a plain class, not an ``nn.Module``, so the checkpoints it saves have no STFT window and no
# mel filters; transformers versions that did not persist ``inv_freq`` leave out the rotary frequencies.
DERIVED_BUFFERS = (
    "model.preprocessor_melspec_2048.mel_stft.spectrogram.window",
    "model.preprocessor_melspec_2048.mel_stft.mel_scale.fb",
    "model.conformer.embed_positions.inv_freq",
)


def load_muq(path_or_hf_id: str | Path) -> MuQ:
    """Load MuQ from a local folder or the local HF cache (offline), with strict key checking.

    The buffers in ``DERIVED_BUFFERS`` (Hann window, HTK mel filters, rotary frequencies) are computed from the
    config when the checkpoint lacks them, as the reference implementation's own saves do; a checkpoint that has
    them keeps its values. Every other key must match exactly.

    Raises:
        FileNotFoundError: Not available offline, or no config/weights in the folder.
        RuntimeError: The weights do not match the architecture (missing/unexpected keys or shapes).
    """
    config, weights = read_checkpoint(path_or_hf_id)
    module = MuQ(MuQConfig.from_json(config))
    own = module.state_dict()
    state = _rename_legacy_keys(weights, set(own))
    for key in DERIVED_BUFFERS:
        state.setdefault(key, own[key])
    module.load_state_dict(state, strict=True)
    return module.eval()


def save_muq(module: MuQ, folder: Path) -> None:
    """Write ``config.json`` + ``model.safetensors`` in the checkpoint's layout."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(asdict(module.config), indent=2))
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "model.safetensors"))


TINY_CONFIG = MuQConfig(codebook_size=32, conv_dim=8, encoder_dim=32, encoder_depth=4,
                        w2v2_config={"num_attention_heads": 2, "intermediate_size": 64,
                                     "conv_depthwise_kernel_size": 7, "num_conv_pos_embeddings": 16,
                                     "num_conv_pos_embedding_groups": 4})


def build_tiny_muq() -> Path:
    """A cached folder with a seeded random tiny MuQ (4 Conformer layers, width 32), loadable by ``load_muq``."""

    def write(path: Path) -> None:
        torch.manual_seed(0)
        module = MuQ(TINY_CONFIG)
        # Random BatchNorm statistics, so the tests exercise them (fresh ones are the identity).
        for bn in module.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                bn.running_mean.normal_(0, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
        save_muq(module, path)

    return build_tiny_once("tiny-muq-v1", write)


# ------------------------------------------------------------------------------------------ encoder


class MuQWindows:
    """Window model for ``WindowedEncoder``: 30 s windows cut to whole 40 ms frames (``n // 960``)."""

    def __init__(self, module: MuQ, layers: tuple[int, ...], device: str, dtype: torch.dtype, window: int) -> None:
        self.module = module
        self.layers = layers
        self.device = device
        self.dtype = dtype
        self.samples_per_frame = module.config.hop_length * 4
        self.window_samples = window - window % self.samples_per_frame
        self.hop_samples = self.window_samples

    def window_frames(self, num_samples: int) -> int:
        """25 Hz frames: whole 960-sample steps; none when the mel's centred STFT cannot run.

        The STFT reflect-pads ``N_FFT // 2`` samples on each side, which needs more samples than that,
        so a window whose whole steps hold at most 1024 samples (one 40 ms frame) gives no frame.
        """
        frames = num_samples // self.samples_per_frame
        return frames if frames * self.samples_per_frame > N_FFT // 2 else 0

    def spec_extra(self) -> dict[str, Any]:
        """Front-end settings that determine the outputs."""
        cfg = self.module.config
        return {"preprocessing": {"features": "mel-db", "n_fft": N_FFT, "hop_length": cfg.hop_length,
                                  "n_mels": cfg.n_mels, "stat": cfg.stat, "trim_to_multiple_of":
                                  self.samples_per_frame}}

    def forward(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """Encode a batch; mels are computed per window, zero-padded and masked (exact batching)."""
        mels = []
        for w in windows:
            usable = self.window_frames(len(w)) * self.samples_per_frame
            wave = torch.from_numpy(w[:usable]).to(self.device)
            mels.append(self.module.mel(wave.reshape(1, -1))[0])
        longest = max(m.shape[-1] for m in mels)
        batch = torch.zeros((len(mels), mels[0].shape[0], longest), device=self.device)
        mask = torch.zeros((len(mels), longest), dtype=torch.bool, device=self.device)
        for i, m in enumerate(mels):
            batch[i, :, : m.shape[-1]] = m
            mask[i, : m.shape[-1]] = True
        with torch.inference_mode():
            states = self.module(batch.to(self.dtype), None if bool(mask.all()) else mask)
        stacked = torch.stack([states[i] for i in self.layers], dim=2).float().cpu().numpy()
        return [stacked[b, : self.window_frames(len(w))] for b, w in enumerate(windows)]


def build_muq_encoder(cfg: EncoderSettings, info: EncoderInfo) -> Encoder:
    """Build the ``muq`` registry entry (see ``pipeline.encoders``)."""
    module, checkpoint = preset_module(cfg, info, lambda: MuQ(MuQConfig()), build_tiny_muq, load_muq)
    dtype = torch_dtype(cfg.dtype)
    # The mel front end stays float32 (its buffers too); only the network runs in the compute dtype.
    module = module.to(cfg.device).eval()
    module.model.conv.to(dtype)
    module.model.conformer.to(dtype)
    layers = default_layers(info, cfg, module.config.encoder_depth + 1)
    model = MuQWindows(module, layers, cfg.device, dtype, window_samples(info, cfg))
    return WindowedEncoder(info, cfg, layers, module.config.encoder_dim, model, checkpoint)
