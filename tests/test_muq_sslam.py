"""Our MuQ and SSLAM modules: checkpoint layout, strict loading, and numerics against references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from alarm.pipeline.encoders import muq, sslam


def _meta_state(module_cls, cfg) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        module = module_cls(cfg)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------ SSLAM


def test_sslam_full_size_matches_released_checkpoint_layout() -> None:
    """Key names and shapes of ta012/SSLAM_AS2M_Finetuned (EAT remote-code layout, ViT-B, 527 classes)."""
    state = _meta_state(sslam.SSLAM, sslam.SSLAMConfig())
    expected_top = {
        "model.local_encoder.proj.weight": (768, 1, 16, 16),
        "model.local_encoder.proj.bias": (768,),
        "model.extra_tokens": (1, 1, 768),
        "model.fixed_positional_encoder.positions": (1, 768 * 8, 768),
        "model.pre_norm.weight": (768,),
        "model.pre_norm.bias": (768,),
        "model.fc_norm.weight": (768,),
        "model.fc_norm.bias": (768,),
        "model.head.weight": (527, 768),
        "model.head.bias": (527,),
    }
    per_block = {
        "norm1.weight": (768,), "norm1.bias": (768,),
        "attn.qkv.weight": (2304, 768), "attn.qkv.bias": (2304,),
        "attn.proj.weight": (768, 768), "attn.proj.bias": (768,),
        "norm2.weight": (768,), "norm2.bias": (768,),
        "mlp.fc1.weight": (3072, 768), "mlp.fc1.bias": (3072,),
        "mlp.fc2.weight": (768, 3072), "mlp.fc2.bias": (768,),
    }
    expected = dict(expected_top)
    for i in range(12):
        expected.update({f"model.blocks.{i}.{k}": v for k, v in per_block.items()})
    assert state == expected
    params = sum(int(np.prod(s)) for k, s in state.items() if "positions" not in k)
    assert 85e6 < params < 87e6  # ViT-B/16 plus the AudioSet head


def test_sslam_tiny_round_trip_is_strict(tmp_path) -> None:
    torch.manual_seed(1)
    module = sslam.SSLAM(sslam.TINY_CONFIG)
    sslam.save_sslam(module, tmp_path / "ok")
    loaded = sslam.load_sslam(tmp_path / "ok")
    for k, v in module.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    # A missing or an unexpected key is refused.
    weights = load_file(str(tmp_path / "ok" / "model.safetensors"))
    for name, broken in (("missing", {k: v for k, v in weights.items() if k != "model.head.bias"}),
                         ("extra", {**weights, "model.unknown": torch.zeros(1)})):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
        save_file(broken, str(folder / "model.safetensors"))
        with pytest.raises(RuntimeError, match="Missing key|Unexpected key"):
            sslam.load_sslam(folder)
    with pytest.raises(FileNotFoundError):
        sslam.load_sslam(tmp_path / "nowhere")


def test_sslam_config_reads_eat_json_and_ignores_bookkeeping() -> None:
    data = {"architectures": ["EATModel"], "auto_map": {}, "drop_rate": 0.0, "depth": 2, "embed_dim": 64,
            "num_heads": 4, "model_variant": "pretrain"}
    cfg = sslam.SSLAMConfig.from_json(data)
    assert (cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.model_variant) == (2, 64, 4, "pretrain")
    assert "model.head.weight" not in _meta_state(sslam.SSLAM, cfg)


def test_sslam_positions_and_token_layout() -> None:
    table = sslam.patch_positions(8, 3, 2)[0]  # (time 3 x freq 2, 8)
    # Time-major order; first half of channels encodes the frequency patch, second half the time patch.
    assert table.shape == (6, 8)
    np.testing.assert_allclose(table[0], [0, 0, 1, 1, 0, 0, 1, 1], atol=1e-7)
    np.testing.assert_allclose(table[1, :4], [np.sin(1), np.sin(1e-2), np.cos(1), np.cos(1e-2)], atol=1e-6)
    np.testing.assert_allclose(table[2, 4:], [np.sin(1), np.sin(1e-2), np.cos(1), np.cos(1e-2)], atol=1e-6)
    module = sslam.SSLAM(sslam.TINY_CONFIG).eval()
    image = torch.randn(2, 1, 1024, 128)
    states = module(image)
    assert len(states) == sslam.TINY_CONFIG.depth + 1
    assert states[-1].shape == (2, 1 + 64 * 8, 32)


def test_sslam_image_is_padded_before_normalisation() -> None:
    wave = torch.randn(16000) * 0.1 + 0.3
    image = sslam.sslam_image(wave, 1024)[0]
    assert image.shape == (1024, 128)
    frames = 1 + (16000 - 400) // 160
    pad_value = (0 - sslam.NORM_MEAN) / (sslam.NORM_STD * 2)
    assert torch.allclose(image[frames:], torch.full_like(image[frames:], pad_value))
    # The wave's mean is removed first, so a DC offset does not change the image.
    assert torch.allclose(sslam.sslam_image(wave + 1.0, 1024), sslam.sslam_image(wave, 1024), atol=1e-4)


# ------------------------------------------------------------------------------------------ MuQ


def test_muq_full_size_matches_released_checkpoint_layout() -> None:
    """Top-level keys of OpenMuQ/MuQ-large-msd-iter (MuQ.model = MuQModel) and their shapes."""
    state = _meta_state(muq.MuQ, muq.MuQConfig())
    expected = {
        "model.preprocessor_melspec_2048.mel_stft.spectrogram.window": (2048,),
        "model.preprocessor_melspec_2048.mel_stft.mel_scale.fb": (1025, 128),
        "model.quantizer_melspec_2048.random_projection": (512, 16),
        "model.quantizer_melspec_2048.codebook": (4096, 16),
        "model.conv.conv.0.conv1.weight": (512, 1, 3, 3),
        "model.conv.conv.0.conv3.weight": (512, 1, 3, 3),
        "model.conv.conv.0.bn1.running_var": (512,),
        "model.conv.conv.1.conv2.weight": (512, 512, 3, 3),
        "model.conv.conv.1.bn3.num_batches_tracked": (),
        "model.conv.linear.weight": (1024, 512 * 128 // 4),
        "model.conformer.embed_positions.inv_freq": (32,),
        "model.conformer.pos_conv_embed.conv.bias": (1024,),
        "model.conformer.pos_conv_embed.conv.parametrizations.weight.original0": (1, 1, 128),
        "model.conformer.pos_conv_embed.conv.parametrizations.weight.original1": (1024, 64, 128),
        "model.conformer.layer_norm.weight": (1024,),
        "model.conformer.layers.11.ffn1.intermediate_dense.weight": (4096, 1024),
        "model.conformer.layers.11.self_attn.linear_q.weight": (1024, 1024),
        "model.conformer.layers.11.conv_module.pointwise_conv1.weight": (2048, 1024, 1),
        "model.conformer.layers.11.conv_module.depthwise_conv.weight": (1024, 1, 31),
        "model.conformer.layers.11.conv_module.batch_norm.running_mean": (1024,),
        "model.conformer.layers.11.final_layer_norm.bias": (1024,),
        "model.linear.weight": (4096, 1024),
        "model.cls_token": (1024,),
    }
    for key, shape in expected.items():
        assert state.get(key) == shape, key
    assert not any(k.startswith("model.conformer.layers.12.") for k in state)
    tops = {k.split(".")[1] for k in state}
    assert tops == {"preprocessor_melspec_2048", "quantizer_melspec_2048", "conv", "conformer", "linear",
                    "cls_token"}
    params = sum(int(np.prod(s)) for s in state.values())
    assert 300e6 < params < 340e6


def test_muq_rvq_variant_has_the_mel_rvq_keys() -> None:
    state = _meta_state(muq.MuQ, muq.MuQConfig(use_rvq_target=True, rvq_n_codebooks=2))
    assert state["model.rvq.quantizers.1.in_proj.weight_v"] == (16, 512, 1)
    assert state["model.rvq.quantizers.1.out_proj.weight_g"] == (512, 1, 1)
    assert state["model.rvq.quantizers.0.codebook.weight"] == (1024, 16)
    assert not any(k.startswith("model.quantizer_") for k in state)


def test_muq_conformer_matches_transformers_wav2vec2_conformer() -> None:
    """Our Conformer has transformers' Wav2Vec2ConformerEncoder key names and computes the same function."""
    from transformers import Wav2Vec2ConformerConfig
    from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import Wav2Vec2ConformerEncoder

    cfg = muq.TINY_CONFIG
    hf_cfg = Wav2Vec2ConformerConfig(hidden_size=cfg.encoder_dim, num_hidden_layers=cfg.encoder_depth,
                                     position_embeddings_type="rotary", hidden_act="swish",
                                     **{k: v for k, v in cfg.w2v2_config.items()})
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    reference = Wav2Vec2ConformerEncoder(hf_cfg).eval()
    for bn in reference.modules():
        if isinstance(bn, torch.nn.BatchNorm1d):
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    ours = muq.Conformer(cfg).eval()
    ref_state = reference.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref_state.items()}
    ours.load_state_dict(ref_state, strict=True)
    x = torch.randn(2, 37, cfg.encoder_dim)
    with torch.no_grad():
        expected = reference(x.clone()).last_hidden_state
        got = ours(x, None)
    assert len(got) == cfg.encoder_depth + 1
    torch.testing.assert_close(got[-1], expected, atol=1e-5, rtol=1e-5)


