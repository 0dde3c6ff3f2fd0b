"""Trainer data: join with a real feature store, rejects, fingerprint, token-budget sampler, lazy loader."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch
from train_fixtures import target_rows, tiny_clips, write_feature_store

from alarm.trainer.data import (
    DataError,
    FeatureDataset,
    TokenBudgetSampler,
    join_targets,
    make_loader,
    targets_fingerprint,
)
from alarm.trainer.sequence import PromptLayout


def count_audio(frames):
    """The conv adapter's ceil(T / 2) plus two delimiters (whisper, fusion none)."""
    return (frames["whisper"] + 1) // 2 + 2


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    clips = tiny_clips(10, lo=10, hi=60)
    reader = write_feature_store(tmp_path_factory.mktemp("store"), clips)
    return clips, reader


@pytest.fixture(scope="module")
def layout(qwen3_tokenizer):
    return PromptLayout.from_tokenizer(qwen3_tokenizer)


def test_join_tokenises_and_counts(store, layout, qwen3_tokenizer):
    clips, reader = store
    rows = target_rows(clips)
    result = join_targets(pa.Table.from_pylist(rows), {"whisper": reader}, layout, qwen3_tokenizer,
                          count_audio, max_seq_len=4096)
    assert not result.rejects
    examples = result.splits["train"] + result.splits["validation"]
    assert len(examples) == len(rows)
    assert {e.instance_id for e in result.splits["validation"]} == {r["instance_id"] for r in rows
                                                                     if r["split"] == "validation"}
    e = next(x for x in examples if x.instance_id == "i0000")
    assert e.frames == {"whisper": clips["clip000"]}
    assert e.prompt_ids.tolist() == layout.prompt_ids(qwen3_tokenizer, rows[0]["prompt"])
    assert e.target_ids.tolist() == layout.target_ids(qwen3_tokenizer, rows[0]["target"])
    audio = (clips["clip000"] + 1) // 2 + 2
    assert e.n_tokens == len(layout.head_ids) + audio + len(e.prompt_ids) + len(e.target_ids)


def test_missing_features_fail_before_training_listing_the_clips(store, layout, qwen3_tokenizer):
    clips, reader = store
    rows = target_rows(clips)
    rows[2]["clip_key"] = "nowhere-1"
    rows[5]["clip_key"] = "nowhere-2"
    with pytest.raises(DataError, match=r"whisper: 2 clip\(s\) without features.*nowhere-1.*nowhere-2"):
        join_targets(pa.Table.from_pylist(rows), {"whisper": reader}, layout, qwen3_tokenizer, count_audio, 4096)
    rows[2]["clip_key"] = None
    with pytest.raises(DataError, match=r"1 target\(s\) have no clip_key.*i0002"):
        join_targets(pa.Table.from_pylist(rows), {"whisper": reader}, layout, qwen3_tokenizer, count_audio, 4096)


def test_bad_rows_become_rejects_with_reasons(store, layout, qwen3_tokenizer):
    clips, reader = store
    rows = target_rows(clips)
    rows[0]["target"] = ""
    rows[1]["split"] = "test"
    keys = list(clips)
    longest = max(keys[2:], key=clips.get)
    rows[keys.index(longest)]["target"] = "word " * 400
    # Fits the short clips (some with their targets cut), never the longest clip with its prompt.
    cap = len(layout.head_ids) + count_audio({"whisper": clips[longest]}) + 14
    result = join_targets(pa.Table.from_pylist(rows), {"whisper": reader}, layout, qwen3_tokenizer,
                          count_audio, max_seq_len=cap)
    reasons = {r["instance_id"]: r["reason"] for r in result.rejects}
    assert reasons["i0000"] == "empty target"
    assert "split 'test'" in reasons["i0001"]
    assert reasons[rows[keys.index(longest)]["instance_id"]].endswith(f"cap is {cap}")
    assert all(f"cap is {cap}" in r for k, r in reasons.items() if k not in ("i0000", "i0001"))
    kept = result.splits["train"] + result.splits.get("validation", [])
    assert len(kept) + len(result.rejects) == len(rows)
    assert all(e.n_tokens <= cap for e in kept)
    assert any(len(e.target_ids) < len(layout.target_ids(qwen3_tokenizer, rows[int(e.instance_id[1:])]["target"]))
               for e in kept)  # some target was cut at its tail to fit


def test_targets_fingerprint_ignores_order_not_content(store):
    clips, _ = store
    rows = target_rows(clips)
    fp = targets_fingerprint(pa.Table.from_pylist(rows))
    assert targets_fingerprint(pa.Table.from_pylist(rows[::-1])) == fp
    rows[3]["target"] += " changed"
    assert targets_fingerprint(pa.Table.from_pylist(rows)) != fp


