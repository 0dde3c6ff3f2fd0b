"""The transformers engine for real on the tiny Qwen3; Ray actor replicas; kill-and-resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import rephrase_fixtures as rf  # noqa: E402

from alarm.rephrase.engines import EngineConfig  # noqa: E402
from alarm.rephrase.generation import GenRequest, Sampling  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _engine_cfg(model: Path, **kw) -> EngineConfig:
    return EngineConfig(name="transformers", model=str(model), dtype="float32", max_model_len=1024, **kw)


@pytest.fixture(scope="module")
def hf_engine(tiny_qwen3_dir):
    from alarm.rephrase.engines import load_engine

    return load_engine(_engine_cfg(tiny_qwen3_dir, batch_size=4))


def _prompts(tokenizer, n: int) -> list[str]:
    from alarm.rephrase.passes import chat_prompt

    # different lengths, so a batch needs left padding
    return [chat_prompt(tokenizer, "You listen.", "Say something " + "about this " * i) for i in range(n)]


def test_left_padded_batches_equal_single_requests_greedy_and_sampled(hf_engine):
    prompts = _prompts(hf_engine.tokenizer, 3)
    for sampling in (Sampling(temperature=0.0), Sampling()):
        requests = [GenRequest(f"k{i}", p, 8, seed=50 + i, sampling=sampling) for i, p in enumerate(prompts)]
        batched = hf_engine.generate(requests)
        alone = [hf_engine.generate([r])[0] for r in requests]
        assert [r.text for r in batched] == [r.text for r in alone]
        assert all(r.n_tokens == 8 and r.finish_reason == "length" and r.text for r in batched)
        assert [r.n_prompt_tokens for r in batched] == sorted(r.n_prompt_tokens for r in batched)


def test_seed_changes_the_sample_and_greedy_ignores_it(hf_engine):
    prompt = _prompts(hf_engine.tokenizer, 1)[0]
    a, b, c = hf_engine.generate([GenRequest("a", prompt, 10, 1), GenRequest("b", prompt, 10, 2),
                                  GenRequest("c", prompt, 10, 1)])
    assert a.text == c.text and a.text != b.text
    g1, g2 = hf_engine.generate([GenRequest("g1", prompt, 10, 1, Sampling(temperature=0.0)),
                                 GenRequest("g2", prompt, 10, 2, Sampling(temperature=0.0))])
    assert g1.text == g2.text


def test_overlong_prompt_is_an_error_row_and_the_batch_goes_on(hf_engine):
    ok_prompt = _prompts(hf_engine.tokenizer, 1)[0]
    results = hf_engine.generate([GenRequest("long", "word " * 1200, 8, 0), GenRequest("ok", ok_prompt, 8, 0)])
    assert results[0].finish_reason == "error" and "max_model_len" in results[0].error
    assert results[1].error is None and results[1].n_tokens == 8


def test_ray_actor_replica_gives_the_same_results_as_in_process(tiny_qwen3_dir, hf_engine):
    import ray

    from alarm.rephrase.execute import plain_chunk
    from alarm.rephrase.pool import EnginePool

    requests = [GenRequest(f"r{i}", p, 8, seed=i) for i, p in enumerate(_prompts(hf_engine.tokenizer, 4))]
    chunks = [requests[:2], requests[2:]]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pool = EnginePool(_engine_cfg(tiny_qwen3_dir, batch_size=4, workers=1, cpus_per_worker=0.25))
        remote = {r.key: r.text for _, (results, _) in pool.map_chunks(plain_chunk, chunks) for r, _ in results}
        pool.close()
    finally:
        ray.shutdown()
    local = {r.key: r.text for r in hf_engine.generate(requests)}
    assert remote == local


_JOB = textwrap.dedent("""
    import sys
    from alarm.rephrase.engines import EngineConfig
    from alarm.rephrase.run import RephraseConfig, run_rephrase

    if __name__ == "__main__":
        manifest, out, model = sys.argv[1:4]
        engine = EngineConfig(name="transformers", model=model, dtype="float32", batch_size=1, max_model_len=2048)
        cfg = RephraseConfig(engine=engine, answer_max_tokens=8, think_budget=2, total_max_tokens=4,
                             chunk_size=1)
        run_rephrase(manifest, out, cfg, progress=False)
""")


def _cache_rows(out: Path, name: str) -> list[dict]:
    return [r for p in sorted((out / "cache" / name).glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


@pytest.mark.slow  # a subprocess and three short runs of the real engine: ~30-60 s on two busy cores
def test_killed_job_resumes_without_regenerating_losing_or_duplicating(tmp_path, tiny_qwen3_dir):
    from alarm.rephrase.run import RephraseConfig, run_rephrase

    manifest = rf.write_manifest(tmp_path, n_audio=4, n_instruction=1)
    out = tmp_path / "killed"
    script = tmp_path / "job.py"
    script.write_text(_JOB)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(manifest), str(out), str(tiny_qwen3_dir)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    answer_parts = out / "cache" / "answer"
    while time.monotonic() < deadline and proc.poll() is None:
        if answer_parts.is_dir() and len(list(answer_parts.glob("part-*.parquet"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the job ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()

    before = {p: p.read_bytes() for p in (out / "cache").rglob("part-*.parquet")}
    done_answers = len(_cache_rows(out, "answer"))
    assert 2 <= done_answers < 5

    engine = EngineConfig(name="transformers", model=str(tiny_qwen3_dir), dtype="float32", batch_size=1,
                             max_model_len=2048)
    cfg = RephraseConfig(engine=engine, answer_max_tokens=8, think_budget=2, total_max_tokens=4, chunk_size=1)
    report = run_rephrase(manifest, out, cfg, progress=False)
    assert report["answer"]["cached"] == done_answers
    assert report["answer"]["generated"] == 5 - done_answers
    for part, data in before.items():  # finished parts are kept as they were
        assert part.read_bytes() == data
    for name, expected in (("answer", 5), ("rephrase", 4)):
        keys = [r["key"] for r in _cache_rows(out, name)]
        assert len(keys) == len(set(keys)) == expected

    # per-request seeds: the resumed run holds exactly what an uninterrupted run generates
    fresh = tmp_path / "fresh"
    run_rephrase(manifest, fresh, cfg, progress=False)
    for name in ("answer", "rephrase"):
        resumed = {r["key"]: r["text"] for r in _cache_rows(out, name)}
        assert resumed == {r["key"]: r["text"] for r in _cache_rows(fresh, name)}
