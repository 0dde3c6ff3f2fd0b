"""train(cfg) end to end on a CPU: learning, frozen LLM, exact resume, DDP, fusion stage, cache, export."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from train_fixtures import target_rows, tiny_clips, write_feature_store, write_targets

from alarm.pipeline.configs import save_config
from alarm.trainer.config import TrainConfig
from alarm.trainer.train import DataChangedError, train

REPO = Path(__file__).resolve().parents[1]
TINY_FRONTEND = {"adapter_dim": 16, "conv_hidden_dim": 32, "ca_dim": 16, "ca_heads": 2, "ca_ffn_dim": 32}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A real store (whisper 2x16, w2vbert 2x12) and targets over 8 clips (6 train, 2 validation)."""
    root = tmp_path_factory.mktemp("train-data")
    clips = tiny_clips(8, lo=12, hi=40)
    write_feature_store(root / "store", clips, encoder="whisper", layers=2, dim=16, seed=0)
    write_feature_store(root / "store", clips, encoder="w2vbert", layers=2, dim=12, seed=1)
    write_targets(root / "targets.parquet", target_rows(clips))
    return {"root": root, "store": root / "store", "targets": root / "targets.parquet"}


@pytest.fixture(scope="module")
def learnable_llm(tmp_path_factory, tiny_qwen3_dir) -> Path:
    """The tiny Qwen3 with a wide weight init, so a few steps can move its loss a lot.

    With the default init (std 0.02) a 64-wide head cannot separate logits by more than about a
    nat, whatever the audio says; this is the same real class, saved and loaded with from_pretrained.
    """
    from transformers import AutoConfig, AutoTokenizer, Qwen3ForCausalLM

    out = tmp_path_factory.mktemp("learnable-qwen3")
    config = AutoConfig.from_pretrained(tiny_qwen3_dir)
    config.initializer_range = 0.5
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_qwen3_dir).save_pretrained(out)
    return out


def make_cfg(data: dict[str, Path], out: Path, llm: Path, **overrides) -> TrainConfig:
    base = dict(targets=str(data["targets"]), store=str(data["store"]), output_dir=str(out), llm=str(llm),
                frontend=dict(TINY_FRONTEND), batch_tokens=300, max_seq_len=200, num_workers=0, lr=3e-3,
                warmup_steps=2, epochs=50, eval_every=0, save_every=100, log_every=1, sample_generations=1,
                sample_max_new_tokens=4, progress=False)
    base.update(overrides)
    return TrainConfig(**base)


def read_logs(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "logs.jsonl").read_text().splitlines()]


