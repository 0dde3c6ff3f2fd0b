"""`train(cfg)`: the ALARM adapter/fusion trainer on a frozen LLM, in named sections.

Sections: setup (distributed, device, seeds) -> data (targets joined with the feature store) ->
model (frozen LLM, front end, --init weights, --freeze parts) -> optimiser -> resume -> loop
(accumulate, clip, step, log) -> eval (loss per dataset + a few greedy samples) -> checkpoint.

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alarm.pipeline.configs import ConfigError, save_config, to_dict
from alarm.trainer.config import TrainConfig, local_llm


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves."""

    run_dir: Path
    step: int
    checkpoint: Path | None
    losses: list[float] = field(default_factory=list)
    """Training loss per optimiser step run in this call (token-mean over all processes)."""
    eval_losses: dict[str, float] = field(default_factory=dict)
    """Validation loss per dataset at the last evaluation."""


class DataChangedError(RuntimeError):
    """A resumed run found other targets or another feature store than its checkpoint used."""


@dataclass
class Dist:
    """This process's place in a torch.distributed job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_kind: str) -> Dist:
    import torch.distributed as tdist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Dist(rank=tdist.get_rank(), world=tdist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def _all_reduce(tensor: Any, dist: Dist) -> Any:
    """Sum ``tensor`` over processes in place (no-op in a single process)."""
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.all_reduce(tensor)
    return tensor


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def target_loss(llm: Any, batch: Any) -> tuple[Any, Any]:
    """Per-row summed cross-entropy on target tokens and per-row target-token counts.

    Only the target positions go through the LM head (a 4096 x 151k logit matrix per row would
    dominate memory otherwise).
    """
    import torch
    import torch.nn.functional as F

    hidden = llm.get_decoder()(inputs_embeds=batch.inputs_embeds,
                               attention_mask=batch.attention_mask).last_hidden_state
    labels = batch.labels[:, 1:]
    keep = labels != -100
    logits = llm.get_output_embeddings()(hidden[:, :-1][keep]).float()
    token_loss = F.cross_entropy(logits, labels[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    batch_size = labels.shape[0]
    sums = torch.zeros(batch_size, device=logits.device).index_add(0, rows, token_loss)
    counts = torch.zeros(batch_size, device=logits.device).index_add(0, rows, torch.ones_like(token_loss))
    return sums, counts


class Model:
    """The frozen LLM, the trainable front end and the prompt layout, with one step's forward."""

    def __init__(self, llm: Any, frontend: Any, layout: Any, max_seq_len: int, device: Any,
                 autocast_dtype: Any, cached: bool) -> None:
        import torch

        self.llm, self.frontend, self.layout = llm, frontend, layout
        self.max_seq_len, self.device = max_seq_len, device
        self.autocast_dtype, self.cached = autocast_dtype, cached
        self.head_ids = torch.tensor(layout.head_ids, dtype=torch.long)

    def autocast(self) -> Any:
        import contextlib

        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def audio(self, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Front-end output for a collated batch (raw features, or second-level cache rows)."""
        from alarm.trainer.adapters import AdapterOutput

        feats = {k: v.to(self.device, non_blocking=True).float() for k, v in batch["feats"].items()}
        lengths = {k: v.to(self.device) for k, v in batch["lengths"].items()}
        if self.cached:  # rows are frozen adapter outputs stored as (N, 1, D)
            adapted = {k: AdapterOutput(v.squeeze(2), lengths[k]) for k, v in feats.items()}
            return self.frontend({}, {}, adapted=adapted)
        return self.frontend(feats, lengths)

    def loss(self, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Per-row target loss sums and token counts for a collated batch."""
        from alarm.trainer.sequence import assemble_batch

        with self.autocast():
            audio, audio_lengths = self.audio(batch)
            assembled = assemble_batch(audio, audio_lengths, self.head_ids, batch["prompt_ids"],
                                       batch["target_ids"], self.llm.get_input_embeddings(), self.max_seq_len)
            return target_loss(self.llm, assembled)

    def generate(self, batch: dict[str, Any], tokenizer: Any, max_new_tokens: int) -> list[str]:
        """Greedy answers for each row of a batch (evaluation samples)."""
        import torch

        from alarm.trainer.sequence import prompt_embeds

        texts = []
        with self.autocast():
            audio, audio_lengths = self.audio(batch)
            for i in range(audio.shape[0]):
                embeds = prompt_embeds(audio[i], int(audio_lengths[i]), self.head_ids, batch["prompt_ids"][i],
                                       self.llm.get_input_embeddings())
                mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
                out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                        do_sample=False, temperature=None, top_p=None, top_k=None,
                                        pad_token_id=tokenizer.pad_token_id)
                texts.append(tokenizer.decode(out[0], skip_special_tokens=False))
        return texts


