"""Inference with a trained adapter: real tiny encoders, a real store, a real training run, the tiny Qwen3."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from alarm.trainer.infer import InferConfig, InferRequest, InferResult, Listener
from alarm.trainer.infer_engines import Generation
from alarm.trainer.infer_generate import next_step, split_thinking
from alarm.trainer.infer_records import FORCED_CLOSER, THINK_CLOSE
from alarm.trainer.trained import SpecMismatchError, build_encoders, check_encoder_spec

PROMPT = "What do you hear?"


@pytest.fixture(scope="module")
def run(trained_run: dict) -> dict:
    """The session's tiny trained run (conftest): whisper + muq store, 4 ALARM-CA steps."""
    return trained_run


@pytest.fixture(scope="module")
def listener(run) -> Listener:
    return Listener.load(InferConfig(checkpoint=str(run["run"]), think_budget=6, max_new_tokens=40, batch_size=4))


def trainer_embeddings(listener: Listener, feats: dict[str, np.ndarray]) -> torch.Tensor:
    """The training path: collate stored features into a batch of one and run Model.audio."""
    from alarm.trainer.model import Model

    batch = {"feats": {k: torch.from_numpy(v[None]) for k, v in feats.items()},
             "lengths": {k: torch.tensor([len(v)]) for k, v in feats.items()}}
    model = Model(None, listener.frontend, listener.layout, 200, torch.device("cpu"), None, cached=False)
    with torch.inference_mode():
        audio, lengths = model.audio(batch)
    return audio[0, : int(lengths[0])]


# ------------------------------------------------------------------------------------------ equality


def test_on_the_fly_embeddings_equal_the_cached_ones(run, listener):
    """Issue 6: encoders on the fly + store rounding give the features and embeddings training saw."""
    from alarm.pipeline.store import open_features

    readers = {name: open_features(run["store"], name) for name in ("whisper", "muq")}
    for row in run["rows"]:
        key = run["keys"][row["id"]]
        live = listener.audio_features(row["audio"])
        for name, reader in readers.items():
            stored = reader.read(key)
            assert live[name].shape == stored.shape == (reader.num_frames(key), reader.layers, reader.dim)
            # The store batched several clips per forward pass, we encode one: float32 noise in the last bits
            # (about 1e-7 absolute) can move a value across a float16 rounding boundary, one step at most
            # (near zero, where float16 steps are finer than that noise, a few tiny steps).
            step = np.spacing(np.abs(stored).astype(np.float16)).astype(np.float32)
            assert np.all(np.abs(live[name] - stored) <= np.maximum(step, 1e-6)), name
            assert np.mean(live[name] == stored) > 0.99, name
        cached = trainer_embeddings(listener, {n: r.read(key) for n, r in readers.items()})
        assert torch.equal(listener.audio_embeddings(listener.store_features(key)), cached)
        on_the_fly = listener.audio_embeddings(live)
        assert on_the_fly.shape == cached.shape and on_the_fly.shape[1] == 64
        torch.testing.assert_close(on_the_fly, cached, rtol=0, atol=1e-5)


def test_export_folder_gives_the_same_embeddings_without_a_store(run, listener, tmp_path):
    from alarm.trainer.export import export_model

    folder = export_model(run["run"], tmp_path / "export")
    exported = Listener.load(InferConfig(checkpoint=str(folder), think_budget=6, max_new_tokens=40))
    assert exported.readers == {}  # an export carries the encoder specs itself
    audio = run["rows"][2]["audio"]
    feats = exported.audio_features(audio)
    for name, values in listener.audio_features(audio).items():
        assert np.array_equal(feats[name], values)
    assert torch.equal(exported.audio_embeddings(feats), listener.audio_embeddings(feats))


# ------------------------------------------------------------------------------------------ generation


