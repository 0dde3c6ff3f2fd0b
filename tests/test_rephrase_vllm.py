"""The vLLM engine for real, on the tiny Qwen3 (runs in .venv-vllm through .ci/vllm_tests.sh)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (run .ci/vllm_tests.sh)")
pytestmark = pytest.mark.vllm

sys.path.insert(0, str(Path(__file__).parent))

from alarm.rephrase.engines import EngineConfig  # noqa: E402
from alarm.rephrase.generation import GenRequest, Sampling  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def _cfg(model: Path, name: str) -> EngineConfig:
    # eager mode: torch.compile warm-up costs ~30 s on two cores and buys nothing for a tiny model
    extra = {"enforce_eager": True} if name == "vllm" else {}
    return EngineConfig(name=name, model=str(model), dtype="float32", max_model_len=1024, max_num_seqs=16,
                        batch_size=8, extra=extra)


@pytest.fixture(scope="module")
def vllm_engine(tiny_qwen3_dir):
    from alarm.rephrase.engines import load_engine

    engine = load_engine(_cfg(tiny_qwen3_dir, "vllm"))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf_engine(tiny_qwen3_dir):
    from alarm.rephrase.engines import load_engine

    return load_engine(_cfg(tiny_qwen3_dir, "transformers"))


def _prompts(tokenizer, n: int) -> list[str]:
    from alarm.rephrase.passes import chat_prompt

    return [chat_prompt(tokenizer, "You listen to audio.", f"Question number {i}: what is heard?")
            for i in range(n)]


def test_greedy_matches_transformers_token_for_token(vllm_engine, hf_engine):
    requests = [GenRequest(f"k{i}", p, 24, seed=i, sampling=Sampling(temperature=0.0))
                for i, p in enumerate(_prompts(hf_engine.tokenizer, 4))]
    ours = vllm_engine.generate(requests)
    theirs = hf_engine.generate(requests)
    for a, b in zip(ours, theirs, strict=True):
        assert a.error is None and b.error is None
        assert (a.n_prompt_tokens, a.n_tokens, a.finish_reason) == (b.n_prompt_tokens, b.n_tokens, b.finish_reason)
        assert a.text == b.text


def test_seeded_sampling_is_reproducible_and_shaped_like_transformers(vllm_engine, hf_engine):
    prompts = _prompts(hf_engine.tokenizer, 3)
    requests = [GenRequest(f"s{i}", p, 16, seed=100 + i) for i, p in enumerate(prompts)]
    first = vllm_engine.generate(requests)
    again = vllm_engine.generate(requests[::-1])[::-1]  # other order, same seeds
    assert [r.text for r in first] == [r.text for r in again]
    other_seed = vllm_engine.generate([GenRequest("x", prompts[0], 16, seed=7)])[0]
    assert other_seed.text != first[0].text
    hf = hf_engine.generate(requests)
    for a, b in zip(first, hf, strict=True):
        assert a.n_tokens == b.n_tokens == 16
        assert a.finish_reason == b.finish_reason == "length"


def test_overlong_prompt_is_an_error_row_and_others_finish(vllm_engine):
    long_prompt = "word " * 2000
    results = vllm_engine.generate([GenRequest("long", long_prompt, 8, 0),
                                    GenRequest("ok", "<|im_start|>user\nhi<|im_end|>\n", 8, 0)])
    assert results[0].finish_reason == "error" and "max_model_len" in results[0].error
    assert results[1].error is None and results[1].n_tokens == 8


def test_many_long_seeded_prompts_in_one_call(vllm_engine, hf_engine):
    # more prompt tokens than one engine step holds: on CPU a chunked prefill of a seeded request
    # used to kill vLLM's engine core; every request must come back
    from alarm.rephrase import prompts
    from alarm.rephrase.passes import chat_prompt

    long_prompts = [chat_prompt(hf_engine.tokenizer, prompts.REPHRASE_SYSTEM_PROMPT, f"<text_llm_reasoning>{i}")
                    for i in range(12)]
    assert sum(hf_engine.count_tokens(p) for p in long_prompts) > 8192
    results = vllm_engine.generate([GenRequest(f"l{i}", p, 4, seed=i) for i, p in enumerate(long_prompts)])
    assert [r.error for r in results] == [None] * 12 and all(r.n_tokens == 4 for r in results)


def test_full_run_on_vllm_then_rerun_generates_nothing(tmp_path, vllm_engine, tiny_qwen3_dir):
    import pyarrow.parquet as pq
    import rephrase_fixtures as rf

    from alarm.rephrase.run import RephraseConfig, run_rephrase

    manifest = rf.write_manifest(tmp_path, n_audio=3, n_instruction=1)
    cfg = RephraseConfig(engine=_cfg(tiny_qwen3_dir, "vllm"), answer_max_tokens=24, think_budget=16,
                         total_max_tokens=40, chunk_size=2)
    report = run_rephrase(manifest, tmp_path / "out", cfg, progress=False, engine=vllm_engine)
    assert report["answer"]["generated"] == 4 and report["rephrase"]["generated"] == 3
    assert report["answer"]["errors"] == 0
    rows = [r for p in (tmp_path / "out" / "cache" / "rephrase").glob("part-*.parquet")
            for r in pq.read_table(p).to_pylist()]
    # a random model never closes its thinking within 16 tokens: every row was budget-forced
    assert all(r["forced"] and r["n_tokens"] <= 40 for r in rows)
    again = run_rephrase(manifest, tmp_path / "out", cfg, progress=False, engine=vllm_engine)
    assert again["answer"]["generated"] == again["rephrase"]["generated"] == 0


def test_vllm_replica_in_a_ray_actor_matches_in_process(tiny_qwen3_dir, vllm_engine, hf_engine):
    # the cluster path: one vllm.LLM per Ray actor (asking for its GPU share where there are GPUs)
    import dataclasses

    import ray

    from alarm.rephrase.execute import plain_chunk
    from alarm.rephrase.pool import EnginePool

    requests = [GenRequest(f"r{i}", p, 8, seed=i) for i, p in enumerate(_prompts(hf_engine.tokenizer, 4))]
    cfg = dataclasses.replace(_cfg(tiny_qwen3_dir, "vllm"), workers=1, cpus_per_worker=1.0)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pool = EnginePool(cfg)
        remote = {r.key: r.text for _, (res, _) in pool.map_chunks(plain_chunk, [requests[:2], requests[2:]])
                  for r, _ in res}
        pool.close()
    finally:
        ray.shutdown()
    assert remote == {r.key: r.text for r in vllm_engine.generate(requests)}