def test_loss_falls_llm_untouched_encoders_never_built(data, learnable_llm, tmp_path, monkeypatch):
    import transformers

    import alarm.pipeline.encoders

    def no_encoders(*args, **kwargs):
        raise AssertionError("the trainer must not construct an encoder")

    monkeypatch.setattr(alarm.pipeline.encoders, "build_encoder", no_encoders)
    loaded = []
    real_from_pretrained = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):  # keep a handle on the LLM the trainer loads
        loaded.append(real_from_pretrained(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    run = tmp_path / "run"  # one batch holds every training row: a fixed set, seen each step
    result = train(make_cfg(data, run, learnable_llm, lr=1e-2, max_steps=14, eval_every=7, batch_tokens=2000))
    assert result.step == 14
    assert result.losses[-1] < 0.6 * result.losses[0], result.losses

    # The LLM, head included, is bit-for-bit what was loaded.
    reference = real_from_pretrained(learnable_llm).state_dict()
    after = loaded[0].state_dict()
    assert set(after) == set(reference)
    assert all(torch.equal(after[k], reference[k]) for k in reference)
    assert not any(p.requires_grad for p in loaded[0].parameters())

    # Checkpoint: front-end weights only, plus metadata naming the data it was trained on.
    weights = load_file(str(result.checkpoint / "trainable.safetensors"))
    assert weights and all(k.startswith(("adapters.whisper.", "audio_start", "audio_end")) for k in weights)
    assert any("running_mean" in k for k in weights)  # whisper's BatchNorm statistics travel along
    meta = json.loads((result.checkpoint / "meta.json").read_text())
    assert meta["step"] == 14 and set(meta["store_spec_ids"]) == {"whisper"}
    assert meta["targets_fingerprint"] and meta["config"]["lr"] == 1e-2

    logs = read_logs(run)
    evals = [r for r in logs if "eval_loss" in r]
    assert [r["step"] for r in evals] == [7, 14]
    assert set(evals[-1]["eval_loss_per_dataset"]) == {"dsA", "dsB"}
    assert evals[-1]["samples"] and isinstance(evals[-1]["samples"][0]["generated"], str)
    assert [r["step"] for r in logs if "loss" in r] == list(range(1, 15))
    assert (run / "rejects.jsonl").read_text() == ""


def test_kill_and_resume_is_bitwise_identical(data, tiny_qwen3_dir, tmp_path):
    from click.testing import CliRunner

    from alarm.cli import main

    common = dict(grad_accum=2, batch_tokens=250, seed=5, lr=1e-2)
    straight = train(make_cfg(data, tmp_path / "straight", tiny_qwen3_dir, max_steps=6, **common))
    steps_per_epoch = json.loads((straight.checkpoint / "meta.json").read_text())["sampler"]
    assert straight.step == 6

    first = train(make_cfg(data, tmp_path / "killed", tiny_qwen3_dir, max_steps=3, **common))
    assert first.step == 3
    cfg_path = tmp_path / "resume.yaml"
    save_config(make_cfg(data, tmp_path / "killed", tiny_qwen3_dir, max_steps=6, **common), cfg_path)
    out = CliRunner().invoke(main, ["train", "run", "--config", str(cfg_path)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "step 6" in out.output

    a = tmp_path / "straight" / "checkpoints" / "step_00000006"
    b = tmp_path / "killed" / "checkpoints" / "step_00000006"
    for name in ("trainable.safetensors", "optimizer.safetensors"):
        wa, wb = load_file(str(a / name)), load_file(str(b / name))
        assert set(wa) == set(wb)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    meta_a, meta_b = (json.loads((p / "meta.json").read_text()) for p in (a, b))
    assert meta_a["sampler"] == meta_b["sampler"] == steps_per_epoch
    assert meta_a["sampler"]["epoch"] >= 1  # the run crossed an epoch boundary
    resumed_losses = [r["loss"] for r in read_logs(tmp_path / "killed") if "loss" in r]
    assert resumed_losses == [r["loss"] for r in read_logs(tmp_path / "straight") if "loss" in r]

    # A resumed run refuses changed targets unless told otherwise.
    rows = target_rows(tiny_clips(8, lo=12, hi=40))
    rows[0]["target"] = "Something else entirely."
    changed = write_targets(tmp_path / "changed.parquet", rows)
    cfg = make_cfg(data, tmp_path / "killed", tiny_qwen3_dir, max_steps=6, **common)
    cfg.targets = str(changed)
    with pytest.raises(DataChangedError, match="targets fingerprint"):
        train(cfg)
    save_config(cfg, cfg_path)
    out = CliRunner().invoke(main, ["train", "run", "--config", str(cfg_path)])
    assert out.exit_code == 2 and "--allow-changed-data" in out.output

    # --fresh starts at step 0 and sets the earlier run aside instead of resuming from it.
    cfg.max_steps = 1
    save_config(cfg, cfg_path)
    out = CliRunner().invoke(main, ["train", "run", "--config", str(cfg_path), "--fresh"], catch_exceptions=False)
    assert out.exit_code == 0 and "step 1;" in out.output
    killed = tmp_path / "killed"
    assert [p.name for p in (killed / "checkpoints").iterdir()] == ["step_00000001"]
    (aside,) = killed.glob("previous-*")
    assert (aside / "checkpoints" / "step_00000006" / "meta.json").is_file()


def test_two_gloo_processes_match_one_process(data, tiny_qwen3_dir, tmp_path):
    common = dict(batch_tokens=250, seed=9, lr=1e-2, max_steps=4, sample_generations=0)
    single = train(make_cfg(data, tmp_path / "one", tiny_qwen3_dir, grad_accum=2, **common))
    cfg_path = tmp_path / "ddp.yaml"
    save_config(make_cfg(data, tmp_path / "two", tiny_qwen3_dir, grad_accum=1, **common), cfg_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(port), "-m", "alarm.trainer.train", str(cfg_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = [r["loss"] for r in read_logs(tmp_path / "two") if "loss" in r]
    assert len(two) == len(single.losses) == 4
    assert two == pytest.approx(single.losses, rel=1e-5)
    wa = load_file(str(single.checkpoint / "trainable.safetensors"))
    wb = load_file(str(tmp_path / "two" / "checkpoints" / "step_00000004" / "trainable.safetensors"))
    for k in wa:
        if "running" not in k and "num_batches" not in k:
            assert torch.allclose(wa[k], wb[k], atol=1e-5), k


def test_bad_configs_fail_at_once():
    from alarm.pipeline.configs import ConfigError

    with pytest.raises(ConfigError, match="fusion 'none' trains one encoder"):
        TrainConfig(encoders=["whisper", "w2vbert"])
    with pytest.raises(ConfigError, match="list it first"):
        TrainConfig(encoders=["w2vbert", "whisper"], fusion="ca")
    with pytest.raises(ConfigError, match="unknown part"):
        TrainConfig(freeze=["llm"])
    with pytest.raises(ConfigError, match="add 'adapters' to freeze"):
        TrainConfig(encoders=["whisper", "w2vbert"], fusion="ca", adapter_cache="c")
    with pytest.raises(ConfigError, match="batch_tokens"):
        TrainConfig(batch_tokens=100, max_seq_len=4096)


def test_fusion_stage_with_frozen_adapters_cache_and_export(data, tiny_qwen3_dir, tmp_path, s3_server):
    from click.testing import CliRunner
    from safetensors.torch import save_file
    from store_trees import store_digest

    from alarm.cli import main
    from alarm.pipeline.verify import verify_store
    from alarm.trainer.export import load_export
    from alarm.trainer.frontend import EncoderShape, FrontEndConfig, build_frontend

    # Stage 1: a whisper adapter run (a checkpoint folder) and a w2vbert adapter as a bare .safetensors.
    stage1 = {"whisper": train(make_cfg(data, tmp_path / "stage1-whisper", tiny_qwen3_dir, max_steps=1,
                                        sample_generations=0)).checkpoint / "trainable.safetensors"}
    w2v = build_frontend(FrontEndConfig(encoders=[EncoderShape("w2vbert", 2, 12)], llm_dim=64, **TINY_FRONTEND))
    stage1["w2vbert"] = tmp_path / "w2vbert-adapter.safetensors"
    save_file({k: v for k, v in w2v.state_dict().items() if k.startswith("adapters.")}, str(stage1["w2vbert"]))
    init = [str(stage1["whisper"].parent), str(stage1["w2vbert"])]
    fusion = dict(encoders=["whisper", "w2vbert"], fusion="ca", init=init, freeze=["adapters"], max_steps=3,
                  sample_generations=0)
    raw = train(make_cfg(data, tmp_path / "fusion-raw", tiny_qwen3_dir, **fusion))
    weights = load_file(str(raw.checkpoint / "trainable.safetensors"))
    assert weights and not any(k.startswith("adapters.") for k in weights)  # frozen: not saved
    assert any(k.startswith("fusion.") for k in weights)

    cache_cfg = make_cfg(data, tmp_path / "fusion-cached", tiny_qwen3_dir, adapter_cache=str(tmp_path / "cache"),
                         **fusion)
    save_config(cache_cfg, tmp_path / "fusion.yaml")
    cache_cmd = ["train", "cache-adapters", "--config", str(tmp_path / "fusion.yaml")]
    out = CliRunner().invoke(main, cache_cmd, catch_exceptions=False)
    assert out.exit_code == 0 and "whisper: 8 clips cached" in out.output and "w2vbert: 8 clips" in out.output
    out = CliRunner().invoke(main, cache_cmd, catch_exceptions=False)
    assert "whisper: 0 clips cached" in out.output  # a rerun skips committed parts
    remote = f"s3://{s3_server.bucket()}/adapter-cache"  # --out takes an object-store URL too
    out = CliRunner().invoke(main, [*cache_cmd, "--out", remote], catch_exceptions=False)
    assert out.exit_code == 0 and f"whisper: 8 clips cached in {remote}" in out.output, out.output
    assert verify_store(remote).ok and store_digest(remote) == store_digest(tmp_path / "cache")
    cached = train(cache_cfg)
    assert cached.losses == pytest.approx(raw.losses, rel=1e-5)  # same training, adapters skipped

    # Export: adapters from stage 1, fusion from the fusion run, all in one self-contained folder.
    folder = tmp_path / "export"
    out = CliRunner().invoke(main, ["train", "export", str(tmp_path / "fusion-raw"), str(folder)],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    frontend, info = load_export(folder)
    assert info["llm"] == str(tiny_qwen3_dir) and info["prompt_layout"]["head"] == "<|im_start|>user\n"
    assert set(info["encoders"]) == {"whisper", "w2vbert"} and info["frontend"]["fusion"] == "ca"
    state = frontend.state_dict()
    for path in stage1.values():
        for k, v in load_file(str(path)).items():
            if k.startswith("adapters."):
                assert torch.equal(state[k], v), k  # frozen adapters are exactly stage 1's
    for k, v in weights.items():
        assert torch.equal(state[k], v), k
    yaml.safe_load((tmp_path / "fusion-raw" / "config.yaml").read_text())  # the run's config is saved
