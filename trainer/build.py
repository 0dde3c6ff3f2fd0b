"""What a training config builds before any step: the feature store's readers and the front end.

Training, the adapter cache, export and loading a trained front end all build them the same way,
so they live here, below all four.
"""

from __future__ import annotations

from typing import Any

from alarm.pipeline.configs import ConfigError
from alarm.trainer.config import TrainConfig


def open_readers(cfg: TrainConfig) -> dict[str, Any]:
    """The feature store's reader per configured encoder (a pinned spec id is enforced); a store on
    object storage is read through the configured part cache.

    Raises:
        DataError: An encoder has no features in the store, or none under the pinned spec.
    """
    from alarm.pipeline.objects import is_url
    from alarm.pipeline.part_cache import default_cache
    from alarm.pipeline.store import StoreSpecError, open_features
    from alarm.trainer.data import DataError

    cache = default_cache(cfg.cache_dir or None, cfg.cache_gb or None) if is_url(cfg.store) else None
    readers = {}
    for name in cfg.encoders:
        try:
            readers[name] = open_features(cfg.store, name, cfg.store_specs.get(name) or None, cache=cache)
        except StoreSpecError as err:
            raise DataError(f"feature store: {err}") from err
    return readers


def make_frontend(cfg: TrainConfig, readers: dict[str, Any], llm_dim: int) -> Any:
    """Build the front end for the store's shapes, load ``cfg.init`` weights, freeze ``cfg.freeze``.

    Raises:
        ConfigError: An init file holds weights this front end does not have.
    """
    from alarm.trainer.frontend import EncoderShape, FrontEndConfig, build_frontend, load_weights
    from alarm.trainer.run_remote import weights_from

    shapes = [EncoderShape(name, r.layers, r.dim) for name, r in readers.items()]
    frontend = build_frontend(FrontEndConfig(encoders=shapes, fusion=cfg.fusion, llm_dim=llm_dim, **cfg.frontend))
    for source in cfg.init:
        unexpected = load_weights(frontend, weights_from(source), f"init {source}").unexpected_keys
        if unexpected:
            raise ConfigError(f"init {source}: weights that this front end does not have: {unexpected[:10]}")
    if cfg.freeze:
        frontend.freeze(*cfg.freeze)
    return frontend
