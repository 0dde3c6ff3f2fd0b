"""W2V-BERT 2.0 (facebook/w2v-bert-2.0): SeamlessM4T fbank stacked to 50 Hz, a Conformer encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from alarm.pipeline.encoders.base import (
    Encoder,
    EncoderInfo,
    EncoderSettings,
    default_layers,
    resolve_checkpoint_dir,
    stack_layers,
    torch_dtype,
    window_samples,
)
from alarm.pipeline.encoders.tiny import build_tiny_w2vbert
from alarm.pipeline.encoders.windows import WindowedEncoder


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

        from alarm.pipeline.encoders.features import seamless_fbank

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


def build_w2vbert(cfg: EncoderSettings, info: EncoderInfo) -> Encoder:
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