def open_readers(cfg: TrainConfig) -> dict[str, Any]:
    """The feature store's reader per configured encoder (a pinned spec id is enforced).

    Raises:
        DataError: An encoder has no features in the store, or none under the pinned spec.
    """
    from alarm.pipeline.store import StoreSpecError, open_features
    from alarm.trainer.data import DataError

    readers = {}
    for name in cfg.encoders:
        try:
            readers[name] = open_features(cfg.store, name, cfg.store_specs.get(name) or None)
        except StoreSpecError as err:
            raise DataError(f"feature store: {err}") from err
    return readers


def make_frontend(cfg: TrainConfig, readers: dict[str, Any], llm_dim: int) -> Any:
    """Build the front end for the store's shapes, load ``cfg.init`` weights, freeze ``cfg.freeze``.

    Raises:
        ConfigError: An init file holds weights this front end does not have.
    """
    from alarm.trainer.checkpoint import load_weights
    from alarm.trainer.frontend import EncoderShape, FrontEndConfig, build_frontend

    shapes = [EncoderShape(name, r.layers, r.dim) for name, r in readers.items()]
    frontend = build_frontend(FrontEndConfig(encoders=shapes, fusion=cfg.fusion, llm_dim=llm_dim, **cfg.frontend))
    for source in cfg.init:
        unexpected = frontend.load_state_dict(load_weights(source), strict=False).unexpected_keys
        if unexpected:
            raise ConfigError(f"init {source}: weights that this front end does not have: {unexpected[:10]}")
    if cfg.freeze:
        frontend.freeze(*cfg.freeze)
    return frontend


