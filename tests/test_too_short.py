"""Clips too short for one feature frame: the encoders' bound, the job's reject, the trainer, infer and eval.

Everything runs the real components: tiny encoders, local Ray, a Zarr store, a short training run and the
tiny Qwen3 listener. The frame rules below are worked out by hand from docs/method.md §2 and the front ends:

- whisper: ``(n // 160) // 2`` -> 320 samples at 16 kHz (0.02 s);
- w2vbert: 160 zero samples each side, 25 ms / 10 ms fbank frames, stacked in pairs -> 240 samples (0.015 s);
- sslam: Kaldi frames (400-sample window, 160 shift) halved -> 560 samples (0.035 s);
- muq: ``n // 960`` at 24 kHz, but the mel's centred STFT reflect-pads 1024 samples, which needs more than
  1024 whole-step samples -> two steps, 1920 samples (0.08 s). So X = 0.08 s with MuQ in the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from store_fixtures import tone, write_wav

from alarm.pipeline.job import PipelineConfig, run_pipeline
from alarm.pipeline.store import open_features

MIN_SAMPLES = {"whisper": 320, "w2vbert": 240, "sslam": 560, "muq": 1920}
X_ALL = 0.08  # muq's 1920 samples at 24 kHz: the largest of the four
PROMPT = "What do you hear?"


@pytest.fixture(scope="module")
def local_ray():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    yield
    if started:
        ray.shutdown()


def samples(count: int, seed: int = 0) -> np.ndarray:
    """``count`` mono samples of noise plus a tone (exact length, unlike ``tone``'s rounding of seconds)."""
    rng = np.random.default_rng(seed)
    t = np.arange(count) / 16000
    return (0.3 * np.sin(2 * np.pi * 300 * t) + 0.05 * rng.standard_normal(count)).astype(np.float32)


def reasons(store: Path) -> dict[str, str]:
    return {r["id"]: r["reason"] for r in pq.read_table(store / "rejects.parquet").to_pylist()}


# ------------------------------------------------------------------------------------------ encoders


def test_min_samples_come_from_each_encoders_frame_rule():
    import torch

    from alarm.pipeline.encoders import ENCODERS, EncoderConfig, build_encoder, shortest_clip_seconds

    torch.set_num_threads(1)
    built = {name: build_encoder(EncoderConfig(name=name, preset="tiny")) for name in ENCODERS}
    assert {name: e.min_samples() for name, e in built.items()} == MIN_SAMPLES
    for name, enc in built.items():
        m = MIN_SAMPLES[name]
        assert enc.num_frames(m) >= 1 and enc.num_frames(m - 1) == 0
        # The real forward pass agrees: one frame (or two for muq) at the bound, none and no error below it.
        at, below = enc.encode([samples(m), samples(m - 1)])
        assert at.shape[0] == enc.num_frames(m) >= 1 and below.shape[0] == 0
    assert shortest_clip_seconds((e.min_samples(), e.sample_rate) for e in built.values()) == X_ALL
    assert shortest_clip_seconds([]) == 0.0


def test_muq_window_tail_of_one_step_gives_no_frame_instead_of_crashing():
    """A clip 30 s + 1000 samples long left MuQ a last window of one 960-sample step: the STFT crashed."""
    from alarm.pipeline.encoders import EncoderConfig, build_encoder

    muq = build_encoder(EncoderConfig(name="muq", preset="tiny"))
    window = muq.model.window_samples
    [out] = muq.encode([samples(window + 1000)])
    assert out.shape[0] == muq.num_frames(window + 1000) == window // 960


# ------------------------------------------------------------------------------------------ feature job


def test_feature_job_rejects_clips_too_short_for_any_encoder(local_ray, tmp_path):
    rows = [{"id": "blip", "audio": str(write_wav(tmp_path / "blip.wav", samples(160), 16000)), "dataset": "t"},
            {"id": "ok", "audio": str(write_wav(tmp_path / "ok.wav", tone(0.5, 16000), 16000)), "dataset": "t"}]
    # Exactly X at several source rates is kept; one source sample less is rejected.
    for rate in (8000, 16000, 22050, 44100, 48000):
        n = round(X_ALL * rate)
        for rid, count in ((f"at-{rate}", n), (f"below-{rate}", n - 1)):
            wave = samples(count, seed=rate)
            rows.append({"id": rid, "audio": str(write_wav(tmp_path / f"{rid}.wav", wave, rate)), "dataset": "t"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = tmp_path / "store"
    summary = run_pipeline(PipelineConfig(store=str(store), manifest=str(manifest), preset="tiny", progress=False))

    found = reasons(store)
    assert found["blip"] == "too short: 0.01 s < 0.08 s"
    for rate in (8000, 16000, 22050, 44100, 48000):
        n = round(X_ALL * rate)
        assert found[f"below-{rate}"] == f"too short: {(n - 1) / rate:.6g} s < 0.08 s"
        assert f"at-{rate}" not in found
    assert summary.rejected == {"too short": 6} and summary.clips == 6
    kept = {r["id"]: r["key"] for r in pq.read_table(store / "instances.parquet").to_pylist()}
    assert set(kept) == {"ok"} | {f"at-{rate}" for rate in (8000, 16000, 22050, 44100, 48000)}
    for name in ("whisper", "w2vbert", "muq", "sslam"):
        reader = open_features(store, name)
        assert len(reader) == 6  # the rejected clips are not stored
        assert all(reader.num_frames(key) >= 1 for key in kept.values()), name

    # X is the max over the store's encoders: whisper alone needs 0.02 s, so 30 ms is kept there.
    rows = [rows[0], {"id": "short", "audio": str(write_wav(tmp_path / "short.wav", samples(480), 16000)),
                      "dataset": "t"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    whisper_only = tmp_path / "whisper-only"
    run_pipeline(PipelineConfig(store=str(whisper_only), manifest=str(manifest), encoders=["whisper"],
                                preset="tiny", progress=False))
    assert reasons(whisper_only) == {"blip": "too short: 0.01 s < 0.02 s"}


# ------------------------------------------------------------------------------------------ trainer join


def test_join_drops_rows_whose_clip_has_zero_frames(tmp_path, qwen3_tokenizer):
    from train_fixtures import write_feature_store

    from alarm.trainer.data import join_targets
    from alarm.trainer.sequence import PromptLayout

    readers = {"whisper": write_feature_store(tmp_path, {"ok": 20, "blip": 0, "half": 0}, encoder="whisper"),
               "muq": write_feature_store(tmp_path, {"ok": 10, "blip": 0, "half": 3}, encoder="muq")}
    assert readers["whisper"].num_frames("blip") == 0  # what an older job stored
    rows = [{"instance_id": f"i-{key}", "clip_key": key, "dataset": "d", "prompt": "Hear?",
             "target": "I hear it.</think>\n\nYes.", "split": "train"} for key in ("ok", "blip", "half")]
    layout = PromptLayout.from_tokenizer(qwen3_tokenizer)
    result = join_targets(pa.Table.from_pylist(rows), readers, layout, qwen3_tokenizer,
                          lambda frames: (frames["whisper"] + 1) // 2 + 2, max_seq_len=4096)
    assert [e.instance_id for e in result.splits["train"]] == ["i-ok"]
    assert result.rejects == [
        {"instance_id": "i-blip", "reason": "too short: the store holds 0 frames of whisper, muq for clip blip"},
        {"instance_id": "i-half", "reason": "too short: the store holds 0 frames of whisper for clip half"}]


# ------------------------------------------------------------------------------------------ an older store


@pytest.fixture(scope="module")
def old_run(local_ray, tmp_path_factory, tiny_qwen3_dir):
    """A store written as the job did before it rejected too-short clips (a 10 ms clip with 0 frames),
    and a short training run on targets that include that clip."""
    import torch
    from infer_fixtures import ENCODERS, TINY_FRONTEND
    from train_fixtures import write_targets

    import alarm.pipeline.job
    from alarm.trainer.config import TrainConfig
    from alarm.trainer.train import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("old-store")
    rows = [{"id": f"c{i}", "audio": str(write_wav(root / f"c{i}.wav", tone(0.6 + 0.3 * i, 16000, seed=i), 16000)),
             "dataset": "toy"} for i in range(3)]
    rows.append({"id": "blip", "audio": str(write_wav(root / "blip.wav", samples(160), 16000)), "dataset": "toy"})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = root / "store"
    job = PipelineConfig(store=str(store), manifest=str(manifest), encoders=list(ENCODERS), preset="tiny",
                         progress=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(alarm.pipeline.job, "shortest_clip", lambda facts: 0.0)  # no lower bound: the old behaviour
        run_pipeline(job)
    keys = {r["id"]: r["key"] for r in pq.read_table(store / "instances.parquet").to_pylist()}
    targets = [{"instance_id": r["id"], "clip_key": keys[r["id"]], "dataset": "toy", "prompt": PROMPT,
                "target": f"I hear sound {i}.</think>\n\nSound {i}.", "incomplete": False, "split": "train",
                "source": "test"} for i, r in enumerate(rows)]
    write_targets(root / "targets.parquet", targets)
    cfg = TrainConfig(targets=str(root / "targets.parquet"), store=str(store), output_dir=str(root / "run"),
                      llm=str(tiny_qwen3_dir), encoders=list(ENCODERS), fusion="ca", frontend=dict(TINY_FRONTEND),
                      batch_tokens=400, max_seq_len=200, num_workers=0, lr=1e-3, warmup_steps=1, epochs=10,
                      max_steps=3, eval_every=0, save_every=100, log_every=1, sample_generations=0, progress=False)
    result = train(cfg)
    return {"root": root, "store": store, "job": job, "run": root / "run", "result": result, "rows": rows,
            "keys": keys, "blip": rows[-1]["audio"]}


def test_training_on_an_old_store_drops_its_zero_frame_clip(old_run):
    blip_key = old_run["keys"]["blip"]
    assert all(open_features(old_run["store"], e).num_frames(blip_key) == 0 for e in ("whisper", "muq"))
    assert old_run["result"].step == 3  # it trained instead of dying on "lengths must be in [1, ...]"
    rejects = [json.loads(x) for x in (old_run["run"] / "rejects.jsonl").read_text().splitlines()]
    assert rejects == [{"instance_id": "blip",
                        "reason": f"too short: the store holds 0 frames of whisper, muq for clip {blip_key}"}]


def test_infer_answers_a_too_short_clip_with_an_error_row(old_run):
    from alarm.trainer.infer import InferConfig, InferRequest, Listener

    listener = Listener.load(InferConfig(checkpoint=str(old_run["run"]), think_budget=2, max_new_tokens=6))
    assert listener.shortest == X_ALL
    blip, good = old_run["blip"], old_run["rows"][0]["audio"]
    results = listener.generate([InferRequest(blip, PROMPT),
                                 InferRequest(blip, PROMPT, clip_key=old_run["keys"]["blip"]),  # 0 frames stored
                                 InferRequest(good, PROMPT)])
    assert [r.error for r in results[:2]] == ["too short: 0.01 s < 0.08 s"] * 2
    assert results[2].error is None and results[2].text


def test_cli_infer_and_eval_give_one_clear_line(old_run, tmp_path):
    from alarm.cli import main

    blip, good = old_run["blip"], old_run["rows"][0]["audio"]
    out = CliRunner().invoke(main, ["infer", blip, "--prompt", PROMPT, "--checkpoint", str(old_run["run"]),
                                    "--think-budget", "2", "--max-new-tokens", "6", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "error: too short: 0.01 s < 0.08 s" in out.stdout and "Traceback" not in out.output

    manifest = tmp_path / "mcqa.jsonl"
    questions = [{"id": name, "audio": audio, "question": "Is this a tone?", "options": ["yes", "no"],
                  "answer": 1, "category": "tone", "dataset": "toy"} for name, audio in (("blip", blip), ("good", good))]
    manifest.write_text("".join(json.dumps(q) + "\n" for q in questions))
    out = CliRunner().invoke(main, ["eval", str(manifest), "--checkpoint", str(old_run["run"]), "--out",
                                    str(tmp_path / "eval"), "--think-budget", "2", "--max-new-tokens", "6",
                                    "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "Traceback" not in out.output
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines())}
    # The store holds the clip's key (with 0 frames), so eval looks it up there and falls back to decoding.
    assert rows["blip"]["clip_key"] == old_run["keys"]["blip"]
    assert rows["blip"]["status"] == "error" and rows["blip"]["error"] == "too short: 0.01 s < 0.08 s"
    assert rows["good"]["error"] is None


def test_rerun_on_an_old_store_rejects_the_clip(old_run):
    """Last: it rewrites the old store's tables (the index keeps the 0-frame clip the other tests read)."""
    run_pipeline(old_run["job"])
    assert reasons(old_run["store"]) == {"blip": "too short: 0.01 s < 0.08 s"}
    kept = {r["id"] for r in pq.read_table(old_run["store"] / "instances.parquet").to_pylist()}
    assert kept == {"c0", "c1", "c2"}
