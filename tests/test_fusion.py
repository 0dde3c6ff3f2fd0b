"""Fusion and the whole front end: exact sizes, span layout, padding-independence, freezing, caching."""

from __future__ import annotations

import pytest
import torch
from frontend_fixtures import row, tiny_batch, tiny_frontend

from alarm.trainer.adapters import adapter_output_length
from alarm.trainer.frontend import ALARM_ORDER, FrontEndConfig, build_frontend, default_encoders


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def linear(i: int, o: int) -> int:
    return i * o + o


def ca_size() -> int:
    """ALARM-CA from the shapes: 4 input projections, 3 pre-norm decoder layers, output projection."""
    attention = 4 * linear(1024, 1024)  # q, k, v (packed in_proj) and out_proj
    layer = 2 * attention + linear(1024, 4096) + linear(4096, 1024) + 3 * 2 * 1024
    return 4 * linear(2560, 1024) + 3 * layer + linear(1024, 2560)


def perceiver_size(in_dim: int) -> int:
    """One ALARM-P branch: 20x768 latents, cross-attention + MLP, 6 self-attention layers, projection."""
    mlp = 2 * 768 + 2 * linear(768, 768)  # pre-norm, widening 1
    cross = 2 * 768 + 2 * in_dim + 2 * linear(768, 768) + 2 * linear(in_dim, 768) + mlp
    layer = 2 * 768 + 4 * linear(768, 768) + mlp
    return 20 * 768 + cross + 6 * layer + linear(768, 2560)


def full(fusion: str):
    with torch.device("meta"):
        return build_frontend(FrontEndConfig(encoders=default_encoders(ALARM_ORDER), fusion=fusion))


def test_ca_parameter_count_is_exact():
    frontend = full("ca")
    assert n_params(frontend.fusion) == 63_503_872 == ca_size()
    assert abs(63_503_872 - 63.5e6) / 63.5e6 < 0.01
    # The whole CA front end: four adapters + fusion + two delimiters.
    assert n_params(frontend) == 18_625_028 + 17_313_285 + 4_723_203 + 18_100_739 + 63_503_872 + 2 * 2560


def test_perceiver_parameter_count_is_exact():
    frontend = full("perceiver")
    # Three Perceivers (w2vbert and muq 1024 wide, sslam 768) plus the fusion's two latent delimiters.
    expected = perceiver_size(1024) * 2 + perceiver_size(768) + 2 * 2560
    assert n_params(frontend.fusion) == 81_228_288 == expected
    assert abs(81_228_288 - 81e6) / 81e6 < 0.01
    # whisper adapter + the other encoders' layer weights only (5 + 3 + 3) + fusion + delimiters.
    assert n_params(frontend) == 18_625_028 + 11 + 81_228_288 + 2 * 2560


@pytest.mark.parametrize("fusion", ["none", "ca", "perceiver"])
def test_padded_batch_equals_each_row_alone(fusion):
    frontend = tiny_frontend(fusion, ["whisper"] if fusion == "none" else None)
    feats, lengths = tiny_batch(frontend)
    with torch.no_grad():
        batch, batch_lengths = frontend(feats, lengths)
        assert torch.equal(batch_lengths, frontend.output_lengths(lengths))
        for b in range(2):
            alone, alone_length = frontend(*row(feats, lengths, b))
            n = int(alone_length)
            assert n == int(batch_lengths[b])
            torch.testing.assert_close(batch[b, :n], alone[0, :n], atol=1e-5, rtol=1e-5)
            assert torch.all(batch[b, n:] == 0)


def test_span_layout_without_fusion():
    frontend = tiny_frontend("none", ["whisper"])
    feats, lengths = tiny_batch(frontend)
    with torch.no_grad():
        span, span_lengths = frontend(feats, lengths)
        adapted = frontend.adapters["whisper"](feats["whisper"], lengths["whisper"])
    assert span_lengths.tolist() == [6 + 2, 3 + 2]  # ceil(11/2), ceil(6/2), plus two delimiters
    for b, n in enumerate(adapted.lengths.tolist()):
        assert torch.equal(span[b, 0], frontend.audio_start.detach())
        assert torch.equal(span[b, 1:n + 1], adapted.values[b, :n])
        assert torch.equal(span[b, n + 1], frontend.audio_end.detach())


def test_ca_output_follows_whisper_length():
    frontend = tiny_frontend("ca")
    feats, lengths = tiny_batch(frontend)
    with torch.no_grad():
        _, span_lengths = frontend(feats, lengths)
    assert span_lengths.tolist() == [adapter_output_length(t) + 2 for t in (11, 6)]


