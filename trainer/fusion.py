"""Fusion of several encoders' adapter outputs (docs/method.md §3): ALARM-CA and ALARM-P.

Both take ``name -> AdapterOutput`` from the adapters and return one ``AdapterOutput`` (the audio
span without the outer delimiters), zero beyond each row's length. Padded positions are excluded
by key-padding masks, so a padded batch gives each row what it gets alone (in eval mode).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alarm.trainer.adapters import AdapterOutput, frame_mask


class CrossAttentionFusion(nn.Module):
    """ALARM-CA: the main stream queries each other stream through one decoder layer per encoder.

    All streams are zero-padded to a common length and projected ``in_dim -> dim``; the main stream
    passes through a pre-norm ``nn.TransformerDecoderLayer`` per other encoder, in order
    (self-attention, cross-attention into that stream, GELU FFN; not causal); then ``dim -> out_dim``.
    No skip connection, no positional encoding. Both padding masks come from the main stream's
    lengths, as in the original release; positions of a shorter stream inside that range are its
    zero padding. Output: one vector per main-stream vector (25 per second).
    """

    def __init__(self, main: str, others: list[str], in_dim: int, dim: int, heads: int, ffn_dim: int,
                 dropout: float, out_dim: int) -> None:
        super().__init__()
        self.main = main
        self.others = list(others)
        self.extra_tokens = 0
        self.proj_in = nn.ModuleDict({name: nn.Linear(in_dim, dim) for name in [main, *others]})
        self.layers = nn.ModuleDict({
            name: nn.TransformerDecoderLayer(d_model=dim, nhead=heads, dim_feedforward=ffn_dim, dropout=dropout,
                                             activation="gelu", batch_first=True, norm_first=True)
            for name in others})
        self.proj_out = nn.Linear(dim, out_dim)

    def forward(self, adapted: dict[str, AdapterOutput]) -> AdapterOutput:
        missing = [name for name in [self.main, *self.others] if name not in adapted]
        if missing:
            raise KeyError(f"cross-attention fusion: adapter outputs missing for {missing}")
        frames = max(adapted[name].values.shape[1] for name in [self.main, *self.others])

        def stream(name: str) -> Tensor:
            values = adapted[name].values
            return self.proj_in[name](F.pad(values, (0, 0, 0, frames - values.shape[1])))

        lengths = adapted[self.main].lengths
        padding = ~frame_mask(lengths, frames)  # True = ignore, the nn.Transformer convention
        x = stream(self.main)
        for name in self.others:
            x = self.layers[name](x, stream(name), tgt_key_padding_mask=padding, memory_key_padding_mask=padding,
                                  tgt_is_causal=False, memory_is_causal=False)
        x = self.proj_out(x)
        return AdapterOutput(x * (~padding)[..., None].to(x.dtype), lengths)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/o projections (query and key widths may differ)."""

    def __init__(self, q_dim: int, kv_dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(q_dim, q_dim)
        self.k = nn.Linear(kv_dim, q_dim)
        self.v = nn.Linear(kv_dim, q_dim)
        self.o = nn.Linear(q_dim, q_dim)

    def forward(self, xq: Tensor, xkv: Tensor, key_valid: Tensor | None = None) -> Tensor:
        """``key_valid``: ``(B, T_kv)`` bool, True for keys that may be attended."""
        batch = xq.shape[0]

        def heads(x: Tensor) -> Tensor:
            return x.view(batch, x.shape[1], self.heads, -1).transpose(1, 2)

        mask = key_valid[:, None, None, :] if key_valid is not None else None
        out = F.scaled_dot_product_attention(heads(self.q(xq)), heads(self.k(xkv)), heads(self.v(xkv)),
                                             attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.o(out.transpose(1, 2).reshape(batch, xq.shape[1], -1))


class MLP(nn.Module):
    """Pre-norm MLP: LayerNorm, Linear(dim -> ratio*dim), GELU, Linear(-> dim)."""

    def __init__(self, dim: int, ratio: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * ratio)
        self.fc2 = nn.Linear(dim * ratio, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class CrossAttentionBlock(nn.Module):
    """Latents attend to the input (pre-norm on both sides), then an MLP; both residual."""

    def __init__(self, dim: int, in_dim: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(in_dim)
        self.attn = Attention(dim, in_dim, heads, dropout)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, latents: Tensor, inputs: Tensor, valid: Tensor) -> Tensor:
        latents = latents + self.attn(self.norm_q(latents), self.norm_kv(inputs), valid)
        return latents + self.mlp(latents)


class SelfAttentionLayer(nn.Module):
    """Pre-norm self-attention over the latents, then an MLP; both residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, dim, heads, dropout)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        x = x + self.attn(h, h)
        return x + self.mlp(x)


class Perceiver(nn.Module):
    """Compress a variable-length sequence to ``latents`` vectors (one ALARM-P branch).

    One cross-attention (latents as queries, no positional encoding) followed by a block of
    ``layers`` self-attention layers applied ``repeats`` times with shared weights.
    """

    def __init__(self, in_dim: int, latents: int, dim: int, heads: int, layers: int, repeats: int,
                 mlp_ratio: int, dropout: float, init_scale: float = 0.02) -> None:
        super().__init__()
        self.repeats = repeats
        self.latents = nn.Parameter(torch.empty(latents, dim))
        self.cross = CrossAttentionBlock(dim, in_dim, heads, mlp_ratio, dropout)
        self.layers = nn.ModuleList(SelfAttentionLayer(dim, heads, mlp_ratio, dropout) for _ in range(layers))
        # The original release's Perceiver init: N(0, 0.02) weights and latents, zero biases.
        with torch.no_grad():
            self.latents.normal_(0.0, init_scale)
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, init_scale)
                    module.bias.zero_()

    def forward(self, inputs: Tensor, lengths: Tensor) -> Tensor:
        """``(B, T, in_dim)`` inputs, ``(B,)`` lengths -> ``(B, latents, dim)``."""
        latents = self.latents.expand(inputs.shape[0], -1, -1)
        latents = self.cross(latents, inputs, frame_mask(lengths, inputs.shape[1]))
        for _ in range(self.repeats):
            for layer in self.layers:
                latents = layer(latents)
        return latents


class PerceiverFusion(nn.Module):
    """ALARM-P: a Perceiver per compressed encoder; the main stream is kept at full length.

    Output: ``[latent_start] + latents of each input in order + [latent_end] + main vectors``, i.e.
    ``main_length + n_inputs * latents + 2`` vectors (25 T + 62 with ALARM's sizes). The pair of
    latent delimiters mirrors the original release; the front end adds its audio delimiters outside.
    """

    def __init__(self, main: str, inputs: dict[str, int], latents: int, dim: int, heads: int, layers: int,
                 repeats: int, mlp_ratio: int, dropout: float, out_dim: int) -> None:
        super().__init__()
        self.main = main
        self.inputs = list(inputs)
        self.extra_tokens = latents * len(inputs) + 2
        self.perceivers = nn.ModuleDict({
            name: Perceiver(in_dim, latents, dim, heads, layers, repeats, mlp_ratio, dropout)
            for name, in_dim in inputs.items()})
        self.proj_out = nn.ModuleDict({name: nn.Linear(dim, out_dim) for name in inputs})
        self.latent_start = nn.Parameter(torch.randn(out_dim))
        self.latent_end = nn.Parameter(torch.randn(out_dim))

    def forward(self, adapted: dict[str, AdapterOutput]) -> AdapterOutput:
        missing = [name for name in [self.main, *self.inputs] if name not in adapted]
        if missing:
            raise KeyError(f"perceiver fusion: adapter outputs missing for {missing}")
        main = adapted[self.main]
        batch, _, width = main.values.shape
        compressed = [self.proj_out[name](self.perceivers[name](*adapted[name])) for name in self.inputs]
        values = torch.cat([self.latent_start.expand(batch, 1, width), *compressed,
                            self.latent_end.expand(batch, 1, width), main.values.to(self.latent_start.dtype)], dim=1)
        return AdapterOutput(values, main.lengths + self.extra_tokens)
