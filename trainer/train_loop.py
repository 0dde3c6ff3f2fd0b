"""The loop of ``train(cfg)``: accumulate, clip, step, log; evaluate and checkpoint on schedule.

Every function takes the run's ``Session`` (train_state.py) and reads alone: ``run_loop`` walks the
epochs, ``optimizer_step`` is one step over ``grad_accum`` micro-batches, ``evaluate`` is the loss
per dataset plus a few greedy samples, ``save`` writes a checkpoint, ``finish`` the last of both.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from alarm.pipeline.configs import to_dict
from alarm.trainer.distributed import all_reduce, gather_objects, sync_grads
from alarm.trainer.run_log import last_eval_losses
from alarm.trainer.train_state import Session, TrainResult


def run_loop(s: Session, result: TrainResult) -> None:
    """Optimiser steps until ``total_steps`` or the last epoch; losses go to ``result``."""
    from tqdm import tqdm

    from alarm.trainer.data import make_loader

    cfg, pos, data = s.cfg, s.position, s.data
    bar = tqdm(total=data.total_steps, initial=pos.step, disable=not (s.run.dist.main and cfg.progress),
               unit="step", dynamic_ncols=True)
    tokens_seen, clock = 0, time.perf_counter()
    while pos.step < data.total_steps and pos.epoch < cfg.epochs:
        # A leftover of fewer than grad_accum micro-batches at the end of an epoch is not used.
        usable = data.steps_in_epoch[pos.epoch] * cfg.grad_accum
        data.sampler.set_epoch(pos.epoch, pos.start, stop=usable)
        micro: list[dict[str, Any]] = []
        for batch in make_loader(data.train_set, data.sampler, cfg.num_workers, seed=cfg.seed + pos.epoch):
            data.skip_log.add(batch["skipped"])
            micro.append(batch)
            pos.start += 1
            if len(micro) < cfg.grad_accum:
                continue
            step_loss, grad_norm = optimizer_step(s, micro)
            pos.step += 1
            tokens_seen += sum(b["n_tokens"] for b in micro) * s.run.dist.world
            micro = []
            result.losses.append(step_loss)
            elapsed = time.perf_counter() - clock
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens_seen / max(elapsed, 1e-9):.0f}")
            if pos.step % cfg.log_every == 0 or pos.step == data.total_steps:
                s.log({"step": pos.step, "epoch": pos.epoch, "loss": step_loss, "lr": s.scheduler.get_last_lr()[0],
                       "grad_norm": float(grad_norm), "tokens_per_s": tokens_seen / max(elapsed, 1e-9)})
            if pos.start >= usable:  # the epoch is done: a checkpoint taken now resumes in the next one
                pos.epoch, pos.start = pos.epoch + 1, 0
            if cfg.eval_every and pos.step % cfg.eval_every == 0 and pos.step < data.total_steps:
                result.eval_losses = evaluate(s)
            if pos.step % cfg.save_every == 0 and pos.step < data.total_steps:
                result.checkpoint = save(s) or result.checkpoint
            if pos.step >= data.total_steps:
                break
        if pos.start >= usable:  # resumed exactly at an epoch's end
            pos.epoch, pos.start = pos.epoch + 1, 0
    bar.close()
    result.step = pos.step


def optimizer_step(s: Session, micro: list[dict[str, Any]]) -> tuple[float, Any]:
    """One optimiser step over ``grad_accum`` micro-batches: the step's loss (all processes) and grad norm."""
    import torch

    dist, device, params = s.run.dist, s.run.device, s.parts.params
    # Normalise by the target tokens of the whole step, over every process.
    n_target = all_reduce(torch.tensor([float(sum(b["n_target_tokens"] for b in micro))], device=device), dist)
    step_loss = torch.zeros(1, device=device)
    for b in micro:
        if not b["instance_ids"]:  # every clip of it was in a damaged store part
            continue
        row_loss, _ = s.parts.model.loss(b)
        loss = row_loss.sum() / n_target[0]
        loss.backward()
        step_loss += loss.detach()
    if dist.world > 1:
        sync_grads(params, s.parts.frontend, dist)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, s.cfg.grad_clip)
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    return float(all_reduce(step_loss, dist)[0]), grad_norm