def test_muq_tiny_round_trip_legacy_names_and_derived_buffer(tmp_path) -> None:
    path = muq.build_tiny_muq()
    module = muq.load_muq(path)
    weights = load_file(str(path / "model.safetensors"))
    # An older save: weight_g/weight_v names and no rotary inv_freq buffer; still a strict, exact load.
    legacy = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): v
              for k, v in weights.items() if not k.endswith("inv_freq")}
    folder = tmp_path / "legacy"
    folder.mkdir()
    (folder / "config.json").write_text((path / "config.json").read_text())
    save_file(legacy, str(folder / "model.safetensors"))
    again = muq.load_muq(folder)
    for k, v in module.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    del legacy["model.conv.linear.bias"]
    save_file(legacy, str(folder / "model.safetensors"))
    with pytest.raises(RuntimeError, match="model.conv.linear.bias"):
        muq.load_muq(folder)


def test_muq_config_refuses_unsupported_variants() -> None:
    from alarm.pipeline.configs import ConfigError

    with pytest.raises(ConfigError, match="EnCodec"):
        muq.MuQConfig(use_encodec_target=True)
    with pytest.raises(ConfigError, match="rotary"):
        muq.MuQConfig(w2v2_config={"position_embeddings_type": "relative"})
    cfg = muq.MuQConfig.from_json({"mask_hop": 0.4, "rvq_ckpt_path": "x", "encoder_depth": 2})
    assert cfg.encoder_depth == 2


