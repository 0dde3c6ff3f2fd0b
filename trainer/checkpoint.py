"""Step checkpoints: trainable weights (safetensors) + optimiser tensors + JSON metadata.

A checkpoint is a folder ``<run>/checkpoints/step_00001234/`` holding

- ``trainable.safetensors``: the front end's trainable parameters and the buffers of its trained
  modules (BatchNorm statistics), nothing of the frozen LLM;
- ``optimizer.safetensors``: AdamW's moment and step tensors, keyed by parameter name;
- ``meta.json``: config, store spec ids, targets fingerprint, step, optimiser param groups,
  scheduler, sampler position and every rank's RNG states.

It is written to a temporary folder and renamed into place, so a folder that exists is complete.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alarm.pipeline.configs import ConfigError

WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
META_FILE = "meta.json"
STEP_PREFIX = "step_"


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    weights: dict[str, Any]
    optimizer_tensors: dict[str, Any]
    meta: dict[str, Any]


class DamagedCheckpointError(ConfigError):
    """A checkpoint folder whose files cannot be read (damaged on disk, or not written by ``save_checkpoint``)."""

    def __init__(self, path: Path, err: BaseException) -> None:
        before = [p for p in path.parent.glob(f"{STEP_PREFIX}*") if (p / META_FILE).is_file() and p.name < path.name]
        where = (f"move it away to resume from {max(before).name}" if before else "move it away")
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        super().__init__(f"checkpoint {path} is damaged ({reason}); {where}, or start --fresh")


def checkpoints_dir(run_dir: str | Path) -> Path:
    """Where a run keeps its step checkpoints."""
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The highest-step complete checkpoint of a run, or None."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return None
    done = [p for p in root.glob(f"{STEP_PREFIX}*") if (p / META_FILE).is_file()]
    return max(done, key=lambda p: int(p.name[len(STEP_PREFIX):]), default=None)


def optimizer_to_flat(optimizer: Any, names: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Split an optimiser state into named tensors and JSON-able param groups."""
    import torch

    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, slots in state["state"].items():
        for slot, value in slots.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{names[index]}::{slot}"] = value.detach().cpu().contiguous()
    return tensors, state["param_groups"]


def optimizer_from_flat(optimizer: Any, names: list[str], tensors: dict[str, Any],
                        groups: list[dict[str, Any]]) -> None:
    """Load what ``optimizer_to_flat`` produced into ``optimizer`` (same parameter order)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, slot = key.rsplit("::", 1)
        if name not in names:
            raise KeyError(f"optimizer state for unknown parameter {name}")
        state.setdefault(names.index(name), {})[slot] = value
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in groups]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU and CUDA) as JSON-able data."""
    import torch

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _jsonable(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *[_jsonable(x) for x in np_state[2:]]],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore RNG states saved by ``capture_rng``."""
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([
            torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy()) for s in state["cuda"]
        ])


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def save_checkpoint(run_dir: str | Path, step: int, weights: dict[str, Any], optimizer_tensors: dict[str, Any],
                    meta: dict[str, Any], keep: int = 0) -> Path:
    """Write a checkpoint atomically and prune older ones.

    Args:
        run_dir: The run folder.
        step: Optimiser steps done.
        weights: Trainable weights and trained buffers, by name.
        optimizer_tensors: From ``optimizer_to_flat``.
        meta: JSON-able metadata (config, data fingerprints, positions, RNG, param groups...).
        keep: Keep this many newest checkpoints (0: keep all).

    Returns:
        The checkpoint folder.
    """
    from safetensors.torch import save_file

    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in (*root.glob(".tmp-step-*"), *root.glob(".old-step-*")):  # what a killed save left
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"{STEP_PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-step-", dir=root))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS_FILE))
        save_file(optimizer_tensors, str(tmp / OPTIMIZER_FILE))
        (tmp / META_FILE).write_text(json.dumps(dict(meta, step=step), indent=1, sort_keys=True))
        if final.exists():  # a rerun of the same step (e.g. after a crash right after saving)
            _remove(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if keep > 0:
        done = sorted(p for p in root.glob(f"{STEP_PREFIX}*") if (p / META_FILE).is_file())
        for old in done[:-keep]:
            _remove(old)
    return final


def _remove(checkpoint: Path) -> None:
    """Delete a checkpoint folder, renamed aside first: a kill inside the delete would otherwise leave
    a folder with its meta.json but not all its tensors, which the next resume would pick."""
    aside = Path(tempfile.mkdtemp(prefix=".old-step-", dir=checkpoint.parent))
    checkpoint.rename(aside / checkpoint.name)
    shutil.rmtree(aside, ignore_errors=True)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint folder (weights, optimiser tensors, metadata)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {META_FILE})")
    optimizer_path = path / OPTIMIZER_FILE
    try:
        return Checkpoint(
            path=path,
            weights=load_file(str(path / WEIGHTS_FILE)),
            optimizer_tensors=load_file(str(optimizer_path)) if optimizer_path.is_file() else {},
            meta=json.loads((path / META_FILE).read_text()),
        )
    except Exception as err:  # safetensors raises its own error types for a truncated or foreign file
        raise DamagedCheckpointError(path, err) from None


def load_weights(source: str | Path) -> dict[str, Any]:
    """Front-end weights from a checkpoint folder, a run folder (its latest) or a .safetensors file."""
    from safetensors.torch import load_file

    source = Path(source)
    if source.is_file():
        return load_file(str(source))
    if (source / WEIGHTS_FILE).is_file():
        return load_file(str(source / WEIGHTS_FILE))
    latest = latest_checkpoint(source)
    if latest is None:
        raise FileNotFoundError(f"no weights at {source}: expected a .safetensors file, a checkpoint "
                                "folder or a run folder with checkpoints")
    return load_file(str(latest / WEIGHTS_FILE))
