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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.features import htk_mel_banks, mel_db

SAMPLE_RATE = 24000
N_FFT = 2048


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


def _time_mask(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
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
        m = _time_mask(mask, h.shape[-1])
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
        mask = _time_mask(mel_mask, x.shape[1])
        return self.model.conformer(x, None if mask is None else mask.bool())


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
    from alarm.pipeline.encoders import read_checkpoint

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
    from alarm.pipeline.tiny_encoders import _build_once

    def write(path: Path) -> None:
        torch.manual_seed(0)
        module = MuQ(TINY_CONFIG)
        # Random BatchNorm statistics, so the tests exercise them (fresh ones are the identity).
        for bn in module.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                bn.running_mean.normal_(0, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
        save_muq(module, path)

    return _build_once("tiny-muq-v1", write)


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


def build_muq_encoder(cfg: Any, info: Any) -> Any:
    """Build the ``muq`` registry entry (see ``pipeline.encoders``)."""
    from alarm.pipeline.encoders import WindowedEncoder, default_layers, torch_dtype, window_samples

    if cfg.preset == "full-size-random":
        torch.manual_seed(cfg.seed)
        module, checkpoint = MuQ(MuQConfig()), f"{info.checkpoint}@random-seed-{cfg.seed}"
    elif cfg.preset == "tiny" and cfg.checkpoint is None:
        path = build_tiny_muq()
        module, checkpoint = load_muq(path), f"tiny:{path.name}"
    else:
        module, checkpoint = load_muq(cfg.checkpoint or info.checkpoint), cfg.checkpoint or info.checkpoint
    dtype = torch_dtype(cfg.dtype)
    # The mel front end stays float32 (its buffers too); only the network runs in the compute dtype.
    module = module.to(cfg.device).eval()
    module.model.conv.to(dtype)
    module.model.conformer.to(dtype)
    layers = default_layers(info, cfg, module.config.encoder_depth + 1)
    model = MuQWindows(module, layers, cfg.device, dtype, window_samples(info, cfg))
    return WindowedEncoder(info, cfg, layers, module.config.encoder_dim, model, checkpoint)
