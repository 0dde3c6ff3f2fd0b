"""Map weights between the original ALARM release and our ``AudioFrontEnd``.

The original release (github.com/Blinorot/ALARM, checkpoints on the Hugging Face hub as
``Blinorot/ALARM-CA``, ``Blinorot/ALARM-P``, ``Blinorot/AL-Whisper-Instruct-R``...) saves the whole
``Qwen3AudioWrappedForCausalLM``: the LLM under ``model.layers...``/``lm_head``, the audio encoders under
``model.audio_encoder...``, and the trainable audio front end under

* ``model.audio_adapter.adapters.<encoder>...``: per-encoder adapters (layer weights in
  ``layer_fusion``, the conv downsampler in ``adapter.downsampler.<stage>.<0 conv | 2 norm>``, the muq
  MLP in ``adapter.model.<0|2>``, the projection in ``llm_proj``);
* ``model.audio_fusion.fusion_model...``: ALARM-CA (``in_proj``, ``condition_modules.<enc>.0``,
  ``out_proj``) or ALARM-P (``perceiver.<enc>`` Perceiver-IO encoders, ``out_proj.<enc>``,
  ``cond_start_emb``/``cond_end_emb``);
* ``model.audio_start_emb`` / ``model.audio_end_emb``: the two delimiters, shape ``(1, D)``.

Its helper ``get_pretrained_adapters.py`` also writes single adapters as ``<encoder>.pth`` with the
keys relative to ``model.audio_adapter.adapters.<encoder>.`` (pass ``encoder=`` for those).

Our module tree mirrors that structure, so the whole mapping is the prefix-rewrite table ``RULES``
below; tensors are never changed except the delimiters' ``(D,) <-> (1, D)`` reshape, so a round trip
is bitwise exact. Keys outside the audio front end (LLM, encoders) are skipped when converting to ours.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from alarm.pipeline.store_layout import atomic_path

if TYPE_CHECKING:
    from alarm.trainer.frontend import FrontEndConfig

ORIGINAL_PREFIX = "model."
_A = "audio_adapter.adapters.{e}."
_F = "audio_fusion.fusion_model."
_P = _F + "perceiver.{e}."

# (ours, original) prefix pairs. ``{e}`` is an encoder name, ``{i}`` a layer index. A pattern ending in
# "." rewrites a prefix; any other pattern is a whole key.
RULES: list[tuple[str, str]] = [
    # adapters
    ("adapters.{e}.average.layer_weights", _A + "layer_fusion.layer_weights"),
    ("adapters.{e}.proj_in.", _A + "adapter.input_proj."),
    ("adapters.{e}.conv1.", _A + "adapter.downsampler.0.0."),
    ("adapters.{e}.norm1.", _A + "adapter.downsampler.0.2."),
    ("adapters.{e}.conv2.", _A + "adapter.downsampler.1.0."),
    ("adapters.{e}.norm2.", _A + "adapter.downsampler.1.2."),
    ("adapters.{e}.fc1.", _A + "adapter.model.0."),
    ("adapters.{e}.fc2.", _A + "adapter.model.2."),
    ("adapters.{e}.proj_out.", _A + "llm_proj."),
    # ALARM-CA (fusion.proj_out also covers ALARM-P's per-encoder fusion.proj_out.<e>)
    ("fusion.proj_in.{e}.", _F + "in_proj.{e}."),
    ("fusion.layers.{e}.", _F + "condition_modules.{e}.0."),
    ("fusion.proj_out.", _F + "out_proj."),
    # ALARM-P
    ("fusion.perceivers.{e}.latents", _P + "latent_provider._query"),
    ("fusion.perceivers.{e}.cross.norm_q.", _P + "cross_attn_1.0.module.q_norm."),
    ("fusion.perceivers.{e}.cross.norm_kv.", _P + "cross_attn_1.0.module.kv_norm."),
    *[(f"fusion.perceivers.{{e}}.cross.attn.{x}.", _P + f"cross_attn_1.0.module.attention.{x}_proj.")
      for x in "qkvo"],
    ("fusion.perceivers.{e}.cross.mlp.norm.", _P + "cross_attn_1.1.module.0."),
    ("fusion.perceivers.{e}.cross.mlp.fc1.", _P + "cross_attn_1.1.module.1."),
    ("fusion.perceivers.{e}.cross.mlp.fc2.", _P + "cross_attn_1.1.module.3."),
    ("fusion.perceivers.{e}.layers.{i}.norm.", _P + "self_attn_1.{i}.0.module.norm."),
    *[(f"fusion.perceivers.{{e}}.layers.{{i}}.attn.{x}.", _P + f"self_attn_1.{{i}}.0.module.attention.{x}_proj.")
      for x in "qkvo"],
    ("fusion.perceivers.{e}.layers.{i}.mlp.norm.", _P + "self_attn_1.{i}.1.module.0."),
    ("fusion.perceivers.{e}.layers.{i}.mlp.fc1.", _P + "self_attn_1.{i}.1.module.1."),
    ("fusion.perceivers.{e}.layers.{i}.mlp.fc2.", _P + "self_attn_1.{i}.1.module.3."),
    ("fusion.latent_start", _F + "cond_start_emb"),
    ("fusion.latent_end", _F + "cond_end_emb"),
    # delimiters
    ("audio_start", "audio_start_emb"),
    ("audio_end", "audio_end_emb"),
]
# Ours store delimiters as (D,), the original as (1, D).
_VECTORS_OURS = {"audio_start", "audio_end", "fusion.latent_start", "fusion.latent_end"}
# Top-level names of the original's audio front end; everything else (LLM, encoders) is skipped.
_ORIGINAL_AUDIO = ("audio_adapter.", "audio_fusion.", "audio_start_emb", "audio_end_emb")


class ConvertError(ValueError):
    """A state dict with audio front-end keys that the mapping does not know."""


@dataclass
class ConvertSummary:
    """What ``convert_file`` did."""

    converted: int
    """Tensors written."""
    skipped: int
    """Tensors of the input outside the audio front end (LLM, encoders), left out."""
    config_path: Path | None = None
    """Where the matching ``FrontEndConfig`` was written (to-ours from a folder with config.json)."""
    layers: dict[str, list[int]] | None = None
    """The release's hidden-state indices per encoder (the feature store must keep these)."""


