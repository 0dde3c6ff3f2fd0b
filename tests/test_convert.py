"""The original-release converter: names as in the release, bitwise round trips, files and CLI."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from frontend_fixtures import TINY_ENCODERS, tiny_batch, tiny_frontend
from safetensors.torch import load_file, save_file

from alarm.cli import main
from alarm.trainer.convert import (
    ConvertError,
    convert_file,
    convert_original_to_ours,
    convert_ours_to_original,
    original_frontend_config,
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


def test_single_adapter_pth_through_the_cli(tmp_path):
    frontend = tiny_frontend("none", ["whisper"])
    prefix = "model.audio_adapter.adapters.whisper."
    torch.save({k.removeprefix(prefix): v for k, v in convert_ours_to_original(frontend.state_dict()).items()
                if k.startswith(prefix)}, tmp_path / "whisper.pth")
    result = CliRunner().invoke(main, ["train", "convert", str(tmp_path / "whisper.pth"), str(tmp_path / "w.safetensors"),
                                       "--direction", "to-ours", "--encoder", "whisper"])
    assert result.exit_code == 0, result.output
    loaded = load_file(str(tmp_path / "w.safetensors"))
    expected = {k: v for k, v in frontend.state_dict().items() if k.startswith("adapters.whisper.")}
    assert set(loaded) == set(expected) and all(torch.equal(loaded[k], v) for k, v in expected.items())


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


def release_config(fusion: str) -> dict:
    """The parts of a release checkpoint's config.json that describe the front end (4B sizes)."""
    def conv(name, layers, dim, norm):
        return {"encoder_name": name, "adapter_name": "downsampler_conformer", "audio_encoder_layers": layers,
                "norm_type": norm, "pre_average": True, "downsampler_depth": 1, "use_conformer": False,
                "encoder_embedding_dim": dim, "adapter_embedding_dim": 1024, "llm_embedding_dim": 2560,
                "layer_fusion_config": {"layer_fusion_type": "weighted_average"}}

    def identity(name, layers):
        return {"encoder_name": name, "adapter_name": "identity", "audio_encoder_layers": layers,
                "pre_average": True, "adapter_embedding_dim": 1024, "llm_embedding_dim": 2560, "use_llm_proj": False}

    layers = {"whisper": [7, 15, 23, 31], "sslam": [3, 7, 11], "muq": [4, 8, 12], "w2vbert": [6, 10, 15, 20, 24]}
    cond = {"main_encoder": "whisper", "conditional_encoders": ["w2vbert", "muq", "sslam"]}
    if fusion == "ca":
        adapters = [conv("whisper", layers["whisper"], 1280, "batch"), conv("sslam", layers["sslam"], 768, "layer"),
                    {"encoder_name": "muq", "adapter_name": "mlp", "audio_encoder_layers": layers["muq"],
                     "pre_average": True, "encoder_embedding_dim": 1024, "hidden_dim": 1024,
                     "adapter_embedding_dim": 1024, "llm_embedding_dim": 2560},
                    conv("w2vbert", layers["w2vbert"], 1024, "layer")]
        fusion_cfg = {"fusion_type": "crossattention", "llm_embedding_dim": 2560, "hidden_dim": 1024,
                      "ffn_dims": 4096, "dropout": 0.1, "num_attention_heads": 16, "num_hidden_layers": [1, 1, 1],
                      "use_skip_connection": False, **cond}
    else:
        adapters = [conv("whisper", layers["whisper"], 1280, "batch"),
                    *(identity(n, layers[n]) for n in ("sslam", "muq", "w2vbert"))]
        fusion_cfg = {"fusion_type": "multiperceiver", "llm_embedding_dim": 2560, "num_latents": [20] * 3,
                      "num_latent_channels": [768] * 3, "num_cross_attention_heads": [4] * 3,
                      "num_cross_attention_layers": [1] * 3, "first_cross_attention_layer_shared": [True] * 3,
                      "first_self_attention_block_shared": [True] * 3, "num_self_attention_heads": [4] * 3,
                      "num_self_attention_blocks": [3] * 3, "num_self_attention_layers_per_block": [6] * 3,
                      "conditional_embedding_dim": [1024, 1024, 768], **cond}
    return {"hidden_size": 2560, "use_explicit_audio_tokens": False, "audio_sep_d_embed": 2560,
            "audio_adapter_configs": adapters, "audio_fusion_config": fusion_cfg,
            "audio_postprocessing_config": {"postprocessing_type": "identity"}}


@pytest.mark.parametrize("fusion", ["ca", "perceiver"])
def test_release_config_gives_our_full_size_defaults(fusion):
    from alarm.trainer.frontend import ALARM_ORDER, FrontEndConfig, default_encoders

    cfg, layers = original_frontend_config(release_config(fusion))
    assert cfg == FrontEndConfig(encoders=default_encoders(ALARM_ORDER), fusion=fusion)
    assert layers["whisper"] == [7, 15, 23, 31] and layers["w2vbert"] == [6, 10, 15, 20, 24]


def test_unsupported_release_variants_raise():
    config = release_config("ca")
    config["audio_adapter_configs"][0]["use_conformer"] = True
    with pytest.raises(ConvertError, match="conformer"):
        original_frontend_config(config)
    config = release_config("ca")
    config["audio_fusion_config"]["use_skip_connection"] = True
    with pytest.raises(ConvertError, match="skip"):
        original_frontend_config(config)


def test_release_folder_writes_a_loadable_config(tmp_path):
    import json

    from alarm.pipeline.configs import load_config
    from alarm.trainer.frontend import FrontEndConfig, build_frontend

    frontend = tiny_frontend("ca")
    folder = tmp_path / "ALARM-CA"
    folder.mkdir()
    save_file(convert_ours_to_original(frontend.state_dict()), str(folder / "model.safetensors"))
    config = release_config("ca")
    # Shrink the release config to the tiny shapes of the saved weights.
    tiny = {e.name: e for e in TINY_ENCODERS}
    for a in config["audio_adapter_configs"]:
        shape = tiny[a["encoder_name"]]
        a.update(encoder_embedding_dim=shape.dim, adapter_embedding_dim=8, llm_embedding_dim=16,
                 audio_encoder_layers=a["audio_encoder_layers"][: shape.layers])
    config["audio_fusion_config"].update(hidden_dim=8, ffn_dims=16, num_attention_heads=2)
    (folder / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["train", "convert", str(folder), str(tmp_path / "ours.safetensors"),
                                       "--direction", "to-ours"])
    assert result.exit_code == 0, result.output
    assert "whisper: the release averages hidden states [7, 15]" in result.output
    cfg = load_config(FrontEndConfig, tmp_path / "ours.frontend.yaml")
    rebuilt = build_frontend(cfg)
    rebuilt.load_state_dict(load_file(str(tmp_path / "ours.safetensors")), strict=True)