def evaluate(s: Session) -> dict[str, float]:
    """Validation loss per dataset (all processes), logged with a few greedy samples; back in train mode after."""
    import torch

    from alarm.trainer.data import make_loader

    cfg, parts, data = s.cfg, s.parts, s.data
    parts.frontend.eval()
    parts.llm.eval()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    samples = []
    with torch.no_grad():
        loader = make_loader(data.val_set, data.val_sampler, cfg.num_workers, seed=cfg.seed)
        for b, batch in enumerate(loader):
            if cfg.eval_max_batches and b >= cfg.eval_max_batches:
                break
            data.skip_log.add(batch["skipped"])
            if not batch["instance_ids"]:
                continue
            row_loss, row_count = parts.model.loss(batch)
            for ds, l_, c in zip(batch["datasets"], row_loss.tolist(), row_count.tolist(), strict=True):
                sums[ds] = sums.get(ds, 0.0) + l_
                counts[ds] = counts.get(ds, 0.0) + c
        datasets = sorted(set(e.dataset for e in data.val_rows))
        totals = torch.tensor([[sums.get(d, 0.0), counts.get(d, 0.0)] for d in datasets], dtype=torch.float64)
        totals = all_reduce(totals.to(s.run.device), s.run.dist).cpu()
        if s.run.dist.main and cfg.sample_generations and data.val_rows:
            samples = _sample_generations(s)
    parts.frontend.train()
    parts.llm.train(cfg.gradient_checkpointing)
    losses = {d: float(t[0] / t[1]) for d, t in zip(datasets, totals, strict=True) if t[1] > 0}
    if losses:
        all_loss = float(totals[:, 0].sum() / totals[:, 1].sum())
        s.log({"step": s.position.step, "eval_loss": all_loss, "eval_loss_per_dataset": losses, "samples": samples})
    return losses


def _sample_generations(s: Session) -> list[dict[str, str]]:
    """Greedy answers for the first ``sample_generations`` validation rows (logged beside the eval loss)."""
    from alarm.trainer.data import collate

    val_set = s.data.val_set
    picks = [val_set[i] for i in range(min(s.cfg.sample_generations, len(val_set)))]
    picks = [p for p in picks if p["feats"] is not None]
    texts = s.parts.model.generate(collate(picks), s.parts.tokenizer, s.cfg.sample_max_new_tokens) if picks else []
    return [{"instance_id": row["example"].instance_id, "generated": text}
            for row, text in zip(picks, texts, strict=True)]


def save(s: Session) -> Path | None:
    """Write a checkpoint of the trainable weights, the optimiser, the schedule, the sampler position
    and every process's RNG (the main process writes; the others return None)."""
    from alarm.trainer import checkpoint as ck

    cfg, run, pos = s.cfg, s.run, s.position
    rng = gather_objects(ck.capture_rng(), run.dist)
    if not run.dist.main:
        return None
    names = s.parts.names
    opt_tensors, groups = ck.optimizer_to_flat(s.optimizer, names)
    meta = {"config": to_dict(cfg), "store_spec_ids": s.inputs.spec_ids, "targets_fingerprint": s.inputs.fingerprint,
            "optimizer_groups": groups, "scheduler": s.scheduler.state_dict(),
            "sampler": {"epoch": pos.epoch, "start": pos.start, "seed": cfg.seed, "world_size": run.dist.world},
            "rng": rng, "world_size": run.dist.world, "frozen": s.parts.frontend.frozen_parts(),
            "trainable": names, "total_steps": s.data.total_steps,
            # The run is over at this checkpoint: a rerun with the same config and data has nothing to do.
            "finished": pos.step >= s.data.total_steps or pos.epoch >= cfg.epochs}
    path = ck.save_checkpoint(run.run_dir, pos.step, s.parts.frontend.part_state_dict(), opt_tensors, meta,
                              keep=cfg.keep_checkpoints)
    if run.url:  # a run folder on object storage: put the checkpoint there (meta.json last)
        from alarm.trainer.run_remote import publish_checkpoint

        publish_checkpoint(run.url, run.run_dir, path)
    return path


def finish(s: Session, result: TrainResult) -> None:
    """The final evaluation and checkpoint, unless this call ran no step (they are on disk already)."""
    if s.inputs.latest is not None and s.position.step == s.position.resumed:
        # Nothing ran in this call: the checkpoint and its evaluation are already on disk (a second
        # evaluation would log the same step twice).
        result.eval_losses = last_eval_losses(s.log.path)
        return
    if s.data.val_rows:
        result.eval_losses = evaluate(s)
    result.checkpoint = save(s) or result.checkpoint
