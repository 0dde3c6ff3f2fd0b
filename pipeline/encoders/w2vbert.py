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


RELATIVE_KEY_ROWS = 128
"""Query rows per step of ``relative_key_by_rows`` (its working set is ``rows x keys x head_size``)."""
LIBRARY_RELATIVE_KEY: dict[str, Any] = {}
"""The library function that ``use_relative_key_by_rows`` replaced (``"function"``), for the tests."""


def relative_key_by_rows(module: Any, query: Any, key: Any) -> tuple[Any, Any]:
    """transformers' ``relative_key`` position bias of W2V-BERT, computed ``RELATIVE_KEY_ROWS`` query rows at a time.

    The library gathers one ``(queries, keys, head_size)`` tensor of distance embeddings per layer and
    contracts it in one ``einsum``: 144 MB for a 30 s window of the tiny model, 576 MB at full size,
    before the einsum's own copies. Here the same ``einsum`` runs on row blocks of that tensor and writes
    into the bias, so each bias element comes from the same dot product over the same operands:
    bit-identical (``tests/test_encoders.py`` checks it against the library function), and faster.
    Proven on the CPU only: on other devices the library's own function runs (a GPU library may pick
    another kernel for another batch count).
    """
    import torch

    if query.device.type != "cpu" and "function" in LIBRARY_RELATIVE_KEY:
        return LIBRARY_RELATIVE_KEY["function"](module, query, key)
    queries, keys = query.shape[2], key.shape[2]
    left, right = module.left_max_position_embeddings, module.right_max_position_embeddings
    cols = torch.arange(keys, dtype=torch.long, device=query.device).view(1, -1)
    bias = query.new_empty(*query.shape[:2], queries, keys)
    for start in range(0, queries, RELATIVE_KEY_ROWS):
        stop = min(queries, start + RELATIVE_KEY_ROWS)
        rows = torch.arange(start, stop, dtype=torch.long, device=query.device).view(-1, 1)
        distance = torch.clamp(cols - rows, -left, right)
        embedding = module.distance_embedding(distance + left).to(dtype=query.dtype)
        bias[:, :, start:stop] = torch.einsum("bhld,lrd->bhlr", query[:, :, start:stop], embedding)
    return query, bias.mul_(module.scaling)


def use_relative_key_by_rows() -> None:
    """Make transformers' W2V-BERT attention use ``relative_key_by_rows`` (same values, a fraction of the memory).

    The library's attention calls its module-level ``_apply_relative_key_position_encoding``; a release
    without it keeps its own code.
    """
    from transformers.models.wav2vec2_bert import modeling_wav2vec2_bert as library

    current = getattr(library, "_apply_relative_key_position_encoding", None)
    if current is not None and current is not relative_key_by_rows:
        LIBRARY_RELATIVE_KEY.setdefault("function", current)
        library._apply_relative_key_position_encoding = relative_key_by_rows


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
    use_relative_key_by_rows()
    layers = default_layers(info, cfg, module.config.num_hidden_layers + 1)
    model = W2VBertWindows(module, extractor, layers, cfg.device, cfg.dtype, window_samples(info, cfg))
    return WindowedEncoder(info, cfg, layers, module.config.hidden_size, model, checkpoint)
