"""Training data: targets joined with the feature store, a token-budget sampler, a lazy-store loader.

Only cached features and targets are read here: nothing constructs an encoder. Missing features
are an error before training starts (listing the missing clips); rows that cannot fit the sequence
cap, have no target tokens or whose clip has 0 frames in some encoder (an older store kept clips too
short for a frame) are dropped with a reason into the run's rejects table.

A store part found damaged during training (its bytes differ from its done marker) does not stop
the run: the clips of that part are skipped, each with a reason naming the part, appended once to the
run's rejects table (``SkipLog``); the rest of the run goes on. Repair the store
(``alarm pipeline repair``) and resume to train on them again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alarm.pipeline.store import DamagedPartError
from alarm.pipeline.store_layout import atomic_path
from alarm.trainer.sequence import PromptLayout, SequenceTooLong, fit_target
from alarm.trainer.target_table import (  # noqa: F401 - DataError, read_targets, targets_fingerprint re-exported
    TARGET_COLUMNS,
    DataError,
    read_targets,
    targets_fingerprint,
    well_formed,
)

SPLITS = ("train", "validation")



@dataclass
class Example:
    """One training row after the join: ids to embed and the clip's frame counts."""

    instance_id: str
    clip_key: str
    dataset: str
    prompt_ids: np.ndarray
    """int32 ids from after the audio span to the thinking opener (arrays, not lists: millions of
    rows stay compact and DataLoader workers do not touch their pages through refcounts)."""
    target_ids: np.ndarray
    """int32 ids of the (fitted) target."""
    frames: dict[str, int]
    n_tokens: int
    """Sequence length: head + audio vectors + prompt + (fitted) target."""


@dataclass
class JoinResult:
    """Examples per split plus the rows dropped with a reason."""

    splits: dict[str, list[Example]] = field(default_factory=dict)
    rejects: list[dict[str, str]] = field(default_factory=list)


AudioCounter = Callable[[dict[str, np.ndarray]], np.ndarray]


def join_targets(table: Any, readers: dict[str, Any], layout: PromptLayout, tokenizer: Any,
                 count_audio: AudioCounter, max_seq_len: int) -> JoinResult:
    """Join targets with the feature store by clip key and tokenise them.

    Args:
        table: Targets (see ``read_targets``).
        readers: FeatureReader per encoder, in front-end order.
        layout: The prompt layout of the LLM's tokenizer.
        tokenizer: The LLM's tokenizer.
        count_audio: Audio vectors (delimiters included) the front end makes, vectorised over
            clips: ``{encoder: frames (n,)} -> (n,)`` (AudioFrontEnd.output_lengths).
        max_seq_len: Sequence cap; the truncation policy of trainer.sequence applies.

    Raises:
        DataError: Clips without features in some encoder's store (all listed, up to 20 shown).
    """
    rows, early = well_formed(table.select(list(TARGET_COLUMNS)).to_pylist())
    encoders = list(readers)
    missing: dict[str, list[str]] = {}
    unkeyed = [r["instance_id"] for r in rows if not r["clip_key"]]
    if unkeyed:
        raise DataError(f"{len(unkeyed)} target(s) have no clip_key (their audio is not in the feature store), "
                        f"e.g. {unkeyed[:20]}")
    for name, reader in readers.items():
        absent = sorted({r["clip_key"] for r in rows if r["clip_key"] not in reader})
        if absent:
            missing[name] = absent
    if missing:
        lines = [f"{name}: {len(keys)} clip(s) without features, e.g. {keys[:20]}"
                 for name, keys in missing.items()]
        raise DataError("targets reference clips the feature store lacks (run `alarm pipeline run` "
                        "for them or drop them from the targets):\n  " + "\n  ".join(lines))
    prompts = _encode_batch(tokenizer, [layout.middle + r["prompt"] + layout.tail for r in rows])
    targets = _encode_batch(tokenizer, [layout.target_text(r["target"] or "") for r in rows])
    clip_keys = sorted({r["clip_key"] for r in rows})
    frames = {name: np.array([readers[name].num_frames(k) for k in clip_keys], dtype=np.int64)
              for name in encoders}
    audio = np.asarray(count_audio(frames)).astype(np.int64)
    clip_no = {k: i for i, k in enumerate(clip_keys)}
    result = JoinResult(rejects=early)
    for row, prompt_ids, target_ids in zip(rows, prompts, targets, strict=True):
        i = clip_no[row["clip_key"]]
        if row["split"] not in SPLITS:
            result.rejects.append({"instance_id": row["instance_id"],
                                   "reason": f"split {row['split']!r} is not one of {', '.join(SPLITS)}"})
            continue
        if not target_ids or not (row["target"] or "").strip():  # whitespace has ids but teaches nothing
            result.rejects.append({"instance_id": row["instance_id"], "reason": "empty target"})
            continue
        empty = [name for name in encoders if frames[name][i] < 1]
        if empty:  # an older feature job stored clips too short for a frame; adapters need >= 1
            result.rejects.append({"instance_id": row["instance_id"],
                                   "reason": f"too short: the store holds 0 frames of {', '.join(empty)} "
                                             f"for clip {row['clip_key']}"})
            continue
        fixed = len(layout.head_ids) + int(audio[i]) + len(prompt_ids)
        try:
            target_ids = fit_target(fixed, target_ids, max_seq_len)
        except SequenceTooLong as err:
            result.rejects.append({"instance_id": row["instance_id"], "reason": str(err)})
            continue
        example = Example(instance_id=row["instance_id"], clip_key=row["clip_key"], dataset=row["dataset"],
                          prompt_ids=np.asarray(prompt_ids, dtype=np.int32),
                          target_ids=np.asarray(target_ids, dtype=np.int32),
                          frames={name: int(frames[name][i]) for name in encoders},
                          n_tokens=fixed + len(target_ids))
        result.splits.setdefault(row["split"], []).append(example)
    return result


