"""The second-level cache: outputs of frozen adapters, computed once, read by the fusion stage.

In the fusion stage the adapters are loaded from the single-encoder runs and frozen, so their
outputs never change: computing them once and training the fusion from them skips the adapters in
every step and reads fewer bytes (25 Hz x one width instead of 50 Hz x several layers).

The cache is a feature store of its own (pipeline.store layout, one group per encoder), whose rows
are ``(N, 1, D)``: the adapter's N output vectors. Its spec names the source store group and a hash
of the adapter weights, so a cache made from other weights or other features is refused. Writing
is resumable: parts are immutable and committed atomically, a rerun skips committed parts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from alarm.pipeline.configs import ConfigError
from alarm.trainer.config import TrainConfig, local_llm

CACHE_KIND = "alarm-adapter-output"
CACHE_VERSION = 1


def adapter_fingerprint(frontend: Any, name: str) -> str:
    """Hash of one adapter's weights and buffers (what its outputs depend on)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(frontend.part_state_dict([f"adapters.{name}"]).items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_spec(frontend: Any, name: str, source: Any, dtype: str) -> dict[str, Any]:
    """The group spec of one encoder's cached adapter outputs."""
    from alarm.pipeline.store_layout import StoreConfig, group_spec

    encoder = {"kind": CACHE_KIND, "version": CACHE_VERSION, "encoder": name, "source_spec_id": source.spec_id,
               "adapter": adapter_fingerprint(frontend, name)}
    return group_spec(encoder, StoreConfig(dtype=dtype))


def cache_adapter_outputs(cfg: TrainConfig, out: str | Path, batch_clips: int = 16, part_clips: int = 256,
                          dtype: str = "float32") -> dict[str, int]:
    """Run the frozen adapters of ``cfg`` over every clip of its targets into a cache store.

    Args:
        cfg: The fusion-stage config (its ``init`` weights give the adapters; ``freeze`` must hold
            "adapters").
        out: Cache store folder (``adapter_cache`` of the fusion config).
        batch_clips: Clips per adapter forward pass.
        part_clips: Clips per immutable part (the unit a rerun skips).
        dtype: Stored value type (float32 keeps training from the cache identical to training from
            raw features; float16 halves the bytes).

    Returns:
        Clips newly written per encoder.
    """
    import torch
    from transformers import AutoConfig

    from alarm.pipeline.part_writer import PartWriter
    from alarm.pipeline.store_index import write_index
    from alarm.pipeline.store_layout import StoreConfig, committed_parts, init_group
    from alarm.trainer.build import make_frontend, open_readers
    from alarm.trainer.data import read_targets

    if "adapters" not in cfg.freeze:
        raise ConfigError("cache-adapters caches frozen adapters: the config must freeze 'adapters'")
    if not cfg.init:
        raise ConfigError("cache-adapters needs trained adapters: set init to the single-encoder checkpoints")
    readers = open_readers(cfg)
    llm_dim = AutoConfig.from_pretrained(local_llm(cfg.llm)).hidden_size
    frontend = make_frontend(cfg, readers, llm_dim).eval()
    keys = sorted({k for k in read_targets(cfg.targets).column("clip_key").to_pylist() if k})
    missing = {n: [k for k in keys if k not in r] for n, r in readers.items()}
    if any(missing.values()):
        raise ConfigError(f"clips without features: { {n: m[:20] for n, m in missing.items() if m} }")
    written: dict[str, int] = {}
    store_cfg = StoreConfig(dtype=dtype)
    for name, reader in readers.items():
        spec = cache_spec(frontend, name, reader, dtype)
        adapter = frontend.adapters[name]
        group = None
        written[name] = 0
        for p, lo in enumerate(range(0, len(keys), part_clips)):
            part_keys = keys[lo:lo + part_clips]
            part_id = f"part-{p:06d}-{hashlib.sha256(''.join(part_keys).encode()).hexdigest()[:8]}"
            outputs = []
            for b in range(0, len(part_keys), batch_clips):
                chunk = [reader.read(k) for k in part_keys[b:b + batch_clips]]
                feats, lengths = _pad(chunk)
                with torch.no_grad():
                    values, out_lengths = adapter(feats, lengths)
                outputs += [values[i, : int(out_lengths[i])].float().numpy() for i in range(len(chunk))]
            if group is None:
                group = init_group(out, name, spec, layers=1, dim=outputs[0].shape[-1], frame_rate=25.0)
            if part_id in committed_parts(group):
                continue
            writer = PartWriter(group, part_id, sum(len(o) for o in outputs), 1, outputs[0].shape[-1], store_cfg)
            for key, values in zip(part_keys, outputs, strict=True):
                writer.append(key, values[:, None, :], reader.duration(key))
            writer.commit()
            written[name] += len(part_keys)
        if group is not None:
            write_index(group)
    return written


def _pad(arrays: list[np.ndarray]) -> tuple[Any, Any]:
    import torch

    longest = max(a.shape[0] for a in arrays)
    batch = np.zeros((len(arrays), longest, *arrays[0].shape[1:]), dtype=np.float32)
    for i, a in enumerate(arrays):
        batch[i, : a.shape[0]] = a
    return torch.from_numpy(batch), torch.tensor([a.shape[0] for a in arrays])


def open_adapter_cache(root: str | Path, frontend: Any, readers: dict[str, Any]) -> dict[str, Any]:
    """Readers of the cached adapter outputs matching ``frontend``'s adapters and the source store.

    Raises:
        ConfigError: The cache lacks an encoder, or was made from other adapter weights/features.
    """
    from alarm.pipeline.store import StoreSpecError, list_groups, open_features

    out = {}
    for name, reader in readers.items():
        groups = list_groups(root, name)
        matches = []
        for dtype in ("float32", "float16", "bfloat16", "int8"):
            try:
                matches.append(open_features(root, name, cache_spec(frontend, name, reader, dtype)))
            except StoreSpecError:
                continue
        if not matches:
            raise ConfigError(f"adapter cache {root} has no {name} outputs for these adapter weights and this "
                              f"store (groups present: {groups or 'none'}); run `alarm train cache-adapters`")
        out[name] = matches[0]
    return out
