"""`train(cfg)`: the ALARM adapter/fusion trainer on a frozen LLM, as a list of named steps.

Steps: setup (distributed, device, seeds) -> data in (store, targets, the checkpoint to resume) ->
model (frozen LLM, front end, --init weights, --freeze parts) -> data (targets joined with the
feature store) -> optimiser -> resume -> loop (accumulate, clip, step, log) -> eval (loss per dataset
+ a few greedy samples) -> checkpoint. Each step is a function below that reads alone; the records
they hand on are in ``train_state.py``, the loop, eval and checkpoint in ``train_loop.py``.

Scale-out is torchrun (``torch.distributed``): ``torchrun --nproc_per_node 8 -m alarm.trainer.train C.yaml``
runs this same function on every process (NCCL on GPUs, gloo on CPUs). We chose it over Ray Train
because the trainable part is small (adapters/fusion, <100M parameters) next to a frozen LLM, so
all that is needed is one gradient all-reduce per optimiser step; torchrun adds no runtime beyond
torch and works across nodes with its rendezvous. The gradients are all-reduced by hand rather than
through DistributedDataParallel so the loss is normalised by the *global* number of target tokens of
the step: two processes then compute exactly what one process with two-fold accumulation computes.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

from alarm.pipeline.configs import ConfigError, model_folder, save_config, to_dict
from alarm.pipeline.store_layout import atomic_path
from alarm.trainer.build import make_frontend, open_readers
from alarm.trainer.config import TrainConfig
from alarm.trainer.distributed import barrier, broadcast_module, init_distributed
from alarm.trainer.run_log import RunLog, last_eval_losses, set_aside
from alarm.trainer.run_remote import is_remote, publish_run, pull, set_aside_remote, working_copy
from alarm.trainer.train_loop import finish, run_loop
from alarm.trainer.train_state import Data, Inputs, Parts, Position, Run, Session, TrainResult


class DataChangedError(RuntimeError):
    """A resumed run found other targets or another feature store than its checkpoint used."""


def train(cfg: TrainConfig, fresh: bool = False, allow_changed_data: bool = False) -> TrainResult:
    """Train the front end on cached features; resume from the run's latest checkpoint.

    Args:
        cfg: The configuration (trainer.config.TrainConfig).
        fresh: Ignore existing checkpoints in ``cfg.output_dir`` (they are overwritten step by step).
        allow_changed_data: Resume even if the targets or the store's spec ids differ from the checkpoint's.

    Returns:
        The run folder, the final step and checkpoint, the losses of this call, the last eval losses.

    Raises:
        ConfigError: Missing paths, unknown parts, bad init weights.
        DataError: Targets reference clips without features (listed).
        DataChangedError: Resuming onto changed data without ``allow_changed_data``.
    """
    from alarm.trainer.report import write_train_report

    run = start_run(cfg, fresh)                                   # setup: processes, device, seeds, folder
    inputs = open_inputs(cfg, run, fresh, allow_changed_data)     # data in (a resumed run checks it first)
    if finished_already(cfg, inputs):                             # a rerun of a finished run loads no model
        return TrainResult(run_dir=run.run_dir, step=inputs.state.meta["step"], checkpoint=inputs.latest,
                           eval_losses=last_eval_losses(run.run_dir / "logs.jsonl"))
    parts = build_model(cfg, run, inputs)                         # model: frozen LLM, front end
    data = make_data(cfg, run, inputs, parts)                     # data: join, samplers, datasets
    optimizer, scheduler = make_optimizer(cfg, parts, data)       # optimiser and schedule
    position = resume(run, inputs, parts, optimizer, scheduler)   # weights, optimiser, sampler, RNG
    log = RunLog(run.run_dir, position.step, main=run.dist.main)
    s = Session(cfg, run, inputs, parts, data, optimizer, scheduler, position, log)

    result = TrainResult(run_dir=run.run_dir, step=position.step, checkpoint=inputs.latest)
    run_loop(s, result)                                           # accumulate, clip, step, log, eval, save
    finish(s, result)                                             # final eval + checkpoint
    log.close()
    if run.dist.main:
        write_train_report(run.run_dir)  # report.json, report.md and loss.png beside the run
        if run.url:
            publish_run(run.url, run.run_dir)
    return result


def finished_already(cfg: TrainConfig, inputs: Inputs) -> bool:
    """Whether the checkpoint to resume from ends this very run: same config, data already checked.

    Then resuming would build the LLM and the front end only to find no step to take. Checkpoints
    written before the ``finished`` flag take the ordinary path.
    """
    if inputs.state is None or not inputs.state.meta.get("finished"):
        return False
    return inputs.state.meta.get("config") == to_dict(cfg)


def start_run(cfg: TrainConfig, fresh: bool) -> Run:
    """Check the paths, join the torchrun job, pick the device, prepare the run folder, seed everything."""
    import torch

    cfg.check_paths()
    llm_path = model_folder(cfg.llm)  # before any work: a model that is not on disk fails here, in one line
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    dist = init_distributed("cuda" if use_cuda else "cpu")
    device = torch.device(f"cuda:{dist.local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and use_cuda)
    # A run folder on object storage: work in a local copy filled from it, published at each checkpoint.
    url = cfg.output_dir if is_remote(cfg.output_dir) else ""
    run_dir = working_copy(url, dist.rank) if url else Path(cfg.output_dir)
    if dist.main:
        if url:
            if fresh:
                set_aside_remote(url)
            pull(url, run_dir, everything=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            set_aside(run_dir)
        with atomic_path(run_dir / "config.yaml") as tmp:  # whole or not at all: a resume reads it
            save_config(cfg, tmp)
    barrier(dist)
    if url and not dist.main:
        pull(url, run_dir, everything=False)  # the checkpoint to resume from
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the same on every process: the front end starts identical
    return Run(dist=dist, device=device, bf16=bf16, run_dir=run_dir, llm_path=llm_path, url=url)


def open_inputs(cfg: TrainConfig, run: Run, fresh: bool, allow_changed_data: bool) -> Inputs:
    """Open the store and the targets and load the checkpoint to resume from, refusing changed data.

    Raises:
        DataChangedError: The checkpoint was made from other targets or store specs (and
            ``allow_changed_data`` is off).
        ConfigError: The checkpoint was written by another number of processes.
    """
    from alarm.trainer import checkpoint as ck
    from alarm.trainer.data import read_targets, targets_fingerprint

    readers = open_readers(cfg)
    table = read_targets(cfg.targets)
    fingerprint = targets_fingerprint(table)
    spec_ids = {name: r.spec_id for name, r in readers.items()}
    latest = None if fresh else ck.latest_checkpoint(run.run_dir)
    try:
        state = ck.load_checkpoint(latest) if latest is not None else None
    except ck.DamagedCheckpointError as err:
        if not run.url:
            raise
        # Name the run's checkpoint on object storage: the local copy is pulled from it again on resume.
        raise ConfigError(str(err).replace(str(run.run_dir), run.url.rstrip("/"))) from None
    if state is not None:
        if not allow_changed_data:
            _check_resume_data(state.meta, spec_ids, fingerprint)
        if state.meta["sampler"]["world_size"] != run.dist.world:
            raise ConfigError(f"{latest} was written by {state.meta['sampler']['world_size']} process(es); resume "
                              f"with as many (the sampler position is per process) or start --fresh")
    return Inputs(readers=readers, table=table, fingerprint=fingerprint, spec_ids=spec_ids, latest=latest,
                  state=state)


def _check_resume_data(meta: dict[str, Any], spec_ids: dict[str, str], fingerprint: str) -> None:
    problems = []
    if meta.get("store_spec_ids") != spec_ids:
        problems.append(f"store spec ids {meta.get('store_spec_ids')} -> {spec_ids}")
    if meta.get("targets_fingerprint") != fingerprint:
        problems.append(f"targets fingerprint {meta.get('targets_fingerprint')} -> {fingerprint}")
    if problems:
        raise DataChangedError("the data changed since the checkpoint (" + "; ".join(problems) + "); start "
                               "fresh (--fresh), or continue anyway with --allow-changed-data")



def build_model(cfg: TrainConfig, run: Run, inputs: Inputs) -> Parts:
    """Load the frozen LLM, build the front end (``init`` weights, ``freeze``), open the adapter cache.

    Raises:
        ConfigError: ``freeze`` leaves nothing to train; bad init weights.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alarm.trainer.cache_adapters import open_adapter_cache
    from alarm.trainer.model import Model
    from alarm.trainer.sequence import PromptLayout

    dist, device = run.dist, run.device
    tokenizer = AutoTokenizer.from_pretrained(run.llm_path)
    layout = PromptLayout.from_tokenizer(tokenizer, cfg.audio_prompt_separator)
    llm = AutoModelForCausalLM.from_pretrained(run.llm_path, dtype=torch.bfloat16 if run.bf16 else torch.float32)
    llm.requires_grad_(False).eval().to(device)
    if cfg.gradient_checkpointing:  # recompute the frozen LLM's activations in the backward pass
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # Transformers checkpoints only in train mode; Qwen3 has no dropout, so nothing else changes.
        llm.train()
    frontend = make_frontend(cfg, inputs.readers, llm.config.hidden_size)
    frontend.to(device).train()
    if dist.world > 1:
        broadcast_module(frontend)
        if dist.rank:  # from here on (dropout) each process has its own stream; rank 0 keeps seed's
            torch.manual_seed(cfg.seed + dist.rank)
    named = [(n, p) for n, p in frontend.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError(f"freeze {cfg.freeze} leaves nothing to train")
    sources = inputs.readers
    if cfg.adapter_cache:
        sources = open_adapter_cache(cfg.adapter_cache, frontend, inputs.readers)
    model = Model(llm, frontend, layout, cfg.max_seq_len, device, torch.bfloat16 if run.bf16 else None,
                  cached=bool(cfg.adapter_cache))
    return Parts(tokenizer=tokenizer, layout=layout, llm=llm, frontend=frontend, named=named, sources=sources,
                 model=model)


def make_data(cfg: TrainConfig, run: Run, inputs: Inputs, parts: Parts) -> Data:
    """Join the targets with the store, write the rejects, and plan the batches and steps of every epoch.

    Raises:
        ConfigError: No usable training row; an epoch too small for one optimiser step.
    """
    import torch

    from alarm.trainer.data import FeatureDataset, SkipLog, TokenBudgetSampler, join_targets, write_rejects

    dist, run_dir = run.dist, run.run_dir

    def count_audio(frames: dict[str, np.ndarray]) -> np.ndarray:
        return parts.frontend.output_lengths({k: torch.as_tensor(v) for k, v in frames.items()}).numpy()

    joined = join_targets(inputs.table, inputs.readers, parts.layout, parts.tokenizer, count_audio, cfg.max_seq_len)
    if dist.main:
        write_rejects(joined.rejects, run_dir / "rejects.jsonl")
    skip_log = SkipLog(run_dir / "rejects.jsonl")  # clips of damaged store parts, met mid-run
    train_rows = joined.splits.get("train", [])
    val_rows = joined.splits.get("validation", [])
    if not train_rows:
        why = (f"all {len(val_rows)} usable rows are in the validation split" if val_rows else
               f"see {run_dir / 'rejects.jsonl'}" if joined.rejects else "the targets file has no rows")
        raise ConfigError(f"no usable training rows in {cfg.targets} ({why})")
    seen = {e.clip_key for e in train_rows}
    shared = sum(e.clip_key in seen for e in val_rows)
    if shared and dist.main:  # not an error (several prompts per clip split by instance), but never silent
        print(f"warning: {shared} of {len(val_rows)} validation rows share their clip with training rows: their "
              "loss is measured on audio the model trains on (split targets by clip)", file=sys.stderr)
    sampler = TokenBudgetSampler([e.n_tokens for e in train_rows], cfg.batch_tokens, cfg.seed, cfg.bucket_size,
                                 rank=dist.rank, world_size=dist.world)
    val_sampler = TokenBudgetSampler([e.n_tokens for e in val_rows], cfg.batch_tokens, cfg.seed, cfg.bucket_size,
                                     shuffle=False, rank=dist.rank, world_size=dist.world)
    train_set, val_set = FeatureDataset(train_rows, parts.sources), FeatureDataset(val_rows, parts.sources)
    steps_in_epoch = [len(sampler.batches(e)) // cfg.grad_accum for e in range(cfg.epochs)]
    if steps_in_epoch[0] == 0:
        raise ConfigError(f"an epoch has fewer batches than grad_accum x processes "
                          f"({cfg.grad_accum} x {dist.world}); lower batch_tokens or grad_accum")
    planned = sum(steps_in_epoch)
    total_steps = min(planned, cfg.max_steps) if cfg.max_steps else planned
    return Data(skip_log=skip_log, train_rows=train_rows, val_rows=val_rows, sampler=sampler,
                val_sampler=val_sampler, train_set=train_set, val_set=val_set, steps_in_epoch=steps_in_epoch,
                planned=planned, total_steps=total_steps)


def make_optimizer(cfg: TrainConfig, parts: Parts, data: Data) -> tuple[Any, Any]:
    """AdamW over the trainable parameters and its warm-up + cosine schedule."""
    import torch

    optimizer = torch.optim.AdamW(parts.params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                  weight_decay=cfg.weight_decay)
    schedule_total = cfg.schedule_steps or data.planned  # never max_steps: a stopped run keeps its schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, schedule_total))
    return optimizer, scheduler


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))