def _compile(pattern: str) -> re.Pattern[str]:
    body = re.escape(pattern).replace(r"\{e\}", r"(?P<e>[A-Za-z0-9_]+)").replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile(body + ("(?P<rest>.*)" if pattern.endswith(".") else "") + r"\Z")


_TO_ORIGINAL = [(_compile(ours), original) for ours, original in RULES]
_TO_OURS = [(_compile(original), ours) for ours, original in RULES]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in rules:
        match = pattern.match(key)
        if match:
            groups = match.groupdict()
            name = target.replace("{e}", groups.get("e") or "").replace("{i}", groups.get("i") or "")
            return name + (groups.get("rest") or "")
    return None


def _fail_unknown(unknown: list[str], side: str) -> None:
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else "")
        raise ConvertError(f"{len(unknown)} {side} keys have no mapping in trainer/convert.py RULES: {shown}")


def split_original(state_dict: dict[str, Tensor], encoder: str | None = None) -> tuple[dict[str, Tensor], list[str]]:
    """Convert an original-release state dict; also return the keys skipped (LLM, encoders).

    Args:
        state_dict: a full checkpoint (keys ``model.audio_adapter...``; the ``model.`` prefix is optional)
            or, with ``encoder``, one adapter saved by the release's ``get_pretrained_adapters.py``.
        encoder: the encoder name of a single-adapter state dict.

    Raises:
        ConvertError: for front-end keys the mapping does not know (e.g. a conformer adapter variant).
    """
    ours: dict[str, Tensor] = {}
    skipped: list[str] = []
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        if encoder is not None:
            key = f"audio_adapter.adapters.{encoder}.{key}"
        key = key.removeprefix(ORIGINAL_PREFIX)
        if not key.startswith(_ORIGINAL_AUDIO):
            skipped.append(key)
            continue
        name = _rename(key, _TO_OURS)
        if name is None:
            unknown.append(key)
            continue
        ours[name] = tensor.reshape(-1) if name in _VECTORS_OURS else tensor
    _fail_unknown(unknown, "original")
    return ours, skipped


