"""The encoder facts cache: what a job needs of each encoder before it plans, kept per checkpoint identity.

A job needs a few facts of each encoder before it plans (its spec, with the weights fingerprint, and
its output shape). They take a model load to learn, so they are kept per checkpoint identity: a
rerun with nothing to compute loads no model. A stale entry cannot corrupt a store: the actors that
do load the model check their spec against the group the job planned (``check_spec``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alarm.pipeline.encoders import ENCODERS, EncoderConfig
from alarm.pipeline.encoders.base import ENCODER_CODE_VERSION, resolve_checkpoint_dir
from alarm.pipeline.store_layout import atomic_path

# The tiny builders' folder names, so that finding a built one imports no torch;
# tests/test_ray_embedded.py checks they match the builders.
TINY_FOLDERS = {name: info.tiny_folder for name, info in ENCODERS.items()}


def _tiny_checkpoint(name: str) -> Path:
    """The cached tiny checkpoint folder of ``name`` (built on first use)."""
    from alarm.pipeline.cache import alarm_cache_dir, fingerprint

    folder = alarm_cache_dir() / "models" / f"{TINY_FOLDERS[name]}-{fingerprint({'kind': TINY_FOLDERS[name]})}"
    if (folder / ".done").is_file():
        return folder
    return ENCODERS[name].build_tiny()


def checkpoint_identity(cfg: EncoderConfig) -> dict[str, Any] | None:
    """What identifies the weights ``cfg`` would load, without loading them.

    Every file of the checkpoint folder by relative name, size and modification time (a tiny
    checkpoint's folder name also carries its builder's hash). None where there are no files to look
    at: the ``full-size-random`` preset, or a checkpoint not available offline (building the encoder
    then raises the real error).
    """
    if cfg.preset == "full-size-random":
        return None
    try:
        if cfg.preset == "tiny" and cfg.checkpoint is None:
            folder = _tiny_checkpoint(cfg.name)
        else:
            folder = resolve_checkpoint_dir(cfg.checkpoint or ENCODERS[cfg.name].checkpoint)
    except FileNotFoundError:
        return None
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():  # follows the Hugging Face cache's symlinks to the blobs
            st = path.stat()
            files.append([path.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns])
    return {"folder": str(folder.resolve()), "files": files}


def _facts_path(cfg: EncoderConfig) -> Path | None:
    """The cache file of ``cfg``'s facts, keyed by everything they depend on; None if not cacheable."""
    from importlib.metadata import version

    from alarm.pipeline.cache import alarm_cache_dir, fingerprint

    identity = checkpoint_identity(cfg)
    if identity is None:
        return None
    key = {"identity": identity, "name": cfg.name, "preset": cfg.preset, "checkpoint": cfg.checkpoint,
           "layers": cfg.layers, "dtype": cfg.dtype, "window_seconds": cfg.window_seconds,
           "code_version": ENCODER_CODE_VERSION,
           # Library code builds the modules (state-dict names, buffers): a new version may differ.
           "libraries": {lib: version(lib) for lib in ("torch", "transformers")}}
    return alarm_cache_dir() / "encoder-facts" / f"{cfg.name}-{fingerprint(key)}.json"


FACT_KEYS = frozenset({"spec", "layers", "dim", "frame_rate", "sample_rate", "min_samples"})
"""What ``extract_stages.facts_of`` records of a built encoder; a cached entry must hold all of it."""


def cached_facts(cfg: EncoderConfig) -> dict[str, Any] | None:
    """The facts saved by ``save_facts`` for this checkpoint identity, or None."""
    path = _facts_path(cfg)
    if path is None or not path.is_file():
        return None
    try:
        facts = json.loads(path.read_text())
    except ValueError:  # a damaged entry is recomputed
        return None
    # An entry written before a fact was added (e.g. min_samples) is recomputed, never half-used.
    return facts if isinstance(facts, dict) and FACT_KEYS <= facts.keys() else None


def save_facts(cfg: EncoderConfig, facts: dict[str, Any]) -> None:
    """Keep ``facts`` (JSON: spec, layers, dim, frame_rate, sample_rate) for ``cached_facts``."""
    path = _facts_path(cfg)
    if path is None:
        return
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(facts, handle, sort_keys=True)