def _encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return list(tokenizer(texts, add_special_tokens=False)["input_ids"])


def write_rejects(rejects: list[dict[str, str]], path: str | Path) -> None:
    """Write dropped rows as JSONL (instance_id, reason), replacing an earlier table."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))


class TokenBudgetSampler:
    """Batches of row indices whose padded size (longest row x rows) stays within a token budget.

    Each epoch, with a generator seeded by (seed, epoch): shuffle the rows, cut them into buckets
    of about ``bucket_size`` batches, sort each bucket by length and fill batches greedily, then
    shuffle the batch order. With ``world_size`` > 1 the batch list is cut to a multiple of the
    world size and rank r takes batches r, r + W, ... so W processes see exactly the batches that
    one process with W-fold gradient accumulation would. Deterministic given the seed; the position
    within an epoch (``start``) is what a checkpoint saves.
    """

    def __init__(self, lengths: Sequence[int], batch_tokens: int, seed: int = 0, bucket_size: int = 64,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if batch_tokens < 1 or bucket_size < 1 or not 0 <= rank < world_size:
            raise ValueError("batch_tokens and bucket_size must be >= 1 and 0 <= rank < world_size")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_tokens = batch_tokens
        self.seed = seed
        self.bucket_size = bucket_size
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0
        self.stop: int | None = None
        self._cache: tuple[int, list[list[int]]] | None = None

    def _all_batches(self, epoch: int) -> list[list[int]]:
        """Every batch of the epoch, all ranks, in order."""
        n = len(self.lengths)
        if n == 0:
            return []
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        mean_len = max(1, int(self.lengths.mean()))
        bucket_rows = self.bucket_size * max(1, self.batch_tokens // mean_len)
        batches: list[list[int]] = []
        for lo in range(0, n, bucket_rows):
            bucket = order[lo:lo + bucket_rows]
            bucket = bucket[np.argsort(self.lengths[bucket], kind="stable")]
            current: list[int] = []
            longest = 0
            for idx in bucket.tolist():
                new_longest = max(longest, int(self.lengths[idx]))
                if current and new_longest * (len(current) + 1) > self.batch_tokens:
                    batches.append(current)
                    current, new_longest = [], int(self.lengths[idx])
                current.append(idx)
                longest = new_longest
            if current:
                batches.append(current)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch`` (cached for the current epoch)."""
        if self._cache is None or self._cache[0] != epoch:
            every = self._all_batches(epoch)
            usable = len(every) // self.world_size * self.world_size
            self._cache = (epoch, every[self.rank:usable:self.world_size])
        return self._cache[1]

    def set_epoch(self, epoch: int, start: int = 0, stop: int | None = None) -> None:
        """Iterate ``epoch`` from its ``start``-th batch (resuming mid-epoch) up to ``stop``."""
        self.epoch, self.start, self.stop = epoch, start, stop

    def __len__(self) -> int:
        return len(self.batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches(self.epoch)[self.start:self.stop]

    def state_dict(self) -> dict[str, int]:
        """The position to save: epoch and batches already consumed in it."""
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a position saved by ``state_dict``."""
        self.set_epoch(int(state["epoch"]), int(state["start"]))


class FeatureDataset:
    """Map-style dataset over examples, reading each clip's features from the store.

    A clip whose store part is damaged comes back as ``{"example": ..., "feats": None, "skip": reason}``;
    ``collate`` leaves it out of the batch and lists it under ``skipped``.

    Args:
        examples: Rows from ``join_targets``.
        readers: Per encoder, a picklable reader with ``read(key) -> (frames, ...) float32`` that
            opens its files lazily in each process (pipeline.store.FeatureReader does), so
            DataLoader workers each get their own handles.
    """

    def __init__(self, examples: list[Example], readers: dict[str, Any]) -> None:
        self.examples = examples
        self.readers = readers

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        # Stored float16 stays float16 until the device: half the bytes to copy, pad and pass
        # between worker processes (widening to float32 is exact).
        try:
            feats = {name: reader.read(example.clip_key, stored=True) for name, reader in self.readers.items()}
        except DamagedPartError as err:
            return {"example": example, "feats": None, "skip": str(err)}
        return {"example": example, "feats": feats}


class SkipLog:
    """Appends the clips a batch skipped (damaged store parts) to the run's rejects table, once each."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.seen: set[str] = set()

    def add(self, skipped: list[dict[str, str]]) -> None:
        """Append the rows of ``skipped`` (instance_id, reason) not logged before."""
        import logging

        new = [r for r in skipped if r["instance_id"] not in self.seen]
        if not new:
            return
        self.seen.update(r["instance_id"] for r in new)
        with open(self.path, "a") as handle:
            handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new))
        logging.getLogger(__name__).warning("skipped %d clip(s) of damaged store parts: %s", len(new), new[0]["reason"])


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad features per encoder to (B, T_max, ...) and keep the id lists as tensors.

    Returns:
        feats: name -> tensor (B, T_max, ...) in the store's float16 or float32; lengths: name -> (B,) valid frames;
        prompt_ids / target_ids: lists of 1-D long tensors; instance_ids, datasets: lists;
        n_tokens: sequence tokens in the batch (for tokens/s); n_bytes: feature bytes read;
        skipped: (instance_id, reason) of the items left out (a damaged store part). B may be 0 when
        every item was skipped: callers skip such a batch.
    """
    import torch

    skipped = [{"instance_id": item["example"].instance_id, "reason": item["skip"]}
               for item in items if item.get("feats") is None]
    items = [item for item in items if item.get("feats") is not None]
    feats: dict[str, torch.Tensor] = {}
    lengths: dict[str, torch.Tensor] = {}
    n_bytes = 0
    for name in items[0]["feats"] if items else []:
        arrays = [item["feats"][name] for item in items]
        n_bytes += sum(a.nbytes for a in arrays)
        longest = max(a.shape[0] for a in arrays)
        batch = np.zeros((len(arrays), longest, *arrays[0].shape[1:]), dtype=arrays[0].dtype)
        for i, a in enumerate(arrays):
            batch[i, : a.shape[0]] = a
        feats[name] = torch.from_numpy(batch)
        lengths[name] = torch.tensor([a.shape[0] for a in arrays], dtype=torch.long)
    examples = [item["example"] for item in items]
    return {
        "feats": feats,
        "lengths": lengths,
        "prompt_ids": [torch.from_numpy(np.asarray(e.prompt_ids)).long() for e in examples],
        "target_ids": [torch.from_numpy(np.asarray(e.target_ids)).long() for e in examples],
        "instance_ids": [e.instance_id for e in examples],
        "datasets": [e.dataset for e in examples],
        "n_tokens": sum(e.n_tokens for e in examples),
        "n_target_tokens": sum(len(e.target_ids) for e in examples),
        "n_bytes": n_bytes,
        "skipped": skipped,
    }


def make_loader(dataset: FeatureDataset, sampler: TokenBudgetSampler, num_workers: int, seed: int = 0) -> Any:
    """A DataLoader over ``dataset`` driven by the token-budget batch sampler.

    It gets its own generator: a DataLoader otherwise draws its worker seed from the global torch
    RNG, and a resumed run (one extra loader) would then drift from an uninterrupted one. Workers
    reading a store on object storage start from a fork server (the object-store client does not
    survive a fork of a process that used it); they get the readers pickled, and open them lazily.
    """
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None,
                      multiprocessing_context=worker_context(dataset.readers) if num_workers else None,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed))


def worker_context(readers: dict[str, Any]) -> Any:
    """How DataLoader workers start: forked (the default) unless a reader is on object storage, whose
    client does not survive a fork; then from a fork server that has torch and this module imported
    already (one server per process, so a new epoch's workers start in milliseconds, not seconds)."""
    if all(getattr(reader, "fork_safe", True) for reader in readers.values()):
        return None
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    # Imported once in the server (before it starts), not again in every worker.
    context.set_forkserver_preload(["torch", "pyarrow.parquet", "alarm.pipeline.store",
                                    "alarm.trainer.data"])
    return context