def test_sampler_respects_the_budget_and_covers_every_row():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 400, size=500).tolist()
    sampler = TokenBudgetSampler(lengths, batch_tokens=1200, seed=7, bucket_size=8)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(max(lengths[i] for i in b) * len(b) <= 1200 for b in batches)
    sizes = Counter(len(b) for b in batches)
    assert len(sizes) > 3  # batch sizes follow lengths: budgets by tokens, not by count
    assert list(TokenBudgetSampler(lengths, 1200, seed=7, bucket_size=8)) == batches  # deterministic
    sampler.set_epoch(1)
    assert list(sampler) != batches  # reshuffled per epoch
    sampler.set_epoch(0, start=5)
    assert list(sampler) == batches[5:]  # resumes mid-epoch
    assert sampler.state_dict()["start"] == 5
    alone = TokenBudgetSampler([5000, 10], batch_tokens=1200, seed=0)
    assert sorted(map(sorted, alone)) == [[0], [1]]  # an over-budget row still gets a batch of its own


def test_sampler_ranks_split_the_single_process_batches():
    lengths = list(range(10, 310))
    one = TokenBudgetSampler(lengths, 900, seed=3, bucket_size=4).batches(0)
    ranks = [TokenBudgetSampler(lengths, 900, seed=3, bucket_size=4, rank=r, world_size=2).batches(0)
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(one) // 2
    assert [b for pair in zip(*ranks, strict=True) for b in pair] == one[: len(one) // 2 * 2]


def test_loader_workers_open_the_store_lazily(store, layout, qwen3_tokenizer):
    clips, reader = store
    result = join_targets(pa.Table.from_pylist(target_rows(clips)), {"whisper": reader}, layout,
                          qwen3_tokenizer, count_audio, 4096)
    examples = result.splits["train"]
    dataset = FeatureDataset(examples, {"whisper": reader})
    sampler = TokenBudgetSampler([e.n_tokens for e in examples], 300, seed=1)
    serial = list(make_loader(dataset, sampler, num_workers=0))
    parallel = list(make_loader(dataset, sampler, num_workers=2))
    assert [b["instance_ids"] for b in serial] == [b["instance_ids"] for b in parallel]
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a["feats"]["whisper"], b["feats"]["whisper"])
    batch = serial[0]
    for i, iid in enumerate(batch["instance_ids"]):
        example = next(e for e in examples if e.instance_id == iid)
        n = int(batch["lengths"]["whisper"][i])
        assert n == clips[example.clip_key]
        assert np.array_equal(batch["feats"]["whisper"][i, :n].numpy(), reader.read(example.clip_key))
        assert (batch["feats"]["whisper"][i, n:] == 0).all()
        assert batch["target_ids"][i].tolist() == example.target_ids.tolist()
    assert batch["n_tokens"] == sum(next(e for e in examples if e.instance_id == i).n_tokens
                                    for i in batch["instance_ids"])


def test_a_store_without_the_pinned_spec_is_refused(store, tmp_path):
    from alarm.trainer.build import open_readers
    from alarm.trainer.config import TrainConfig

    _, reader = store
    cfg = TrainConfig(targets="t.parquet", store=str(reader.root), output_dir=str(tmp_path))
    assert open_readers(cfg)["whisper"].spec_id == reader.spec_id
    cfg.store_specs = {"whisper": "0123456789abcdef"}
    with pytest.raises(DataError, match="no group '0123456789abcdef'"):
        open_readers(cfg)
    cfg.store_specs, cfg.encoders = {}, ["w2vbert"]
    with pytest.raises(DataError, match="no features for encoder 'w2vbert'"):
        open_readers(cfg)


@pytest.mark.parametrize("fusion", ["none", "ca", "perceiver"])
def test_token_budget_count_matches_the_front_end(tmp_path, fusion):
    """The audio count the join budgets with is what the front end really emits, per fusion."""
    from alarm.trainer.data import collate
    from alarm.trainer.frontend import EncoderShape, FrontEndConfig, build_frontend

    clips = tiny_clips(5, lo=7, hi=50, seed=3)
    readers = {"whisper": write_feature_store(tmp_path, clips, "whisper", layers=2, dim=8)}
    if fusion != "none":
        readers["w2vbert"] = write_feature_store(tmp_path, clips, "w2vbert", layers=2, dim=6, seed=1)
    frontend = build_frontend(FrontEndConfig(
        encoders=[EncoderShape(n, r.layers, r.dim) for n, r in readers.items()], fusion=fusion, llm_dim=16,
        adapter_dim=8, conv_hidden_dim=8, ca_dim=8, ca_heads=2, ca_ffn_dim=8, perceiver_latents=3,
        perceiver_dim=8, perceiver_heads=2, perceiver_layers=1, perceiver_repeats=1)).eval()
    dataset = FeatureDataset([_example(k, n) for k, n in clips.items()], readers)
    batch = collate([dataset[i] for i in range(len(clips))])
    with torch.no_grad():
        _, lengths = frontend(batch["feats"], batch["lengths"])
    frames = {n: np.array([r.num_frames(k) for k in clips]) for n, r in readers.items()}
    predicted = frontend.output_lengths({n: torch.as_tensor(v) for n, v in frames.items()})
    assert predicted.tolist() == lengths.tolist()


def _example(key: str, frames: int):
    from alarm.trainer.data import Example

    return Example(key, key, "d", np.zeros(1, np.int32), np.zeros(1, np.int32), {"whisper": frames}, 0)