def test_budget_forcing_closes_the_thinking_once(run, listener):
    [result] = listener.generate([InferRequest(run["rows"][0]["audio"], PROMPT)])
    assert result.error is None and result.forced
    assert result.text.count(THINK_CLOSE) == 1 and FORCED_CLOSER in result.text
    closer = listener.closer_ids
    assert result.thinking_tokens == 6 + closer.index(listener.think_close_id)
    before, _, after = result.text.partition(THINK_CLOSE)
    assert result.thinking == before.strip() and result.answer == after.strip()
    # The closer's tail opens the answer, and the seeded tiny LLM never ends its turn: it runs to the cap.
    assert result.answer_tokens >= len(closer) - closer.index(listener.think_close_id) - 1
    assert result.thinking_tokens + 1 + result.answer_tokens == 40


def test_no_forcing_when_the_budget_is_the_cap(run, listener, monkeypatch):
    monkeypatch.setattr(listener, "cfg", replace(listener.cfg, think_budget=12, max_new_tokens=12))
    [result] = listener.generate([InferRequest(run["rows"][1]["audio"], PROMPT)])
    assert result.error is None and not result.forced and FORCED_CLOSER not in result.text
    assert result.thinking_tokens + result.answer_tokens + (THINK_CLOSE in result.text) <= 12


def test_thinking_closed_within_budget_continues_unforced(run, listener, monkeypatch):
    """Deterministic case: the first call (budget) ends right after </think>; the real LLM continues."""
    real = listener.backend.generate
    calls = []

    def scripted_first_call(prefixes, limits):
        calls.append(limits)
        if len(calls) == 1:  # the budgeted call: three thinking tokens, then </think>
            ids = listener.tokenizer.encode("I hear a tone.", add_special_tokens=False)[:3]
            return [Generation(ids + [listener.think_close_id]) for _ in prefixes]
        return real(prefixes, limits)

    monkeypatch.setattr(listener.backend, "generate", scripted_first_call)
    [result] = listener.generate([InferRequest(run["rows"][0]["audio"], PROMPT)])
    assert not result.forced and FORCED_CLOSER not in result.text
    assert calls == [[6], [40 - 4]]  # continued to the cap, no closer appended
    assert result.thinking_tokens == 3 and result.answer_tokens == 40 - 4
    assert result.thinking == "I hear a" and result.text.startswith("I hear a" + THINK_CLOSE)


def test_batched_generation_equals_one_by_one(run, listener, monkeypatch):
    """Left-padded prompt embeddings in one batch give each row what it gets alone."""
    # Stored features: the same values whatever the batch (encoders batching windows may move the last bit).
    requests = [InferRequest(r["audio"], f"{PROMPT} ({i})", clip_key=run["keys"][r["id"]])
                for i, r in enumerate(run["rows"])]
    assert listener.cfg.chunk == len(requests)
    batched = listener.generate(requests)
    monkeypatch.setattr(listener, "cfg", replace(listener.cfg, batch_size=1))
    single = listener.generate(requests)
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(r.error is None for r in batched)


def test_sampling_is_reproducible_with_its_seed(run):
    listener = Listener.load(InferConfig(checkpoint=str(run["run"]), think_budget=8, max_new_tokens=8,
                                         temperature=0.6, seed=3))
    assert listener.backend.sampling == {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20}
    request = InferRequest(run["rows"][0]["audio"], PROMPT, clip_key=run["keys"][run["rows"][0]["id"]])
    first, second = listener.generate([request]), listener.generate([request])
    assert first[0].error is None and first == second


def test_bad_audio_is_an_error_row_and_the_rest_is_answered(run, listener, tmp_path):
    from store_fixtures import tone, write_wav

    text = tmp_path / "text.wav"
    text.write_text("not audio\n" * 50)
    blip = write_wav(tmp_path / "blip.wav", tone(0.01, 16000), 16000)  # 10 ms: not one whisper frame
    results = listener.generate([InferRequest(run["rows"][0]["audio"], PROMPT),
                                 InferRequest(str(tmp_path / "missing.wav"), PROMPT),
                                 InferRequest(str(text), PROMPT),
                                 InferRequest(run["rows"][1]["audio"], PROMPT, start=5.0, end=6.0),
                                 InferRequest(str(blip), PROMPT),
                                 InferRequest(run["rows"][3]["audio"], PROMPT)])
    assert [r.error is None for r in results] == [True, False, False, False, False, True]
    assert results[1].error.startswith("missing") and results[2].error.startswith("undecodable")
    assert results[3].error.startswith("empty cut") and results[4].error.startswith("too short")
    assert results[1] == InferResult.failed(results[1].error)
    assert results[0].text and results[5].text


