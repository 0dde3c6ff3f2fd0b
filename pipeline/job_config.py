"""The feature job's settings: what to compute, with which encoders, on which Ray, into which store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alarm.pipeline.configs import ConfigError, from_dict
from alarm.pipeline.decode import DecodeConfig
from alarm.pipeline.encoders import ENCODERS
from alarm.pipeline.store_layout import StoreConfig

ALL_ENCODERS = tuple(ENCODERS)
POOLS = ("auto", "shared", "per-encoder")


@dataclass
class PipelineConfig:
    """One feature job.

    Attributes:
        store: store folder (created if missing) or object-store URL (``s3://bucket/prefix``, ``gs://...``;
            credentials and endpoint from the client's standard environment, e.g. ``AWS_*``).
        manifest: manifest path (JSONL/Parquet); exactly one of ``manifest`` and ``shards``.
        shards: WebDataset shard paths or brace patterns (``shards/{000..127}.tar``).
        encoders: registry keys to compute.
        preset: encoder preset: alarm (real checkpoints, offline), tiny, full-size-random.
        checkpoints: encoder -> local checkpoint folder or HF id (alarm preset).
        layers: encoder -> hidden-state indices to keep (default: docs/method.md §2).
        device: torch device of the encoder actors (``cpu`` or ``cuda``).
        compute_dtype: encoder compute dtype (float32, float16, bfloat16).
        batch_size: windows per encoder forward pass; 0 = 4 on CPU (the tiny encoders ran fastest
            there, and one batch of 30 s windows holds less memory), 8 on GPUs.
        decode: decoding settings (max clip length).
        storage: store layout (dtype, chunks, compression, part size).
        address: None (or ``local``): the job starts its own embedded Ray, even where a cluster runs on
            the machine; ``auto``: join the cluster ``ray start`` runs here; ``host:port``: join that one.
        num_cpus: CPUs of the embedded Ray (None: all).
        pools: ``per-encoder`` (one Ray Data actor pool per encoder, fed by decode tasks), ``shared``
            (one pool of actors each holding every encoder and decoding its own units), or ``auto``:
            shared on CPU (``device: cpu``), per-encoder with GPUs.
        shared_actors: size of the shared pool; 0 = one single-threaded actor per CPU (at most 8) for
            the ``tiny`` preset, else one actor with every CPU's threads.
        actors_per_encoder: actor pool size per encoder (per-encoder pools).
        cpus_per_actor: CPUs each encoder actor requests; None: 1 with GPUs, else a share of 3/4 of the
            CPUs, so the actors never hold every CPU and starve the decode tasks (a deadlock on 2 cores).
        gpus_per_actor: GPUs each encoder actor requests (0 on CPU machines).
        cpus_per_task: CPUs each decode task requests.
        torch_threads: torch threads per encoder actor; 0 = CPUs / number of actors.
        inflight_parts: if set, the object-store budget of the encode dataset in parts of decoded audio
            (bounds how far decoding runs ahead of the encoders). None: Ray Data's default budget. Values
            of a few parts stalled Ray Data 2.60 on 2 CPUs (each operator's share fell below one part).
        progress: show a progress bar.
        verify_checksums: before planning, recompute the checksum of every committed part's files and
            redo the parts that differ from their done marker (reads the store once); False checks
            only each part's files and shapes.
        force: start even when the store's disk has less free space than the job's estimate.
        lease_seconds: how long the job's lease on the store lasts unless renewed (every third of it);
            a killed job's lease blocks the next job on another host this long, and a job that cannot
            renew it for this long can no longer commit.
        stall_warning_seconds: on a cluster, warn when no part has finished for this long since a node
            died (the job then waits for room for that node's actors).
    """

    store: str
    manifest: str | None = None
    shards: list[str] | None = None
    encoders: list[str] = field(default_factory=lambda: list(ALL_ENCODERS))
    preset: str = "alarm"
    checkpoints: dict[str, str] = field(default_factory=dict)
    layers: dict[str, list[int]] = field(default_factory=dict)
    device: str = "cpu"
    compute_dtype: str = "float32"
    batch_size: int = 0
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    storage: StoreConfig = field(default_factory=StoreConfig)
    address: str | None = None
    num_cpus: int | None = None
    pools: str = "auto"
    shared_actors: int = 0
    actors_per_encoder: int = 1
    cpus_per_actor: float | None = None
    gpus_per_actor: float = 0.0
    cpus_per_task: float = 0.25
    torch_threads: int = 0
    inflight_parts: int | None = None
    progress: bool = True
    verify_checksums: bool = True
    force: bool = False
    lease_seconds: float = 60.0
    stall_warning_seconds: float = 600.0

    def __post_init__(self) -> None:
        from alarm.pipeline.cluster import joins_cluster

        if not joins_cluster(self.address):
            self.address = None  # "local" is the default: an embedded Ray

        if (self.manifest is None) == (self.shards is None):
            raise ConfigError("give exactly one input: manifest or shards")
        if isinstance(self.encoders, str):
            self.encoders = [e for e in self.encoders.split(",") if e]
        unknown = [e for e in self.encoders if e not in ENCODERS]
        if unknown or not self.encoders:
            raise ConfigError(f"unknown encoder(s) {unknown or '(none)'}; choose from {', '.join(ENCODERS)}")
        if len(set(self.encoders)) != len(self.encoders):
            raise ConfigError(f"encoders listed twice: {self.encoders}")
        if isinstance(self.decode, dict):
            self.decode = from_dict(DecodeConfig, self.decode, "decode")
        if isinstance(self.storage, dict):
            self.storage = from_dict(StoreConfig, self.storage, "storage")
        if self.actors_per_encoder < 1 or (self.cpus_per_actor or 0) < 0 or self.gpus_per_actor < 0:
            raise ConfigError("actors_per_encoder must be >= 1 and per-actor resources >= 0")
        if self.batch_size < 0:
            raise ConfigError(f"batch_size must be >= 0 (0: automatic), got {self.batch_size}")
        if self.pools not in POOLS:
            raise ConfigError(f"pools must be one of {', '.join(POOLS)}, got {self.pools!r}")
        if self.shared_actors < 0:
            raise ConfigError("shared_actors must be >= 0 (0: automatic)")
        if self.stall_warning_seconds <= 0:
            raise ConfigError("stall_warning_seconds must be positive")
        if self.cpus_per_task <= 0:
            raise ConfigError("cpus_per_task must be positive")
        if self.inflight_parts is not None and self.inflight_parts < 1:
            raise ConfigError("inflight_parts must be >= 1 (or null for Ray Data's default)")
        if self.lease_seconds <= 0:
            raise ConfigError(f"lease_seconds must be positive, got {self.lease_seconds}")
        if self.gpus_per_actor > 0 and not self.device.startswith("cuda"):
            raise ConfigError(f"gpus_per_actor={self.gpus_per_actor} needs device 'cuda', not {self.device!r}")

    def shared_pools(self) -> bool:
        """Whether the encoders share one actor pool (see ``pools``)."""
        if self.pools == "auto":
            return self.device == "cpu" and not self.gpus_per_actor
        return self.pools == "shared"

    def encoder_config(self, name: str) -> dict[str, Any]:
        """The EncoderConfig fields (as a dict, so it travels to Ray actors) for ``name``."""
        layers = self.layers.get(name)
        return {"name": name, "preset": self.preset, "checkpoint": self.checkpoints.get(name),
                "layers": tuple(layers) if layers else None, "device": self.device,
                "dtype": self.compute_dtype,
                "batch_size": self.batch_size or (4 if self.device == "cpu" else 8)}
