"""MuQ's network: the config, the rotary Conformer, the pre-training heads and the top-level module.

See ``encoders.muq`` for the architecture and the checkpoint layout these modules follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.encoders.muq_frontend import ConvSubsampling, MelFrontEnd, time_mask


@dataclass
class MuQConfig:
    """The checkpoint's ``config.json`` (MuQConfig) fields that shape the network; other keys are ignored."""

    label_rate: int = 25
    num_codebooks: int = 1
    codebook_dim: int = 16
    codebook_size: int = 4096
    features: list[str] = field(default_factory=lambda: ["melspec_2048"])
    hop_length: int = 240
    n_mels: int = 128
    conv_dim: int = 512
    encoder_dim: int = 1024
    encoder_depth: int = 12
    stat: dict[str, float] = field(default_factory=lambda: {"melspec_2048_mean": 6.768444971712967,
                                                            "melspec_2048_std": 18.417922652295623})
    w2v2_config: dict[str, Any] = field(default_factory=dict)
    use_rvq_target: bool = False
    use_vq_target: bool = False
    use_encodec_target: bool = False
    recon_loss_ratio: float | None = None
    rvq_n_codebooks: int = 8
    rvq_multi_layer_num: int = 1

    def __post_init__(self) -> None:
        if self.features != ["melspec_2048"]:
            raise ConfigError(f"MuQ: only the melspec_2048 feature is supported, got {self.features}")
        if self.label_rate != 25:
            raise ConfigError(f"MuQ: only label_rate 25 (4x subsampling) is supported, got {self.label_rate}")
        if self.use_encodec_target:
            raise ConfigError("MuQ: checkpoints with an EnCodec target are not supported")
        if (self.use_rvq_target or self.use_vq_target) and self.rvq_multi_layer_num != 1:
            raise ConfigError("MuQ: only single-layer RVQ projections are supported")
        if self.conformer("position_embeddings_type") != "rotary":
            raise ConfigError("MuQ: only the rotary Conformer is supported")

    def conformer(self, key: str) -> Any:
        """A Conformer setting: ``w2v2_config`` over the defaults of MuQ's released config."""
        defaults = {"num_attention_heads": 16, "intermediate_size": 4096, "conv_depthwise_kernel_size": 31,
                    "hidden_act": "swish", "layer_norm_eps": 1e-5, "position_embeddings_type": "rotary",
                    "rotary_embedding_base": 10000, "num_conv_pos_embeddings": 128,
                    "num_conv_pos_embedding_groups": 16}
        return self.w2v2_config.get(key, defaults[key])

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MuQConfig:
        """Build from a checkpoint's config.json; training-only keys (masking, paths) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ------------------------------------------------------------------------------------------ conformer


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, hidden)
        self.output_dense = nn.Linear(hidden, dim)
        self.act = nn.SiLU() if act in ("swish", "silu") else nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(self.act(self.intermediate_dense(x)))


class RotarySelfAttention(nn.Module):
    """Self-attention with rotary positions applied to the query/key input (values stay unrotated)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                key_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        hd = d // self.heads
        xh = x.view(b, t, self.heads, hd)
        rotated = torch.cat([-xh[..., hd // 2 :], xh[..., : hd // 2]], dim=-1)
        qk_in = (xh * cos + rotated * sin).reshape(b, t, d)

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, hd).transpose(1, 2)

        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = nn.functional.scaled_dot_product_attention(heads(self.linear_q(qk_in)), heads(self.linear_k(qk_in)),
                                                         heads(self.linear_v(x)), attn_mask=attn_mask)
        return self.linear_out(out.transpose(1, 2).reshape(b, t, d))


class ConvolutionModule(nn.Module):
    """Conformer convolution: pointwise + GLU, depthwise conv, batch norm, swish, pointwise."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim)
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, 1, bias=False)
        self.depthwise_conv = nn.Conv1d(dim, dim, kernel, padding=(kernel - 1) // 2, groups=dim, bias=False)
        self.batch_norm = nn.BatchNorm1d(dim)
        self.pointwise_conv2 = nn.Conv1d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = nn.functional.glu(self.pointwise_conv1(self.layer_norm(x).transpose(1, 2)), dim=1)
        if mask is not None:  # padded steps must look like the conv's own zero padding
            h = h * mask[:, None, :].to(h.dtype)
        h = nn.functional.silu(self.batch_norm(self.depthwise_conv(h)))
        return self.pointwise_conv2(h).transpose(1, 2)


class ConformerLayer(nn.Module):
    """Macaron Conformer block (half-step FFNs around attention and convolution, final LayerNorm)."""

    def __init__(self, cfg: MuQConfig) -> None:
        super().__init__()
        dim = cfg.encoder_dim
        self.ffn1_layer_norm = nn.LayerNorm(dim)
        self.ffn1 = FeedForward(dim, cfg.conformer("intermediate_size"), cfg.conformer("hidden_act"))
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.self_attn = RotarySelfAttention(dim, cfg.conformer("num_attention_heads"))
        self.conv_module = ConvolutionModule(dim, cfg.conformer("conv_depthwise_kernel_size"))
        self.ffn2_layer_norm = nn.LayerNorm(dim)
        self.ffn2 = FeedForward(dim, cfg.conformer("intermediate_size"), cfg.conformer("hidden_act"))
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        x = x + 0.5 * self.ffn1(self.ffn1_layer_norm(x))
        x = x + self.self_attn(self.self_attn_layer_norm(x), cos, sin, mask)
        x = x + self.conv_module(x, mask)
        x = x + 0.5 * self.ffn2(self.ffn2_layer_norm(x))
        return self.final_layer_norm(x)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim)))

    def forward(self, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin`` of shape ``(length, 1, head_dim)`` (broadcast over batch and heads)."""
        freqs = torch.arange(length, device=self.inv_freq.device).float()[:, None] * self.inv_freq.float()
        emb = torch.cat([freqs, freqs], dim=-1)[:, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)


class PositionalConv(nn.Module):
    """Weight-normed grouped conv kept for key compatibility; MuQ's Conformer never calls it."""

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)


class Conformer(nn.Module):
    """Rotary Conformer encoder returning all hidden states (transformers 4.x convention)."""

    def __init__(self, cfg: MuQConfig) -> None:
        super().__init__()
        dim = cfg.encoder_dim
        heads = cfg.conformer("num_attention_heads")
        self.embed_positions = RotaryEmbedding(dim // heads, cfg.conformer("rotary_embedding_base"))
        self.pos_conv_embed = PositionalConv(dim, cfg.conformer("num_conv_pos_embeddings"),
                                             cfg.conformer("num_conv_pos_embedding_groups"))
        self.layer_norm = nn.LayerNorm(dim, eps=cfg.conformer("layer_norm_eps"))
        self.layers = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.encoder_depth))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
        cos, sin = self.embed_positions(x.shape[1], x.dtype)
        states = []
        for layer in self.layers:
            states.append(x)
            x = layer(x, cos, sin, mask)
        states.append(self.layer_norm(x))
        return states