def test_clip_key_reads_the_store(run, listener):
    row = run["rows"][2]
    [from_store, bad_path] = listener.generate([
        InferRequest("/no/such/file.wav", PROMPT, clip_key=run["keys"][row["id"]]),
        InferRequest("/no/such/file.wav", PROMPT, clip_key="not-a-key")])
    assert from_store.error is None and from_store.text
    assert bad_path.error.startswith("missing")  # unknown key: falls back to the audio path


# ------------------------------------------------------------------------------------------ specs


def test_checkpoint_trained_on_another_spec_is_refused(run, tmp_path):
    ckpt = tmp_path / "step"
    shutil.copytree(run["checkpoint"], ckpt)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["store_spec_ids"]["muq"] = "0123456789abcdef"
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SpecMismatchError, match="muq features with spec id 0123456789abcdef"):
        Listener.load(InferConfig(checkpoint=str(ckpt), store=str(run["store"])))


def test_encoder_with_other_weights_is_refused(run):
    from alarm.pipeline.store import open_features

    spec = open_features(run["store"], "whisper").spec
    other = {**spec, "encoder": {**spec["encoder"], "weights_sha256": "0" * 64}}
    with pytest.raises(SpecMismatchError, match="weights_sha256 .other weights"):
        build_encoders({"whisper": other}, "cpu")
    check_encoder_spec("whisper", spec["encoder"], spec["encoder"])  # the same spec passes
    with pytest.raises(SpecMismatchError, match="layers"):
        check_encoder_spec("whisper", {**spec["encoder"], "layers": [1]}, spec["encoder"])


@pytest.mark.parametrize("name, settings", [
    ("whisper", {}), ("w2vbert", {"window_seconds": 4.0}), ("muq", {"layers": (1, 2)}),
    ("sslam", {"window_seconds": 5.12}),
])
def test_every_encoder_is_rebuilt_from_its_spec(name, settings):
    """The spec alone (as the store records it) rebuilds the same encoder: same window, layers, weights."""
    from alarm.pipeline.encoders import EncoderConfig, build_encoder
    from alarm.trainer.trained import encoder_config_from_spec

    spec = build_encoder(EncoderConfig(name, preset="tiny", **settings)).spec()
    check_encoder_spec(name, build_encoder(encoder_config_from_spec(spec, "cpu")).spec(), spec)


def test_missing_store_is_a_clear_error(run, tmp_path):
    from alarm.pipeline.configs import ConfigError

    with pytest.raises(ConfigError, match="--store"):
        Listener.load(InferConfig(checkpoint=str(run["checkpoint"]), store=str(tmp_path / "gone")))


# ------------------------------------------------------------------------------------------ units


def test_split_thinking():
    assert split_thinking("I hear rain.\n</think>\n\nRain.") == ("I hear rain.", "Rain.")
    assert split_thinking("<think>\nstill thinking") == ("still thinking", "")
    assert split_thinking("a</think>b</think>c") == ("a", "b</think>c")


def test_next_step_decides_forcing():
    closer, think = [7, 8, 99, 9], 99
    assert next_step(Generation([1, 2, 3], stopped=True), think, 3, 20, closer) is None  # ended
    assert next_step(Generation([1, 99, 3]), think, 3, 20, closer) == []  # closed: continue as is
    assert next_step(Generation([1, 2, 3]), think, 3, 20, closer) == closer  # budget out: force
    assert next_step(Generation([1, 2, 3]), think, 3, 3, closer) is None  # cap reached
    assert next_step(Generation([1, 2, 3]), think, 3, 7, closer) is None  # no room after the closer