def test_muq_front_end_rates_and_mask_equivalence() -> None:
    module = muq.load_muq(muq.build_tiny_muq())
    wave = torch.randn(1, 24000 * 2) * 0.1
    mel = module.mel(wave)
    assert mel.shape == (1, 128, 200)  # 100 Hz, last centred frame dropped
    with torch.no_grad():
        states = module(mel)
    assert states[0].shape == (1, 50, 32)  # 25 Hz
    # The same clip padded inside a batch, with its mask, gives the same hidden states.
    padded = torch.nn.functional.pad(mel, (0, 40), value=3.0)
    mask = torch.zeros(1, 240, dtype=torch.bool)
    mask[:, :200] = True
    with torch.no_grad():
        masked = module(padded * mask[:, None, :], mask)
    for a, b in zip(states, masked, strict=True):
        torch.testing.assert_close(b[:, :50], a, atol=1e-5, rtol=1e-5)


def test_tiny_folders_hold_config_and_safetensors() -> None:
    for path in (muq.build_tiny_muq(), sslam.build_tiny_sslam()):
        assert (path / "model.safetensors").is_file()
        assert json.loads((path / "config.json").read_text())


# ------------------------------------------------------------------------------------------ golden fixtures
# Weights saved by the reference implementations themselves at a reduced size, with their inputs and outputs
# (tests/fixtures/golden/README.md says how they were made). They load through the same strict loaders as a
# real checkpoint, and our forward passes must reproduce the reference's numbers.

GOLDEN = Path(__file__).parent / "fixtures" / "golden"


def _max_abs(ours: torch.Tensor, reference: np.ndarray) -> float:
    assert tuple(ours.shape) == reference.shape
    return float(np.abs(ours.detach().float().numpy() - reference).max())


