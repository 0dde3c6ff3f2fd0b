"""What a trained front end needs at inference: its weights, its feature specs, its encoders.

``load_trained`` reads a run folder (its latest checkpoint), a checkpoint folder or an export
folder; ``build_encoders`` rebuilds each encoder from the feature store's group spec and refuses
one whose spec (weights fingerprint included) differs from the one the adapter was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alarm.pipeline.configs import ConfigError, model_folder
from alarm.pipeline.objects import is_url


class SpecMismatchError(ConfigError):
    """The encoders or the store here are not the ones the adapter was trained on."""


@dataclass
class TrainedFrontEnd:
    """A trained front end and what it was trained with."""

    frontend: Any
    specs: dict[str, dict[str, Any]]
    """encoder -> group spec (``{"encoder": ..., "store": ...}``), in front-end order."""
    spec_ids: dict[str, str]
    llm: str
    separator: str
    precision: str
    readers: dict[str, Any]
    """The store's readers of the groups it was trained on (empty for an export loaded without a store)."""


def load_trained(source: str | Path, store: str | None = None, llm: str | None = None) -> TrainedFrontEnd:
    """Load the front end of a run folder, a checkpoint folder or an export folder (a path or a URL).

    ``llm`` overrides the LLM path the run recorded (its width sizes the front end).

    Raises:
        FileNotFoundError: Nothing loadable at ``source``.
        SpecMismatchError: The store has no group with the spec ids the checkpoint was trained on.
        ConfigError: A run/checkpoint needs its feature store and none is available.
    """
    from alarm.trainer.checkpoint import META_FILE, latest_checkpoint
    from alarm.trainer.export import INFO_FILE, load_export

    if is_url(str(source)):  # on object storage: a local copy of the checkpoint or export
        from alarm.trainer.run_remote import fetch_folder

        source = fetch_folder(str(source))
    source = Path(source)
    if (source / INFO_FILE).is_file():
        frontend, info = load_export(source)
        names = frontend.cfg.names  # export.json sorts its keys; the front end keeps the order
        specs = {name: info["encoders"][name]["spec"] for name in names}
        spec_ids = {name: info["encoders"][name]["spec_id"] for name in names}
        readers = open_trained_store(store, spec_ids) if store is not None else {}
        llm_path = model_folder(llm or info["llm"])
        from transformers import AutoConfig

        hidden = AutoConfig.from_pretrained(llm_path).hidden_size
        if hidden != frontend.cfg.llm_dim:  # else a shape error deep in generation
            raise ConfigError(f"{source} was exported for an LLM of hidden size {frontend.cfg.llm_dim}; "
                              f"{llm_path} has {hidden}: give the LLM it was trained with (--llm)")
        return TrainedFrontEnd(frontend, specs, spec_ids, llm_path,
                               info["prompt_layout"]["audio_prompt_separator"], "auto", readers)
    ckpt = source if (source / META_FILE).is_file() else latest_checkpoint(source)
    if ckpt is None:
        raise FileNotFoundError(f"{source} is neither an export folder, a checkpoint folder nor a run folder "
                                "with checkpoints")
    return _load_checkpoint(ckpt, store, llm)


def _load_checkpoint(ckpt: Path, store: str | None, llm: str | None) -> TrainedFrontEnd:
    from transformers import AutoConfig

    from alarm.pipeline.configs import from_dict
    from alarm.trainer.build import make_frontend
    from alarm.trainer.checkpoint import load_checkpoint
    from alarm.trainer.config import TrainConfig
    from alarm.trainer.frontend import load_weights

    state = load_checkpoint(ckpt)
    cfg = from_dict(TrainConfig, state.meta["config"])
    root = store or cfg.store
    if not root or not (is_url(str(root)) or Path(root).is_dir()):
        raise ConfigError(f"{ckpt} was trained on the feature store {cfg.store!r}, which is not here: pass the "
                          "store (--store) so the encoders can be rebuilt with its exact specs")
    spec_ids = {name: state.meta["store_spec_ids"][name] for name in cfg.encoders}  # front-end order
    readers = open_trained_store(root, spec_ids)
    llm = model_folder(llm or cfg.llm)
    frontend = make_frontend(cfg, readers, AutoConfig.from_pretrained(llm).hidden_size)
    load_weights(frontend, state.weights, str(ckpt))
    specs = {name: r.spec for name, r in readers.items()}
    return TrainedFrontEnd(frontend.eval(), specs, spec_ids, llm, cfg.audio_prompt_separator,
                           cfg.precision, readers)


def open_trained_store(root: str | Path, spec_ids: dict[str, str]) -> dict[str, Any]:
    """Readers of the groups ``spec_ids`` names; a missing group is a spec mismatch."""
    from alarm.pipeline.store import list_groups, open_features

    readers = {}
    for name, sid in spec_ids.items():
        groups = list_groups(root, name)
        if sid not in groups:
            raise SpecMismatchError(
                f"the adapter was trained on {name} features with spec id {sid}, but the store {root} holds "
                f"{', '.join(groups) or 'no ' + name + ' features'}: it was written with another encoder "
                "spec (checkpoint, weights, layers, window or storage); use the store the adapter was trained on")
        readers[name] = open_features(root, name, sid)
    return readers


def encoder_config_from_spec(encoder_spec: dict[str, Any], device: str) -> Any:
    """The ``EncoderConfig`` that rebuilds the encoder described by a store's encoder spec."""
    from alarm.pipeline.encoders import EncoderConfig

    preset, checkpoint, seed = encoder_spec["preset"], encoder_spec["checkpoint"], 0
    if preset == "full-size-random":
        checkpoint, seed = None, int(str(checkpoint).rsplit("@random-seed-", 1)[1])
    elif preset == "tiny" and str(checkpoint).startswith("tiny:"):
        checkpoint = None  # the cached tiny model (its fingerprint is checked after the build)
    return EncoderConfig(
        name=encoder_spec["encoder"], preset=preset, checkpoint=checkpoint, layers=tuple(encoder_spec["layers"]),
        device=device, dtype=encoder_spec["compute_dtype"], seed=seed,
        # The hop is the window's stride in the clip (SSLAM's windows overlap by a fraction of a frame).
        window_seconds=encoder_spec["hop_samples"] / encoder_spec["sample_rate"])


def check_encoder_spec(name: str, built: dict[str, Any], trained: dict[str, Any]) -> None:
    """Refuse an encoder whose spec differs from the one the adapter's features were computed with.

    Raises:
        SpecMismatchError: Naming every differing key (weights_sha256: other weights).
    """
    differ = sorted(k for k in set(built) | set(trained) if built.get(k) != trained.get(k))
    if not differ:
        return
    detail = "; ".join(f"{k}: trained {trained.get(k)!r}, here {built.get(k)!r}" for k in differ[:4])
    hint = " (other weights than the adapter was trained on)" if "weights_sha256" in differ else ""
    raise SpecMismatchError(f"encoder {name} differs from the spec of its training features in "
                            f"{', '.join(differ)}{hint}: {detail}")


def build_encoders(specs: dict[str, dict[str, Any]], device: str) -> dict[str, Any]:
    """Rebuild each encoder from its store group spec and check it is the very same encoder."""
    from alarm.pipeline.encoders import build_encoder

    encoders = {}
    for name, spec in specs.items():
        encoder = build_encoder(encoder_config_from_spec(spec["encoder"], device))
        check_encoder_spec(name, encoder.spec(), spec["encoder"])
        encoders[name] = encoder
    return encoders
