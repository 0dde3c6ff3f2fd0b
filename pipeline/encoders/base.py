"""Shared pieces of the encoders: the ``Encoder`` protocol, the registry's entry type and checkpoint I/O.

Every encoder module (``whisper``, ``w2vbert``, ``muq``, ``sslam``) builds on these and on ``windows``;
none of them imports the registry (``pipeline.encoders``), which imports them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from alarm.pipeline.configs import ConfigError

# Bump when a code change alters any encoder's output for the same weights: it is part of every spec,
# so a store written by older code is refused instead of silently mixed.
ENCODER_CODE_VERSION = "1"


class EncoderSettings(Protocol):
    """What a builder reads from an ``EncoderConfig`` (see its fields).

    The config itself lives with the registry (its ``name`` must be a registry key); builders take this
    protocol so that no encoder module needs to import the registry.
    """

    name: str
    preset: str
    checkpoint: str | None
    layers: tuple[int, ...] | None
    device: str
    dtype: str
    batch_size: int
    window_seconds: float | None
    seed: int


@runtime_checkable
class Encoder(Protocol):
    """A built, frozen encoder; see the module docstring."""

    name: str
    sample_rate: int
    layers: tuple[int, ...]
    dim: int
    frame_rate: float

    def spec(self) -> dict[str, Any]:
        """Everything that determines the outputs (checkpoint, weights fingerprint, layers, windowing, ...)."""
        ...

    def num_frames(self, num_samples: int) -> int:
        """Output frames for a clip of ``num_samples`` samples at ``sample_rate``."""
        ...

    def min_samples(self) -> int:
        """The fewest samples at ``sample_rate`` that give at least one output frame."""
        ...

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """Encode float32 mono waves; each result is ``(num_frames(len(w)), len(layers), dim)`` float32."""
        ...



@dataclass(frozen=True)
class EncoderInfo:
    """Static facts of one registry entry (docs/method.md §2), known without building the model.

    Attributes:
        name: Registry key.
        checkpoint: The ALARM checkpoint (Hugging Face id).
        sample_rate: Input sample rate in Hz.
        layers: Default hidden-state indices kept.
        dim: Hidden size.
        frame_rate: Output frames per second of audio.
        window_seconds: Default audio per forward pass.
        build: ``build(cfg, info) -> Encoder``.
        tiny_folder: Folder name of the cached ``tiny`` checkpoint (what ``build_tiny`` writes), so
            that finding a built one imports no torch.
        build_tiny: Builds (once) and returns the cached ``tiny`` checkpoint folder.
        adapter: The adapter ALARM gives this encoder's features (docs/method.md §3): ``conv`` or ``mlp``.
        conv_norm: Norm inside the conv adapter's downsampler: ``batch`` or ``layer`` (None: no conv).
        flops_per_window: Forward FLOPs per window, for encoders that pad every window to full length
            (their cost follows the number of windows); None: ``flops_per_second`` applies.
        flops_per_second: Forward FLOPs per second of audio (estimates; see ``pipeline.plan``).
    """

    name: str
    checkpoint: str
    sample_rate: int
    layers: tuple[int, ...]
    dim: int
    frame_rate: float
    window_seconds: float
    build: Callable[[EncoderSettings, EncoderInfo], Encoder] = field(repr=False)
    tiny_folder: str
    build_tiny: Callable[[], Path] = field(repr=False)
    adapter: str
    conv_norm: str | None = None
    flops_per_window: float | None = None
    flops_per_second: float | None = None


# ------------------------------------------------------------------------------------------ helpers


def torch_dtype(name: str) -> Any:
    """The torch dtype called ``name`` (float32, float16, bfloat16)."""
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def weights_fingerprint(module: Any) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes, in name order)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # bfloat16 has no numpy dtype: hash its raw 16-bit patterns instead.
        raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()


def preset_module(cfg: EncoderSettings, info: EncoderInfo, random_model: Callable[[], Any],
                  build_tiny: Callable[[], Path], load: Callable[[str | Path], Any]) -> tuple[Any, str]:
    """The network of our own encoder modules (MuQ, SSLAM) for ``cfg.preset``, and its checkpoint label.

    ``full-size-random``: seeded random weights at full size; ``tiny`` (no checkpoint given): the
    tiny offline model, built once; otherwise the checkpoint folder, or the registry's default one.
    """
    import torch

    if cfg.preset == "full-size-random":
        torch.manual_seed(cfg.seed)
        return random_model(), f"{info.checkpoint}@random-seed-{cfg.seed}"
    if cfg.preset == "tiny" and cfg.checkpoint is None:
        path = build_tiny()
        return load(path), f"tiny:{path.name}"
    checkpoint = cfg.checkpoint or info.checkpoint
    return load(checkpoint), checkpoint


def resolve_checkpoint_dir(checkpoint: str) -> Path:
    """A local directory for ``checkpoint``: the path itself, or its snapshot in the local HF cache.

    Raises:
        FileNotFoundError: The checkpoint is neither a directory nor in the local cache (we never download).
    """
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(checkpoint, local_files_only=True))
    except Exception as err:  # the hub raises several types for "not cached"
        raise FileNotFoundError(
            f"checkpoint {checkpoint!r} is neither a local directory nor in the local Hugging Face cache; "
            "download it on a machine with network access (huggingface-cli download) or pass a directory"
        ) from err


def read_checkpoint(checkpoint: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config.json`` and every tensor of a checkpoint (local folder or local HF cache).

    Weights come from ``*.safetensors`` shards, else ``pytorch_model.bin`` / ``model.pt``.

    Raises:
        FileNotFoundError: Not available offline, or no config or weights in the folder.
    """
    import torch
    from safetensors.torch import load_file

    folder = resolve_checkpoint_dir(str(checkpoint))
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    config = json.loads(config_path.read_text())
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        state: dict[str, Any] = {}
        for shard in shards:
            state.update(load_file(str(shard)))
        return config, state
    for name in ("pytorch_model.bin", "model.pt"):
        if (folder / name).is_file():
            return config, torch.load(folder / name, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no weights (*.safetensors or pytorch_model.bin) in {folder}")


def check_layers(name: str, layers: tuple[int, ...], available: int) -> None:
    """Raise ConfigError when a requested hidden-state index does not exist (``available`` states)."""
    bad = [i for i in layers if i >= available]
    if bad:
        raise ConfigError(f"{name}: layers {bad} do not exist; this model has hidden states 0..{available - 1}")


def default_layers(info: EncoderInfo, cfg: EncoderSettings, num_states: int) -> tuple[int, ...]:
    """The layers to keep: ``cfg.layers``, else ALARM's, else (small random models) as many spread evenly.

    A tiny model has fewer hidden states than the real one, so ALARM's indices may not exist there; it then
    keeps the same number of states spread over its depth, so tiny outputs have the real layer count.
    """
    if cfg.layers is not None:
        check_layers(info.name, cfg.layers, num_states)
        return cfg.layers
    if max(info.layers) < num_states:
        return info.layers
    count = min(len(info.layers), num_states - 1)
    return tuple(int(i) for i in np.unique(np.linspace(1, num_states - 1, count).round().astype(int)))


def window_samples(info: EncoderInfo, cfg: EncoderSettings) -> int:
    """Samples per window: ``cfg.window_seconds`` or the ALARM window, at the encoder's sample rate."""
    seconds = cfg.window_seconds if cfg.window_seconds is not None else info.window_seconds
    return int(round(seconds * info.sample_rate))


def stack_layers(hidden_states: Sequence[Any], layers: tuple[int, ...]) -> np.ndarray:
    """``(batch, frames, len(layers), dim)`` float32 numpy from a tuple of ``(batch, frames, dim)`` tensors."""
    import torch

    return torch.stack([hidden_states[i] for i in layers], dim=2).float().cpu().numpy()


