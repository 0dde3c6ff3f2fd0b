"""Tiny, seeded, randomly initialised Whisper and W2V-BERT models saved like real checkpoints.

Tests, the demo and CPU benchmarks need the real transformers classes without network access. These folders
hold a small ``WhisperModel`` / ``Wav2Vec2BertModel`` written with ``save_pretrained`` next to the real
feature extractors' configs, so they load exactly as the real checkpoints do (``from_pretrained``).
They are built once under ``alarm_cache_dir()`` (written to a temporary folder, then renamed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alarm.pipeline.cache import build_once

# Part of the folder name, so a change of the tiny configs below builds a new folder.
TINY_VERSION = "1"


def build_tiny_once(name: str, write: Callable[[Path], None]) -> Path:
    """Build ``name`` once into the model cache (the name carries the builder's version)."""
    return build_once(name, {"kind": name}, write)


def build_tiny_whisper() -> Path:
    """A folder with a tiny ``WhisperModel`` (128 mel bins, 30 s windows, 4 encoder layers) and its extractor."""

    def write(path: Path) -> None:
        import torch
        from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

        torch.manual_seed(0)
        config = WhisperConfig(vocab_size=64, num_mel_bins=128, d_model=32, encoder_layers=4,
                               encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
                               decoder_attention_heads=2, decoder_ffn_dim=64, max_source_positions=1500,
                               max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                               decoder_start_token_id=1)
        WhisperModel(config).save_pretrained(path)
        WhisperFeatureExtractor(feature_size=128).save_pretrained(path)

    return build_tiny_once(f"tiny-whisper-v{TINY_VERSION}", write)


def build_tiny_w2vbert() -> Path:
    """A folder with a tiny ``Wav2Vec2BertModel`` (5 conformer layers) and its SeamlessM4T extractor."""

    def write(path: Path) -> None:
        import torch
        from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

        torch.manual_seed(0)
        config = Wav2Vec2BertConfig(hidden_size=32, num_hidden_layers=5, num_attention_heads=2,
                                    intermediate_size=64, output_hidden_size=32, feature_projection_input_dim=160,
                                    position_embeddings_type="relative_key", conv_depthwise_kernel_size=7,
                                    add_adapter=False)
        Wav2Vec2BertModel(config).save_pretrained(path)
        SeamlessM4TFeatureExtractor().save_pretrained(path)

    return build_tiny_once(f"tiny-w2vbert-v{TINY_VERSION}", write)