def _check_resume_data(meta: dict[str, Any], spec_ids: dict[str, str], fingerprint: str) -> None:
    problems = []
    if meta.get("store_spec_ids") != spec_ids:
        problems.append(f"store spec ids {meta.get('store_spec_ids')} -> {spec_ids}")
    if meta.get("targets_fingerprint") != fingerprint:
        problems.append(f"targets fingerprint {meta.get('targets_fingerprint')} -> {fingerprint}")
    if problems:
        raise DataChangedError("the data changed since the checkpoint (" + "; ".join(problems) + "); start "
                               "fresh (--fresh), or continue anyway with --allow-changed-data")


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
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alarm.trainer import checkpoint as ck
    from alarm.trainer.cache_adapters import open_adapter_cache
    from alarm.trainer.data import (
        FeatureDataset,
        SkipLog,
        TokenBudgetSampler,
        join_targets,
        make_loader,
        read_targets,
        targets_fingerprint,
        write_rejects,
    )
    from alarm.trainer.sequence import PromptLayout

    # ---------------------------------------------------------------- setup
    cfg.check_paths()
    llm_path = local_llm(cfg.llm)  # before any work: a model that is not on disk fails here, in one line
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    dist = _init_distributed("cuda" if use_cuda else "cpu")
    device = torch.device(f"cuda:{dist.local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and use_cuda)
    run_dir = Path(cfg.output_dir)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            _set_aside(run_dir)
        save_config(cfg, run_dir / "config.yaml")
    _barrier(dist)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the same on every process: the front end starts identical

    # ---------------------------------------------------------------- data in (a resumed run checks it first)
    readers = open_readers(cfg)
    table = read_targets(cfg.targets)
    fingerprint = targets_fingerprint(table)
    spec_ids = {name: r.spec_id for name, r in readers.items()}
    latest = None if fresh else ck.latest_checkpoint(run_dir)
    state = ck.load_checkpoint(latest) if latest is not None else None
    if state is not None:
        if not allow_changed_data:
            _check_resume_data(state.meta, spec_ids, fingerprint)
        if state.meta["sampler"]["world_size"] != dist.world:
            raise ConfigError(f"{latest} was written by {state.meta['sampler']['world_size']} process(es); resume "
                              f"with as many (the sampler position is per process) or start --fresh")

    # ---------------------------------------------------------------- model (frozen LLM, front end)
    tokenizer = AutoTokenizer.from_pretrained(llm_path)
    layout = PromptLayout.from_tokenizer(tokenizer, cfg.audio_prompt_separator)
    llm = AutoModelForCausalLM.from_pretrained(llm_path, dtype=torch.bfloat16 if bf16 else torch.float32)
    llm.requires_grad_(False).eval().to(device)
    if cfg.gradient_checkpointing:  # recompute the frozen LLM's activations in the backward pass
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # Transformers checkpoints only in train mode; Qwen3 has no dropout, so nothing else changes.
        llm.train()
    frontend = make_frontend(cfg, readers, llm.config.hidden_size)
    frontend.to(device).train()
    if dist.world > 1:
        _broadcast_module(frontend)
        if dist.rank:  # from here on (dropout) each process has its own stream; rank 0 keeps seed's
            torch.manual_seed(cfg.seed + dist.rank)
    named = [(n, p) for n, p in frontend.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError(f"freeze {cfg.freeze} leaves nothing to train")
    names = [n for n, _ in named]
    sources = readers
    if cfg.adapter_cache:
        sources = open_adapter_cache(cfg.adapter_cache, frontend, readers)
    model = Model(llm, frontend, layout, cfg.max_seq_len, device, torch.bfloat16 if bf16 else None,
                  cached=bool(cfg.adapter_cache))

    # ---------------------------------------------------------------- data (join, sampler, loaders)
    def count_audio(frames: dict[str, np.ndarray]) -> np.ndarray:
        return frontend.output_lengths({k: torch.as_tensor(v) for k, v in frames.items()}).numpy()

    joined = join_targets(table, readers, layout, tokenizer, count_audio, cfg.max_seq_len)
    if dist.main:
        write_rejects(joined.rejects, run_dir / "rejects.jsonl")
    skip_log = SkipLog(run_dir / "rejects.jsonl")  # clips of damaged store parts, met mid-run
    train_rows = joined.splits.get("train", [])
    val_rows = joined.splits.get("validation", [])
    if not train_rows:
        raise ConfigError(f"no usable training rows in {cfg.targets} (see {run_dir / 'rejects.jsonl'})")
    sampler = TokenBudgetSampler([e.n_tokens for e in train_rows], cfg.batch_tokens, cfg.seed, cfg.bucket_size,
                                 rank=dist.rank, world_size=dist.world)
    val_sampler = TokenBudgetSampler([e.n_tokens for e in val_rows], cfg.batch_tokens, cfg.seed, cfg.bucket_size,
                                     shuffle=False, rank=dist.rank, world_size=dist.world)
    train_set, val_set = FeatureDataset(train_rows, sources), FeatureDataset(val_rows, sources)
    steps_in_epoch = [len(sampler.batches(e)) // cfg.grad_accum for e in range(cfg.epochs)]
    if steps_in_epoch[0] == 0:
        raise ConfigError(f"an epoch has fewer batches than grad_accum x processes "
                          f"({cfg.grad_accum} x {dist.world}); lower batch_tokens or grad_accum")
    planned = sum(steps_in_epoch)
    total_steps = min(planned, cfg.max_steps) if cfg.max_steps else planned

    # ---------------------------------------------------------------- optimiser
    optimizer = torch.optim.AdamW([p for _, p in named], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                  weight_decay=cfg.weight_decay)
    schedule_total = cfg.schedule_steps or planned  # never max_steps: a stopped run keeps its schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, schedule_total))

    # ---------------------------------------------------------------- resume
    step, epoch, start = 0, 0, 0
    if state is not None:
        frontend.load_state_dict(state.weights, strict=False)
        ck.optimizer_from_flat(optimizer, names, state.optimizer_tensors, state.meta["optimizer_groups"])
        scheduler.load_state_dict(state.meta["scheduler"])
        step, epoch, start = state.meta["step"], state.meta["sampler"]["epoch"], state.meta["sampler"]["start"]
        ck.restore_rng(state.meta["rng"][dist.rank])
        del state
    resumed_step = step
    log_path = run_dir / "logs.jsonl"
    if dist.main:  # a killed run may have logged steps past its last checkpoint: they are run again
        truncate_log(log_path, step)
    writer = _tensorboard(run_dir, purge_step=step + 1) if dist.main else None

    def log(record: dict[str, Any]) -> None:
        if not dist.main:
            return
        with open(log_path, "a") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        if writer is not None:
            for key, value in _flat_scalars(record).items():
                writer.add_scalar(key, value, record["step"])

    # ---------------------------------------------------------------- eval
    def evaluate() -> dict[str, float]:
        frontend.eval()
        llm.eval()
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        samples = []
        with torch.no_grad():
            loader = make_loader(val_set, val_sampler, cfg.num_workers, seed=cfg.seed)
            for b, batch in enumerate(loader):
                if cfg.eval_max_batches and b >= cfg.eval_max_batches:
                    break
                skip_log.add(batch["skipped"])
                if not batch["instance_ids"]:
                    continue
                row_loss, row_count = model.loss(batch)
                for ds, l_, c in zip(batch["datasets"], row_loss.tolist(), row_count.tolist(), strict=True):
                    sums[ds] = sums.get(ds, 0.0) + l_
                    counts[ds] = counts.get(ds, 0.0) + c
            datasets = sorted(set(e.dataset for e in val_rows))
            totals = torch.tensor([[sums.get(d, 0.0), counts.get(d, 0.0)] for d in datasets], dtype=torch.float64)
            totals = _all_reduce(totals.to(device), dist).cpu()
            if dist.main and cfg.sample_generations and val_rows:
                from alarm.trainer.data import collate

                picks = [val_set[i] for i in range(min(cfg.sample_generations, len(val_set)))]
                picks = [p for p in picks if p["feats"] is not None]
                texts = model.generate(collate(picks), tokenizer, cfg.sample_max_new_tokens) if picks else []
                for row, text in zip(picks, texts, strict=True):
                    samples.append({"instance_id": row["example"].instance_id, "generated": text})
        frontend.train()
        llm.train(cfg.gradient_checkpointing)
        losses = {d: float(t[0] / t[1]) for d, t in zip(datasets, totals, strict=True) if t[1] > 0}
        if losses:
            all_loss = float(totals[:, 0].sum() / totals[:, 1].sum())
            log({"step": step, "eval_loss": all_loss, "eval_loss_per_dataset": losses, "samples": samples})
        return losses

    # ---------------------------------------------------------------- checkpoint
    def save() -> Path | None:
        rng = [ck.capture_rng()]
        if dist.world > 1:
            import torch.distributed as tdist

            gathered: list[Any] = [None] * dist.world
            tdist.all_gather_object(gathered, rng[0])
            rng = gathered
        if not dist.main:
            return None
        opt_tensors, groups = ck.optimizer_to_flat(optimizer, names)
        meta = {"config": to_dict(cfg), "store_spec_ids": spec_ids, "targets_fingerprint": fingerprint,
                "optimizer_groups": groups, "scheduler": scheduler.state_dict(),
                "sampler": {"epoch": epoch, "start": start, "seed": cfg.seed, "world_size": dist.world},
                "rng": rng, "world_size": dist.world, "frozen": frontend.frozen_parts(),
                "trainable": names}
        return ck.save_checkpoint(run_dir, step, frontend.part_state_dict(), opt_tensors, meta,
                                  keep=cfg.keep_checkpoints)

    # ---------------------------------------------------------------- loop
    result = TrainResult(run_dir=run_dir, step=step, checkpoint=latest)
    bar = tqdm(total=total_steps, initial=step, disable=not (dist.main and cfg.progress), unit="step",
               dynamic_ncols=True)
    params = [p for _, p in named]
    tokens_seen, clock = 0, time.perf_counter()
    while step < total_steps and epoch < cfg.epochs:
        # A leftover of fewer than grad_accum micro-batches at the end of an epoch is not used.
        usable = steps_in_epoch[epoch] * cfg.grad_accum
        sampler.set_epoch(epoch, start, stop=usable)
        micro: list[dict[str, Any]] = []
        for batch in make_loader(train_set, sampler, cfg.num_workers, seed=cfg.seed + epoch):
            skip_log.add(batch["skipped"])
            micro.append(batch)
            start += 1
            if len(micro) < cfg.grad_accum:
                continue
            # Normalise by the target tokens of the whole step, over every process.
            n_target = _all_reduce(torch.tensor([float(sum(b["n_target_tokens"] for b in micro))],
                                                device=device), dist)
            step_loss = torch.zeros(1, device=device)
            for b in micro:
                if not b["instance_ids"]:  # every clip of it was in a damaged store part
                    continue
                row_loss, _ = model.loss(b)
                loss = row_loss.sum() / n_target[0]
                loss.backward()
                step_loss += loss.detach()
            if dist.world > 1:
                _sync_grads(params, frontend, dist)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += sum(b["n_tokens"] for b in micro) * dist.world
            micro = []
            step_loss = float(_all_reduce(step_loss, dist)[0])
            result.losses.append(step_loss)
            elapsed = time.perf_counter() - clock
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens_seen / max(elapsed, 1e-9):.0f}")
            if step % cfg.log_every == 0 or step == total_steps:
                log({"step": step, "epoch": epoch, "loss": step_loss, "lr": scheduler.get_last_lr()[0],
                     "grad_norm": float(grad_norm), "tokens_per_s": tokens_seen / max(elapsed, 1e-9)})
            if start >= usable:  # the epoch is done: a checkpoint taken now resumes in the next one
                epoch, start = epoch + 1, 0
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
                result.eval_losses = evaluate()
            if step % cfg.save_every == 0 and step < total_steps:
                result.checkpoint = save() or result.checkpoint
            if step >= total_steps:
                break
        if start >= usable:  # resumed exactly at an epoch's end
            epoch, start = epoch + 1, 0
    bar.close()
    result.step = step

    # ---------------------------------------------------------------- final eval + checkpoint
    if latest is not None and step == resumed_step:
        # Nothing ran in this call: the checkpoint and its evaluation are already on disk (a second
        # evaluation would log the same step twice).
        result.eval_losses = _last_eval_losses(log_path)
    else:
        if val_rows:
            result.eval_losses = evaluate()
        result.checkpoint = save() or result.checkpoint
    if writer is not None:
        writer.close()
    if dist.main:
        from alarm.trainer.report import write_train_report

        write_train_report(run_dir)  # report.json, report.md and loss.png beside the run
    return result


def _sync_grads(params: list[Any], frontend: Any, dist: Dist) -> None:
    """Sum gradients over processes (the loss is already divided by the global token count) and
    average BatchNorm statistics so every process holds the same front end."""
    import torch

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    _all_reduce(flat, dist)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()
    for _name, buf in frontend.named_buffers():
        if buf.is_floating_point():
            _all_reduce(buf.data, dist)
            buf.data /= dist.world


def _set_aside(run_dir: Path) -> None:
    """Move an earlier run's checkpoints and logs to ``previous-<time>/`` (a fresh start keeps them)."""
    old = [run_dir / name for name in ("checkpoints", "logs.jsonl", "rejects.jsonl", "tensorboard")
           if (run_dir / name).exists()]
    if old:
        aside = run_dir / time.strftime("previous-%Y%m%d-%H%M%S")
        aside.mkdir()
        for path in old:
            path.rename(aside / path.name)


def _barrier(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()


def _broadcast_module(module: Any) -> None:
    """Give every process rank 0's parameters and buffers."""
    import torch.distributed as tdist

    for tensor in list(module.parameters()) + list(module.buffers()):
        tdist.broadcast(tensor.data, src=0)


def truncate_log(log_path: Path, step: int) -> int:
    """Keep only the records of ``logs.jsonl`` up to ``step`` (the checkpoint a run resumes from).

    A run killed after logging step N but before its next checkpoint logs steps past the checkpoint
    that the resumed run logs again. Those records, and a line torn by the kill, are dropped, so every
    step appears once and in order. Returns how many lines were dropped.

    Args:
        log_path: The run's ``logs.jsonl`` (absent: nothing to do).
        step: The step the run resumes from (0 for a run with no checkpoint).
    """
    if not log_path.exists():
        return 0
    lines = log_path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the kill tore this line
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    if len(kept) == len(lines):
        return 0
    tmp = log_path.with_name(log_path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, log_path)
    return len(lines) - len(kept)


def _last_eval_losses(log_path: Path) -> dict[str, float]:
    """The per-dataset losses of the last evaluation in ``logs.jsonl`` (empty when there is none)."""
    losses: dict[str, float] = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            record = json.loads(line)
            if "eval_loss_per_dataset" in record:
                losses = record["eval_loss_per_dataset"]
    return losses


def _tensorboard(run_dir: Path, purge_step: int | None = None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    # purge_step drops events a killed run wrote past its checkpoint, as truncate_log does for logs.jsonl.
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)


def _flat_scalars(record: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in record.items():
        if isinstance(value, (int, float)) and key != "step":
            out[key] = float(value)
        elif isinstance(value, dict):
            out.update({f"{key}/{k}": float(v) for k, v in value.items() if isinstance(v, (int, float))})
    return out


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