def test_perceiver_span_layout():
    frontend = tiny_frontend("perceiver")
    feats, lengths = tiny_batch(frontend)
    fusion = frontend.fusion
    with torch.no_grad():
        span, span_lengths = frontend(feats, lengths)
        whisper = frontend.adapters["whisper"](feats["whisper"], lengths["whisper"])
    latents = 3 * 3  # three compressed encoders x 3 tiny latents
    assert fusion.extra_tokens == latents + 2
    for b, n_whisper in enumerate(whisper.lengths.tolist()):
        assert int(span_lengths[b]) == 1 + 1 + latents + 1 + n_whisper + 1
        assert torch.equal(span[b, 0], frontend.audio_start.detach())
        assert torch.equal(span[b, 1], fusion.latent_start.detach())
        assert torch.equal(span[b, 2 + latents], fusion.latent_end.detach())
        start = 3 + latents
        assert torch.equal(span[b, start:start + n_whisper], whisper.values[b, :n_whisper])
        assert torch.equal(span[b, start + n_whisper], frontend.audio_end.detach())


def test_perceiver_latents_ignore_padding_and_depend_on_input():
    frontend = tiny_frontend("perceiver")
    feats, lengths = tiny_batch(frontend)
    noisy = {k: v.clone() for k, v in feats.items()}
    noisy["sslam"][1, 7:] = 100.0  # beyond row 1's 7 valid frames
    with torch.no_grad():
        a, _ = frontend(feats, lengths)
        b, _ = frontend(noisy, lengths)
        # (a constant shift would be removed by the input LayerNorm: perturb per channel)
        noisy["sslam"][1, :7] += torch.randn(7, 2, 6, generator=torch.Generator().manual_seed(3))
        c, _ = frontend(noisy, lengths)
    assert torch.equal(a, b)
    assert (a[1, 1:11] - c[1, 1:11]).abs().max() > 1e-4  # the latent block changed
    assert torch.equal(a[0], c[0])  # row 0 is untouched


def test_precomputed_adapter_outputs_give_the_same_span():
    frontend = tiny_frontend("ca")
    feats, lengths = tiny_batch(frontend)
    with torch.no_grad():
        direct, _ = frontend(feats, lengths)
        cached = frontend.run_adapters(feats, lengths)
        from_cache, _ = frontend({}, {}, adapted=cached)
    assert torch.equal(direct, from_cache)
    with pytest.raises(KeyError, match="missing"):
        frontend({}, {}, adapted={"whisper": cached["whisper"]})


def test_freeze_adapters_trains_only_fusion_and_delimiters():
    frontend = tiny_frontend("ca")
    frontend.freeze("adapters")
    assert frontend.frozen_parts() == [f"adapters.{n}" for n in ALARM_ORDER]
    assert frontend.trainable_parts() == ["fusion", "delimiters"]
    frontend.train()
    assert not frontend.adapters["whisper"].training and frontend.fusion.training
    bn = frontend.adapters["whisper"].norm1
    before = bn.running_mean.clone(), int(bn.num_batches_tracked)
    feats, lengths = tiny_batch(frontend)
    span, _ = frontend(feats, lengths)
    span.square().sum().backward()
    assert torch.equal(bn.running_mean, before[0]) and int(bn.num_batches_tracked) == before[1]
    assert all(p.grad is None for p in frontend.adapters.parameters())
    assert frontend.fusion.proj_out.weight.grad.abs().sum() > 0 and frontend.audio_end.grad.abs().sum() > 0
    state = frontend.part_state_dict()
    assert state and all(k.startswith(("fusion.", "audio_start", "audio_end")) for k in state)
    whisper_state = frontend.part_state_dict(["adapters.whisper"])
    assert "adapters.whisper.norm1.running_var" in whisper_state  # buffers travel with their part
    with pytest.raises(ValueError, match="unknown front-end part"):
        frontend.freeze("encoders")


def test_whisper_adapter_batchnorm_updates_when_trained():
    frontend = tiny_frontend("none", ["whisper"]).train()
    bn = frontend.adapters["whisper"].norm1
    before = bn.running_mean.clone()
    frontend(*tiny_batch(frontend))
    assert not torch.equal(before, bn.running_mean)


def test_alarm_p_recipe_freezes_only_the_whisper_adapter():
    # The release's ALARM-P run freezes only whisper; the compressed encoders' layer weights train.
    frontend = tiny_frontend("perceiver")
    frontend.freeze("adapters.whisper", "delimiters")
    assert frontend.trainable_parts() == ["adapters.w2vbert", "adapters.muq", "adapters.sslam", "fusion"]
    assert not frontend.audio_start.requires_grad and not frontend.adapters["whisper"].conv1.weight.requires_grad
    assert frontend.adapters["sslam"].average.layer_weights.requires_grad
    assert set(frontend.part_state_dict()) >= {"adapters.sslam.average.layer_weights", "fusion.latent_start"}
    assert not any(k.startswith(("adapters.whisper.", "audio_")) for k in frontend.part_state_dict())