# ------------------------------------------------------------------------------------------ heads


class _RandomProjectionQuantizer(nn.Module):
    """Training target (BEST-RQ style); only its buffers are kept so the checkpoint loads strictly."""

    def __init__(self, input_dim: int, codebook_dim: int, codebook_size: int) -> None:
        super().__init__()
        self.register_buffer("random_projection", torch.zeros(input_dim, codebook_dim))
        self.register_buffer("codebook", torch.zeros(codebook_size, codebook_dim))


class _WeightNormConv1x1(nn.Module):
    """Parameters of ``weight_norm(nn.Conv1d(i, o, 1))`` under their legacy names (training-only)."""

    def __init__(self, idim: int, odim: int) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(odim, 1, 1))
        self.weight_v = nn.Parameter(torch.zeros(odim, idim, 1))
        self.bias = nn.Parameter(torch.zeros(odim))


class _VectorQuantize(nn.Module):
    """A Mel-RVQ codebook (training target); parameters only."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.in_proj = _WeightNormConv1x1(input_dim, codebook_dim)
        self.out_proj = _WeightNormConv1x1(codebook_dim, input_dim)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)
        self.register_buffer("stale_counter", torch.zeros(codebook_size))


class _ResidualVectorQuantize(nn.Module):
    def __init__(self, input_dim: int, n_codebooks: int) -> None:
        super().__init__()
        self.quantizers = nn.ModuleList(_VectorQuantize(input_dim, 1024, 16) for _ in range(n_codebooks))


class MuQBackbone(nn.Module):
    """``MuQModel``: front end, conv subsampling, Conformer and the pre-training heads."""

    def __init__(self, cfg: MuQConfig) -> None:
        super().__init__()
        n_fold = 100 // cfg.label_rate
        self.preprocessor_melspec_2048 = MelFrontEnd(cfg.n_mels, cfg.hop_length)
        if cfg.use_rvq_target:
            self.rvq = _ResidualVectorQuantize(cfg.n_mels * n_fold, cfg.rvq_n_codebooks)
        elif cfg.use_vq_target:
            self.rvq = _VectorQuantize(cfg.n_mels * n_fold, 1024, 8)
        else:
            self.quantizer_melspec_2048 = _RandomProjectionQuantizer(cfg.n_mels * n_fold, cfg.codebook_dim,
                                                                     cfg.codebook_size)
        self.conv = ConvSubsampling(cfg.conv_dim, cfg.encoder_dim, cfg.n_mels)
        self.conformer = Conformer(cfg)
        self.linear = nn.Linear(cfg.encoder_dim, cfg.codebook_size)
        if cfg.recon_loss_ratio:
            self.recon_proj = nn.Linear(cfg.encoder_dim, cfg.n_mels * n_fold)
        self.cls_token = nn.Parameter(torch.zeros(cfg.encoder_dim))


class MuQ(nn.Module):
    """The checkpoint's top-level module (keys start with ``model.``)."""

    def __init__(self, cfg: MuQConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = MuQBackbone(cfg)

    def mel(self, waves: torch.Tensor) -> torch.Tensor:
        """Normalised mel ``(batch, n_mels, samples // hop)`` in float32."""
        m = self.model
        spec = m.preprocessor_melspec_2048(waves.float())
        stat = self.config.stat
        return (spec - stat["melspec_2048_mean"]) / stat["melspec_2048_std"]

    def forward(self, mel: torch.Tensor, mel_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Normalised mel ``(batch, n_mels, time)`` (zero past each input's end) -> hidden states."""
        x = self.model.conv(mel, mel_mask)
        mask = time_mask(mel_mask, x.shape[1])
        return self.model.conformer(x, None if mask is None else mask.bool())
