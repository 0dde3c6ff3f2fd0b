"""Adapters: exact sizes, output lengths, padding-independence, masked BatchNorm, bad input."""

from __future__ import annotations

import pytest
import torch
from frontend_fixtures import TINY_LENGTHS, row, tiny_batch, tiny_config, tiny_frontend

from alarm.pipeline.configs import ConfigError, from_dict
from alarm.trainer.adapters import (
    ConvAdapter,
    LayerAverage,
    MaskedBatchNorm1d,
    MLPAdapter,
    adapter_output_length,
)
from alarm.trainer.frontend import DEFAULT_ENCODERS, EncoderShape, FrontEndConfig, build_adapter


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def linear(i: int, o: int) -> int:
    return i * o + o


def conv_adapter_size(layers: int, dim: int, norm_per_channel: int = 2) -> int:
    """docs/method.md §3 from the shapes: layer weights, Linear in (unless 1024), two convs, two norms, Linear out."""
    size = layers + (linear(dim, 1024) if dim != 1024 else 0)
    size += 1024 * 2048 * 3 + 2048 + norm_per_channel * 2048
    size += 2048 * 1024 * 4 + 1024 + norm_per_channel * 1024
    return size + linear(1024, 2560)


# Exact full-size counts (docs/method.md §3 says about 18.6M / 17.3M / 18.1M / 4.7M).
EXPECTED = {"whisper": 18_625_028, "w2vbert": 17_313_285, "sslam": 18_100_739, "muq": 4_723_203}
APPROX = {"whisper": 18.6e6, "w2vbert": 17.3e6, "sslam": 18.1e6, "muq": 4.7e6}


@pytest.mark.parametrize("name", ["whisper", "w2vbert", "sslam", "muq"])
def test_full_size_parameter_counts_are_exact(name):
    with torch.device("meta"):
        adapter = build_adapter(DEFAULT_ENCODERS[name], FrontEndConfig(encoders=[DEFAULT_ENCODERS[name]]))
    shape = DEFAULT_ENCODERS[name]
    by_formula = (conv_adapter_size(shape.layers, shape.dim) if name != "muq"
                  else shape.layers + linear(1024, 1024) * 2 + linear(1024, 2560))
    assert n_params(adapter) == EXPECTED[name] == by_formula
    assert abs(EXPECTED[name] - APPROX[name]) / APPROX[name] < 0.01


def test_full_size_structure():
    cfg = FrontEndConfig()
    with torch.device("meta"):
        whisper = build_adapter(DEFAULT_ENCODERS["whisper"], cfg)
        w2vbert = build_adapter(DEFAULT_ENCODERS["w2vbert"], cfg)
        muq = build_adapter(DEFAULT_ENCODERS["muq"], cfg)
    assert isinstance(whisper.norm1, MaskedBatchNorm1d) and isinstance(whisper.proj_in, torch.nn.Linear)
    assert isinstance(w2vbert.norm1.norm, torch.nn.LayerNorm) and isinstance(w2vbert.proj_in, torch.nn.Identity)
    assert (whisper.conv2.kernel_size, whisper.conv2.stride, whisper.conv2.padding) == ((4,), (2,), (1,))
    assert isinstance(muq, MLPAdapter) and muq.proj_out.out_features == 2560
    assert whisper.average.layer_weights.shape == (4,)


@pytest.mark.parametrize("frames, expected", [(1, 1), (2, 1), (3, 2), (10, 5), (11, 6), (1500, 750)])
def test_output_length_is_ceil_half(frames, expected):
    assert adapter_output_length(frames) == expected
    adapter = tiny_frontend("none", ["whisper"]).adapters["whisper"]
    out = adapter(torch.randn(1, frames, 2, 12), torch.tensor([frames]))
    assert out.values.shape == (1, expected, 16) and out.lengths.tolist() == [expected]


def test_layer_weights_start_at_mean_and_follow_softmax():
    average = LayerAverage(3)
    feats = torch.randn(2, 5, 3, 4)
    assert torch.all(average.layer_weights == 0)
    torch.testing.assert_close(average(feats), feats.mean(dim=2))
    with torch.no_grad():
        average.layer_weights.copy_(torch.tensor([0.0, 1.0, -2.0]))
    w = torch.softmax(torch.tensor([0.0, 1.0, -2.0]), 0)
    torch.testing.assert_close(average(feats), (feats * w[None, None, :, None]).sum(2))