def resume(run: Run, inputs: Inputs, parts: Parts, optimizer: Any, scheduler: Any) -> Position:
    """Restore the checkpoint's weights, optimiser, schedule, sampler position and RNG (step 0 when fresh)."""
    from alarm.trainer import checkpoint as ck
    from alarm.trainer.frontend import load_weights

    position = Position()
    state = inputs.state
    if state is not None:
        load_weights(parts.frontend, state.weights, f"the checkpoint in {run.run_dir}")
        ck.optimizer_from_flat(optimizer, parts.names, state.optimizer_tensors, state.meta["optimizer_groups"])
        scheduler.load_state_dict(state.meta["scheduler"])
        position.step = state.meta["step"]
        position.epoch, position.start = state.meta["sampler"]["epoch"], state.meta["sampler"]["start"]
        ck.restore_rng(state.meta["rng"][run.dist.rank])
        inputs.state = None  # the checkpoint's tensors are restored: free them
    position.resumed = position.step
    return position


def main(argv: list[str] | None = None) -> None:
    """``python -m alarm.trainer.train C.yaml [--fresh] [--allow-changed-data]`` (what torchrun launches)."""
    import argparse

    from alarm.pipeline.configs import load_config

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("config")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--allow-changed-data", action="store_true")
    args = parser.parse_args(argv)
    result = train(load_config(TrainConfig, args.config), fresh=args.fresh,
                   allow_changed_data=args.allow_changed_data)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"step": result.step, "checkpoint": str(result.checkpoint),
                          "eval_losses": result.eval_losses}))


if __name__ == "__main__":
    main()
