"""The original-release converter: names as in the release, bitwise round trips, files and CLI."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from frontend_fixtures import tiny_batch, tiny_frontend
from safetensors.torch import load_file, save_file

from cli import main
from trainer.convert import (
    ConvertError,
    convert_file,
    convert_original_to_ours,
    convert_ours_to_original,
    split_original,
)

A = "model.audio_adapter.adapters."
F = "model.audio_fusion.fusion_model."
WB = ("weight", "bias")
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def conv_adapter_keys(name: str, proj_in: bool, batchnorm: bool) -> set[str]:
    """The release's DownsamplerConformerAdapter keys (use_conformer false, downsampler_depth 1)."""
    p = f"{A}{name}."
    keys = {p + "layer_fusion.layer_weights", *(p + f"llm_proj.{s}" for s in WB)}
    keys |= {p + f"adapter.downsampler.{stage}.0.{s}" for stage in (0, 1) for s in WB}
    norm = [f"2.{s}" for s in BN] if batchnorm else [f"2.norm.{s}" for s in WB]
    keys |= {p + f"adapter.downsampler.{stage}.{n}" for stage in (0, 1) for n in norm}
    if proj_in:
        keys |= {p + f"adapter.input_proj.{s}" for s in WB}
    return keys


def release_keys_ca() -> set[str]:
    keys = conv_adapter_keys("whisper", True, True) | conv_adapter_keys("w2vbert", False, False)
    keys |= conv_adapter_keys("sslam", True, False)
    keys |= {f"{A}muq.layer_fusion.layer_weights"}
    keys |= {f"{A}muq.{m}.{s}" for m in ("adapter.model.0", "adapter.model.2", "llm_proj") for s in WB}
    keys |= {f"{F}in_proj.{e}.{s}" for e in ("whisper", "w2vbert", "muq", "sslam") for s in WB}
    layer = [f"{attn}.{w}" for attn in ("self_attn", "multihead_attn")
             for w in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")]
    layer += [f"{m}.{s}" for m in ("linear1", "linear2", "norm1", "norm2", "norm3") for s in WB]
    keys |= {f"{F}condition_modules.{e}.0.{k}" for e in ("w2vbert", "muq", "sslam") for k in layer}
    keys |= {f"{F}out_proj.{s}" for s in WB}
    return keys | {"model.audio_start_emb", "model.audio_end_emb"}


def release_keys_perceiver(layers: int = 2) -> set[str]:
    keys = conv_adapter_keys("whisper", True, True)
    keys |= {f"{A}{e}.layer_fusion.layer_weights" for e in ("w2vbert", "muq", "sslam")}
    for e in ("w2vbert", "muq", "sslam"):
        p = f"{F}perceiver.{e}."
        keys.add(p + "latent_provider._query")
        cross = ["q_norm", "kv_norm", *(f"attention.{x}_proj" for x in "qkvo")]
        keys |= {p + f"cross_attn_1.0.module.{m}.{s}" for m in cross for s in WB}
        keys |= {p + f"cross_attn_1.1.module.{m}.{s}" for m in (0, 1, 3) for s in WB}
        for i in range(layers):
            self_attn = ["norm", *(f"attention.{x}_proj" for x in "qkvo")]
            keys |= {p + f"self_attn_1.{i}.0.module.{m}.{s}" for m in self_attn for s in WB}
            keys |= {p + f"self_attn_1.{i}.1.module.{m}.{s}" for m in (0, 1, 3) for s in WB}
        keys |= {f"{F}out_proj.{e}.{s}" for s in WB}
    keys |= {F + "cond_start_emb", F + "cond_end_emb"}
    return keys | {"model.audio_start_emb", "model.audio_end_emb"}


@pytest.mark.parametrize("fusion, expected", [("ca", release_keys_ca), ("perceiver", release_keys_perceiver)])
def test_our_names_map_to_the_release_names(fusion, expected):
    original = convert_ours_to_original(tiny_frontend(fusion).state_dict())
    assert set(original) == expected()
    assert original["model.audio_start_emb"].shape == (1, 16)


@pytest.mark.parametrize("fusion, names", [("none", ["whisper"]), ("none", ["muq"]), ("ca", None),
                                           ("perceiver", None)])
def test_round_trip_is_bitwise(fusion, names):
    frontend = tiny_frontend(fusion, names)
    ours = frontend.state_dict()
    back = convert_original_to_ours(convert_ours_to_original(ours))
    assert list(back) == list(ours)
    for key, tensor in ours.items():
        assert back[key].dtype == tensor.dtype and back[key].shape == tensor.shape
        assert torch.equal(back[key], tensor), key


def test_full_original_checkpoint_loads_and_gives_the_same_output():
    source = tiny_frontend("ca", seed=0)
    original = convert_ours_to_original(source.state_dict())
    # A full release checkpoint also holds the LLM, its head and the encoders: they are skipped.
    original |= {"model.layers.0.mlp.up_proj.weight": torch.ones(2, 2), "lm_head.weight": torch.ones(2, 2),
                 "model.audio_encoder.encoders.whisper.conv1.weight": torch.ones(1)}
    ours, skipped = split_original(original)
    assert sorted(skipped) == ["audio_encoder.encoders.whisper.conv1.weight", "layers.0.mlp.up_proj.weight",
                               "lm_head.weight"]
    target = tiny_frontend("ca", seed=7)
    target.load_state_dict(ours, strict=True)
    feats, lengths = tiny_batch(source)
    with torch.no_grad():
        assert torch.equal(source(feats, lengths)[0], target(feats, lengths)[0])


def test_single_adapter_file_of_the_release():
    frontend = tiny_frontend("none", ["w2vbert"])
    prefix = "model.audio_adapter.adapters.w2vbert."
    adapter_only = {k.removeprefix(prefix): v for k, v in convert_ours_to_original(frontend.state_dict()).items()
                    if k.startswith(prefix)}
    assert "layer_fusion.layer_weights" in adapter_only and "adapter.downsampler.0.2.norm.weight" in adapter_only
    ours = convert_original_to_ours(adapter_only, encoder="w2vbert")
    assert set(ours) == {k for k in frontend.state_dict() if k.startswith("adapters.w2vbert.")}


def test_unknown_keys_raise():
    with pytest.raises(ConvertError, match="no mapping"):
        convert_original_to_ours({"model.audio_adapter.adapters.whisper.adapter.encoder.conformer_layers.0.w":
                                  torch.ones(1)})
    with pytest.raises(ConvertError, match="no mapping"):
        convert_ours_to_original({"adapters.whisper.mystery.weight": torch.ones(1)})


def test_files_and_cli_round_trip(tmp_path):
    frontend = tiny_frontend("perceiver")
    ours_path = tmp_path / "ours.safetensors"
    save_file({k: v.contiguous() for k, v in frontend.state_dict().items()}, str(ours_path))
    runner = CliRunner()
    result = runner.invoke(main, ["train", "convert", str(ours_path), str(tmp_path / "orig.safetensors"),
                                  "--direction", "to-original"])
    assert result.exit_code == 0, result.output
    # Shard the "release" checkpoint into a folder with an LLM tensor beside it, as on the hub.
    original = load_file(str(tmp_path / "orig.safetensors"))
    keys = sorted(original)
    shards = tmp_path / "release"
    shards.mkdir()
    save_file({k: original[k] for k in keys[: len(keys) // 2]} | {"model.embed_tokens.weight": torch.ones(3, 2)},
              str(shards / "model-00001-of-00002.safetensors"))
    save_file({k: original[k] for k in keys[len(keys) // 2:]}, str(shards / "model-00002-of-00002.safetensors"))
    result = runner.invoke(main, ["train", "convert", str(shards), str(tmp_path / "back.safetensors"),
                                  "--direction", "to-ours"])
    assert result.exit_code == 0, result.output
    assert "1 non-audio tensors left out" in result.output
    back, before = load_file(str(tmp_path / "back.safetensors")), load_file(str(ours_path))
    assert set(back) == set(before) and all(torch.equal(back[k], before[k]) for k in before)
    result = runner.invoke(main, ["train", "convert", str(tmp_path / "missing.safetensors"),
                                  str(tmp_path / "x.safetensors"), "--direction", "to-ours"])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_convert_file_refuses_a_file_without_front_end_tensors(tmp_path):
    save_file({"model.embed_tokens.weight": torch.ones(2)}, str(tmp_path / "llm.safetensors"))
    with pytest.raises(ConvertError, match="no audio front-end"):
        convert_file(tmp_path / "llm.safetensors", tmp_path / "out.safetensors", "to-ours")
