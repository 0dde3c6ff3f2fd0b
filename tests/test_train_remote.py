"""Training from object storage (a real S3 server): store and targets on s3:// train bit for bit as from
local disk; checkpoints, logs and the report go to an s3:// run folder, and a rerun resumes from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from remote_store_fixtures import upload_tree
from safetensors.torch import load_file
from train_fixtures import target_rows, tiny_clips, write_feature_store, write_targets

from alarm.cli import main
from alarm.pipeline.configs import save_config
from alarm.pipeline.objects import open_objects
from alarm.trainer.config import TrainConfig
from alarm.trainer.run_remote import weights_from, working_copy
from alarm.trainer.train import train
from alarm.trainer.trained import load_trained

TINY_FRONTEND = {"adapter_dim": 16, "conv_hidden_dim": 32}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("remote-train-data")
    clips = tiny_clips(8, lo=12, hi=40)
    write_feature_store(root / "store", clips, encoder="whisper", layers=2, dim=16, seed=0, dtype="float16")
    write_targets(root / "targets.parquet", target_rows(clips))
    return {"store": root / "store", "targets": root / "targets.parquet"}


def make_cfg(store: str, targets: str, out: str, llm: Path, cache: Path, **overrides) -> TrainConfig:
    base = dict(targets=targets, store=store, output_dir=out, llm=str(llm), frontend=dict(TINY_FRONTEND),
                batch_tokens=250, max_seq_len=200, num_workers=0, lr=1e-2, seed=3, warmup_steps=2, epochs=20,
                eval_every=0, save_every=2, log_every=1, sample_generations=0, progress=False,
                cache_dir=str(cache), keep_checkpoints=1)
    base.update(overrides)
    return TrainConfig(**base)


def weights_of(folder: Path) -> dict[str, dict]:
    return {name: load_file(str(folder / name)) for name in ("trainable.safetensors", "optimizer.safetensors")}


def same(a: dict, b: dict) -> bool:
    return all(set(a[n]) == set(b[n]) and all(torch.equal(a[n][k], b[n][k]) for k in a[n]) for n in a)


def test_training_from_s3_equals_local_and_resumes_from_an_s3_run(data, tiny_qwen3_dir, tmp_path, s3_server):
    bucket = s3_server.bucket()
    store_url, run_url = f"s3://{bucket}/store", f"s3://{bucket}/runs/r1"
    upload_tree(data["store"], store_url)
    targets_url = f"s3://{bucket}/targets/targets.parquet"
    open_objects(f"s3://{bucket}/targets").put_file("targets.parquet", data["targets"])

    local = train(make_cfg(str(data["store"]), str(data["targets"]), str(tmp_path / "local"), tiny_qwen3_dir,
                           tmp_path / "unused", max_steps=4))
    assert local.step == 4

    # Store, targets and run on s3; a first run stops at step 2, a DataLoader worker reads the store.
    first = train(make_cfg(store_url, targets_url, run_url, tiny_qwen3_dir, tmp_path / "cache", max_steps=2,
                           num_workers=1))
    assert first.step == 2 and first.losses == local.losses[:2]
    run = open_objects(run_url)
    assert run.exists("checkpoints/step_00000002/meta.json") and run.exists("logs.jsonl")
    assert any(p.is_file() for p in (tmp_path / "cache" / "files").rglob("*"))  # the store came through the cache

    # Another machine (no local copy of the run) resumes from the run on s3 and finishes it: `alarm train run`.
    shutil.rmtree(working_copy(run_url, 0).parent)
    cfg_path = tmp_path / "remote.yaml"
    save_config(make_cfg(store_url, targets_url, run_url, tiny_qwen3_dir, tmp_path / "cache", max_steps=4), cfg_path)
    out = CliRunner().invoke(main, ["train", "run", "--config", str(cfg_path)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert f"step 4; checkpoint {run_url}/checkpoints/step_00000004" in out.output

    assert [info.key for info in run.list("checkpoints")] == [
        f"checkpoints/step_00000004/{n}" for n in ("meta.json", "optimizer.safetensors", "trainable.safetensors")]
    remote_ckpt = tmp_path / "fetched"
    for info in run.list("checkpoints/step_00000004"):
        run.get_file(info.key, remote_ckpt / info.key.rsplit("/", 1)[1])
    assert same(weights_of(remote_ckpt), weights_of(local.checkpoint))
    meta = json.loads((remote_ckpt / "meta.json").read_text())
    assert meta["step"] == 4 and meta["config"]["store"] == store_url
    logs = [json.loads(line) for line in run.get("logs.jsonl").decode().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == [1, 2, 3, 4]
    assert [r["loss"] for r in logs if "loss" in r] == local.losses
    assert run.exists("report.json") and run.exists("config.yaml")
    # A later stage initialises from the run on s3 (its latest checkpoint); inference loads it from there.
    assert same({"w": weights_from(run_url)}, {"w": weights_of(local.checkpoint)["trainable.safetensors"]})
    trained = load_trained(run_url)
    assert trained.spec_ids == meta["store_spec_ids"] and trained.readers["whisper"].root == store_url
    state = trained.frontend.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights_of(local.checkpoint)["trainable.safetensors"].items())
    # `alarm train export` takes the run's URL (a Path folded it to "s3:/..." and found no checkpoint).
    out = CliRunner().invoke(main, ["train", "export", run_url, str(tmp_path / "export")], catch_exceptions=False)
    assert out.exit_code == 0 and json.loads((tmp_path / "export" / "export.json").read_text())["encoders"], out.output
    exported = load_file(str(tmp_path / "export" / "frontend.safetensors"))
    assert all(torch.equal(exported[k], v) for k, v in weights_of(local.checkpoint)["trainable.safetensors"].items())

    # A damaged checkpoint on s3 is named there, not in the local copy a resume pulls from it again.
    weights_key = "checkpoints/step_00000004/trainable.safetensors"
    whole = run.get(weights_key)
    run.put(weights_key, whole[: len(whole) // 2])
    save_config(make_cfg(store_url, targets_url, run_url, tiny_qwen3_dir, tmp_path / "cache", max_steps=5), cfg_path)
    out = CliRunner().invoke(main, ["train", "run", "--config", str(cfg_path)])
    assert out.exit_code != 0 and f"checkpoint {run_url}/checkpoints/step_00000004 is damaged" in out.output, out.output
    run.put(weights_key, whole)

    # --fresh sets the run on s3 aside (copied under previous-<time>/) and starts at step 0.
    fresh = train(make_cfg(store_url, targets_url, run_url, tiny_qwen3_dir, tmp_path / "cache", max_steps=1),
                  fresh=True)
    assert fresh.step == 1 and fresh.losses == local.losses[:1]
    keys = [info.key for info in run.list()]
    assert "checkpoints/step_00000001/meta.json" in keys and "checkpoints/step_00000004/meta.json" not in keys
    assert any(k.startswith("previous-") and k.endswith("checkpoints/step_00000004/meta.json") for k in keys)


def test_cache_settings_are_checked():
    from alarm.pipeline.configs import ConfigError

    with pytest.raises(ConfigError, match="cache_gb must be >= 0"):
        TrainConfig(cache_gb=-1)