def convert_original_to_ours(state_dict: dict[str, Tensor], encoder: str | None = None) -> dict[str, Tensor]:
    """Original-release names -> ``AudioFrontEnd.state_dict()`` names (non-audio keys are dropped)."""
    return split_original(state_dict, encoder)[0]


def convert_ours_to_original(state_dict: dict[str, Tensor], prefix: str = ORIGINAL_PREFIX) -> dict[str, Tensor]:
    """``AudioFrontEnd.state_dict()`` names -> the original release's names (with ``prefix``).

    Raises:
        ConvertError: for keys of ours that the mapping does not know.
    """
    original: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        name = _rename(key, _TO_ORIGINAL)
        if name is None:
            unknown.append(key)
            continue
        original[prefix + name] = tensor.reshape(1, -1) if key in _VECTORS_OURS else tensor
    _fail_unknown(unknown, "front-end")
    return original


def original_frontend_config(config: dict[str, Any]) -> tuple[FrontEndConfig, dict[str, list[int]]]:
    """The ``FrontEndConfig`` matching an original checkpoint's ``config.json``, and its layer indices.

    Args:
        config: the release's model config (``audio_adapter_configs``, ``audio_fusion_config``...).

    Returns:
        The config, and per encoder the hidden-state indices the release averages (the feature store
        must keep exactly these layers, in this order, for the weights to mean the same thing).

    Raises:
        ConvertError: for release variants our front end does not implement (conformer adapters,
            per-layer adapters, explicit audio tokens, several CA layers per encoder, skip connection).
    """
    from alarm.trainer.frontend import FrontEndConfig

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ConvertError(f"original checkpoint uses {what}, which our front end does not implement")

    adapters = {a["encoder_name"]: a for a in config.get("audio_adapter_configs") or []}
    fusion = config.get("audio_fusion_config") or {}
    need(bool(adapters), "no audio_adapter_configs (is this an ALARM config.json?)")
    need(not config.get("use_explicit_audio_tokens", False), "explicit audio tokens")
    kind = {"sum": "none", "crossattention": "ca", "multiperceiver": "perceiver"}.get(fusion.get("fusion_type"))
    need(kind is not None, f"fusion type {fusion.get('fusion_type')!r}")
    names = list(adapters) if kind == "none" else [fusion["main_encoder"], *fusion["conditional_encoders"]]
    need(kind != "none" or len(names) == 1, "a 'sum' fusion of several encoders")
    widths = dict(zip(fusion.get("conditional_encoders", []), fusion.get("conditional_embedding_dim", []), strict=False))
    encoders, layers = [], {}
    for name in names:
        a = adapters[name]
        need(a.get("pre_average", True), f"per-layer adapters for {name}")
        need(not a.get("use_conformer", False), f"a conformer in the {name} adapter")
        need(a.get("downsampler_depth", 1) == 1, f"downsampler_depth {a.get('downsampler_depth')} for {name}")
        layers[name] = list(a["audio_encoder_layers"])
        dim = a.get("encoder_embedding_dim") or widths.get(name) or 1024
        encoders.append({"name": name, "layers": len(layers[name]), "dim": dim})
    main = adapters[names[0]]
    sizes: dict[str, Any] = {"llm_dim": main["llm_embedding_dim"], "adapter_dim": main["adapter_embedding_dim"],
                             "conv_hidden_dim": 2 * main["adapter_embedding_dim"]}  # the release's conv width
    if kind == "ca":
        need(all(n == 1 for n in fusion.get("num_hidden_layers", [1])), "several decoder layers per encoder")
        need(not fusion.get("use_skip_connection", False), "a skip connection around the fusion")
        sizes |= {"ca_dim": fusion["hidden_dim"], "ca_heads": fusion["num_attention_heads"],
                  "ca_ffn_dim": fusion["ffn_dims"], "ca_dropout": fusion["dropout"]}
    if kind == "perceiver":
        def one(key: str, default: Any) -> Any:
            values = set(fusion.get(key, [default]))
            need(len(values) == 1, f"different {key} per encoder")
            return values.pop()

        need(one("num_cross_attention_layers", 1) == 1, "several cross-attention layers")
        need(one("first_self_attention_block_shared", True), "unshared self-attention blocks")
        sizes |= {"perceiver_latents": one("num_latents", 20), "perceiver_dim": one("num_latent_channels", 768),
                  "perceiver_heads": one("num_cross_attention_heads", 4),
                  "perceiver_layers": one("num_self_attention_layers_per_block", 6),
                  "perceiver_repeats": one("num_self_attention_blocks", 1),
                  "perceiver_mlp_ratio": one("self_attention_widening_factor", 1),
                  "perceiver_dropout": one("dropout", 0.0)}
        need(one("num_self_attention_heads", 4) == sizes["perceiver_heads"], "different cross/self-attention heads")
        need(one("cross_attention_widening_factor", 1) == sizes["perceiver_mlp_ratio"], "different MLP widths")
    return FrontEndConfig(encoders=encoders, fusion=kind, **sizes), layers