def test_config_checks():
    from alarm.pipeline.configs import ConfigError

    for bad in ({"checkpoint": ""}, {"engine": "tgi"}, {"device": "tpu"}, {"think_budget": 0},
                {"temperature": -1.0}, {"batch_size": -1}):
        with pytest.raises(ConfigError):
            InferConfig(**{"checkpoint": "x", **bad})
    assert InferConfig("x").chunk == 8 and InferConfig("x", engine="vllm").chunk == 256
    assert InferConfig("x", batch_size=3).chunk == 3


# ------------------------------------------------------------------------------------------ cli


def test_cli_prints_thinking_and_answer(run, tmp_path):
    from alarm.cli import main

    audio = [run["rows"][0]["audio"], str(tmp_path / "missing.wav")]
    base = ["infer", *audio, "--prompt", PROMPT, "--checkpoint", str(run["run"]), "--think-budget", "4",
            "--max-new-tokens", "30"]
    out = CliRunner().invoke(main, [*base, "--json"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.stdout.strip().splitlines()]  # logs go to stderr
    assert [r["audio"] for r in rows] == audio
    assert rows[0]["error"] is None and rows[0]["forced"] and rows[1]["error"].startswith("missing")
    out = CliRunner().invoke(main, base)
    assert out.exit_code == 0, out.output
    assert "-- thinking (" in out.stdout and "-- answer (" in out.stdout and "error: missing" in out.stdout
    out = CliRunner().invoke(main, ["infer", audio[0], "--prompt", PROMPT, "--checkpoint", str(tmp_path)])
    assert out.exit_code == 2 and "is neither an export folder" in out.stderr


# ------------------------------------------------------------------------------------------ vllm


@pytest.mark.vllm
def test_vllm_prompt_embeddings_match_transformers(run):
    pytest.importorskip("vllm", reason="vLLM is not installed (run in .venv-vllm)")
    requests = [InferRequest(r["audio"], PROMPT) for r in run["rows"][:2]] + [InferRequest("/no.wav", PROMPT)]
    cfg = {"checkpoint": str(run["run"]), "think_budget": 6, "max_new_tokens": 40}
    theirs = Listener.load(InferConfig(**cfg)).generate(requests)
    listener = Listener.load(InferConfig(**cfg, engine="vllm"))
    try:
        ours = listener.generate(requests)
    finally:
        listener.close()
    assert [r.text for r in ours] == [r.text for r in theirs]
    assert [(r.forced, r.thinking_tokens, r.answer_tokens) for r in ours] == \
        [(r.forced, r.thinking_tokens, r.answer_tokens) for r in theirs]
    assert ours[0].forced and ours[2].error.startswith("missing")


def test_cli_reads_a_run_and_a_store_on_s3(run, s3_server, tmp_path):
    """`alarm infer --checkpoint s3://... --store s3://...` answers exactly as the local run and store."""
    from remote_store_fixtures import upload_tree

    from alarm.cli import main

    bucket = s3_server.bucket()
    run_url = upload_tree(run["run"], f"s3://{bucket}/runs/r1")
    store_url = upload_tree(run["store"], f"s3://{bucket}/store")
    audio = [r["audio"] for r in run["rows"][:2]]
    opts = ["--think-budget", "4", "--max-new-tokens", "30", "--json"]
    local = CliRunner().invoke(main, ["infer", *audio, "--prompt", PROMPT, "--checkpoint", str(run["run"]), *opts])
    remote = CliRunner().invoke(main, ["infer", *audio, "--prompt", PROMPT, "--checkpoint", run_url,
                                       "--store", store_url, *opts])
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    rows = [json.loads(line) for line in remote.stdout.strip().splitlines()]
    assert all(r["error"] is None and r["answer_tokens"] + r["thinking_tokens"] > 0 for r in rows)
    assert rows == [json.loads(line) for line in local.stdout.strip().splitlines()]
    out = CliRunner().invoke(main, ["infer", audio[0], "--prompt", PROMPT, "--checkpoint", f"s3://{bucket}/none"])
    assert out.exit_code == 2, out.output