def test_golden_muq_checkpoint_as_the_reference_saves_it_loads() -> None:
    """The reference MuQ's own save has no mel window or filter bank; the loader derives exactly those."""
    weights = load_file(str(GOLDEN / "muq" / "model.safetensors"))
    assert not any(k.startswith("model.preprocessor_melspec_2048.") for k in weights)
    module = muq.load_muq(GOLDEN / "muq")
    front = module.model.preprocessor_melspec_2048.mel_stft
    assert torch.equal(front.spectrogram.window, torch.hann_window(muq.N_FFT))
    assert front.mel_scale.fb.shape == (muq.N_FFT // 2 + 1, 128)


def test_golden_muq_loader_stays_strict_for_every_other_key(tmp_path) -> None:
    weights = load_file(str(GOLDEN / "muq" / "model.safetensors"))
    config = (GOLDEN / "muq" / "config.json").read_text()
    cases = {"missing": ({k: v for k, v in weights.items()
                          if k != "model.conformer.layers.2.conv_module.depthwise_conv.weight"},
                         "model.conformer.layers.2.conv_module.depthwise_conv.weight"),
             "unexpected": ({**weights, "model.preprocessor_melspec_2048.mel_stft.extra": torch.zeros(1)},
                            "model.preprocessor_melspec_2048.mel_stft.extra")}
    for name, (state, key) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(config)
        save_file(state, str(folder / "model.safetensors"))
        with pytest.raises(RuntimeError, match=key) as err:
            muq.load_muq(folder)
        assert "window" not in str(err.value) and ".fb" not in str(err.value)  # the derived ones are never named


def test_golden_muq_matches_reference_outputs() -> None:
    module = muq.load_muq(GOLDEN / "muq")
    golden = np.load(GOLDEN / "muq_io.npz")
    waves = torch.from_numpy(golden["waves"])
    mel = module.mel(waves)
    # Normalised dB mel: our derived window and HTK filters against torchaudio's MelSpectrogram + AmplitudeToDB.
    assert _max_abs(mel, golden["mel"]) < 1e-4
    with torch.no_grad():
        from_reference_mel = module(torch.from_numpy(golden["mel"]))
        from_wave = module(mel)
    assert len(from_wave) == len(golden["hidden_states"]) == muq.TINY_CONFIG.encoder_depth + 1
    for i, reference in enumerate(golden["hidden_states"]):
        assert _max_abs(from_reference_mel[i], reference) < 5e-6, i
        assert _max_abs(from_wave[i], reference) < 2e-5, i
    # The feature job's window model (per-window mel, batched, layers picked) gives the same numbers.
    layers = (1, 2, 4)
    windows = muq.MuQWindows(module, layers, "cpu", torch.float32, window=30 * muq.SAMPLE_RATE)
    encoded = windows.forward([w.numpy() for w in waves])
    for b, got in enumerate(encoded):
        expected = np.stack([golden["hidden_states"][i][b] for i in layers], axis=1)
        assert _max_abs(torch.from_numpy(got), expected) < 2e-5


def test_golden_sslam_matches_reference_outputs() -> None:
    module = sslam.load_sslam(GOLDEN / "sslam")
    golden = np.load(GOLDEN / "sslam_io.npz")
    frames = golden["image"].shape[2]
    image = sslam.sslam_image(torch.from_numpy(golden["wave"]), frames)
    # Our Kaldi fbank, padding and normalisation against torchaudio's kaldi.fbank in EAT's recipe.
    assert _max_abs(image[None], golden["image"]) < 1e-4
    with torch.no_grad():
        from_reference_image = module(torch.from_numpy(golden["image"]))
        from_wave = module(image[None])
    assert len(from_wave) == len(golden["hidden_states"]) == 5
    for i, reference in enumerate(golden["hidden_states"]):
        assert _max_abs(from_reference_image[i], reference) < 5e-6, i
        assert _max_abs(from_wave[i], reference) < 5e-5, i
    layers = (2, 4)
    windows = sslam.SSLAMWindows(module, layers, "cpu", torch.float32, frames)
    (got,) = windows.forward([golden["wave"]])
    tokens = windows.window_frames(len(golden["wave"]))
    expected = np.stack([golden["hidden_states"][i][0, 1 : 1 + tokens] for i in layers], axis=1)
    assert _max_abs(torch.from_numpy(got), expected) < 5e-5