def _load(path: Path, keep: tuple[str, ...] | None) -> tuple[dict[str, Tensor], int]:
    """Load safetensors (a file, or a folder of shards) or a torch ``.pth``; only keys under ``keep``."""
    import torch
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"{path} holds no .safetensors files")
    tensors: dict[str, Tensor] = {}
    skipped = 0
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{file} does not exist")
        if file.suffix in (".pth", ".pt", ".bin"):
            loaded = torch.load(file, map_location="cpu", weights_only=True)
            tensors.update(loaded)
            continue
        # Read only the wanted tensors: a full original checkpoint carries the whole 4B LLM.
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                if keep is None or key.removeprefix(ORIGINAL_PREFIX).startswith(keep):
                    tensors[key] = handle.get_tensor(key)
                else:
                    skipped += 1
    return tensors, skipped


def convert_file(src: str | Path, dst: str | Path, direction: str, encoder: str | None = None) -> ConvertSummary:
    """Convert a checkpoint file between the original release's names and ours.

    Args:
        src: safetensors file, folder of safetensors shards (an original Hugging Face checkpoint), or
            ``.pth`` (a single adapter from ``get_pretrained_adapters.py``, with ``encoder``).
        dst: safetensors file to write.
        direction: ``to-ours`` or ``to-original``.
        encoder: encoder name when ``src`` is a single original adapter.

    Returns:
        How many tensors were written and how many non-audio tensors were left out. Converting an
        original checkpoint folder to ours also writes ``<dst>.frontend.yaml``, the ``FrontEndConfig``
        read from its ``config.json``, and reports the release's layer indices.
    """
    from safetensors.torch import save_file

    from alarm.pipeline.configs import save_config

    src, dst = Path(src), Path(dst)
    config_path, layers = None, None
    if direction == "to-ours" and src.is_dir() and (src / "config.json").is_file():
        frontend_cfg, layers = original_frontend_config(json.loads((src / "config.json").read_text()))
        config_path = dst.with_name(dst.name.removesuffix(".safetensors") + ".frontend.yaml")
    if direction == "to-ours":
        tensors, skipped = _load(src, None if encoder else _ORIGINAL_AUDIO)
        converted, left_out = split_original(tensors, encoder)
        skipped += len(left_out)
    elif direction == "to-original":
        tensors, skipped = _load(src, None)
        converted = convert_ours_to_original(tensors)
    else:
        raise ValueError(f"direction must be 'to-ours' or 'to-original', got {direction!r}")
    if not converted:
        raise ConvertError(f"{src} holds no audio front-end tensors to convert")
    with atomic_path(dst) as tmp:
        save_file({k: v.contiguous() for k, v in converted.items()}, str(tmp))
    if config_path is not None:
        with atomic_path(config_path) as tmp:
            save_config(frontend_cfg, tmp)
    return ConvertSummary(converted=len(converted), skipped=skipped, config_path=config_path, layers=layers)