@pytest.mark.parametrize("name", ["whisper", "w2vbert", "sslam", "muq"])
def test_padded_batch_equals_each_row_alone(name):
    frontend = tiny_frontend("none", [name])
    adapter = frontend.adapters[name]
    feats, lengths = tiny_batch(frontend)
    with torch.no_grad():
        batch = adapter(feats[name], lengths[name])
        for b, frames in enumerate(TINY_LENGTHS[name]):
            f1, l1 = row(feats, lengths, b)
            alone = adapter(f1[name], l1[name])
            n = int(alone.lengths)
            assert n == int(batch.lengths[b]) == adapter_output_length(frames, adapter.downsamples)
            torch.testing.assert_close(batch.values[b, :n], alone.values[0, :n], atol=1e-5, rtol=1e-5)
            assert torch.all(batch.values[b, n:] == 0)


def test_padding_content_does_not_matter():
    frontend = tiny_frontend("none", ["whisper"])
    feats, lengths = tiny_batch(frontend)
    other = feats["whisper"].clone()
    other[1, 6:] = 1e3  # row 1 has 6 valid frames
    with torch.no_grad():
        a = frontend.adapters["whisper"](feats["whisper"], lengths["whisper"]).values
        b = frontend.adapters["whisper"](other, lengths["whisper"]).values
    assert torch.equal(a, b)


def test_masked_batchnorm_matches_batchnorm_on_valid_frames():
    torch.manual_seed(0)
    masked, plain = MaskedBatchNorm1d(4), torch.nn.BatchNorm1d(4)
    x = torch.randn(2, 4, 6)
    lengths = torch.tensor([6, 3])
    mask = torch.arange(6)[None] < lengths[:, None]
    y = masked(x, mask)
    valid = torch.cat([x[0], x[1, :, :3]], dim=1)[None]  # the 9 valid frames as one sequence
    ref = plain(valid)
    torch.testing.assert_close(torch.cat([y[0], y[1, :, :3]], dim=1)[None], ref)
    torch.testing.assert_close(masked.running_mean, plain.running_mean)
    torch.testing.assert_close(masked.running_var, plain.running_var)
    assert int(masked.num_batches_tracked) == 1
    # With nothing masked it is exactly a BatchNorm1d.
    masked2, plain2 = MaskedBatchNorm1d(4), torch.nn.BatchNorm1d(4)
    torch.testing.assert_close(masked2(x, torch.ones(2, 6, dtype=torch.bool)), plain2(x))
    torch.testing.assert_close(masked2.running_var, plain2.running_var)


def test_gradients_reach_layer_weights_and_convs():
    adapter = tiny_frontend("none", ["whisper"]).adapters["whisper"].train()
    feats = torch.randn(2, 7, 2, 12)
    out = adapter(feats, torch.tensor([7, 4]))
    out.values.square().sum().backward()
    assert adapter.average.layer_weights.grad.abs().sum() > 0
    assert adapter.conv1.weight.grad.abs().sum() > 0


def test_bad_inputs_raise():
    adapter = tiny_frontend("none", ["whisper"]).adapters["whisper"]
    with pytest.raises(ValueError, match="layers"):
        adapter(torch.randn(1, 4, 3, 12), torch.tensor([4]))
    with pytest.raises(ValueError, match="lengths"):
        adapter(torch.randn(1, 4, 2, 12), torch.tensor([5]))
    with pytest.raises(ValueError, match="lengths"):
        adapter(torch.randn(1, 4, 2, 12), torch.tensor([0]))
    with pytest.raises(ValueError, match="norm"):
        ConvAdapter(2, 8, 8, 8, 8, norm="group")


def test_config_checks():
    with pytest.raises(ConfigError, match="unknown"):
        EncoderShape("beats", 2, 8)
    with pytest.raises(ConfigError, match="exactly one"):
        tiny_config("none", ["whisper", "muq"])
    with pytest.raises(ConfigError, match="fusion"):
        tiny_config("sum")
    with pytest.raises(ConfigError, match="first"):
        FrontEndConfig(encoders=[DEFAULT_ENCODERS["muq"], DEFAULT_ENCODERS["whisper"]], fusion="ca")
    with pytest.raises(ConfigError, match="divisible"):
        FrontEndConfig(encoders=[DEFAULT_ENCODERS["whisper"], DEFAULT_ENCODERS["muq"]], fusion="ca", ca_heads=5)
    # YAML form: encoders as plain dicts, unknown keys refused by pipeline.configs.
    cfg = from_dict(FrontEndConfig, {"encoders": [{"name": "whisper", "layers": 4, "dim": 1280},
                                                  {"name": "muq", "layers": 3, "dim": 1024}], "fusion": "ca"})
    assert cfg.names == ["whisper", "muq"] and isinstance(cfg.encoders[1], EncoderShape)
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(FrontEndConfig, {"fusoin": "ca"})
