"""The trainable audio front end: per-encoder adapters, a fusion module, two audio delimiters.

``build_frontend(FrontEndConfig) -> AudioFrontEnd`` is the one entry point. The front end reads cached
encoder features (never the encoders) and returns, per example, the span that goes into the LLM's
input embeddings: ``[audio_start] + audio vectors + [audio_end]``, left-aligned and zero beyond its
length. Shapes and defaults follow ../shared/docs/method.md §3; the parameter names mirror the original
release closely enough that ``trainer/convert.py`` maps them with prefix rewrites only.

Fusion variants (``FrontEndConfig.fusion``):

* ``none``: exactly one encoder, its adapter output is the audio span (single-encoder stage).
* ``ca``: ALARM-CA, the first encoder (whisper) queries the others' adapter outputs.
* ``perceiver``: ALARM-P, the first encoder keeps its adapter output; each other encoder's
  layer-averaged raw features are compressed to learned latents. Like the original release, the
  fusion frames the latents with its own pair of delimiters, so the span is
  ``[audio_start] [latent_start] latents [latent_end] whisper tokens [audio_end]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from alarm.pipeline.configs import ConfigError
from alarm.pipeline.encoders import ENCODERS
from alarm.trainer.adapters import (
    AdapterOutput,
    AverageAdapter,
    ConvAdapter,
    MLPAdapter,
    adapter_output_length,
)
from alarm.trainer.fusion import CrossAttentionFusion, PerceiverFusion

FUSIONS = ("none", "ca", "perceiver")

# The adapter each encoder gets (docs/method.md §3), as the encoder registry states it.
ADAPTER_KINDS = {name: info.adapter for name, info in ENCODERS.items()}
# Norm inside the conv downsampler: BatchNorm for whisper, LayerNorm over channels for the others.
CONV_NORMS = {name: info.conv_norm for name, info in ENCODERS.items() if info.conv_norm}


@dataclass
class EncoderShape:
    """The shape of one encoder's cached features."""

    name: str
    """Registry key: whisper, w2vbert, sslam or muq."""
    layers: int
    """Number of kept hidden-state layers stored in the cache."""
    dim: int
    """Feature width (the full-size encoders' are the registry's ``dim``)."""

    def __post_init__(self) -> None:
        if self.name not in ADAPTER_KINDS:
            raise ConfigError(f"encoder {self.name!r} is unknown; known: {', '.join(ADAPTER_KINDS)}")
        if self.layers < 1 or self.dim < 1:
            raise ConfigError(f"encoder {self.name}: layers and dim must be >= 1, got {self.layers}, {self.dim}")


# Full-size shapes of the four encoders with ALARM's kept layers (docs/method.md §2), from the registry.
DEFAULT_ENCODERS = {name: EncoderShape(name, len(info.layers), info.dim) for name, info in ENCODERS.items()}
# The order ALARM-CA applies its cross-attention layers in (the query encoder first): the registry's.
ALARM_ORDER = tuple(ENCODERS)


def default_encoders(names: tuple[str, ...] | list[str] = ALARM_ORDER) -> list[EncoderShape]:
    """Full-size ``EncoderShape``s for ``names`` (default: all four in ALARM-CA order)."""
    return [DEFAULT_ENCODERS[name] for name in names]


