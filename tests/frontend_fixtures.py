"""Tiny front-end configs and padded feature batches shared by the adapter, fusion and convert tests."""

from __future__ import annotations

import torch

from alarm.trainer.frontend import AudioFrontEnd, EncoderShape, FrontEndConfig, build_frontend

# Tiny shapes with the real structure (conv_hidden_dim = 2 x adapter_dim as in the release): whisper's dim differs from adapter_dim (Linear in), w2vbert's
# equals it (identity), sslam is narrower, muq gets the MLP.
TINY_ENCODERS = [EncoderShape("whisper", 2, 12), EncoderShape("w2vbert", 3, 8),
                 EncoderShape("muq", 2, 8), EncoderShape("sslam", 2, 6)]
TINY_SIZES = {"llm_dim": 16, "adapter_dim": 8, "conv_hidden_dim": 16, "ca_dim": 8, "ca_heads": 2,
              "ca_ffn_dim": 16, "perceiver_latents": 3, "perceiver_dim": 8, "perceiver_heads": 2,
              "perceiver_layers": 2, "perceiver_repeats": 2}
# Raw-feature lengths per encoder of a two-row batch: odd and even lengths, muq at 25 Hz, and a
# stream one vector longer/shorter than whisper (as happens with real encoders' rounding).
TINY_LENGTHS = {"whisper": [11, 6], "w2vbert": [11, 6], "muq": [6, 3], "sslam": [10, 7]}


def tiny_config(fusion: str = "ca", names: list[str] | None = None) -> FrontEndConfig:
    """A tiny config with all four encoders (or ``names``)."""
    encoders = [e for e in TINY_ENCODERS if names is None or e.name in names]
    return FrontEndConfig(encoders=encoders, fusion=fusion, **TINY_SIZES)


def tiny_frontend(fusion: str = "ca", names: list[str] | None = None, seed: int = 0) -> AudioFrontEnd:
    """A seeded tiny front end in eval mode, with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    frontend = build_frontend(tiny_config(fusion, names)).eval()
    with torch.no_grad():
        for module in frontend.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
                module.bias.normal_()
    return frontend


def tiny_batch(frontend: AudioFrontEnd, seed: int = 1) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Padded random features (padding filled with noise, which must not matter) and lengths."""
    generator = torch.Generator().manual_seed(seed)
    feats, lengths = {}, {}
    for shape in frontend.cfg.encoders:
        rows = TINY_LENGTHS[shape.name]
        feats[shape.name] = torch.randn(len(rows), max(rows), shape.layers, shape.dim, generator=generator)
        lengths[shape.name] = torch.tensor(rows)
    return feats, lengths


def row(feats: dict[str, torch.Tensor], lengths: dict[str, torch.Tensor], b: int):
    """Row ``b`` of a batch, cut to its own lengths (what a batch of one would hold)."""
    return ({k: v[b:b + 1, : int(lengths[k][b])] for k, v in feats.items()},
            {k: v[b:b + 1] for k, v in lengths.items()})
