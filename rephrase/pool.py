"""Runs chunks of generation work on engine replicas: in this process, or in Ray actors.

We drive offline ``vllm.LLM`` replicas from our own Ray actors rather than ``ray.data.llm``: the
stage needs per-chunk atomic cache writes (one writer, the driver), a two-step budget-forcing
round per chunk that must see the first step's text, and exact per-request seeds and token caps;
``ray.data.llm`` streams a dataset through a fixed processor and writes at the end, and needs the
``ray[llm]`` extra. An actor asks for ``tensor_parallel_size`` GPUs when the cluster has GPUs, so
adding nodes adds replicas.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from alarm.rephrase.engines import EngineConfig, load_engine
from alarm.rephrase.generation import Engine

T = TypeVar("T")
R = TypeVar("R")


class _EngineActor:
    """A Ray actor holding one engine replica."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.engine = load_engine(cfg)

    def run(self, fn: Callable[[Engine, Any], Any], chunk: Any) -> Any:
        return fn(self.engine, chunk)


class EnginePool:
    """Engine replicas that chunks of work are spread over.

    Args:
        cfg: the engine config; ``cfg.workers`` replicas as Ray actors, or 0 for one in-process.
    """

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.engine: Engine | None = None
        self.actors: list[Any] = []
        self.own_ray = False
        if cfg.workers == 0:
            self.engine = load_engine(cfg)
            return
        import ray

        from alarm.pipeline.cluster import init_ray

        if not ray.is_initialized():
            init_ray(cfg.address)  # our own local Ray unless cfg.address names a cluster
            self.own_ray = True
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        actor_cls = ray.remote(_EngineActor).options(
            num_cpus=cfg.cpus_per_worker, num_gpus=cfg.tensor_parallel_size if has_gpu else 0
        )
        inner = dataclasses.replace(cfg, workers=0)
        self.actors = [actor_cls.remote(inner) for _ in range(cfg.workers)]

    @classmethod
    def wrap(cls, engine: Engine) -> EnginePool:
        """A pool around an engine that is already loaded in this process."""
        pool = cls.__new__(cls)
        pool.cfg, pool.engine, pool.actors, pool.own_ray = None, engine, [], False
        return pool

    def map_chunks(self, fn: Callable[[Engine, T], R], chunks: Iterable[T]) -> Iterator[tuple[T, R]]:
        """Yield ``(chunk, fn(engine, chunk))`` as chunks finish (in any order with actors)."""
        if self.engine is not None:
            for chunk in chunks:
                yield chunk, fn(self.engine, chunk)
            return
        import ray

        pending: dict[Any, tuple[T, Any]] = {}
        todo = iter(chunks)
        idle = list(self.actors) * 2  # two chunks queued per actor keep it busy between chunks
        while True:
            while idle:
                chunk = next(todo, None)
                if chunk is None:
                    break
                actor = idle.pop()
                pending[actor.run.remote(fn, chunk)] = (chunk, actor)
            if not pending:
                return
            done, _ = ray.wait(list(pending), num_returns=1)
            chunk, actor = pending.pop(done[0])
            idle.append(actor)
            yield chunk, ray.get(done[0])

    def close(self) -> None:
        """Release the replicas (actors are killed; an in-process engine is dropped; a Ray we started ends)."""
        if self.actors:
            import ray

            for actor in self.actors:
                ray.kill(actor)
            if self.own_ray:
                ray.shutdown()
                self.own_ray = False
        elif self.engine is not None and hasattr(self.engine, "close"):
            self.engine.close()
        self.actors = []
        self.engine = None