@dataclass
class FrontEndConfig:
    """Sizes of the adapters and the fusion. Defaults match docs/method.md §3."""

    encoders: list[EncoderShape] = field(default_factory=lambda: default_encoders(ALARM_ORDER[:1]))
    """Encoders in order. With a fusion, the first is the main (query) encoder, whisper in ALARM;
    ALARM-CA visits the others in the listed order (ALARM: w2vbert, muq, sslam)."""
    fusion: str = "none"
    """``none`` (exactly one encoder), ``ca`` (ALARM-CA) or ``perceiver`` (ALARM-P)."""
    llm_dim: int = 2560
    """The LLM's hidden size (Qwen3-4B: 2560)."""
    adapter_dim: int = 1024
    """Adapter width: Linear(dim->adapter_dim), conv output width, muq MLP width."""
    conv_hidden_dim: int = 2048
    """Output width of the first (stride 1) conv of the downsampler."""
    ca_dim: int = 1024
    """ALARM-CA model width (streams are projected llm_dim -> ca_dim)."""
    ca_heads: int = 16
    ca_ffn_dim: int = 4096
    ca_dropout: float = 0.1
    perceiver_latents: int = 20
    """Learned latents per compressed encoder."""
    perceiver_dim: int = 768
    """Latent width."""
    perceiver_heads: int = 4
    """Heads of the cross-attention and of every self-attention layer."""
    perceiver_layers: int = 6
    """Self-attention layers per block."""
    perceiver_repeats: int = 3
    """How many times the block is applied (weights shared)."""
    perceiver_mlp_ratio: int = 1
    """MLP widening factor in the Perceiver's layers."""
    perceiver_dropout: float = 0.0
    """Attention dropout in the Perceiver (the original release uses 0)."""

    def __post_init__(self) -> None:
        # YAML gives plain dicts; accept them so configs stay loadable with pipeline.configs.
        self.encoders = [EncoderShape(**e) if isinstance(e, dict) else e for e in self.encoders]
        names = [e.name for e in self.encoders]
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion {self.fusion!r} is unknown; use one of {', '.join(FUSIONS)}")
        if not names:
            raise ConfigError("encoders is empty: give at least one encoder")
        if len(set(names)) != len(names):
            raise ConfigError(f"encoders lists a name twice: {names}")
        if self.fusion == "none" and len(names) != 1:
            raise ConfigError(f"fusion 'none' takes exactly one encoder, got {names}; use 'ca' or 'perceiver'")
        if self.fusion != "none":
            if len(names) < 2:
                raise ConfigError(f"fusion {self.fusion!r} needs at least two encoders, got {names}")
            if ADAPTER_KINDS[names[0]] != "conv":
                raise ConfigError(f"the first (main) encoder must have a conv adapter (whisper), got {names[0]}")
        for key in ("llm_dim", "adapter_dim", "conv_hidden_dim", "ca_dim", "ca_heads", "ca_ffn_dim",
                    "perceiver_latents", "perceiver_dim", "perceiver_heads", "perceiver_layers",
                    "perceiver_repeats", "perceiver_mlp_ratio"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.ca_dim % self.ca_heads:
            raise ConfigError(f"ca_dim {self.ca_dim} is not divisible by ca_heads {self.ca_heads}")
        if self.perceiver_dim % self.perceiver_heads:
            raise ConfigError(f"perceiver_dim {self.perceiver_dim} is not divisible by perceiver_heads "
                              f"{self.perceiver_heads}")
        for key in ("ca_dropout", "perceiver_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"{key} must be in [0, 1), got {getattr(self, key)}")

    @property
    def names(self) -> list[str]:
        """Encoder names in config order."""
        return [e.name for e in self.encoders]


def build_adapter(shape: EncoderShape, cfg: FrontEndConfig, kind: str | None = None) -> nn.Module:
    """The adapter for one encoder: ``kind`` is ``conv``, ``mlp`` or ``average`` (default: by name)."""
    kind = kind or ADAPTER_KINDS[shape.name]
    if kind == "conv":
        return ConvAdapter(shape.layers, shape.dim, cfg.adapter_dim, cfg.conv_hidden_dim, cfg.llm_dim,
                           norm=CONV_NORMS[shape.name])
    if kind == "mlp":
        return MLPAdapter(shape.layers, shape.dim, cfg.adapter_dim, cfg.llm_dim)
    if kind == "average":
        return AverageAdapter(shape.layers)
    raise ValueError(f"unknown adapter kind {kind!r}")


class AudioFrontEnd(nn.Module):
    """Adapters + fusion + delimiters. Build it with ``build_frontend``.

    Trainable parts, for freezing and checkpointing: ``adapters.<name>`` for each encoder, ``fusion``
    (absent with fusion ``none``) and ``delimiters`` (``audio_start``/``audio_end``).
    """

    def __init__(self, cfg: FrontEndConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.main = cfg.names[0]
        self.adapters = nn.ModuleDict()
        for shape in cfg.encoders:
            # In ALARM-P the compressed encoders only get their layer average (no adapter projection).
            kind = "average" if cfg.fusion == "perceiver" and shape.name != self.main else None
            self.adapters[shape.name] = build_adapter(shape, cfg, kind=kind)
        others = cfg.names[1:]
        if cfg.fusion == "ca":
            self.fusion = CrossAttentionFusion(
                main=self.main, others=others, in_dim=cfg.llm_dim, dim=cfg.ca_dim, heads=cfg.ca_heads,
                ffn_dim=cfg.ca_ffn_dim, dropout=cfg.ca_dropout, out_dim=cfg.llm_dim)
        elif cfg.fusion == "perceiver":
            self.fusion = PerceiverFusion(
                main=self.main, inputs={e.name: e.dim for e in cfg.encoders[1:]}, latents=cfg.perceiver_latents,
                dim=cfg.perceiver_dim, heads=cfg.perceiver_heads, layers=cfg.perceiver_layers,
                repeats=cfg.perceiver_repeats, mlp_ratio=cfg.perceiver_mlp_ratio,
                dropout=cfg.perceiver_dropout, out_dim=cfg.llm_dim)
        else:
            self.fusion = None
        # Standard-normal init as in the original release (its delimiters are torch.randn).
        self.audio_start = nn.Parameter(torch.randn(cfg.llm_dim))
        self.audio_end = nn.Parameter(torch.randn(cfg.llm_dim))
        self._frozen: set[str] = set()

    # ------------------------------------------------------------------------------------ forward

    def run_adapters(self, feats: dict[str, Tensor], lengths: dict[str, Tensor],
                     names: list[str] | None = None) -> dict[str, AdapterOutput]:
        """Run the adapters of ``names`` (default: all) on raw cached features.

        Args:
            feats: ``name -> (B, T, layers, dim)`` padded features.
            lengths: ``name -> (B,)`` valid frames.
            names: which adapters to run.

        Returns:
            ``name -> AdapterOutput(values (B, T', D), lengths (B,))``, zero beyond each length. This is
            what the second-level cache stores when adapters are frozen.
        """
        out = {}
        for name in names if names is not None else list(self.adapters):
            if name not in feats or name not in lengths:
                raise KeyError(f"features or lengths for encoder {name!r} are missing; got {sorted(feats)}")
            out[name] = self.adapters[name](feats[name], lengths[name])
        return out

    def forward(self, feats: dict[str, Tensor], lengths: dict[str, Tensor],
                adapted: dict[str, AdapterOutput] | None = None) -> tuple[Tensor, Tensor]:
        """Turn cached features into the framed audio span.

        Args:
            feats: ``name -> (B, T_name, layers, dim)`` padded raw features (50 Hz, 25 Hz for muq).
                May omit encoders whose adapter outputs are given in ``adapted``.
            lengths: ``name -> (B,)`` valid frames of ``feats``.
            adapted: precomputed adapter outputs (second-level cache); those adapters are skipped.

        Returns:
            ``(audio_embeds (B, N, llm_dim), audio_lengths (B,))``: each row is
            ``[audio_start] + audio vectors + [audio_end]``, left-aligned, zero beyond its length.
        """
        adapted = dict(adapted or {})
        todo = [name for name in self.adapters if name not in adapted]
        adapted.update(self.run_adapters(feats, lengths, todo))
        if self.fusion is None:
            values, body_lengths = adapted[self.main]
        else:
            values, body_lengths = self.fusion(adapted)
        return frame_span(values, body_lengths, self.audio_start, self.audio_end)

    def output_lengths(self, lengths: dict[str, Tensor]) -> Tensor:
        """Span lengths (delimiters included) for raw-feature ``lengths``, without running anything.

        The data pipeline uses this for its token budget.
        """
        body = adapter_output_length(lengths[self.main], self.adapters[self.main].downsamples)
        if self.fusion is not None:
            body = body + self.fusion.extra_tokens
        return body + 2

    # ------------------------------------------------------------------------------ parts, freezing

    def parts(self) -> list[str]:
        """Names of the separately freezable parts."""
        names = [f"adapters.{name}" for name in self.adapters]
        return names + (["fusion"] if self.fusion is not None else []) + ["delimiters"]

    def _expand(self, part: str) -> list[str]:
        if part == "adapters":
            return [f"adapters.{name}" for name in self.adapters]
        if part in self.parts():
            return [part]
        raise ValueError(f"unknown front-end part {part!r}; known: adapters, {', '.join(self.parts())}")

    def _prefixes(self, parts: list[str]) -> tuple[str, ...]:
        expanded = [p for part in parts for p in self._expand(part)]
        return tuple(p for part in expanded
                     for p in (("audio_start", "audio_end") if part == "delimiters" else (part + ".",)))

    def freeze(self, *parts: str) -> None:
        """Freeze ``parts`` (``adapters`` = all adapters, or ``adapters.<name>``, ``fusion``, ``delimiters``).

        Frozen parts stop requiring gradients and stay in eval mode even under ``.train()``, so the
        BatchNorm statistics of a frozen whisper adapter are not updated.
        """
        prefixes = self._prefixes(list(parts))
        for key, param in self.named_parameters():
            if key.startswith(prefixes):
                param.requires_grad_(False)
        self._frozen.update(p for part in parts for p in self._expand(part))
        self.train(self.training)

    def frozen_parts(self) -> list[str]:
        """The parts frozen so far."""
        return [p for p in self.parts() if p in self._frozen]

    def trainable_parts(self) -> list[str]:
        """The parts not frozen."""
        return [p for p in self.parts() if p not in self._frozen]

    def part_state_dict(self, parts: list[str] | None = None) -> dict[str, Tensor]:
        """Parameters and buffers (BatchNorm statistics) of ``parts`` (default: the trainable parts).

        This is what a checkpoint stores; load it back with ``load_state_dict(sd, strict=False)``.
        """
        prefixes = self._prefixes(parts if parts is not None else self.trainable_parts())
        return {k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}

    def train(self, mode: bool = True) -> AudioFrontEnd:
        """Set train/eval mode, keeping frozen parts in eval mode."""
        super().train(mode)
        for part in self._frozen if hasattr(self, "_frozen") else ():
            if part.startswith("adapters."):
                self.adapters[part.split(".", 1)[1]].eval()
            elif part == "fusion" and self.fusion is not None:
                self.fusion.eval()
        return self


def frame_span(values: Tensor, lengths: Tensor, start: Tensor, end: Tensor) -> tuple[Tensor, Tensor]:
    """Put ``start`` before and ``end`` right after each row's valid part.

    Args:
        values: ``(B, N, D)`` rows, zero beyond ``lengths``.
        lengths: ``(B,)`` valid vectors per row.
        start: ``(D,)`` delimiter placed at position 0.
        end: ``(D,)`` delimiter placed at position ``length + 1``.

    Returns:
        ``((B, N + 2, D), lengths + 2)``, zero beyond each new length.
    """
    batch, n, dim = values.shape
    values = values.to(start.dtype)
    pad = values.new_zeros(batch, 1, dim)
    body = torch.cat([start.expand(batch, 1, dim), values, pad], dim=1)
    # The slot at length + 1 is zero (padding), so adding the delimiter there places it exactly.
    at_end = torch.arange(n + 2, device=values.device)[None, :] == (lengths + 1)[:, None]
    return body + at_end[..., None].to(values.dtype) * end, lengths + 2


def build_frontend(cfg: FrontEndConfig) -> AudioFrontEnd:
    """Build the front end described by ``cfg`` (random init; load weights with ``load_state_dict``)."""
    return AudioFrontEnd(cfg)


def load_weights(frontend: AudioFrontEnd, weights: dict[str, Tensor], source: str, strict: bool = False) -> object:
    """``frontend.load_state_dict(weights)``, refusing in one line weights whose shapes do not fit.

    torch's own error lists every mismatched tensor over many lines; the usual cause is a checkpoint
    trained for an LLM of another hidden size (``--llm`` or ``llm:`` naming another model) or other
    front-end sizes, and this says so.

    Raises:
        ConfigError: a tensor of ``weights`` has another shape than the front end's.
    """
    own = frontend.state_dict()
    wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in weights.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        name, theirs, ours = wrong[0]
        raise ConfigError(f"{source} does not fit this front end: {len(wrong)} tensor(s) differ in shape, e.g. "
                          f"{name} {list(theirs)} there, {list(ours)} here; was it trained for an LLM of another "
                          f"hidden size (here {frontend.cfg.llm_dim}) or with other frontend sizes?")
    return frontend.load_state_dict(weights, strict=strict)
